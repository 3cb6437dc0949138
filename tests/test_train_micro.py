"""Micro-expression LOSO on FaceSynth, headless: the whole study through `facelab train micro --folds all`, the
pooled MEGC2019 score, `papermill ... -p fold 3` exactly as a user types it, and leakage checks that would fail if a
test subject's clip reached training, validation or model selection.

The FaceSynth datasets and decoded clips live in the usual artifacts cache (written once, shared with nbdev-test);
runs and MLflow go to a temporary folder.
"""
import json, os, subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def env_for(tmp: Path) -> dict:
    "Runs and MLflow in `tmp`; the artifacts cache (FaceSynth, decoded clips) is the usual one, so datasets are written once."
    uri = f"sqlite:///{tmp/'mlflow.db'}"
    import mlflow
    mlflow.MlflowClient(uri).search_experiments()   # create the store now: two fold workers must not both migrate a new DB
    return {**os.environ, 'FACELAB_RUNS': str(tmp/'runs'), 'FACELAB_MLFLOW_URI': uri,
            'PATH': f"{BIN}:{os.environ.get('PATH', '')}", 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg'}


@pytest.fixture(scope='module')
def study(tmp_path_factory):
    "All LOSO folds of the default tiny config, run the way a user runs them."
    tmp = tmp_path_factory.mktemp('micro')
    r = subprocess.run([str(BIN/'facelab'), 'train', 'micro', '--folds', 'all', '--workers', '2', '--out', str(tmp/'out')],
                       cwd=ROOT, env=env_for(tmp), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert '6 LOSO folds' in r.stdout, r.stdout      # --folds all counted the subjects of the data
    return tmp/'out'/'loso'


def test_loso_study_learns(study):
    from facelab.runs import collect_study
    from facelab.evaluate import megc_scores
    study_dir = study
    pooled, metrics = collect_study(study_dir)
    assert sorted(metrics) == list(range(6)) and pooled.subject.nunique() == 6       # one fold per subject, all present
    s = megc_scores(pooled, 3, by='dataset')
    assert set(s['by_dataset']) == {'casme2', 'smic', 'samm'}
    assert s['uf1'] >= 0.5, s                     # pooled over all folds (MEGC2019); chance is ~1/3; measured 0.594
    for d in ('probabilities', 'y_true', 'y_pred', 'sample_id', 'subject', 'dataset'): assert d in pooled
    p = np.stack(pooled.probabilities.to_numpy())
    assert np.allclose(p.sum(1), 1, atol=1e-5) and (p.argmax(1) == pooled.y_pred).all()


@pytest.mark.xfail(reason="issue 8 target not reached yet: the default tiny config pools to UF1 0.594 on FaceSynth", strict=False)
def test_loso_study_reaches_target(study):
    from facelab.runs import collect_study
    from facelab.evaluate import megc_scores
    pooled, _ = collect_study(study)
    assert megc_scores(pooled, 3)['uf1'] >= 0.6


def test_no_leakage(study):
    "For every fold: the test subject's clips are in no DataLoader used for fitting or monitoring, and selection uses validation."
    from facelab.runs import micro_index, loso_split
    from facelab.data.index import loso_subjects
    from facelab.train.core import list_checkpoints, load_checkpoint
    study_dir = study
    index, _, _ = micro_index()
    subjects = loso_subjects(index)
    subj_of = dict(zip(index.sample_id, index.subject))
    # the split function itself, over every fold and several seeds
    for k, s in enumerate(subjects):
        for seed in range(3):
            (tr, va, te), test_subject = loso_split(index, k, 0.2, seed)
            assert test_subject == s and set(index.subject.iloc[te]) == {s}
            assert s not in set(index.subject.iloc[tr]) | set(index.subject.iloc[va])
            assert not set(index.subject.iloc[tr]) & set(index.subject.iloc[va]) and len(va)
    # the real runs: what their DataLoaders actually held
    for k, s in enumerate(subjects):
        run = study_dir/f'fold_{k:02d}'
        split = json.loads((run/'split.json').read_text())
        m = json.loads((run/'metrics.json').read_text())
        assert split['test_subject'] == s == m['test_subject']
        test_ids = set(index.sample_id[index.subject == s])
        for use in ('fit', 'monitor'):
            ids = split['used_for'][use]
            assert ids and not set(ids) & test_ids, (k, use)
            assert s not in {subj_of[i] for i in ids}, (k, use)
        assert set(split['used_for']['monitor']) == set(split['valid']['sample_ids'])
        assert set(split['used_for']['predict']) == test_ids
        preds = pd.read_parquet(run/'predictions.parquet')
        assert set(preds.sample_id) == test_ids and (preds.fold == k).all()
        # model selection: the monitored metric is the validation loss, and the checkpoints hold the values of the
        # validation clips the run recorded (a monitor on test clips would not match the recorded valid_loss)
        assert m['selection']['monitor'] == 'valid_loss' and m['selection']['on'].startswith('valid')
        hist = pd.read_csv(run/'history.csv')
        cks = list_checkpoints(run/'train')
        assert cks
        for c in cks:
            ck = load_checkpoint(c)
            assert ck['monitor']['name'] == 'valid_loss'
            assert abs(ck['monitor']['value'] - hist.valid_loss.iloc[ck['epoch']]) < 1e-6
        # the recorded validation loss is the loss of the validation clips: recompute it from the kept model
        if m['selection']['rule'] == 'last':
            assert abs(_valid_loss(run, index, split) - m['valid']['loss']) < 1e-3, k


def _valid_loss(run: Path, index, split) -> float:
    "Weighted cross-entropy of the saved model on the run's validation clips (the run's clip settings and class weights)."
    import yaml, torch.nn.functional as F
    from facelab.train.save import load_model
    from facelab.data.clips import ClipDataset
    from facelab.core import MEGC3
    cfg = yaml.safe_load((run/'config.yaml').read_text())
    model = load_model(run/'model.pt').eval()
    mc = model.cfg
    kw = dict(T=mc.num_frames, size=mc.img_size, mode=cfg['data']['mode'], missing=cfg['data']['missing'], mean=mc.mean, std=mc.std)
    rows = lambda ids: index.set_index('sample_id').loc[ids].reset_index()
    va = ClipDataset(rows(split['used_for']['monitor']), index.attrs['roots'], **kw)
    counts = np.bincount(index.set_index('sample_id').loc[split['used_for']['fit']].label, minlength=len(MEGC3))
    w = torch.tensor(counts.sum() / (len(MEGC3) * counts), dtype=torch.float32) if cfg['loss']['class_weights'] else None
    bs = int(cfg['data']['bs'])
    losses, ns = [], []
    with torch.no_grad():
        for a in range(0, len(va), bs):
            xb = torch.stack([va[i][0] for i in range(a, min(a + bs, len(va)))])
            yb = torch.as_tensor(va.labels[a:a + bs])
            losses.append(F.cross_entropy(model(xb), yb, weight=w).item()); ns.append(len(yb))
    return float(np.average(losses, weights=ns))     # fastai's valid_loss: batch losses weighted by batch size


def test_papermill_fold_3(tmp_path):
    "`papermill nbs/30_train_micro.ipynb out.ipynb -p fold 3`, from the repo root, as documented."
    env = env_for(tmp_path)
    r = subprocess.run(['papermill', 'nbs/30_train_micro.ipynb', str(tmp_path/'out.ipynb'), '-p', 'fold', '3'],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'Passed unknown parameter' not in r.stderr       # fold is a declared parameter
    runs = list((tmp_path/'runs'/'micro').glob('*/metrics.json'))
    assert len(runs) == 1, runs
    m = json.loads(runs[0].read_text())
    assert m['fold'] == 3 and m['test_subject'] == 'samm/007' and m['n_test'] > 0
    for f in ('predictions.parquet', 'split.json', 'model.pt', 'confusion.png', 'learning_curve.png'):
        assert (runs[0].parent/f).exists(), f


def test_full_size_config_builds():
    "configs/micro_videomae.yaml: ViT-B VideoMAE V2 + adapters, 16 x 224 (built on the meta device: no memory, no training)."
    from facelab.core import load_config
    from facelab.models import count_params
    from facelab.train.save import build_model
    cfg = load_config(ROOT/'configs'/'micro_videomae.yaml')
    with torch.device('meta'): m = build_model(cfg.model)
    assert (m.cfg.num_frames, m.cfg.img_size, m.cfg.dim, m.cfg.depth, m.cfg.heads) == (16, 224, 768, 12, 12)
    assert (cfg.data.frames, cfg.data.size) == (16, 224)
    adapters = sum(p.numel() for n, p in m.named_parameters() if n.startswith('adapters.'))
    assert count_params(m) == 89_798_403 and adapters == 3_568_896        # 86.2M backbone (ANCHORS) + adapters + head
    assert count_params(m, trainable_only=True) == 3_572_739               # frozen backbone: adapters, fc_norm, head
