"""Issue 15, pipeline: `facelab pipeline run --task macro` on FaceSynth RAF-DB batches dropped into an inbox.

Batch 1 trains the first model (promoted, deployed); batch 2 (more FaceSynth faces of other people) fine-tunes it
from the production weights and the better model is promoted; a corrupted batch is quarantined with reasons and
refused at the clean step with production unchanged; a state file records every step, and a finished cycle is not
run again.
"""
import json, os, shutil, sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
BATCH = {'n_train': 60, 'n_test': 6}     # FaceSynth RAF-DB images per class of one inbox batch
# tolerances for tiny models on the 140-face golden set (chance 1/7), as in tests/test_registry.py
GATES = dict(min_score=0.35, min_class=0.0, max_regression=0.02, min_agreement=0.3, max_class_drop=0.5, max_latency_ratio=5.0)


def make_batch(inbox: Path, name: str, seed: int, cache: Path, corrupt=False) -> Path:
    from facelab.train.run import facesynth_root
    src = facesynth_root(['rafdb'], seed=seed, writer_kw={'rafdb': BATCH}, cache=cache)
    dst = inbox/name
    shutil.copytree(src/'rafdb', dst/'rafdb')
    if corrupt:
        for p in dst.rglob('*'):
            if p.suffix.lower() in ('.jpg', '.png', '.jpeg'): p.write_bytes(b'not an image')
    (dst/'READY').write_text('')
    return dst


def settings_file(tmp: Path) -> Path:
    import yaml
    p = tmp/'pipeline.yaml'
    p.write_text(yaml.safe_dump({'train': {'epochs': 8}, 'min_test_score': 0.25, 'gates': GATES}))
    return p


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('pipeline')
    mp = pytest.MonkeyPatch()
    for k, v in {'FACELAB_RUNS': str(tmp/'runs'), 'FACELAB_MLFLOW_URI': f"sqlite:///{tmp/'mlflow.db'}",
                 'FACELAB_PIPELINE': str(tmp/'work'), 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg',
                 'MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR': 'false', 'PATH': f"{BIN}:{os.environ.get('PATH', '')}"}.items():
        mp.setenv(k, v)
    yield tmp
    mp.undo()


def cli(capsys, *args):
    "`facelab ARGS` through the console script's `main` (with `pipeline` registered, in case cli.py does not list it yet)."
    from unittest import mock
    from facelab.cli import main
    capsys.readouterr()
    try:
        with mock.patch.dict('facelab.cli.SUBCOMMAND_MODULES', {'pipeline': 'facelab.pipeline'}): rc = main([str(a) for a in args])
    except SystemExit as e: rc = e.code
    o = capsys.readouterr()
    return rc, o.out, o.err


def test_pipeline_macro(env, capsys):
    from facelab import registry as R
    from facelab.pipeline import State
    tmp, inbox, work = env, env/'work'/'inbox', env/'work'
    cfg = settings_file(tmp)
    make_batch(inbox, 'b1', 1, tmp/'fs')
    rc, out, err = cli(capsys, 'pipeline', 'run', '--task', 'macro', '--config', cfg)
    assert rc == 0, out + err
    v1 = R.describe('macro')
    assert v1['version'] == 1 and (work/'deploy'/'macro.onnx').exists(), out
    assert json.loads((work/'deploy'/'macro.registry.json').read_text())['version'] == 1
    st = State(work, 'macro').cycle
    assert st['status'] == 'done' and [s['status'] for s in st['steps'].values()] == ['done'] * 9
    assert st['steps']['train']['out']['pretrained'] is None      # nothing in production yet: from the config init
    score1 = st['steps']['gate']['out']['score']
    # nothing new: nothing runs
    rc, out, _ = cli(capsys, 'pipeline', 'run', '--task', 'macro', '--config', cfg)
    assert rc == 0 and 'no new batch' in out

    # batch 2: new faces; fine-tuned from production's weights, better on the golden set, promoted and deployed
    make_batch(inbox, 'b2', 2, tmp/'fs')
    rc, out, err = cli(capsys, 'pipeline', 'run', '--task', 'macro', '--config', cfg)
    assert rc == 0, out + err
    st = State(work, 'macro').cycle
    assert st['batches'] == ['b2'] and st['production_before'] == 1
    assert st['steps']['train']['out']['pretrained'].endswith('v1/model.pt')
    m = json.loads((Path(st['steps']['train']['out']['run_dir'])/'metrics.json').read_text())
    assert m['stages']['rafdb']['init']['from'].endswith('v1/model.pt')      # the notebook started from production
    assert st['steps']['gate']['out']['score'] > score1, (st['steps']['gate'], score1)
    assert R.describe('macro')['version'] == 2 and R.describe('macro', 2)['parent_version'] == 1
    assert json.loads((work/'deploy'/'macro.registry.json').read_text())['version'] == 2

    # a corrupted batch: every image quarantined with its reason; refused at `clean`; production and deploy unchanged
    before = (work/'deploy'/'macro.onnx').read_bytes()
    make_batch(inbox, 'b3', 3, tmp/'fs', corrupt=True)
    rc, out, err = cli(capsys, 'pipeline', 'run', '--task', 'macro', '--config', cfg)
    assert rc == 1, out + err
    st = State(work, 'macro').cycle
    assert st['status'] == 'refused' and st['failed_step'] == 'clean', st
    assert "refused at step 'clean'; production unchanged (v2)" in out and 'no usable sample' in out, out
    q = Path(st['error'].split('list: ')[1].rstrip(')'))
    import pandas as pd
    qd = pd.read_csv(q)
    assert len(qd) == 7 * (BATCH['n_train'] + BATCH['n_test']) and set(qd.reason) == {'corrupt: not a decodable image'}, qd.head()
    assert R.describe('macro')['version'] == 2 and (work/'deploy'/'macro.onnx').read_bytes() == before
    assert not st['steps'].get('train')
