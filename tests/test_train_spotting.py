"""Issue 8, spotting: nbs/33_train_spotting.ipynb run headless (papermill) on FaceSynth CAS(ME)3 Part A learns
(overall F1 >= 0.3 on the test fold, above the flow baseline), and no test video reaches training or fitting.

The run uses a private run folder and MLflow store, but the shared cache (FaceSynth data and flow features), so the
features `nbdev-test` computed are not computed again.
"""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from facelab.core import artifacts_root, load_config

REPO = Path(__file__).resolve().parent.parent
SHARED_CACHE = artifacts_root()/'cache'   # resolved at import, before any per-test environment
FULL_PARAMS = 140_294                     # spotting_tcn: 64 channels, 6 dilated blocks, 1 transformer layer, 70 features


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    from facelab.runs import run_notebook
    tmp = tmp_path_factory.mktemp('spotting')
    mp = pytest.MonkeyPatch()
    mp.setenv('FACELAB_ARTIFACTS', str(tmp/'artifacts'))
    mp.setenv('FACELAB_RUNS', str(tmp/'runs'))
    mp.setenv('FACELAB_MLFLOW_URI', f"sqlite:///{tmp/'mlflow.db'}")
    try:
        d = run_notebook('spotting', {'cache_dir': str(SHARED_CACHE), 'fold': 0, 'seed': 0}, tmp/'runs'/'fold0')
    finally:
        mp.undo()
    return {'dir': d, 'metrics': json.loads((d/'metrics.json').read_text()), 'split': json.loads((d/'split.json').read_text())}


@pytest.fixture(scope='module')
def index():
    "The FaceSynth CAS(ME)3 the notebook used, indexed here independently of the notebook."
    from facelab.train.run import facesynth_root
    from facelab.data.casme3 import load_casme3
    cfg = load_config(REPO/'configs'/'spotting_tiny.yaml')
    root = facesynth_root(['casme3'], cache=SHARED_CACHE/'facesynth', **cfg.data.synth)
    return load_casme3(root/'casme3'), cfg


def test_spotter_learns_on_held_out_subjects(run, index):
    df, _ = index
    m = run['metrics']
    print({k: round(m[k]['f1'], 3) for k in ('micro', 'macro', 'overall')}, 'baseline', round(m['baseline']['overall']['f1'], 3))
    test = df[df.sample_id.isin(run['split']['test']['videos'])]
    # every ground-truth interval of the test videos was scored (TP + FN), per kind
    for k in ('micro', 'macro'):
        assert m[k]['tp'] + m[k]['fn'] == int(test[f'n_{k}'].sum()), k
    assert m['overall']['f1'] >= 0.3, m['overall']
    assert m['overall']['f1'] > m['baseline']['overall']['f1'], (m['overall'], m['baseline']['overall'])
    for f in ('predictions.parquet', 'split.json', 'model.pt', 'metrics.json', 'learning_curve.png', 'timelines.png'):
        assert (run['dir']/f).exists(), f
    p = pd.read_parquet(run['dir']/'predictions.parquet')
    assert {'video', 'kind', 'onset', 'offset', 'score'} <= set(p.columns) and len(p)
    h = pd.read_csv(run['dir']/'history.csv')
    assert h.train_loss.iloc[-1] < 0.5 * h.train_loss.iloc[0]


def test_no_test_video_in_training_or_fitting(run, index):
    from facelab.data.index import subject_kfold
    df, cfg = index
    s = run['split']
    test = set(s['test']['videos'])
    # the test fold, recomputed here: subject-exclusive folds of the sorted, seeded subjects
    folds = subject_kfold(df, int(cfg.data.folds), int(cfg.data.fold_seed))
    assert s['grouping'] == 'subject'
    assert test == set(df.sample_id[folds == s['fold']])
    assert set(s['train']['videos']) | set(s['valid']['videos']) | test == set(df.sample_id)
    for part in ('train', 'valid'):
        assert not set(s[part]['videos']) & test
        assert not set(s[part]['subjects']) & set(s['test']['subjects'])
    for use, ids in s['used_for'].items():
        assert ids and not set(ids) & test, use
    assert set(s['used_for']['decoder']) == set(s['valid']['videos'])
    assert set(pd.read_parquet(run['dir']/'predictions.parquet').video) <= test


def _cached_features(vid):
    fs = sorted((SHARED_CACHE/'spotting').glob(f"casme3_{vid.replace('/', '_')}_*.npz"), key=lambda p: p.stat().st_mtime)
    assert fs, vid
    return np.load(fs[-1])['features']


def test_network_normalisation_saw_only_training_videos(run):
    "model.pt's input statistics are those of exactly the split's training videos: a leak of test videos would change them."
    from facelab.train.save import load_model
    net = load_model(run['dir']/'model.pt')
    s = run['split']
    tr = np.concatenate([_cached_features(v) for v in s['train']['videos']])
    np.testing.assert_allclose(net.feat_mean.numpy(), tr.mean(0), rtol=1e-4, atol=1e-5)
    leaky = np.concatenate([tr] + [_cached_features(v) for v in s['test']['videos']])
    assert not np.allclose(net.feat_mean.numpy(), leaky.mean(0), rtol=1e-4, atol=1e-5)
    assert net.facelab_meta['decoder'] == run['metrics']['decoder']


def test_full_config_builds():
    import torch
    from facelab.models import count_params
    from facelab.models.spotting_flow import FlowFeatureConfig, feature_names
    from facelab.train.save import build_model
    cfg = load_config(REPO/'configs'/'spotting.yaml')
    n = len(feature_names(FlowFeatureConfig(**cfg.features)))
    net = build_model({'name': cfg.model.name, 'kwargs': {**cfg.model.kwargs, 'n_features': n}}).eval()
    assert cfg.model.name == 'spotting_tcn' and n == 70
    assert net.cfg.receptive_field == 127 and net.cfg.n_attn_layers == 1 and net.cfg.hidden == 64
    assert count_params(net) == FULL_PARAMS, count_params(net)
    with torch.no_grad(): y = net(torch.zeros(1, net.cfg.window, n))
    assert y.shape == (1, 256, 6)

