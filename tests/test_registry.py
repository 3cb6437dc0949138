"""The model registry (facelab.registry) and release gates (facelab.gates) on FaceSynth data and tiny trained models.

Three POSTER++-tiny macro models are trained in-process on FaceSynth faces (48 px): A, B (A trained further on more
faces: better) and S (trained on shuffled labels). The gate must promote A and then B, refuse S and leave production
alone; rollback, atomic deploy (SIGKILL and an injected fault mid-deploy), concurrent registration (4 processes,
sqlite) and registration through a local `mlflow server` are checked on the same registry code.
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
