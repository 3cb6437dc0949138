"""Micro-expression LOSO on FaceSynth, headless: the whole study through `facelab train micro --folds all`, the
pooled MEGC2019 score (issue 8: UF1 >= 0.6 with LOSO over 6 subjects), `papermill ... -p fold 3` exactly as a user
types it, leakage checks that would fail if a test subject's clip reached training, validation or model selection,
and a check that the stage-1 pre-training people (FaceSynth macro-expression clips) are none of the dataset people.

The FaceSynth datasets, decoded clips and the stage-1 checkpoint live in the usual artifacts cache (written once,
shared with nbdev-test); runs and MLflow go to a temporary folder.
"""
import hashlib, json, os, subprocess, sys
from dataclasses import fields
from types import SimpleNamespace
from unittest import mock
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
    assert 'stage 1: stage1-' in r.stdout, r.stdout   # the stage-1 backbone was made (or found) before the workers
    return tmp/'out'/'loso'


def test_loso_study_learns(study):
    from facelab.runs import collect_study
    from facelab.evaluate import megc_scores
    study_dir = study
    pooled, metrics = collect_study(study_dir)
    assert sorted(metrics) == list(range(6)) and pooled.subject.nunique() == 6       # one fold per subject, all present
    s = megc_scores(pooled, 3, by='dataset')
    assert set(s['by_dataset']) == {'casme2', 'smic', 'samm'}
    print(f"\npooled over {s['n']} clips of 6 LOSO folds: UF1 {s['uf1']:.3f}, UAR {s['uar']:.3f};",
          {k: round(v['uf1'], 3) for k, v in s['by_dataset'].items()})
    # issue 8: pooled over all folds (MEGC2019), chance ~1/3. Measured 0.623 (UAR 0.630; 0.684 before issue 18's
    # renderer); the previous config (no stage 1, flips only) pooled 0.594 here. On FaceSynth draws of other people
    # (data seeds 1-3), where the recipe was compared, it pooled 0.49-0.76 (mean 0.64) over three stage-1 seeds, the
    # previous config 0.29-0.44
    assert s['uf1'] >= 0.6, s
    for d in ('probabilities', 'y_true', 'y_pred', 'sample_id', 'subject', 'dataset'): assert d in pooled
    p = np.stack(pooled.probabilities.to_numpy())
    assert np.allclose(p.sum(1), 1, atol=1e-5) and (p.argmax(1) == pooled.y_pred).all()


def _identities(module, fn, *args, **kw) -> list:
    "The FaceSynth `Identity`s (people) that `fn(*args, **kw)` draws through `module.sample_identity`, in order."
    seen, real = [], module.sample_identity
    def record(*a, **k):
        seen.append(real(*a, **k)); return seen[-1]
    with mock.patch.object(module, 'sample_identity', record): fn(*args, **kw)
    return seen


def _tree_digest(root: Path) -> str:
    "One hash of every file under `root` (relative path and bytes)."
    h = hashlib.sha1()
    for f in sorted(p for p in root.rglob('*') if p.is_file() and not p.name.startswith('.')):
        h.update(str(f.relative_to(root)).encode()); h.update(f.read_bytes())
    return h.hexdigest()


def test_stage1_people_are_not_dataset_people(study, tmp_path):
    """Stage 1 (the backbone every fold starts from) learned another task from other people: the FaceSynth identities
    it drew are compared with those of every dataset subject of the study and of the report's held-out people."""
    import yaml
    import facelab.synth.face, facelab.synth.clipset, facelab.models.videomae as vm
    from facelab.core import EMOTION7
    from facelab.runs import MICRO_DATASETS, micro_index
    from facelab.train.run import facesynth_root
    folds = [json.loads((study/f'fold_{k:02d}'/'metrics.json').read_text()) for k in range(6)]
    s1 = [m['init']['stage1'] for m in folds]
    assert all(s == s1[0] for s in s1) and len({m['init']['weights'] for m in folds}) == 1   # one stage-1 run, shared
    s1 = s1[0]
    assert s1['classes'] == list(EMOTION7) and s1['clips'] == 60 * 7 * 2          # 7-class macro task, not MEGC3
    cfg = yaml.safe_load((study/'fold_00'/'config.yaml').read_text())
    # the dataset people, recorded while the writers write the study's FaceSynth data again (byte-identical to the
    # data the folds trained on), and the people the report scores the fold ensemble on (seed 1000)
    people, digest = {}, {}
    for name, synth in (('study', cfg['data']['synth']), ('report', {**cfg['data']['synth'], 'seed': 1000})):
        root = {}
        people[name] = _identities(facelab.synth.face, lambda: root.setdefault(
            'r', facesynth_root(MICRO_DATASETS, cache=tmp_path/name, **synth)))
        digest[name] = _tree_digest(root['r'])
    assert len(people['study']) == len(people['report']) == 6
    assert digest['study'] == _tree_digest(micro_index(None, cfg)[1])
    # the stage-1 people, recorded by running facesynth_pretrain with the runs' arguments, rendering and fitting
    # stubbed (a person is drawn first from its own generator, so the stubs cannot change who is drawn)
    face = SimpleNamespace(face_box=(0, 0, 8, 8))
    def clip(identity, events, n, fps, size=96, **k):
        return SimpleNamespace(frames=np.zeros((n, size, size, 3), np.uint8), au_intensity=np.zeros((n, 1), np.float32))
    with mock.patch.object(facelab.synth.clipset, 'render_face', lambda *a, **k: face), \
         mock.patch.object(facelab.synth.clipset, 'render_clip', clip), \
         mock.patch.object(vm, 'fit_clip_classifier', lambda *a, **k: [0.0]):
        info = {}
        stage1 = _identities(facelab.synth.clipset, lambda: info.update(vm.facesynth_pretrain(**s1['args'])[1]))
    assert info['subjects'] == s1['subjects'] and len(stage1) == 60 + 6      # 60 training + 6 held-out stage-1 people
    # no stage-1 person is a dataset person: every numeric trait differs for every pair
    vec = lambda idn: np.hstack([np.ravel(getattr(idn, f.name)) for f in fields(idn)]).astype(float)
    A, B = np.stack([vec(i) for i in stage1]), np.stack([vec(i) for i in people['study'] + people['report']])
    d = np.abs(A[:, None] - B[None]).max(-1)
    assert d.min() > 1e-3, d.min()
    assert not any(a == b for a in stage1 for b in people['study'] + people['report'])


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
    # the architecture is name + kwargs (the notebook builds it the same way; `weights` says where weights come from)
    with torch.device('meta'): m = build_model({'name': cfg.model.name, 'kwargs': cfg.model.kwargs.to_dict()})
    assert (m.cfg.num_frames, m.cfg.img_size, m.cfg.dim, m.cfg.depth, m.cfg.heads) == (16, 224, 768, 12, 12)
    assert (cfg.data.frames, cfg.data.size) == (16, 224)
    adapters = sum(p.numel() for n, p in m.named_parameters() if n.startswith('adapters.'))
    assert count_params(m) == 89_798_403 and adapters == 3_568_896        # 86.2M backbone (ANCHORS) + adapters + head
    assert count_params(m, trainable_only=True) == 3_572_739               # frozen backbone: adapters, fc_norm, head
