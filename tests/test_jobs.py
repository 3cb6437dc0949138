"""Issue 15, jobs: the 6 FaceSynth LOSO micro folds on 2 Celery workers (Redis broker started here on 127.0.0.1) give
exactly the pooled UF1 of the local process-pool run (`facelab.runs.train_folds`), and a worker process SIGKILLed in
the middle of a fold has its fold re-run (Celery acks_late + reject_on_worker_lost) with an unchanged result.

Runs and MLflow go to a temporary folder; the FaceSynth data and the stage-1 weights come from the usual artifacts cache.
"""
import json, os, shutil, signal, socket, subprocess, sys, threading, time
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PARAMS = {'epochs': 2}        # the tiny config with 2 epochs (a checkpoint to kill after, then one more epoch): most of a fold is start-up
INSTALL = 'apt-get install -y redis-server'


def redis_server() -> str:
    exe = shutil.which('redis-server')
    if exe: return exe
    if os.geteuid() == 0:
        subprocess.run(['apt-get', 'install', '-y', 'redis-server'], capture_output=True, timeout=600)
        if exe := shutil.which('redis-server'): return exe
    pytest.skip(f"redis-server is missing; install it with: {INSTALL}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def kill_tree(pid, sig=signal.SIGKILL):
    import psutil
    try: procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess: return []
    for p in procs:
        try: p.send_signal(sig)
        except psutil.NoSuchProcess: pass
    psutil.wait_procs(procs, timeout=30)
    return [p.pid for p in procs]


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    pytest.importorskip('celery', reason="pip install 'celery[redis]'")
    exe = redis_server()
    tmp = tmp_path_factory.mktemp('jobs')
    port = free_port()
    redis = subprocess.Popen([exe, '--port', str(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
                              '--dir', str(tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis as redis_py
    for _ in range(100):
        try: redis_py.Redis(port=port).ping(); break
        except redis_py.ConnectionError: time.sleep(0.1)
    e = {'FACELAB_RUNS': str(tmp/'runs'), 'FACELAB_MLFLOW_URI': f"sqlite:///{tmp/'mlflow.db'}",
         'FACELAB_BROKER_URL': f'redis://127.0.0.1:{port}/0', 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg',
         'PATH': f"{BIN}:{os.environ.get('PATH', '')}"}
    with mock.patch.dict(os.environ, e):
        yield tmp, e
    redis.terminate(); redis.wait(30)


def start_workers(tmp, env, n=2):
    ws = []
    for i in range(n):
        log = open(tmp/f'worker{i}.log', 'w')
        ws.append(subprocess.Popen([str(BIN/'celery'), '-A', 'facelab.jobs', 'worker', '--pool', 'prefork', '--concurrency', '1',
                                    '-n', f'w{i}@%h', '--without-gossip', '--without-mingle', '--without-heartbeat',
                                    '--loglevel', 'INFO'], cwd=ROOT, env={**os.environ, **env}, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True))
    return ws


def pooled_uf1(study):
    from facelab.runs import collect_study
    from facelab.evaluate import megc_scores
    pooled, metrics = collect_study(study)
    assert sorted(metrics) == list(range(6))
    return megc_scores(pooled, 3)['uf1'], pooled


def test_celery_folds_match_local_pool(env):
    from facelab.runs import train_folds, micro_pretrain, micro_index
    from facelab.jobs import train_folds_jobs, job_info
    tmp, e = env
    micro_index(); micro_pretrain()          # FaceSynth data and stage-1 weights: cached, made once
    t0 = time.time()
    s = train_folds('micro', range(6), tmp/'local', PARAMS, workers=2, echo=lambda *a: None)
    assert s['folds'] == list(range(6)) and not s['failed'], s
    uf1_local, pooled_local = pooled_uf1(tmp/'local')
    t_local = time.time() - t0

    workers = start_workers(tmp, e)
    killed = {}
    def killer():
        "SIGKILL the worker process running the first fold that has written a checkpoint, while it has no metrics.json."
        study = tmp/'celery'
        while not killed.get('stop'):
            for ck in sorted(study.glob('fold_*/train/epoch-*.pt')):
                d = ck.parent.parent
                if (d/'metrics.json').exists(): continue
                st = json.loads((d/'status.json').read_text()) if (d/'status.json').exists() else {}
                pid = st.get('pid')        # the process executing the fold (a Celery pool process)
                if pid:
                    import psutil
                    parent = psutil.Process(pid).parent().pid
                    pids = kill_tree(pid)
                    killed.update(fold=d.name, pid=pid, worker=parent, pids=pids, finished=(d/'metrics.json').exists())
                    return
            time.sleep(0.05)
    th = threading.Thread(target=killer, daemon=True); th.start()
    try:
        t0 = time.time()
        s = train_folds_jobs('micro', range(6), tmp/'celery', PARAMS, backend='celery', timeout=600, echo=print)
        t_celery = time.time() - t0
    finally:
        killed['stop'] = True
        for w in workers: kill_tree(w.pid, signal.SIGTERM)
    logs = '\n'.join((tmp/f'worker{i}.log').read_text() for i in range(2))
    assert s['folds'] == list(range(6)) and not s['failed'], (s, logs[-3000:])
    # a worker process was killed in the middle of a fold (a checkpoint written, no metrics.json yet) ...
    assert killed.get('fold') and not killed['finished'], killed
    assert 'SIGKILL' in logs or 'signal 9' in logs, logs[-3000:]
    # ... and that fold's job ran twice: the killed attempt and the redelivered one
    jobs = {f: job_info(j) for j, f in s['jobs'].items()}
    k = int(killed['fold'].split('_')[1])
    assert jobs[k]['attempts'] == '2' and jobs[k]['status'] == 'finished', jobs[k]
    assert all(i['status'] == 'finished' and i['backend'] == 'celery' for i in jobs.values())
    assert len({i['host'] + i['pid'] for i in jobs.values()}) >= 2          # more than one worker process took folds
    uf1_celery, pooled_celery = pooled_uf1(tmp/'celery')
    print(f"\npooled UF1: local pool {uf1_local:.4f} in {t_local:.0f}s; 2 Celery workers {uf1_celery:.4f} in {t_celery:.0f}s "
          f"(fold {k} killed in worker process {killed['pid']} and re-run)")
    assert 0 <= uf1_local <= 1 and uf1_celery == uf1_local
    # the killed fold's predictions equal the local run's, bit for bit
    a, b = (p[p.fold == k].sort_values('sample_id').reset_index(drop=True) for p in (pooled_local, pooled_celery))
    assert (a.y_pred == b.y_pred).all() and np.array_equal(np.stack(a.probabilities), np.stack(b.probabilities))
