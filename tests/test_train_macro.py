"""nbs/31_train_macro.ipynb run headless (papermill) with its defaults on FaceSynth: AffectNet -> RAF-DB.

Checks that the chained run learned (RAF-DB test accuracy >= 0.8, chance 1/7), that the RAF-DB stage started from the
AffectNet stage's weights (checksums, and the saved AffectNet model), that no test image reached train or valid,
and that the full-size config builds POSTER++ with the official parameter count.
"""
import copy, hashlib, json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def weights_sha256(state_dict) -> str:
    "The notebook's checksum, recomputed independently: SHA-256 over the state_dict tensors in key order."
    h = hashlib.sha256()
    for k, v in state_dict.items():
        t = v.detach().cpu().contiguous()
        h.update(f'{k}|{t.dtype}|{tuple(t.shape)}|'.encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def assert_no_leakage(split:dict):
    "Every stage: train, valid and test disjoint (ids and subjects); test ids are the official test images only."
    for name, st in split['stages'].items():
        ids = {k: set(st[k]['sample_ids']) for k in ('train', 'valid', 'test')}
        subj = {k: set(st[k]['subjects']) for k in ids}
        assert ids['test'] and ids['train'] and ids['valid'], name
        for a, b in (('train', 'test'), ('valid', 'test'), ('train', 'valid')):
            assert not ids[a] & ids[b], f'{name}: {a} and {b} share {sorted(ids[a] & ids[b])[:3]}'
            assert not subj[a] & subj[b], f'{name}: {a} and {b} share subjects {sorted(subj[a] & subj[b])[:3]}'


@pytest.fixture(scope='module')
def macro_run(tmp_path_factory):
    from facelab.runs import run_notebook
    tmp = tmp_path_factory.mktemp('macro')
    # runs and tracking go to tmp; FACELAB_ARTIFACTS stays, so the FaceSynth and index caches are reused
    mp = pytest.MonkeyPatch()
    mp.setenv('FACELAB_RUNS', str(tmp/'runs'))
    mp.setenv('FACELAB_MLFLOW_URI', f"sqlite:///{tmp/'mlflow.db'}")
    try:
        d = run_notebook('macro', {}, tmp/'runs'/'default')
        yield d, json.loads((d/'metrics.json').read_text())
    finally:
        mp.undo()


def test_chained_run_learns(macro_run):
    d, m = macro_run
    assert m['synthetic'] and m['stages_run'] == ['affectnet', 'rafdb'] and m['final_stage'] == 'rafdb'
    assert m['accuracy'] >= 0.8, m['accuracy']                      # RAF-DB test set, chance 1/7
    assert m['stages']['rafdb']['test']['n'] == m['stages']['rafdb']['n']['test']
    assert set(m['per_class_f1']) == {'neutral', 'happiness', 'sadness', 'surprise', 'fear', 'disgust', 'anger'}
    for f in ('predictions.parquet', 'split.json', 'model.pt', 'model_affectnet.pt', 'metrics.json', 'learning_curve_rafdb.png',
              'learning_curve_affectnet.png', 'pr_rafdb.png', 'stages_rafdb_test_confusion.png', 'stages_affectnet_test_confusion.png'):
        assert (d/f).exists(), f
    import pandas as pd
    p = pd.read_parquet(d/'predictions.parquet')
    assert len(p) == m['stages']['rafdb']['n']['test'] and (p.dataset == 'rafdb').all()
    assert abs((p.y_true == p.y_pred).mean() - m['accuracy']) < 1e-9


def test_stage_two_starts_from_stage_one(macro_run):
    d, m = macro_run
    aff, raf = m['stages']['affectnet'], m['stages']['rafdb']
    assert m['chained'] and raf['init']['from'] == 'stage affectnet'
    assert raf['init']['sha256'] == aff['final_sha256'] != aff['init']['sha256']
    # the saved AffectNet weights are exactly what the RAF-DB stage started from
    saved = torch.load(d/'model_affectnet.pt', weights_only=True)
    assert weights_sha256(saved['state_dict']) == raf['init']['sha256']
    final = torch.load(d/'model.pt', weights_only=True)
    assert weights_sha256(final['state_dict']) == raf['final_sha256'] != raf['init']['sha256']


def test_test_split_never_in_train_or_valid(macro_run):
    d, m = macro_run
    split = json.loads((d/'split.json').read_text())
    assert split['subject_ids_known'] is False
    assert_no_leakage(split)
    import pandas as pd
    p = pd.read_parquet(d/'predictions.parquet')
    assert set(p.sample_id) == set(split['stages']['rafdb']['test']['sample_ids'])
    assert all(s.startswith('rafdb/test_') for s in p.sample_id)          # RAF-DB's official test images only
    assert all(len(split['stages'][n]['valid']['sample_ids']) == m['stages'][n]['n']['valid'] for n in split['stages'])
    # the check is not vacuous: one test image copied into train (or valid) is caught
    for part in ('train', 'valid'):
        bad = copy.deepcopy(split)
        leaked = bad['stages']['rafdb']['test']['sample_ids'][0]
        bad['stages']['rafdb'][part]['sample_ids'].append(leaked)
        with pytest.raises(AssertionError, match='share'): assert_no_leakage(bad)


def test_full_config_builds_official_poster():
    from facelab.core import load_config
    from facelab.models import count_params
    from facelab.train.save import build_model
    cfg = load_config(ROOT/'configs'/'macro_poster.yaml')
    assert cfg.model.name == 'poster_v2' and cfg.data.size == 224 and cfg.data.bs == 144
    assert cfg.train.sam_rho == 0.05 and cfg.train.schedule == 'exponential' and cfg.train.gamma == 0.98
    assert cfg.stages.rafdb.lr == 3.5e-5 and cfg.stages.affectnet.lr == 1e-6 and cfg.stages.affectnet.balanced_sampler
    with torch.device('meta'): model = build_model(cfg.model)
    n = count_params(model)
    assert abs(n - 43.75e6) < 0.01 * 43.75e6, n            # official POSTER++: 43.72M used in forward (thop, w/o 0.13M extras)
    assert model.cfg.img_size == 224 and model.cfg.inner_size == 112 and model.num_classes == 7
    tiny = load_config(ROOT/'configs'/'macro_poster_tiny.yaml')
    assert tiny.model.name == 'poster_v2_tiny' and tiny.data.size == 48
