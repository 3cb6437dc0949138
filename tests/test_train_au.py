"""Issue 8, action units: nbs/32_train_au.ipynb run headless (papermill) on FaceSynth BP4D (and BP4D + DISFA jointly).

- the default run reaches the issue's target on unseen subjects: mean F1 >= 0.6 on test fold 0 (and a per-AU ROC AUC
  well above chance);
- stage 1 (FaceSynth AU pretraining) draws faces that are none of the FaceSynth BP4D / DISFA subjects;
- no test-fold subject reaches train or validation (checked against the loaders' folds, recomputed here);
- AUs a dataset does not label carry no loss, no gradient and no metric (the notebook's own loss and metric code);
- the full-size config builds with the official parameter count.

Runs use a private run folder and MLflow store but the shared FaceSynth cache (which also holds the stage-1 weights,
so the joint run, and a rerun after `nbdev-test`, reuse them).
"""
import json
import math
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from facelab.core import artifacts_root, load_config, DEPLOY_AUS, BP4D_AUS, DISFA_AUS, au_name

REPO = Path(__file__).resolve().parent.parent
SHARED_CACHE = artifacts_root()/'cache'   # resolved at import, before any per-test environment
COLS = [au_name(a) for a in DEPLOY_AUS]


def _run(tmp, name, params):
    from facelab.runs import run_notebook
    mp = pytest.MonkeyPatch()
    mp.setenv('FACELAB_ARTIFACTS', str(tmp/'artifacts'))
    mp.setenv('FACELAB_RUNS', str(tmp/'runs'))
    mp.setenv('FACELAB_MLFLOW_URI', f"sqlite:///{tmp/'mlflow.db'}")
    try: d = run_notebook('au', {'cache_dir': str(SHARED_CACHE), 'seed': 0, **params}, tmp/'runs'/name)
    finally: mp.undo()
    return {'dir': d, 'metrics': json.loads((d/'metrics.json').read_text()), 'split': json.loads((d/'split.json').read_text()),
            'pred': pd.read_parquet(d/'predictions.parquet')}


@pytest.fixture(scope='module')
def default_run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp('au'), 'bp4d_fold0', {'fold': 0})


@pytest.fixture(scope='module')
def joint_run(tmp_path_factory):
    "BP4D + DISFA trained jointly: a small config (6 subjects per dataset, 2 epochs): it checks masking, not learning."
    tmp = tmp_path_factory.mktemp('au_joint')
    cfg = yaml.safe_load((REPO/'configs'/'au_opengraphau_tiny.yaml').read_text())
    cfg['data']['synth']['subjects'] = 6
    cfg['train']['epochs'] = 2
    (tmp/'joint.yaml').write_text(yaml.safe_dump(cfg))
    return _run(tmp, 'joint_fold1', {'fold': 1, 'datasets': 'bp4d,disfa', 'config': str(tmp/'joint.yaml')})


def _index(names, subjects):
    "The loaders' folds for the FaceSynth data the notebook used, recomputed independently of the notebook."
    from facelab.train.run import facesynth_root
    from facelab.data.bp4d import load_bp4d
    from facelab.data.disfa import load_disfa
    cfg = load_config(REPO/'configs'/'au_opengraphau_tiny.yaml')
    kw = {**cfg.data.synth, 'subjects': subjects}
    root = facesynth_root(names, cache=SHARED_CACHE/'facesynth', **kw)
    load = {'bp4d': load_bp4d, 'disfa': load_disfa}
    return pd.concat([load[n](root/n, k=cfg.data.folds, seed=cfg.data.fold_seed) for n in names], ignore_index=True)


def assert_no_leakage(split, index, fold):
    "Every subject of test fold `fold` is in the test part and nowhere else; no sample or subject is in two parts."
    parts = ('train', 'valid', 'test')
    subj = {k: set(split[k]['subjects']) for k in parts}
    ids = {k: set(split[k]['sample_ids']) for k in parts}
    fold_subjects = set(index.subject[index.fold == fold])
    assert subj['test'] == fold_subjects, (sorted(subj['test']), sorted(fold_subjects))
    by_id = dict(zip(index.sample_id, index.subject))
    for k in parts: assert {by_id[i] for i in ids[k]} == subj[k], k   # the listed ids belong to the listed subjects
    for a, b in (('train', 'valid'), ('train', 'test'), ('valid', 'test')):
        assert not subj[a] & subj[b], (a, b, sorted(subj[a] & subj[b]))
        assert not ids[a] & ids[b], (a, b)
    assert ids['test'] == set(index.sample_id[index.fold == fold])


def test_default_run_learns(default_run):
    m, d = default_run['metrics'], default_run['dir']
    b = m['bp4d']
    print({k: b[k] for k in ('mean_f1', 'mean_auc', 'all_present_f1')}, 'train', m['train_seconds'], 's', 'stage 1', m['pretrain'])
    assert b['mean_auc'] >= 0.8, b           # chance is 0.5
    assert set(b['f1']) <= {au_name(a) for a in BP4D_AUS if a in DEPLOY_AUS} and len(b['f1']) >= 8, b['f1']
    assert m['pretrain']['images'] == m['pretrain']['identities'] > 0
    for f in ('predictions.parquet', 'split.json', 'model.pt', 'metrics.json', 'learning_curve.png', 'f1_per_au.png',
              'pr_bp4d.png', 'history.csv', 'notebook.ipynb'):
        assert (d/f).exists(), f
    h = pd.read_csv(d/'history.csv')
    assert len(h) == m['epochs_run'] and h.train_loss.iloc[-1] < h.train_loss.iloc[0]
    from facelab.train.save import load_model
    model = load_model(d/'model.pt')
    assert model.au_names == COLS and model.facelab_meta['run_id'] == m['run_id']


def test_default_run_reaches_target_f1(default_run):
    "The issue's target: mean F1 >= 0.6 over the BP4D AUs on the held-out subjects of test fold 0."
    m = default_run['metrics']
    assert m['fold'] == 0 and m['datasets'] == ['bp4d'] and m['synthetic']
    assert m['mean_f1'] >= 0.6, (m['mean_f1'], m['bp4d']['f1'])
    assert m['mean_f1'] > m['bp4d']['all_present_f1'] + 0.15, m['bp4d']   # well above 'always present'


def _notebook_cells(*tags) -> dict:
    "Execute the notebook cells tagged `tags` (in notebook order) in one namespace and return it."
    nb = nbformat.read(REPO/'nbs'/'32_train_au.ipynb', as_version=4)
    ns = {}
    exec('import json, time\nfrom pathlib import Path\nimport numpy as np, torch\n'
         'from fastai.vision.all import Transform, TensorImage\nfrom fastai.learner import Metric\n'
         'from facelab.core import DEPLOY_AUS\nfrom facelab.models.au_losses import AULoss, au_class_weights\n'
         'from facelab.evaluate import au_f1\n', ns)
    for t in tags:
        cells = [c for c in nb.cells if t in c.metadata.get('tags', [])]
        assert len(cells) == 1, t
        exec(cells[0].source, ns)
    return ns


def test_pretrain_faces_are_not_dataset_subjects():
    from facelab.synth.write_images import _rng, BP4D_SUBJECTS, DISFA_SUBJECTS
    from facelab.synth.face import sample_identity
    ns = _notebook_cells('au-helpers', 'au-pretrain')
    cfg = load_config(REPO/'configs'/'au_opengraphau_tiny.yaml')
    seed = cfg.data.synth.seed
    # the notebook regenerates the writers' subjects exactly: same generator construction, same identities
    for name, subjects in (('bp4d', BP4D_SUBJECTS), ('disfa', DISFA_SUBJECTS)):
        ids = ns['dataset_identities'](name, seed)
        assert len(ids) == len(subjects)
        assert ids == [sample_identity(_rng(seed, f'{name}-subject', i)) for i in range(len(subjects))]
    # every stage-1 face of the config differs from every BP4D and DISFA subject
    pre = [ns['pretrain_identity'](cfg.pretrain.seed, i) for i in range(cfg.pretrain.identities)]
    assert ns['check_pretrain_disjoint'](pre, ['bp4d', 'disfa'], seed) == len(BP4D_SUBJECTS) + len(DISFA_SUBJECTS)
    assert len({ns['dataclasses'].astuple(p) for p in pre}) == len(pre)      # and they are all different faces
    # the check catches a shared face
    with pytest.raises(ValueError, match='subjects of'):
        ns['check_pretrain_disjoint'](pre[:10] + [ns['dataset_identities']('bp4d', seed)[3]], ['bp4d'], seed)
    # stage-1 labels keep BP4D's meaning: present = rendered at intensity >= 1 (A or more)
    X, P, I = ns['facesynth_au_frames'](4, 2, 64, seed=cfg.pretrain.seed)
    assert X.shape == (8, 3, 64, 64) and X.dtype == torch.uint8 and P.shape == I.shape == (8, len(DEPLOY_AUS))
    assert torch.equal(P, (I >= 1).float()) and P.sum() > 0


def test_no_test_subject_in_train_or_valid(default_run):
    cfg = load_config(REPO/'configs'/'au_opengraphau_tiny.yaml')
    index = _index(['bp4d'], cfg.data.synth.subjects)
    split = default_run['split']
    assert_no_leakage(split, index, 0)
    assert set(default_run['pred'].sample_id) == set(split['test']['sample_ids'])
    # the check itself catches leakage: one test subject's frame slipped into train, a test subject in valid
    leak = json.loads(json.dumps(split))
    leak['train']['sample_ids'].append(split['test']['sample_ids'][0])
    with pytest.raises(AssertionError): assert_no_leakage(leak, index, 0)
    leak = json.loads(json.dumps(split))
    s = split['test']['subjects'][0]
    leak['valid']['subjects'].append(s); leak['valid']['sample_ids'] += list(index.sample_id[index.subject == s])
    with pytest.raises(AssertionError): assert_no_leakage(leak, index, 0)


def test_joint_run_masks_unlabelled_aus(joint_run):
    m, p, split = joint_run['metrics'], joint_run['pred'], joint_run['split']
    assert m['datasets'] == ['bp4d', 'disfa'] and set(p.dataset) == {'bp4d', 'disfa'}
    assert_no_leakage(split, _index(['bp4d', 'disfa'], 6), 1)
    # metrics: only AUs the test dataset labels; intensities only where labelled (DISFA)
    assert set(m['bp4d']['f1']) | set(m['bp4d']['aus_without_positives']) <= {au_name(a) for a in BP4D_AUS}
    assert set(m['disfa']['f1']) | set(m['disfa']['aus_without_positives']) <= {au_name(a) for a in DISFA_AUS}
    assert 'intensity' not in m['bp4d'] and 'mean_icc' not in m['bp4d']
    assert set(m['disfa']['intensity']) == {au_name(a) for a in DISFA_AUS}
    # predictions: unlabelled entries are NaN, never 0
    yt, it = np.stack(p.y_true), np.stack(p.intensity_true)
    bp = (p.dataset == 'bp4d').to_numpy()
    for j, a in enumerate(DEPLOY_AUS):
        assert np.isnan(yt[bp, j]).all() == (a not in BP4D_AUS), a
        assert np.isnan(yt[~bp, j]).all() == (a not in DISFA_AUS), a
    assert np.isnan(it[bp]).all()
    # the metrics do not read masked entries: scrambling the predictions there leaves every score unchanged
    from facelab.evaluate import au_f1
    pr = np.stack(p.y_pred)
    scr = np.where(np.isnan(yt), 1 - pr, pr)
    for d, rows in (('bp4d', bp), ('disfa', ~bp)):
        f, g = au_f1(yt[rows], pr[rows]), au_f1(yt[rows], scr[rows])
        np.testing.assert_array_equal(f, g)
        for a, v in m[d]['f1'].items(): assert math.isclose(v, f[COLS.index(a)], abs_tol=1e-9), (d, a)


def test_masked_aus_add_nothing_to_loss_or_metric():
    ns = _notebook_cells('au-helpers')
    torch.manual_seed(0)
    B, A = 8, len(DEPLOY_AUS)
    prob = torch.rand(B, A).clamp(.05, .95).requires_grad_(True); inten = (torch.rand(B, A) * 5).requires_grad_(True)
    P, I = (torch.rand(B, A) > .5).float(), torch.rand(B, A) * 5
    M = torch.ones(B, 2, A)
    bp = [DEPLOY_AUS.index(a) for a in BP4D_AUS if a in DEPLOY_AUS]
    M[:4, 0] = 0; M[:4, 0, bp] = 1; M[:4, 1] = 0          # rows 0-3 look like BP4D: presence of 11 AUs, no intensity
    crit = ns['MaskedAULoss'](torch.ones(A), intensity_weight=0.5)
    loss = crit((prob, inten), P, I, M); loss.backward()
    masked_p, masked_i = M[:, 0] == 0, M[:, 1] == 0
    assert (prob.grad[masked_p] == 0).all() and (prob.grad[~masked_p] != 0).all()
    assert (inten.grad[masked_i] == 0).all() and (inten.grad[~masked_i] != 0).any()
    # any label or prediction under the mask: same loss
    P2, I2 = torch.where(masked_p, 1 - P, P), torch.where(masked_i, 5 - I, I)
    with torch.no_grad():
        prob2 = torch.where(masked_p, 1 - prob, prob); inten2 = torch.where(masked_i, 5 - inten, inten)
        assert torch.allclose(crit((prob2, inten2), P2, I2, M), loss)
        # and the same as computing the loss over the labelled entries alone
        yp, yi = ns['masked_targets'](P, I, M)
        from facelab.models.au_losses import weighted_asymmetric_loss, masked_intensity_loss
        ref = weighted_asymmetric_loss(prob, yp, torch.ones(A)) + 0.5 * masked_intensity_loss(inten, yi, 'huber')
        assert torch.allclose(loss, ref)
    # the validation metric ignores masked entries too
    yt = yp.numpy()
    assert ns['mean_f1'](yt, prob.detach().numpy()) == ns['mean_f1'](yt, prob2.numpy())
    assert math.isnan(ns['mean_f1'](np.full((3, A), np.nan), np.ones((3, A))))


def test_full_config_builds():
    from facelab.train.save import build_model
    from facelab.models import count_params
    cfg = load_config(REPO/'configs'/'au_opengraphau.yaml')
    assert cfg.model.name == 'opengraphau_r50' and cfg.train.lr == 1e-5 and cfg.data.bs == 64 and cfg.train.epochs == 20
    torch.manual_seed(0)
    model = build_model(cfg.model)
    n = count_params(model)
    # the official ANFL ResNet-50 (32.22M, 27 AU nodes + 14 side outputs) with the 17 deploy AUs instead: 10 fewer
    # per-AU AFG layers (Linear 512x512 + BN), 24 fewer class vectors, plus facelab's intensity head (LN + 17 x 513)
    expected = 32.22e6 - 10 * (512 * 512 + 512 + 2 * 512) - 24 * 512 + (2 * 512 + 17 * 512 + 17)
    assert abs(n / expected - 1) < 0.005, (n, expected)
    assert model.au_names == COLS and (model.cfg.input_size, model.cfg.img_size) == (256, 224)
    with torch.no_grad(): p, i = model.eval()(torch.randn(1, 3, 256, 256))
    assert p.shape == i.shape == (1, 17)
    tiny = build_model(load_config(REPO/'configs'/'au_opengraphau_tiny.yaml').model)
    assert count_params(tiny) < 1e6 and tiny.au_names == COLS
