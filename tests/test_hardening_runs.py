"""Issue 20, training runs: resume of a killed `facelab train` (bit-identical, every stage), MLflow consistency across
kills, store races, config typos and `--epochs 0`, short notebook errors, `-p` keys, and cache paths from config values.

The kills are real SIGKILLs of real processes (the CLI and its papermill kernel, or a toy training), never simulated.
"""
import json, os, signal, subprocess, sys, textwrap, time
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
FACELAB = [str(Path(PY).parent/'facelab')]   # the console script
VOLATILE = {'seconds', 'train_seconds', 'run_id', 'mlflow_run_id'}   # wall time and ids: the only values that may differ


def env_for(tmp):
    return {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1', 'FACELAB_ARTIFACTS': str(tmp/'artifacts'),
            'FACELAB_RUNS': str(tmp/'runs'), 'FACELAB_MLFLOW_URI': f"sqlite:///{tmp/'mlflow.db'}"}


def cli(tmp, *args, timeout=900):
    return subprocess.run([*FACELAB, *args], capture_output=True, text=True, env=env_for(tmp), timeout=timeout, cwd=tmp)


def strip(d):
    "metrics.json without the wall-time and id values."
    if isinstance(d, dict): return {k: strip(v) for k, v in d.items() if k not in VOLATILE}
    if isinstance(d, list): return [strip(v) for v in d]
    return d


def descendants(pid):
    import psutil
    try: return [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
    except psutil.NoSuchProcess: return [pid]


def sigkill_tree(p):
    "SIGKILL the CLI's process group and every descendant (papermill starts its kernel in a session of its own)."
    pids = descendants(p.pid)
    for pid in pids:
        try: os.killpg(os.getpgid(pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError): pass
    p.wait(timeout=60)
    import psutil
    for pid in pids:   # nothing of the killed run may live on and keep writing
        try: psutil.Process(pid).wait(timeout=30)
        except (psutil.NoSuchProcess, psutil.TimeoutExpired): pass


def start_and_kill_at(tmp, args, marker_glob, root):
    "Start `facelab train ...`, SIGKILL the whole tree as soon as a file matching `marker_glob` under `root` exists."
    p = subprocess.Popen([*FACELAB, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env=env_for(tmp), cwd=tmp, start_new_session=True)
    t0 = time.time()
    while not list(root.glob(marker_glob)):
        if p.poll() is not None: raise AssertionError(f'ended before {marker_glob}: {p.stderr.read()[-2000:]}')
        if time.time() - t0 > 900: sigkill_tree(p); raise AssertionError(f'no {marker_glob} after 900 s')
        time.sleep(0.05)
    sigkill_tree(p)
    assert p.returncode == -signal.SIGKILL
    return list(root.glob(marker_glob))[0]


# A macro run of two stages on a small FaceSynth: 3 epochs per stage, a few images per class
TINY_MACRO = {
    'data': {'synth': {'subjects': None, 'seed': 0, 'size': None,
                       'writer_kw': {'affectnet': {'n_train': 12, 'n_extra': 0, 'n_val': 4}, 'rafdb': {'n_train': 16, 'n_test': 4}}},
             'size': 48, 'bs': 16, 'val_folds': 4, 'fold_seed': 0, 'margin': 0.1},
    'augment': {'flip': True},
    'model': {'name': 'poster_v2_tiny', 'kwargs': {}}, 'init': {'fusion': 'xavier'},
    'train': {'epochs': 3, 'lr': 1.0e-3, 'wd': 0.05, 'warmup_pct': 0.1, 'precision': 'fp32', 'monitor': 'accuracy',
              'keep_best': 1, 'progress': False, 'mlflow': True, 'schedule': 'warmup_cosine'},
    'eval': {'select': 'last'}}


@pytest.fixture(scope='module')
def macro_chain(tmp_path_factory):
    "An uninterrupted run, and a run SIGKILLed in stage 1, resumed, SIGKILLed in stage 2 and resumed again."
    tmp = tmp_path_factory.mktemp('resume')
    cfg = tmp/'tiny.yaml'; cfg.write_text(yaml.safe_dump(TINY_MACRO))
    r = cli(tmp, 'train', 'macro', '--config', str(cfg), '--out', str(tmp/'straight'), '--quiet')
    assert r.returncode == 0, r.stderr[-3000:]
    straight = next((tmp/'straight').iterdir())
    killed_root = tmp/'killed'
    ck1 = start_and_kill_at(tmp, ['train', 'macro', '--config', str(cfg), '--out', str(killed_root), '--quiet'],
                            '*/affectnet/epoch-0000.pt', killed_root)
    run = ck1.parent.parent
    from facelab.runs import run_status
    status1 = {'file': json.loads((run/'status.json').read_text())['status'], 'seen': run_status(run)['status']}
    ck2 = start_and_kill_at(tmp, ['train', 'macro', '--resume', str(run), '--quiet'], '*/rafdb/epoch-0000.pt', killed_root)
    assert ck2.parent.parent == run
    last_aff = run/'affectnet'/'epoch-0002.pt'
    mtime = last_aff.stat().st_mtime_ns
    r = cli(tmp, 'train', 'macro', '--resume', str(run), '--quiet')
    assert r.returncode == 0, r.stderr[-3000:]
    return {'tmp': tmp, 'straight': straight, 'run': run, 'status1': status1, 'aff_mtime': (mtime, last_aff.stat().st_mtime_ns),
            'stdout': r.stdout}


def test_resume_after_sigkill_is_bit_identical(macro_chain):
    s, k = macro_chain['straight'], macro_chain['run']
    assert macro_chain['status1'] == {'file': 'running', 'seen': 'killed'}   # a killed run is not finished, and says so
    ms, mk = (json.loads((d/'metrics.json').read_text()) for d in (s, k))
    assert strip(mk) == strip(ms)
    # training happened: each stage ended on other weights than it started from
    for st in ('affectnet', 'rafdb'): assert ms['stages'][st]['init']['sha256'] != ms['stages'][st]['final_sha256']
    for f in ('model.pt', 'model_affectnet.pt'):
        a, b = (torch.load(d/f, weights_only=True)['state_dict'] for d in (s, k))
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a), f
    pa, pb = (pd_read(d/'predictions.parquet') for d in (s, k))
    assert pa.equals(pb)
    # the finished stage 1 was restored from its last checkpoint, not trained again
    assert macro_chain['aff_mtime'][0] == macro_chain['aff_mtime'][1]
    assert json.loads((k/'status.json').read_text())['status'] == 'finished'


def pd_read(p):
    import pandas as pd
    return pd.read_parquet(p)


def test_resume_keeps_mlflow_consistent(macro_chain):
    "Each stage has one MLflow run, FINISHED, with every epoch logged exactly once; no run of the folder is left RUNNING."
    import mlflow
    tmp, k = macro_chain['tmp'], macro_chain['run']
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp/'mlflow.db'}")
    exp = client.get_experiment_by_name('facelab-macro')
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    mine = [r for r in runs if str(k) in r.data.tags.get('facelab.checkpoint_dir', '')]
    by_stage = {}
    for r in mine: by_stage.setdefault(Path(r.data.tags['facelab.checkpoint_dir']).name, []).append(r)
    assert sorted(by_stage) == ['affectnet', 'rafdb']
    for stage, rs in by_stage.items():
        assert [r.info.status for r in rs] == ['FINISHED'], (stage, [r.info.status for r in rs])
        rid = rs[0].info.run_id
        assert (k/stage/'mlflow_run_id').read_text() == rid
        for name in ('valid_loss', 'accuracy'):
            assert sorted(m.step for m in client.get_metric_history(rid, name)) == [0, 1, 2], (stage, name)
    straight = [r for r in runs if str(macro_chain['straight']) in r.data.tags.get('facelab.checkpoint_dir', '')]
    a = {Path(r.data.tags['facelab.checkpoint_dir']).name: r for r in straight}
    for stage, rs in by_stage.items():   # the same values as the uninterrupted run, epoch by epoch
        ha = {m.step: m.value for m in client.get_metric_history(a[stage].info.run_id, 'valid_loss')}
        hb = {m.step: m.value for m in client.get_metric_history(rs[0].info.run_id, 'valid_loss')}
        assert ha == hb, stage
    assert json.loads((k/'metrics.json').read_text())['mlflow_run_id'] == by_stage['rafdb'][0].info.run_id


def test_resume_of_a_finished_run_and_bad_resume_args(macro_chain):
    tmp, k = macro_chain['tmp'], macro_chain['run']
    r = cli(tmp, 'train', 'macro', '--resume', str(k))
    assert r.returncode == 0 and 'already finished' in r.stdout
    r = cli(tmp, 'train', 'macro', '--resume', str(k), '--epochs', '5')
    assert r.returncode == 2 and '--epochs' in r.stderr and 'Traceback' not in r.stderr
    r = cli(tmp, 'train', 'au', '--resume', str(tmp/'nope'))
    assert r.returncode == 2 and 'nothing to resume' in r.stderr and 'Traceback' not in r.stderr


# ---------------------------------------------------------------------------------------------- MLflow, toy kills
TOY_CHILD = '''
import json, sys, time, torch
torch.set_num_threads(1)
from fastai.callback.core import Callback
from facelab.train.distrib import train
class Mark(Callback):
    order = 75   # between the checkpoint (70) and the MLflow log (80)
    def after_batch(self):
        if self.training: print(f"BATCH {self.epoch} {self.iter}", flush=True); time.sleep(0.01)
    def after_epoch(self):
        print(f"CKPT {self.epoch}", flush=True); time.sleep(1.0)
train(json.loads(sys.argv[1]), cbs=[Mark()])
'''


def toy_cfg(run_dir, epochs=4):
    return {'seed': 0, 'data': {'kind': 'toy', 'n_train': 256, 'n_valid': 128, 'bs': 32},
            'train': {'lr': 1e-2, 'epochs': epochs, 'run_dir': str(run_dir), 'progress': False, 'precision': 'fp32',
                      'mlflow': True, 'experiment': 'hardening', 'monitor': 'accuracy'}}


def kill_toy(tmp, cfg, at:str):
    script = tmp/'child.py'; script.write_text(TOY_CHILD)
    p = subprocess.Popen([PY, str(script), json.dumps(cfg)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         env=env_for(tmp))
    for line in p.stdout:
        if line.strip() == at: os.kill(p.pid, signal.SIGKILL); break
    p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL, f'never reached {at}'


@pytest.mark.parametrize('at', ['BATCH 0 3', 'CKPT 1'])
def test_mlflow_run_of_a_killed_fit_is_continued_and_backfilled(tmp_path, monkeypatch, at):
    """'BATCH 0 3': killed before the first checkpoint (the orphan RUNNING run is continued, not duplicated);
    'CKPT 1': killed after epoch 1's checkpoint, before MLflow logged epoch 1 (it is back-filled on resume)."""
    import mlflow
    from facelab.train.distrib import train
    for k, v in env_for(tmp_path).items(): monkeypatch.setenv(k, v)
    torch.set_num_threads(1)
    cfg = toy_cfg(tmp_path/'run')
    kill_toy(tmp_path, cfg, at)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path/'mlflow.db'}")
    rid = (tmp_path/'run'/'mlflow_run_id').read_text()
    assert client.get_run(rid).info.status == 'RUNNING'               # what a SIGKILL leaves behind
    before = sorted(m.step for m in client.get_metric_history(rid, 'valid_loss'))
    assert before == ([] if at.startswith('BATCH') else [0])           # epoch 1 is checkpointed but not logged
    res = train({**cfg, 'resume': True})
    assert res['mlflow_run_id'] == rid and client.get_run(rid).info.status == 'FINISHED'
    assert sorted(m.step for m in client.get_metric_history(rid, 'valid_loss')) == [0, 1, 2, 3]
    exp = client.get_run(rid).info.experiment_id
    assert [r.info.run_id for r in client.search_runs([exp])] == [rid]   # one run for the folder, no orphan
    if at == 'CKPT 1':
        assert client.get_run(rid).data.tags['facelab.backfilled_epochs'] == '1'
        ck = torch.load(tmp_path/'run'/'epoch-0003.pt', weights_only=True)
        logged = {m.step: m.value for m in client.get_metric_history(rid, 'valid_loss')}
        assert [logged[e] for e in range(4)] == pytest.approx([v[1] for v in ck['recorder']['values']])
    assert res['metrics']['accuracy'] > 0.25 + 0.3                     # and the toy model learned (chance 0.25)


def test_resume_marks_other_running_runs_of_the_folder_killed(tmp_path, monkeypatch):
    "A RUNNING run of the same folder that is not the one continued (e.g. its id file was lost) is marked KILLED."
    import mlflow
    from facelab.train.distrib import train
    from facelab.train.track import mlflow_experiment
    for k, v in env_for(tmp_path).items(): monkeypatch.setenv(k, v)
    cfg = toy_cfg(tmp_path/'run', epochs=1)
    uri = f"sqlite:///{tmp_path/'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    orphan = client.create_run(mlflow_experiment('hardening', uri),
                               tags={'facelab.checkpoint_dir': str((tmp_path/'run').absolute())}).info.run_id
    other = client.create_run(mlflow_experiment('hardening', uri), tags={'facelab.checkpoint_dir': str(tmp_path/'elsewhere')}).info.run_id
    res = train({**cfg, 'resume': True})
    assert res['mlflow_run_id'] not in (orphan, other)
    assert client.get_run(orphan).info.status == 'KILLED' and 'resumed' in client.get_run(orphan).data.tags['error']
    assert client.get_run(other).info.status == 'RUNNING'                 # another folder's run is left alone
    assert client.get_run(res['mlflow_run_id']).info.status == 'FINISHED'


# ---------------------------------------------------------------------------------------------- store races
STORE_CHILD = '''
import sys, time
from facelab.train.track import ensure_store, mlflow_experiment, _mlflow_client
go = float(sys.argv[1])
while time.time() < go: time.sleep(0.001)
uri = ensure_store()
run = _mlflow_client(uri).create_run(mlflow_experiment('facelab-race', uri), run_name=sys.argv[2])
_mlflow_client(uri).set_terminated(run.info.run_id, 'FINISHED')
print('OK', run.info.run_id, flush=True)
'''


def test_two_processes_on_a_fresh_store_both_succeed(tmp_path):
    import mlflow
    script = tmp_path/'race.py'; script.write_text(STORE_CHILD)
    for attempt in range(2):
        env = {**env_for(tmp_path), 'FACELAB_MLFLOW_URI': f"sqlite:///{tmp_path/f'fresh{attempt}.db'}"}
        go = time.time() + 6.0    # both have imported mlflow by then and start the store at the same instant
        ps = [subprocess.Popen([PY, str(script), str(go), f'r{i}'], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env) for i in range(2)]
        outs = [p.communicate(timeout=180) for p in ps]
        for p, (out, err) in zip(ps, outs): assert p.returncode == 0 and out.startswith('OK'), err[-2000:]
        client = mlflow.MlflowClient(tracking_uri=env['FACELAB_MLFLOW_URI'])
        exp = client.get_experiment_by_name('facelab-race')
        assert len(client.search_runs([exp.experiment_id])) == 2


# ---------------------------------------------------------------------------------------------- CLI errors
def test_config_typos_are_refused_with_a_suggestion_and_no_run_folder(tmp_path):
    bad = dict(TINY_MACRO, train={**TINY_MACRO['train'], 'epohcs': 3}, evla={'select': 'best'})
    f = tmp_path/'typo.yaml'; f.write_text(yaml.safe_dump(bad))
    r = cli(tmp_path, 'train', 'macro', '--config', str(f), '--out', str(tmp_path/'out'))
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr
    assert str(f) in r.stderr and "did you mean 'train.epochs'" in r.stderr and "did you mean 'eval'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path/'out').exists()


def test_every_config_validates():
    from facelab.core import load_config
    from facelab.train.config import validate_config
    from facelab.train.config import SCHEMAS
    # the training configs (the task is the file name's first word); detect_*.yaml are Ultralytics settings checked
    # by facelab.detect.yolo, au_agent_lora.yaml is the AU agent's LoRA config
    files = [f for f in sorted((ROOT/'configs').glob('*.yaml'))
             if f.name.split('_')[0].removesuffix('.yaml') in SCHEMAS and not f.name.startswith('au_agent')]
    assert len(files) >= 8
    for f in files: validate_config(load_config(f), f.name.split('_')[0].removesuffix('.yaml'))


def test_epochs_zero_is_refused(tmp_path):
    r = cli(tmp_path, 'train', 'macro', '--epochs', '0')
    assert r.returncode == 2 and '--epochs' in r.stderr and '>= 1' in r.stderr and 'Traceback' not in r.stderr
    assert not (tmp_path/'runs').exists()


def test_notebook_error_is_one_line_with_the_executed_notebook(tmp_path):
    "A notebook that fails shows its own error line and the executed notebook's path; the folder is marked failed."
    r = cli(tmp_path, 'train', 'macro', '--epochs', '1', '--fold', '99', '--out', str(tmp_path/'out'))
    # (jupyter's own log lines, e.g. a kernel port retry, may appear on stderr; the error itself is one line)
    assert r.returncode == 2 and 'PapermillExecutionError' not in r.stderr and '---------' not in r.stderr, r.stderr[-2000:]
    err = [l for l in r.stderr.strip().splitlines() if l.startswith('facelab train: error')]
    assert len(err) == 1 and r.stderr.strip().splitlines()[-1] == err[0], r.stderr
    run = next((tmp_path/'out').iterdir())
    assert 'ValueError: fold must be in 0..4, got 99' in err[0] and str(run/'notebook.ipynb') in err[0]
    st = json.loads((run/'status.json').read_text())
    assert st['status'] == 'failed' and st['error'] == 'ValueError: fold must be in 0..4, got 99'
    assert not (run/'metrics.json').exists()


def test_param_keys_are_only_declared_identifiers(tmp_path):
    marker = tmp_path/'pwned'
    r = cli(tmp_path, 'train', 'macro', '-p', f'import os;os.system("touch {marker}");z=1')
    assert r.returncode == 2 and 'unknown parameter' in r.stderr and "'epochs'" in r.stderr, r.stderr
    assert not marker.exists() and not (tmp_path/'runs').exists()
    r = cli(tmp_path, 'train', 'macro', '-p', 'epohcs=2')
    assert r.returncode == 2 and "did you mean 'epochs'" in r.stderr
    r = cli(tmp_path, 'train', 'macro', '-p', 'noequals')
    assert r.returncode == 2 and 'KEY=VALUE' in r.stderr


# ---------------------------------------------------------------------------------------------- cache paths
def test_cache_paths_never_come_from_config_values(tmp_path, monkeypatch):
    import facelab.models.videomae as vm
    from facelab.runs import facesynth_backbone
    from facelab.train.run import facesynth_root
    cache = tmp_path/'cache'
    for bad in ({'seed': '/../../victim'}, {'subjects': '../../x'}, {'size': '../y'}):
        with pytest.raises(TypeError, match=next(iter(bad))): facesynth_root(['disfa'], cache=cache, **bad)
    assert not any(tmp_path.rglob('*victim*')) and not (tmp_path.parent/'victim').exists()
    calls = []
    def fake_pretrain(**kw):   # stands in for the (slow) stage-1 training: only the cache path is under test here
        calls.append(kw); return {'w': torch.zeros(1)}, {'clips': 0}
    monkeypatch.setattr(vm, 'facesynth_pretrain', fake_pretrain)
    w, info = facesynth_backbone(cache, name='../../../escape', seed='/../../victim')
    assert calls and w.resolve().is_relative_to(cache.resolve()) and w.parent.parent == cache
    assert '..' not in w.parent.name and 'victim' not in w.parent.name and 'escape' not in w.parent.name
    assert [p.name for p in tmp_path.iterdir()] == ['cache']


def test_facesynth_caches_follow_the_renderer(tmp_path, monkeypatch):
    "Stage-1 weights and scene datasets are learnt from / made of FaceSynth renders: a renderer change must not reuse them."
    import facelab.models.videomae as vm, facelab.train.run as tr
    from facelab.runs import facesynth_backbone
    calls = []
    def fake_pretrain(**kw):   # stands in for the (slow) stage-1 training: only the cache key is under test here
        calls.append(kw); return {'w': torch.zeros(1)}, {'clips': 0}
    monkeypatch.setattr(vm, 'facesynth_pretrain', fake_pretrain)
    w1, _ = facesynth_backbone(tmp_path, seed=3)
    w1b, info = facesynth_backbone(tmp_path, seed=3)
    assert w1b == w1 and len(calls) == 1 and info['facesynth'] == tr.facesynth_version()   # same renderer: the cache
    monkeypatch.setattr(tr, 'facesynth_version', lambda: '0.0.0+another-renderer')
    w2, info2 = facesynth_backbone(tmp_path, seed=3)
    assert w2 != w1 and len(calls) == 2 and info2['facesynth'] == '0.0.0+another-renderer'    # trained again
