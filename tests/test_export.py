"""`facelab export` run as a user runs it: real (tiny) model checkpoints in, checked ONNX files out, clear errors."""
import os, subprocess, sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from facelab.export import read_metadata, file_sha256, onnx_session, facesynth_inputs, IMAGENET_MEAN, IMAGENET_STD
from facelab.train.save import save_model, build_model

BIN = Path(sys.executable).parent
# one intra-op thread: the CI machine has 2 cores shared with other jobs (OpenMP stalls when oversubscribed)
ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}
POSTER = {'name': 'poster_v2_tiny', 'kwargs': {'img_size': 224, 'inner_size': 56}}
VIDEOMAE = {'name': 'videomae_tiny', 'kwargs': {'num_frames': 16, 'img_size': 224, 'patch_size': 32, 'tubelet': 4}}

def facelab(*args):
    return subprocess.run([str(BIN/'facelab'), *map(str, args)], capture_output=True, text=True, env=ENV, timeout=600)

def checkpoint(path, config, seed=0, **meta):
    torch.manual_seed(seed)
    model = build_model(config).eval()
    save_model(model, path, meta=meta)
    return model

def leftovers(d):
    "Temporary or partial files next to the destination."
    return sorted(p.name for p in Path(d).iterdir() if p.name.startswith('.') or p.suffix == '.tmp')

def test_macro_int8_end_to_end(tmp_path):
    model = checkpoint(tmp_path/'macro.pth', POSTER, run_id='run-macro-1')
    out = tmp_path/'models'/'macro.onnx'
    r = facelab('export', '--task', 'macro', '--checkpoint', tmp_path/'macro.pth', '--out', out, '--int8')
    assert r.returncode == 0, r.stderr
    assert 'exporter: dynamo' in r.stdout, r.stdout
    meta = read_metadata(out)
    assert meta['task'] == 'macro' and meta['run_id'] == 'run-macro-1'
    assert meta['checkpoint_sha256'] == file_sha256(tmp_path/'macro.pth')
    assert meta['input_shape'] == [-1, 3, 224, 224] and meta['mean'] == list(IMAGENET_MEAN)
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    # the file computes what the checkpoint's model computes, on a FaceSynth face
    x = facesynth_inputs((1, 3, 224, 224), n=1, seed=11)[0]
    with torch.no_grad(): ref = model(x).numpy()
    got = onnx_session(out).run(['logits'], {'image': x.numpy()})[0]
    assert got.shape == (1, 7) and np.abs(got - ref).max() < 1e-5
    q = out.with_suffix('.int8.onnx')
    qmeta = read_metadata(q)
    assert qmeta['quantization'] == 'int8-static-qdq' and qmeta['fp32_sha256'] == file_sha256(out)
    assert any(n.op_type == 'QuantizeLinear' for n in onnx.load(str(q)).graph.node)
    assert onnx_session(q).run(None, {'image': x.numpy()})[0].shape == (1, 7)
    assert leftovers(out.parent) == []

def test_micro_ensemble_end_to_end(tmp_path):
    folds = [checkpoint(tmp_path/f'fold{k}.pth', VIDEOMAE, seed=k, run_id=f'fold-{k}') for k in range(2)]
    out = tmp_path/'micro.onnx'
    r = facelab('export', '--task', 'micro', '--ensemble', tmp_path/'fold0.pth', tmp_path/'fold1.pth', '--out', out)
    assert r.returncode == 0, r.stderr
    meta = read_metadata(out)
    assert meta['ensemble_size'] == 2 and meta['ensemble_run_ids'] == ['fold-0', 'fold-1']
    assert meta['ensemble_checkpoints_sha256'] == [file_sha256(tmp_path/f'fold{k}.pth') for k in range(2)]
    assert meta['class_names'] == ['negative', 'positive', 'surprise'] and meta['input_layout'] == 'NTCHW'
    x = facesynth_inputs((1, 16, 3, 224, 224), n=1, seed=5)[0]
    with torch.no_grad(): want = torch.stack([f(x).softmax(-1) for f in folds]).mean(0).numpy()
    got = onnx_session(out).run(['logits'], {'clip': x.numpy()})[0]
    assert np.abs(np.exp(got) - want).max() < 1e-5

def test_checkpoint_for_another_task_is_refused(tmp_path):
    checkpoint(tmp_path/'macro.pth', POSTER)
    r = facelab('export', '--task', 'au', '--checkpoint', tmp_path/'macro.pth', '--out', tmp_path/'au.onnx')
    assert r.returncode != 0
    assert f"{tmp_path/'macro.pth'}: checkpoint holds model 'poster_v2_tiny' for task 'macro', not a 'au' model" in r.stderr, r.stderr
    assert not (tmp_path/'au.onnx').exists() and leftovers(tmp_path) == []

def test_outputs_breaking_the_contract_are_refused(tmp_path):
    checkpoint(tmp_path/'eight.pth', {**POSTER, 'kwargs': {**POSTER['kwargs'], 'num_classes': 8}})
    (tmp_path/'macro.onnx').write_bytes(b'the model in production')
    r = facelab('export', '--task', 'macro', '--checkpoint', tmp_path/'eight.pth', '--out', tmp_path/'macro.onnx')
    assert r.returncode != 0
    assert "output 'logits' axis 1 must be 7, got 8" in r.stderr, r.stderr
    assert (tmp_path/'macro.onnx').read_bytes() == b'the model in production' and leftovers(tmp_path) == []

# --- int8 for the video tasks (micro, spotting) -----------------------------------------------------------------------
from facelab.export_cli import INT8_TASKS, INT8_LEFT_OUT
from facelab.export_quant import int8_experiment, INT8_TOLERANCE

# spotting's accuracy check is tests/test_spotting.py::test_int8_accuracy_check: there it reuses the flow features of the
# FaceSynth videos that file's fixture renders (the same videos), which here were rendered a second time
def test_int8_micro_accuracy_check(tmp_path):
    "The check behind INT8_TASKS: a tiny micro model that learned on FaceSynth, its int8 copy scored on the same held-out people."
    torch.set_num_threads(1)
    e = int8_experiment('micro', tmp_path)
    print(e)
    assert e['fp32'] > e['chance'] + 20, e                                          # learned: UF1 % on unseen people
    if 'micro' in INT8_TASKS: assert e['delta'] >= -INT8_TOLERANCE, e              # int8 kept the accuracy: it may ship
    else: assert 'micro' in INT8_LEFT_OUT and e['delta'] < -INT8_TOLERANCE, e       # left out only because it lost more

@pytest.mark.skipif('spotting' not in INT8_TASKS, reason='spotting int8 failed its accuracy check (INT8_LEFT_OUT)')
def test_spotting_int8_end_to_end(tmp_path):
    from facelab.models.spotting import default_decoder
    from dataclasses import asdict
    fitted = {k: {**asdict(v), 'score_thr': 0.75} for k, v in default_decoder().items()}   # as a run records its fitted decoder
    checkpoint(tmp_path/'spot.pth', {'name': 'spotting_tiny', 'kwargs': {}}, run_id='run-spot-1', decoder=fitted)
    out = tmp_path/'spotting.onnx'
    r = facelab('export', '--task', 'spotting', '--checkpoint', tmp_path/'spot.pth', '--out', out, '--int8')
    assert r.returncode == 0, r.stderr
    q, meta = out.with_suffix('.int8.onnx'), read_metadata(out)
    qmeta = read_metadata(q)
    assert qmeta['quantization'] == 'int8-static-qdq' and qmeta['fp32_sha256'] == file_sha256(out)
    assert meta['run_id'] == qmeta['run_id'] == 'run-spot-1' and meta['decoder'] == qmeta['decoder'] == fitted
    assert qmeta['feature_config'] == meta['feature_config'] and qmeta['window'] == meta['window']
    assert any(n.op_type == 'QuantizeLinear' for n in onnx.load(str(q)).graph.node)
    from facelab.export_quant import window_calibration
    x = window_calibration(meta, n=1)[0]                  # a window of a FaceSynth video's flow features (cached video)
    f, i = (onnx_session(p).run(None, {'features': x}) for p in (out, q))
    assert [a.shape for a in i] == [a.shape for a in f] and np.abs(f[0] - i[0]).max() < 0.1
    assert leftovers(tmp_path) == []
