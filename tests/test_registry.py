"""The model registry (facelab.registry) and release gates (facelab.gates) on FaceSynth data and tiny trained models.

Three POSTER++-tiny macro models are trained in-process on FaceSynth faces (48 px): A, B (A trained further on more
faces: better) and S (trained on shuffled labels). The gate must promote A and then B, refuse S and leave production
alone; rollback, atomic deploy (SIGKILL and an injected fault mid-deploy), concurrent registration (4 processes,
sqlite) and registration through a local `mlflow server` are checked on the same registry code. Two concurrent
promotions of one task are serialised. The micro (MEGC3 clips), spotting (long videos) and AU golden-set gates are
checked with tiny models trained in-process: the trained one passes, the one trained on shuffled labels is refused.
"""
import copy, json, os, signal, socket, subprocess, sys, textwrap, time
from pathlib import Path

import numpy as np
import pytest
import torch

BIN = Path(sys.executable).parent
# tolerances for tiny models on a 140-face golden set (chance 1/7 per class); latency is loose because the CI
# machine is shared and the three models have the same architecture
GATES = dict(min_score=0.35, min_class=0.1, max_regression=0.02, min_agreement=0.5, max_class_drop=0.25, max_latency_ratio=5.0)


def env_for(tmp):
    return {**os.environ, 'OMP_NUM_THREADS': '1', 'FACELAB_ARTIFACTS': str(tmp/'artifacts'), 'FACELAB_DATA': str(tmp/'data'),
            'FACELAB_MLFLOW_URI': '', 'MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR': 'false'}


def facelab(env, *args, timeout=600):
    "`facelab ARGS` as a user runs it (a subprocess; slow to start: used once per behaviour that needs a new process)."
    return subprocess.run([str(BIN/'facelab'), *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)


class Out:
    def __init__(self, rc, out, err): self.returncode, self.stdout, self.stderr = rc, out, err


def cli(capsys, *args):
    "`facelab ARGS` through the console script's `main`, in this process (same parser and error handling)."
    from facelab.cli import main
    capsys.readouterr()
    try: rc = main([str(a) for a in args])
    except SystemExit as e: rc = e.code
    o = capsys.readouterr()
    return Out(rc, o.out, o.err)


@pytest.fixture(scope='module')
def store(tmp_path_factory):
    "A private registry (sqlite under FACELAB_ARTIFACTS) and data root for this module."
    tmp = tmp_path_factory.mktemp('registry')
    mp = pytest.MonkeyPatch()
    for k, v in env_for(tmp).items():
        if k.startswith(('FACELAB', 'MLFLOW', 'OMP')): mp.setenv(k, v)
    mp.delenv('FACELAB_MLFLOW_URI')
    try: yield tmp
    finally: mp.undo()


@pytest.fixture(scope='module')
def models(store):
    "ONNX files of A (trained), B (A trained further: better), S (shuffled labels), plus A's checkpoint."
    from facelab.export_quant import facesynth_labelled, train_briefly, xavier_fusion
    from facelab.models import create_model
    from facelab.export import to_onnx
    from facelab.train.save import save_model, model_config
    torch.set_num_threads(1)
    X, y = facesynth_labelled('macro', 350, 48, seed=0)
    torch.manual_seed(0)
    A = train_briefly(xavier_fusion(create_model('poster_v2_tiny')), 'macro', X, y, epochs=8)
    X2, y2 = facesynth_labelled('macro', 350, 48, seed=3)
    B = train_briefly(copy.deepcopy(A), 'macro', np.concatenate([X, X2]), np.concatenate([y, y2]), epochs=4, lr=5e-4)
    torch.manual_seed(0)
    S = train_briefly(xavier_fusion(create_model('poster_v2_tiny')), 'macro', X, np.random.default_rng(5).permutation(y), epochs=3)
    out = {k: to_onnx(m, 'macro', store/f'{k}.onnx', input_shape=(1, 3, 48, 48), n_parity=2, run_id=f'run-{k}').path
           for k, m in dict(A=A, B=B, S=S).items()}
    out['A.pt'] = save_model(A, store/'A.pt', config=model_config('poster_v2_tiny'), meta={'task': 'macro', 'run_id': 'run-A'})
    return out


def test_gate_promotes_better_refuses_shuffled_and_rolls_back(store, models, capsys):
    from facelab import registry as R
    from facelab.export import file_sha256
    env = env_for(store)
    (store/'gates.yaml').write_text(json.dumps(GATES))
    v1 = R.register('macro', models['A'], checkpoint=models['A.pt'], metrics={'accuracy': 0.6}, config={'model': 'poster_v2_tiny'},
                    data_index_hash='abc123')
    assert v1['version'] == 1 and v1['aliases'] == ['staging'] and v1['parent_version'] is None
    assert v1['files']['macro.onnx'] == file_sha256(models['A']) and v1['files']['model.pt'] == file_sha256(models['A.pt'])
    assert v1['data_index_sha256'] == 'abc123' and len(v1['git_rev']) >= 40 and v1['metrics'] == {'accuracy': 0.6}
    r = R.promote('macro', 1, thresholds=GATES)
    assert r['gate']['passed'] and r['previous'] is None and R.describe('macro')['version'] == 1
    # B: registered while A is in production (so A is its parent), better on the golden set, promoted
    v2 = R.register('macro', models['B'])
    assert v2['version'] == 2 and v2['parent_version'] == 1
    r = R.promote('macro', 2, thresholds=GATES)
    g = r['gate']
    assert g['passed'], g['reasons']
    assert g['candidate']['score'] > g['production']['score'], (g['candidate'], g['production'])
    assert R.describe('macro')['version'] == 2 and R.describe('macro', 2)['gate'] == 'passed'
    # the report went into the version
    import mlflow
    arts = {a.path for a in R.registry_client().list_artifacts(v2['run_id'], 'gates')}
    assert arts == {'gates/gate.json', 'gates/gate.png'}
    # S (shuffled labels): refused with reasons through the command; production unchanged
    assert R.register('macro', models['S'])['version'] == 3
    p = cli(capsys, 'registry', 'promote', '--task', 'macro', '--version', 3, '--gates', store/'gates.yaml')
    assert p.returncode == 3, (p.stdout, p.stderr)
    assert 'facelab-macro v3 refused; production stays v2' in p.stderr and 'golden accuracy' in p.stderr, p.stderr
    assert 'vs production' in p.stderr and 'prediction agreement' in p.stderr, p.stderr
    assert R.describe('macro')['version'] == 2 and R.describe('macro', 3)['gate'] == 'failed'
    with pytest.raises(R.GateRefused): R.promote('macro', 3, thresholds=GATES)
    assert R.describe('macro')['version'] == 2
    # rollback: one command, says which
    p = facelab(env, 'registry', 'rollback', '--task', 'macro')
    assert p.returncode == 0 and 'production rolled back from v2 to v1' in p.stdout, (p.stdout, p.stderr)
    assert R.describe('macro')['version'] == 1
    # --force is possible and recorded; a rollback undoes it
    p = cli(capsys, 'registry', 'promote', '--task', 'macro', '--version', 3, '--force', '--gates', store/'gates.yaml')
    assert p.returncode == 0 and 'FORCED' in p.stdout, (p.stdout, p.stderr)
    v3 = R.describe('macro')
    assert v3['version'] == 3 and v3['forced'] and v3['tags']['facelab.forced'] == 'true'
    assert R.rollback('macro') == {'name': 'facelab-macro', 'from': 3, 'to': 1}
    with pytest.raises(ValueError, match='first production version'): R.rollback('macro')
    p = cli(capsys, 'registry', 'list', '--task', 'macro')
    assert p.returncode == 0 and 'v1' in p.stdout and 'production' in p.stdout and 'FORCED' in p.stdout, p.stdout
    p = cli(capsys, 'registry', 'show', '--task', 'macro')
    assert p.returncode == 0 and json.loads(p.stdout)['version'] == 1


DEPLOY_KILL = textwrap.dedent('''
    import os, signal, sys
    from facelab.registry import deploy
    def die(staged):
        assert all(p.stat().st_size > 0 for p in staged.values())
        os.kill(os.getpid(), signal.SIGKILL)
    deploy('macro', sys.argv[1], version=int(sys.argv[2]), before_rename=die)
''')


def test_deploy_is_atomic(store, models):
    from facelab import registry as R
    from facelab.export import file_sha256
    from facelab.predict import OnnxPredictor
    if not R.list_versions('macro'):  # run alone: register two versions
        R.register('macro', models['A']); R.register('macro', models['B'])
    d = store/'engine'
    r = R.deploy('macro', d, version=1)
    assert sorted(p.name for p in d.iterdir()) == ['.deploy.lock', 'engine.json', 'macro.onnx', 'macro.registry.json']
    assert file_sha256(d/'macro.onnx') == file_sha256(models['A'])
    cfg = json.loads((d/'engine.json').read_text())
    assert cfg['models']['macro'] == {'path': 'macro.onnx', 'sha256': file_sha256(models['A'])}
    assert json.loads((d/'macro.registry.json').read_text())['version'] == 1 and r['version'] == 1
    assert OnnxPredictor(d/'macro.onnx').task == 'macro'
    files = lambda: {p.name: p.read_bytes() for p in d.iterdir() if not p.name.startswith('.')}
    before = files()
    # a process SIGKILLed after writing the new files, before renaming them: the old files stay
    p = subprocess.run([sys.executable, '-c', DEPLOY_KILL, str(d), '2'], env=env_for(store), capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert files() == before
    assert any(p.name.endswith('.tmp') for p in d.iterdir())      # the killed process's temporary files
    # a fault injected between the writes and the renames: old files intact, temporary files removed
    def fault(staged): raise OSError('disk full (injected)')
    with pytest.raises(OSError, match='injected'): R.deploy('macro', d, version=2, before_rename=fault)
    assert files() == before and sorted(p.name for p in d.iterdir() if p.name.startswith('.')) == ['.deploy.lock']
    # the next deploy cleans up and switches every file
    p = facelab(env_for(store), 'registry', 'deploy', '--task', 'macro', '--model-dir', d, '--version', 2)
    assert p.returncode == 0 and 'deployed facelab-macro v2' in p.stdout, (p.stdout, p.stderr)
    assert sorted(p.name for p in d.iterdir()) == ['.deploy.lock', 'engine.json', 'macro.onnx', 'macro.registry.json']
    assert file_sha256(d/'macro.onnx') == file_sha256(models['B'])
    assert json.loads((d/'engine.json').read_text())['models']['macro']['sha256'] == file_sha256(models['B'])


REGISTER = textwrap.dedent('''
    import sys
    from facelab.registry import register
    for i in range(2): print(register('macro', sys.argv[1], metrics={'worker': int(sys.argv[2]), 'i': i})['version'], flush=True)
''')


def test_concurrent_registration_is_gap_free(tmp_path, models):
    "4 processes on a fresh sqlite store, 2 versions each: versions 1..8, each once, each holding its own files."
    env = env_for(tmp_path)
    procs = [subprocess.Popen([sys.executable, '-c', REGISTER, str(models['A']), str(w)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for w in range(4)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    got = sorted(int(v) for o in outs for v in o[0].split())
    assert got == list(range(1, 9)), got
    import mlflow
    c = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path/'artifacts'/'mlflow.db'}")
    vs = c.search_model_versions("name='facelab-macro'")
    assert sorted(int(v.version) for v in vs) == list(range(1, 9)) and len({v.run_id for v in vs}) == 8
    assert sorted((json.loads(v.tags['facelab.metrics'])['worker'], json.loads(v.tags['facelab.metrics'])['i']) for v in vs) == \
           [(w, i) for w in range(4) for i in range(2)]


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def test_register_through_mlflow_server(tmp_path, models, capsys, monkeypatch):
    "A local `mlflow server` (sqlite backend, proxied artefacts) on 127.0.0.1: register, promote --force, download."
    port = free_port()
    srv = subprocess.Popen([str(BIN/'mlflow'), 'server', '--backend-store-uri', f"sqlite:///{tmp_path/'server.db'}",
                            '--artifacts-destination', str(tmp_path/'server-artifacts'), '--host', '127.0.0.1',
                            '--port', str(port), '--workers', '1'],
                           stdout=subprocess.DEVNULL, stderr=open(tmp_path/'server.log', 'w'), start_new_session=True)
    try:
        import urllib.request
        for _ in range(240):
            try:
                if urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=2).status == 200: break
            except OSError: time.sleep(0.5)
        else: pytest.fail(f"mlflow server did not start: {(tmp_path/'server.log').read_text()[-2000:]}")
        env = {**env_for(tmp_path), 'FACELAB_MLFLOW_URI': f'http://127.0.0.1:{port}'}
        p = facelab(env, 'registry', 'register', '--task', 'macro', '--onnx', models['A'])     # a user's process
        monkeypatch.setenv('FACELAB_MLFLOW_URI', env['FACELAB_MLFLOW_URI']); monkeypatch.setenv('FACELAB_ARTIFACTS', str(tmp_path/'artifacts'))
        assert p.returncode == 0 and 'registered facelab-macro v1' in p.stdout, (p.stdout, p.stderr)
        p = cli(capsys, 'registry', 'register', '--task', 'macro', '--onnx', models['B'])
        assert p.returncode == 0 and 'registered facelab-macro v2' in p.stdout, (p.stdout, p.stderr)
        p = cli(capsys, 'registry', 'show', '--task', 'macro', '--alias', 'staging')
        v = json.loads(p.stdout)
        assert v['version'] == 2 and v['source'].startswith('mlflow-artifacts:'), v
        from facelab import registry as R
        from facelab.export import file_sha256
        uri = env['FACELAB_MLFLOW_URI']
        assert file_sha256(R.download('macro', 2, tmp_path/'dl', uri=uri)/'macro.onnx') == file_sha256(models['B'])
        assert not (tmp_path/'artifacts'/'mlflow.db').exists()     # nothing went to the local default store
    finally:
        os.killpg(srv.pid, signal.SIGTERM)
        try: srv.wait(timeout=30)
        except subprocess.TimeoutExpired: os.killpg(srv.pid, signal.SIGKILL); srv.wait()


def test_names_and_paths_that_escape_are_refused(store, models, capsys):
    from facelab import registry as R
    with pytest.raises(ValueError, match="unknown task '../macro'"): R.register('../macro', models['A'])
    for bad in ('../evil', 'a/b', '..'):
        with pytest.raises(ValueError, match='refused'): R.check_name(bad)
    with pytest.raises(ValueError, match='refused'): R.describe('macro', alias='../production')
    p = cli(capsys, 'registry', 'show', '--task', '../../etc')
    assert p.returncode != 0 and 'invalid choice' in p.stderr
    # a version whose file list (from the store) names a path outside the download folder is refused
    v = R.register('macro', models['A'], stage=False)['version']
    import mlflow
    files = json.loads(R.registry_client().get_model_version('facelab-macro', str(v)).tags['facelab.files'])
    files['../../outside.onnx'] = 'x'
    R.registry_client().set_model_version_tag('facelab-macro', str(v), 'facelab.files', json.dumps(files))
    with pytest.raises(ValueError, match="'../../outside.onnx' escapes its folder"): R.download('macro', v, store/'dl-escape')
    assert not (store/'outside.onnx').exists()
    # an ONNX file for another task cannot be registered as this task's model
    with pytest.raises(ValueError, match="its metadata says task 'macro', not 'au'"): R.register('au', models['A'])


def test_corrupt_weights_are_refused_on_register(store, models, tmp_path):
    "An ONNX file whose weights no longer match the hash in its metadata is refused, naming the file."
    import onnx
    from onnx import numpy_helper
    from facelab import registry as R
    proto = onnx.load(str(models['A']))
    init = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
    w = numpy_helper.to_array(init).copy(); w.flat[0] += 1.0
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    bad = tmp_path/'tampered.onnx'; onnx.save(proto, str(bad))
    n = len(R.list_versions('macro'))
    with pytest.raises(ValueError, match=f"{bad}: weights do not match"): R.register('macro', bad)
    assert len(R.list_versions('macro')) == n


def test_register_a_training_run_folder(store, models, capsys):
    "`facelab registry register --run`: a TrainRun folder with its checkpoint and exported model becomes a version."
    import shutil
    import pandas as pd
    from facelab import registry as R
    from facelab.export import file_sha256
    from facelab.train.run import TrainRun
    run = TrainRun('macro', store/'runs'/'run-A', config={'model': {'name': 'poster_v2_tiny'}, 'train': {'epochs': 8}})
    run.finish({'accuracy': 0.61, 'per_class_f1': {'neutral': 0.5}})
    shutil.copyfile(models['A.pt'], run.dir/'model.pt'); shutil.copyfile(models['A'], run.dir/'macro.onnx')
    idx = store/'index.parquet'; pd.DataFrame({'sample_id': ['a', 'b'], 'label': [0, 1]}).to_parquet(idx)
    p = cli(capsys, 'registry', 'register', '--task', 'macro', '--run', run.dir, '--data-index', idx)
    assert p.returncode == 0 and 'registered facelab-macro v' in p.stdout, (p.stdout, p.stderr)
    v = R.describe('macro', alias='staging')
    assert v['data_index_sha256'] == file_sha256(idx) and v['tags']['facelab.source'] == str(run.dir.absolute())
    assert v['metrics']['accuracy'] == 0.61 and v['metrics']['per_class_f1.neutral'] == 0.5
    assert {'macro.onnx', 'model.pt', 'report.json', 'config.yaml', 'metrics.json'} <= set(v['files'])
    assert v['files']['model.pt'] == file_sha256(models['A.pt'])
    # a folder that is not a finished run, or a run of another task, is refused with the folder named
    p = cli(capsys, 'registry', 'register', '--task', 'macro', '--run', store/'runs')
    assert p.returncode == 2 and f"{store/'runs'}: not a finished run folder" in p.stderr, p.stderr
    p = cli(capsys, 'registry', 'register', '--task', 'au', '--run', run.dir)
    assert p.returncode == 2 and "a 'macro' run, not 'au'" in p.stderr, p.stderr


def test_bad_gate_settings_are_refused(store, capsys):
    (store/'bad_gates.yaml').write_text('min_score: high\n')
    p = cli(capsys, 'registry', 'promote', '--task', 'macro', '--version', 1, '--gates', store/'bad_gates.yaml')
    assert p.returncode == 2 and f"{store/'bad_gates.yaml'}: gate settings must map names to numbers (not: ['min_score'])" in p.stderr, p.stderr
    (store/'bad_gates.yaml').write_text('- 1\n- 2\n')
    p = cli(capsys, 'registry', 'promote', '--task', 'macro', '--version', 1, '--gates', store/'bad_gates.yaml')
    assert p.returncode == 2 and 'gate settings must map names to numbers' in p.stderr, p.stderr


PROMOTE = textwrap.dedent('''
    import json, sys
    from facelab.registry import promote
    r = promote('macro', int(sys.argv[1]), thresholds=json.loads(sys.argv[2]))
    print(json.dumps({'version': r['version'], 'previous': r['previous'], 'passed': r['gate']['passed']}), flush=True)
''')


def test_concurrent_promotions_are_serialised(tmp_path, models):
    "Two processes promoting v2 and v3 at once: the lock makes the second gate against (and follow) the first's result."
    from facelab import registry as R
    env = env_for(tmp_path)
    mp = pytest.MonkeyPatch()
    for k in ('FACELAB_ARTIFACTS', 'FACELAB_DATA'): mp.setenv(k, env[k])
    try:
        for m in ('A', 'B', 'B'): R.register('macro', models[m])
        R.promote('macro', 1, thresholds=GATES)
        # the golden set exists now, so both workers go straight to their gates
        procs = [subprocess.Popen([sys.executable, '-c', PROMOTE, str(v), json.dumps(GATES)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for v in (2, 3)]
        outs = [p.communicate(timeout=600) for p in procs]
        assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
        res = sorted((json.loads(o[0]) for o in outs), key=lambda r: r['previous'])
        # unserialised, both would gate against v1 and report previous=1; serialised, the later one follows the earlier
        assert res[0]['previous'] == 1 and res[1]['previous'] == res[0]['version'], res
        assert all(r['passed'] for r in res)
        assert R.describe('macro')['version'] == res[1]['version']
        assert R._history(R.registry_client(), 'facelab-macro') == [1, res[0]['version'], res[1]['version']]
        # a promotion waits while another holds the task's lock
        with R.promote_lock('macro'):
            p = subprocess.Popen([sys.executable, '-c', 'from facelab.registry import rollback; print(rollback("macro"))'],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            with pytest.raises(subprocess.TimeoutExpired): p.wait(timeout=15)
            assert R.describe('macro')['version'] == res[1]['version']
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and f"'to': {res[0]['version']}" in out, (out, err)
    finally: mp.undo()


# tolerances for tiny video models on the small golden sets (chance: UF1 ~1/3; spotting recall ~0)
MICRO_GATES = dict(min_score=0.5, min_class=0.3, max_regression=0.02, min_agreement=0.8, max_class_drop=0.1, max_latency_ratio=5.0)
SPOT_GATES = dict(min_score=0.4, min_class=0.25, max_regression=0.05, min_agreement=0.7, max_class_drop=0.15, max_latency_ratio=5.0)


class TinyMicro(torch.nn.Module):
    "Apex-minus-onset frame difference through a 3-layer CNN: learns FaceSynth's MEGC3 micro-expressions in seconds."
    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.c = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                               nn.MaxPool2d(2), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(32, 3))
    def forward(self, x): return self.c(4 * (x[:, x.shape[1] // 2:].mean(1) - x[:, 0]))


def train_micro(X, y, epochs=40):
    import torch.nn.functional as F
    torch.manual_seed(0)
    m = TinyMicro(); opt = torch.optim.AdamW(m.parameters(), 3e-3, weight_decay=1e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(X))
        for i in range(0, len(X), 16):
            idx = perm[i:i + 16]; xb = X[idx]
            if torch.rand(1) < 0.5: xb = xb.flip(-1)
            loss = F.cross_entropy(m(xb), y[idx]); opt.zero_grad(); loss.backward(); opt.step()
    return m.eval()


def test_micro_gate_promotes_trained_refuses_shuffled(tmp_path, capsys):
    "MEGC3 micro clips: a tiny model trained on other FaceSynth people is promoted; one trained on shuffled labels is refused."
    import torch.nn.functional as F
    from facelab.core import MEGC3
    from facelab.synth.clipset import expression_clips
    from facelab.export import to_onnx
    from facelab import registry as R
    from facelab.gates import golden_set
    torch.set_num_threads(1)
    env = env_for(tmp_path)
    mp = pytest.MonkeyPatch()
    for k in ('FACELAB_ARTIFACTS', 'FACELAB_DATA'): mp.setenv(k, env[k])
    try:
        cs = expression_clips('micro', MEGC3, subjects=12, per_class=4, seed=500, n_frames=8, render=96, size=64)
        g = golden_set('micro')
        import pandas as pd
        assert not set(cs.subjects) & set(pd.read_csv(g['dir']/'labels.csv').subject)   # other people
        X = F.avg_pool3d(cs.tensor().transpose(1, 2), (1, 2, 2)).transpose(1, 2).contiguous()   # 32 px
        y = torch.from_numpy(cs.labels)
        good = to_onnx(train_micro(X, y), 'micro', tmp_path/'good.onnx', input_shape=(1, 8, 3, 32, 32), n_parity=2).path
        shuf = to_onnx(train_micro(X, y[torch.from_numpy(np.random.default_rng(5).permutation(len(y)))]), 'micro',
                       tmp_path/'shuf.onnx', input_shape=(1, 8, 3, 32, 32), n_parity=2).path
        assert R.register('micro', good)['version'] == 1 and R.register('micro', shuf)['version'] == 2
        r = R.promote('micro', 1, thresholds=MICRO_GATES)
        assert r['gate']['passed'] and r['gate']['candidate']['score_name'] == 'uf1', r['gate']['reasons']
        assert r['gate']['candidate']['score'] >= 0.5 and set(r['gate']['candidate']['per_class']) == set(MEGC3)
        (tmp_path/'gates.yaml').write_text(json.dumps(MICRO_GATES))
        p = cli(capsys, 'registry', 'promote', '--task', 'micro', '--version', 2, '--gates', tmp_path/'gates.yaml')
        assert p.returncode == 3 and 'facelab-micro v2 refused; production stays v1' in p.stderr, (p.stdout, p.stderr)
        assert 'golden uf1' in p.stderr and 'uf1' in p.stderr and 'vs production' in p.stderr, p.stderr
        assert R.describe('micro')['version'] == 1 and R.describe('micro', 2)['gate'] == 'failed'
        arts = {a.path for a in R.registry_client().list_artifacts(R.describe('micro', 2)['run_id'], 'gates')}
        assert arts == {'gates/gate.json', 'gates/gate.png'}
    finally: mp.undo()


def test_spotting_gate_passes_trained_refuses_shuffled(tmp_path):
    "Spotting recall on the golden long videos: a trained tiny spotter passes; one trained on other videos' intervals is refused."
    from facelab.models.spotting import spotting_experiment, export_onnx
    from facelab.models.spotting_flow import synth_spotting_video
    from facelab.gates import check_candidate, golden_set
    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch(); mp.setenv('FACELAB_DATA', str(tmp_path/'data'))
    try:
        V = dict(seconds=12, size=96, n_micro=2, n_macro=1, n_distractors=2)
        g = golden_set('spotting')
        seeds = range(100, 112)
        assert not set(seeds) & set(range(g['manifest']['seed'], g['manifest']['seed'] + g['manifest']['n']))   # other videos
        tr = [synth_spotting_video(s, cache_dir=tmp_path/'cache', **V) for s in seeds]
        held = [synth_spotting_video(200, cache_dir=tmp_path/'cache', **V)]
        res = spotting_experiment(tr, held, steps=250, progress=False)
        good = export_onnx(res['model'], tmp_path/'good.onnx')          # the default (MEGC-length) decoder
        shuf = [dict(v, events=tr[(i + 1) % len(tr)]['events']) for i, v in enumerate(tr)]   # each video with another's intervals
        bad = export_onnx(spotting_experiment(shuf, held, steps=100, progress=False)['model'], tmp_path/'bad.onnx')
        r = check_candidate('spotting', good, None, tmp_path/'g1', thresholds=SPOT_GATES)
        assert r['passed'] and r['candidate']['score_name'] == 'spotting_recall', r['reasons']
        assert set(r['candidate']['per_class']) == {'micro', 'macro'} and r['golden']['n'] == 6
        r = check_candidate('spotting', bad, good, tmp_path/'g2', thresholds=SPOT_GATES)
        assert not r['passed'] and any('golden spotting_recall' in x for x in r['reasons']), r['reasons']
        assert any('vs production' in x for x in r['reasons']) and r['dual_track']['agreement'] < 0.7, r['reasons']
        assert sorted(p.name for p in (tmp_path/'g2').iterdir()) == ['gate.json', 'gate.png']
        assert json.loads((tmp_path/'g2'/'gate.json').read_text())['passed'] is False
    finally: mp.undo()


def test_au_gate_passes_trained_refuses_shuffled(tmp_path):
    "The AU golden-set gate with a TRAINED tiny AU model (the int8 check's recipe) passes; one trained on shuffled labels is refused."
    from facelab.export_quant import facesynth_labelled, train_briefly, INT8_MODELS, chance_score
    from facelab.models import create_model
    from facelab.export import to_onnx
    from facelab.gates import check_candidate, GATE_DEFAULTS
    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch(); mp.setenv('FACELAB_DATA', str(tmp_path/'data'))
    try:
        name, kw, size, tkw = INT8_MODELS['au']
        X, y = facesynth_labelled('au', 700, size, seed=0)          # other people than the golden set (seed 9002)
        torch.manual_seed(0)
        good = to_onnx(train_briefly(create_model(name, **kw), 'au', X, y, **tkw), 'au', tmp_path/'good.onnx',
                       input_shape=(1, 3, size, size), n_parity=2).path
        torch.manual_seed(0)
        shuf = y[np.random.default_rng(5).permutation(len(y))]
        bad = to_onnx(train_briefly(create_model(name, **kw), 'au', X, shuf, **{**tkw, 'epochs': 6}), 'au', tmp_path/'bad.onnx',
                      input_shape=(1, 3, size, size), n_parity=2).path
        th = dict(max_latency_ratio=5.0)    # the default score thresholds; latency is loose on a shared machine
        r = check_candidate('au', good, None, tmp_path/'g1', thresholds=th)
        assert r['passed'], r['reasons']
        assert r['candidate']['score'] > max(GATE_DEFAULTS['au']['min_score'], chance_score('au', y) / 100), r['candidate']
        r = check_candidate('au', bad, good, tmp_path/'g2', thresholds=th)
        assert not r['passed'] and any('golden mean_au_f1' in x for x in r['reasons']), r['reasons']
        assert any('vs production' in x for x in r['reasons']), r['reasons']
        assert set(r['dual_track']['class_deltas']) == set(r['candidate']['per_class'])    # per-AU deltas in the report
        assert sorted(p.name for p in (tmp_path/'g2').iterdir()) == ['gate.json', 'gate.png']
    finally: mp.undo()
