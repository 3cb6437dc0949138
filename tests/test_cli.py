"""The `facelab` console script, run as a user would run it."""
import json, os, subprocess, sys
from pathlib import Path

BIN = Path(sys.executable).parent

def run(*args, env=None):
    return subprocess.run([str(BIN/'facelab'), *args], capture_output=True, text=True, env={**os.environ, **(env or {})})

def test_help_lists_info():
    r = run('--help')
    assert r.returncode == 0, r.stderr
    assert 'info' in r.stdout and 'usage: facelab' in r.stdout

def test_info_reports_env_paths(tmp_path):
    r = run('info', env={'FACELAB_DATA': str(tmp_path/'d'), 'FACELAB_ARTIFACTS': str(tmp_path/'a')})
    assert r.returncode == 0, r.stderr
    assert str(tmp_path/'d') in r.stdout and str(tmp_path/'a') in r.stdout
    for key in ('torch', 'onnxruntime', 'bf16_autocast', 'quarto', 'npm', 'cmake'): assert key in r.stdout

def test_unknown_command_fails():
    r = run('no-such-command')
    assert r.returncode != 0 and 'invalid choice' in r.stderr

def test_errors_are_one_line_and_debug_shows_the_traceback(tmp_path):
    "A folder where a model file belongs: one error line naming it, exit 2; --debug / FACELAB_DEBUG add the traceback."
    (tmp_path/'m.onnx').mkdir()
    args = ('predict', '--model', str(tmp_path/'m.onnx'), '--no-detect', str(tmp_path))
    r = run(*args, env={'FACELAB_DEBUG': ''})
    assert r.returncode == 2, r.stderr
    assert 'Traceback' not in r.stderr and r.stderr.count('error:') == 1 and str(tmp_path/'m.onnx') in r.stderr, r.stderr
    r = run('--debug', *args)
    assert r.returncode == 2 and 'Traceback' in r.stderr, r.stderr
    r = run(*args, env={'FACELAB_DEBUG': '1'})
    assert r.returncode == 2 and 'Traceback' in r.stderr, r.stderr
    assert '--debug' in run('--help').stdout
