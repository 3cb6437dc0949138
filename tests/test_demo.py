"""`facelab demo --quick` (= `make demo QUICK=1`) end to end, run as a user runs it, into a temporary folder.

Checks the summary it prints and writes: every face-affect task trained and scored above chance with its protocol,
exported (fp32, + int8 for every task in facelab.export_cli.INT8_TASKS), registered and gated (deployed when the gate
passed, reasons when it refused), latency rows, the C++ engine on the long video or an honest reason why not,
detection skipped with a reason (it stays out of --quick; the full demo trains, exports, registers, promotes it without
a gate and deploys it, see nbs/59_demo_deploy.ipynb), and report.html. The exported macro model is checked
independently: onnxruntime on the RAF-DB test image files reproduces the training run's own PyTorch predictions.

FaceSynth data, golden sets and stage-1 weights come from the usual caches (shared with the other tests); runs, the
MLflow store and the deployed models go to the temporary folder.
"""
import json, os, subprocess, sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TASKS = ('macro', 'micro', 'au', 'spotting')
from facelab.export_cli import INT8_TASKS
from facelab.export import read_metadata, file_sha256


@pytest.fixture(scope='module')
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp('demo')/'out'
    env = {**os.environ, 'PATH': f"{BIN}:{os.environ.get('PATH', '')}", 'MPLBACKEND': 'Agg', 'OMP_NUM_THREADS': '1'}
    env.pop('FACELAB_MLFLOW_URI', None)      # the demo uses its own store in the output folder
    r = subprocess.run([str(BIN/'facelab'), 'demo', '--quick', '--out', str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1800)
    print(r.stdout[-6000:]); print(r.stderr[-3000:], file=sys.stderr)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return out, json.loads((out/'summary.json').read_text()), r.stdout


def test_progress_and_one_table(quick):
    out, s, stdout = quick
    for step in ('1/6 training', '2/6 scoring', '3/6 exporting', '4/6 registering', '5/6 latency', '6/6 writing the HTML report'):
        assert step in stdout, step
    assert 'finished in' in stdout                                  # per-run progress lines
    assert stdout.count('facelab demo (quick)') == 1 and 'artefacts:' in stdout
    assert s['mode'] == 'quick' and s['ok'] is True


def test_every_task_beats_chance(quick):
    out, s, _ = quick
    for t in TASKS:
        r = s['tasks'][t]
        assert 'error' not in r and 'skipped' not in r, (t, r)
        assert r['value'] > r['chance'], (t, r['metric'], r['value'], r['chance'])
        assert Path(r['run']).is_dir() and r['protocol'], t
    assert s['tasks']['micro']['metric'] == 'UF1' and len(s['tasks']['micro']['folds']) >= 3   # a documented LOSO subset
    assert s['tasks']['spotting']['chance_is'] == 'random intervals'


def test_exports_registry_and_deploy(quick):
    out, s, _ = quick
    for t in TASKS:
        r = s['tasks'][t]
        assert Path(r['export']['onnx']).is_file(), t
        if t in INT8_TASKS:
            assert Path(r['export']['int8']).is_file(), t
            q = read_metadata(r['export']['int8'])
            assert q['quantization'] == 'int8-static-qdq' and q['fp32_sha256'] == file_sha256(r['export']['onnx']), t
        else: assert 'int8' not in r['export'] and r['export']['int8_note'].startswith('not made: '), t
        reg = r['registry']
        assert reg['registered'] == f'facelab-{t}' and reg['version'] >= 1, reg
        assert reg['gate'] in ('passed', 'refused'), reg
        if reg['gate'] == 'passed':
            assert reg['deployed'] and all(Path(f).is_file() for f in reg['deployed']), reg
            assert (out/'models'/f'{t}.onnx').is_file() and (out/'models'/f'{t}.registry.json').is_file()
        else:
            assert reg['gate_reasons'] and not reg.get('deployed') and not (out/'models'/f'{t}.onnx').exists(), reg
    deployed = [t for t in TASKS if s['tasks'][t]['registry'].get('deployed')]
    if deployed:
        cfg = json.loads((out/'models'/'engine.json').read_text())
        assert sorted(cfg['models']) == sorted(deployed)
    assert (out/'mlflow.db').is_file()


def test_latency_and_engine(quick):
    out, s, _ = quick
    lat = pd.DataFrame(s['latency'])
    for t in TASKS: assert ((lat.task == t) & (lat.runtime == 'python onnxruntime fp32')).any(), t
    for t in INT8_TASKS: assert ((lat.task == t) & (lat.runtime == 'python onnxruntime int8')).any(), t
    assert (lat.p50_ms > 0).all()
    e = s['engine']
    run = ROOT/'cpp'/'build'/'facelab_run'
    deployed = [t for t in TASKS if s['tasks'][t]['registry'].get('deployed')]
    if not deployed:
        assert 'nothing to serve' in e['skipped']
    elif not run.exists():
        assert 'make cpp' in e['skipped'], e
    else:
        assert 'error' not in e and 'skipped' not in e, e
        assert e['frames'] == e['video_frames'] > 0 and Path(e['jsonl']).is_file()
        for t in deployed:
            if t != 'spotting': assert ((lat.task == t) & lat.runtime.str.startswith('C++')).any(), t
        assert (lat.runtime == 'C++ pipeline per frame').any()


def test_detection_row_is_honest(quick):
    out, s, _ = quick
    d = s['tasks']['detect']
    assert ('skipped' in d and d['skipped']) or d['value'] > d['chance'], d


def test_report_html(quick):
    out, s, _ = quick
    html = (out/'report.html').read_text()
    assert 'Report: the end-to-end demo' in html and 'data:image/png;base64' in html
    for t in TASKS: assert t in html
    import nbformat
    nb = nbformat.read(out/'report'/'report.ipynb', as_version=4)      # the executed report notebook, every cell run
    code = [c for c in nb.cells if c.cell_type == 'code']
    assert code and all(c.execution_count for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == 'error']


def test_exported_macro_reproduces_the_run(quick):
    "Independently of the demo: the exported macro ONNX on the RAF-DB test image files agrees with the run's PyTorch predictions."
    from facelab.core import load_config
    from facelab.train.run import resolve_data_root
    from facelab.data.rafdb import load_rafdb
    from facelab.data.index import safe_join
    from facelab.predict import OnnxPredictor
    out, s, _ = quick
    run = Path(s['tasks']['macro']['run'])
    cfg = load_config(run/'config.yaml')
    root, _ = resolve_data_root(None, cfg.stages_run, **cfg.data.synth)
    idx = load_rafdb(root/'rafdb').set_index('sample_id')
    ref = pd.read_parquet(run/'predictions.parquet')
    files = [safe_join(root/'rafdb', idx.path[i]) for i in ref.sample_id]
    got = OnnxPredictor(s['tasks']['macro']['export']['onnx']).predict_images(files)
    assert (got.label.to_numpy() == ref.label_pred.to_numpy()).mean() >= 0.98
    assert abs((ref.y_true == ref.y_pred).mean() - s['tasks']['macro']['value']) < 1e-9
