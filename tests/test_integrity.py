"""Issue 20 (items 2, 11, 13): crafted and corrupt model files, and CLI errors without tracebacks.

Every case asserts a clear error that names the file; the CLI cases run `facelab` as a user would and assert exit
status 2, exactly one line on stderr naming the file, and no traceback.
"""
import os, subprocess, sys, warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from facelab.train.save import build_model, model_config, save_model, load_model, MODEL_FORMAT
from facelab.integrity import WEIGHTS_SHA256_KEY, state_dict_sha256, onnx_weights_sha256, verify_onnx_weights
from facelab.models import check_model_config

BIN = Path(sys.executable).parent


def cli(*args, cwd=None, env=None):
    "Run the `facelab` console script; return (exit code, stderr)."
    e = {**os.environ, 'FACELAB_DEBUG': '', **(env or {})}
    r = subprocess.run([str(BIN/'facelab'), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=e, timeout=600)
    return r.returncode, r.stderr


def error_lines(stderr:str) -> list[str]:
    "The error lines of a facelab run (its progress and warnings aside)."
    return [l for l in stderr.splitlines() if ': error: ' in l]


def assert_cli_error(code, stderr, *names):
    "Exit 2, one `facelab <cmd>: error:` line naming every one of `names`, no traceback."
    assert code == 2, (code, stderr)
    assert 'Traceback' not in stderr, stderr
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr
    for n in names: assert str(n) in lines[0], (n, lines[0])
    return lines[0]


def flip_inside(path:Path, data:bytes, bit:int=0x10) -> Path:
    "Flip one bit in the middle of `data` where it is stored inside `path` (as a bit rot or a tamperer would)."
    b = bytearray(path.read_bytes())
    i = b.find(data)
    assert i >= 0, 'tensor bytes not found in the file'
    b[i + len(data) // 2] ^= bit
    path.write_bytes(bytes(b))
    return path


def largest(sd:dict) -> tuple[str, torch.Tensor]:
    return max(sd.items(), key=lambda kv: kv[1].numel())


# --------------------------------------------------------------------------------------------------- .pt model files
@pytest.fixture(scope='module')
def pt_file(tmp_path_factory) -> Path:
    "A macro model file (tiny POSTER++) written by `save_model`."
    torch.manual_seed(0)
    p = tmp_path_factory.mktemp('pt')/'good.pt'
    save_model(build_model(model_config('poster_v2_tiny')), p, meta={'task': 'macro'})
    return p


def crafted(pt_file:Path, tmp_path:Path, name:str, edit) -> Path:
    "A copy of `pt_file` whose loaded dict was changed by `edit(d)` (the weight hash is kept as it was)."
    d = torch.load(pt_file, weights_only=True)
    edit(d)
    out = tmp_path/name
    torch.save(d, out)
    return out


def test_pt_hash_is_recorded_and_verified(pt_file):
    d = torch.load(pt_file, weights_only=True)
    assert d[WEIGHTS_SHA256_KEY] == state_dict_sha256(d['state_dict'])
    with warnings.catch_warnings():
        warnings.simplefilter('error')                    # a good file loads without any warning
        m = load_model(pt_file, require_hash=True)
    assert state_dict_sha256(m.state_dict()) == d[WEIGHTS_SHA256_KEY]


def test_pt_flipped_weight_byte_is_refused(pt_file, tmp_path):
    p = tmp_path/'flipped.pt'; p.write_bytes(pt_file.read_bytes())
    _, t = largest(torch.load(pt_file, weights_only=True)['state_dict'])
    flip_inside(p, t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    assert torch.load(p, weights_only=True)['state_dict'] is not None   # torch itself loads the corrupt file happily
    with pytest.raises(ValueError, match=r'flipped\.pt: weights do not match the weights_sha256'): load_model(p)


def test_pt_truncated(pt_file, tmp_path):
    p = tmp_path/'truncated.pt'; p.write_bytes(pt_file.read_bytes()[:len(pt_file.read_bytes()) // 2])
    with pytest.raises(ValueError, match=r'truncated\.pt: cannot be loaded'): load_model(p)


def test_pt_wrong_format(tmp_path):
    p = tmp_path/'other.pt'; torch.save({'model': {'w': torch.zeros(2)}}, p)
    with pytest.raises(ValueError, match=r'other\.pt: not a facelab model file'): load_model(p)
    q = tmp_path/'text.pt'; q.write_text('name,label\na.jpg,1\n')
    with pytest.raises(ValueError, match=r'text\.pt: cannot be loaded'): load_model(q)


def test_pt_state_dict_not_tensors(pt_file, tmp_path):
    p = crafted(pt_file, tmp_path, 'sd.pt', lambda d: d.update(state_dict={'w': [1, 2, 3]}))
    with pytest.raises(ValueError, match=r"sd\.pt: 'state_dict' is not a mapping of tensors"): load_model(p)


def test_pt_unknown_model_name(pt_file, tmp_path):
    p = crafted(pt_file, tmp_path, 'name.pt', lambda d: d['config'].update(name='poster_v3_tiny'))
    with pytest.raises(ValueError, match=r"name\.pt: unknown model 'poster_v3_tiny' \(did you mean 'poster_v2_tiny'\?\)"):
        load_model(p)


def test_pt_unknown_kwarg_did_you_mean(pt_file, tmp_path):
    p = crafted(pt_file, tmp_path, 'kw.pt', lambda d: d['config']['kwargs'].update(num_clases=7))
    with pytest.raises(ValueError, match=r"kw\.pt: unknown keyword 'num_clases' for model 'poster_v2_tiny' \(did you mean 'num_classes'\?\)"):
        load_model(p)


def test_pt_extra_config_key(pt_file, tmp_path):
    p = crafted(pt_file, tmp_path, 'cfg.pt', lambda d: d['config'].update(module='os'))
    with pytest.raises(ValueError, match=r"cfg\.pt: unknown model config keys \['module'\]"): load_model(p)


@pytest.mark.parametrize('kwargs, refused', [
    ({'backbone_kwargs': {'checkpoint_path': '/etc/passwd'}}, "'checkpoint_path' is refused"),
    ({'backbone': 'hf-hub:someone/evil-model'}, "backbone = 'hf-hub:someone/evil-model' is refused"),
    ({'backbone': 'timm/resnet50.a1_in1k'}, "is refused"),
    ({'pretrained': True}, "'pretrained' is refused"),
    ({'backbone_kwargs': {'pretrained_cfg': {'file': '/tmp/x.pth'}}}, "'pretrained_cfg' is refused"),
    ({'backbone_kwargs': {'pretrained_cfg_overlay': {'url': 'https://example.com/w.pth'}}}, "'pretrained_cfg_overlay' is refused"),
    ({'backbone': 'vit_huge_patch14_224'}, "backbone 'vit_huge_patch14_224' is not allowed"),
    ({'backbone_kwargs': {'features_only': True}}, "backbone_kwargs key 'features_only' is not allowed"),
])
def test_pt_timm_injection_is_refused(pt_file, tmp_path, kwargs, refused):
    "A crafted OpenGraphAU config may not make timm read a file, download weights or build an unlisted backbone."
    def edit(d): d['config'].update(name='opengraphau_tiny', kwargs=kwargs)
    p = crafted(pt_file, tmp_path, 'inject.pt', edit)
    with pytest.raises(ValueError) as e: load_model(p)
    assert str(e.value).startswith(f'{p}: ') and refused in str(e.value), str(e.value)


def test_pt_pickled_payload_never_runs(tmp_path):
    marker = tmp_path/'pwned'
    class Evil:
        def __reduce__(self): return (os.system, (f'touch {marker}',))
    p = tmp_path/'evil.pt'; torch.save({'format': MODEL_FORMAT, 'config': Evil(), 'state_dict': {}}, p)
    with pytest.raises(ValueError, match=r'evil\.pt: cannot be loaded with weights_only=True'): load_model(p)
    assert not marker.exists()


def test_pt_without_hash_warns_or_is_refused(pt_file, tmp_path):
    p = crafted(pt_file, tmp_path, 'old.pt', lambda d: d.pop(WEIGHTS_SHA256_KEY))
    with pytest.warns(UserWarning, match=r"old\.pt: no 'weights_sha256' recorded"): load_model(p)
    with pytest.raises(ValueError, match=r"old\.pt: no 'weights_sha256' recorded"): load_model(p, require_hash=True)
    os.environ['FACELAB_STRICT_INTEGRITY'] = '1'
    try:
        with pytest.raises(ValueError, match=r'old\.pt'): load_model(p)
    finally: del os.environ['FACELAB_STRICT_INTEGRITY']


# ---------------------------------------------------------------------------------------------------------- ONNX files
class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, 2, 1), nn.Linear(8, 7)
    def forward(self, x): return self.fc(self.conv(x).relu().mean((2, 3)))


@pytest.fixture(scope='module')
def onnx_file(tmp_path_factory) -> Path:
    "A macro ONNX model written by `to_onnx` (toy network, 32 px)."
    from facelab.export import to_onnx
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp('onnx')/'macro.onnx'
    to_onnx(_Toy(), 'macro', out, input_shape=(1, 3, 32, 32), n_parity=2)
    return out


def copy(src:Path, dst:Path) -> Path:
    dst.write_bytes(src.read_bytes()); return dst


def flipped_onnx(onnx_file:Path, dst:Path) -> Path:
    proto = onnx.load(str(onnx_file))
    t = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    assert len(t.raw_data) > 64
    return flip_inside(copy(onnx_file, dst), t.raw_data)


def test_onnx_hash_recorded(onnx_file):
    from facelab.export import read_metadata
    meta = read_metadata(onnx_file)
    assert meta[WEIGHTS_SHA256_KEY] == onnx_weights_sha256(onnx.load(str(onnx_file)))
    assert verify_onnx_weights(onnx_file, strict=True) == meta[WEIGHTS_SHA256_KEY]


def test_onnx_flipped_initialiser_byte(onnx_file, tmp_path):
    from facelab.predict import OnnxPredictor
    p = flipped_onnx(onnx_file, tmp_path/'flipped.onnx')
    onnx.checker.check_model(str(p))                      # the checker does not notice
    with pytest.raises(ValueError, match=r'flipped\.onnx: weights do not match the weights_sha256'): verify_onnx_weights(p)
    with pytest.raises(ValueError, match=r'flipped\.onnx: weights do not match'): OnnxPredictor(p)


def test_onnx_missing_metadata(onnx_file, tmp_path):
    proto = onnx.load(str(onnx_file))
    keep = [(e.key, e.value) for e in proto.metadata_props if e.key != WEIGHTS_SHA256_KEY]
    del proto.metadata_props[:]
    for k, v in keep: proto.metadata_props.add(key=k, value=v)
    p = tmp_path/'nohash.onnx'; onnx.save(proto, p)
    with pytest.warns(UserWarning, match=r"nohash\.onnx: no 'weights_sha256'"): assert verify_onnx_weights(p) is None
    with pytest.raises(ValueError, match=r"nohash\.onnx: no 'weights_sha256'"): verify_onnx_weights(p, strict=True)
    del proto.metadata_props[:]
    q = tmp_path/'nometa.onnx'; onnx.save(proto, q)
    from facelab.predict import OnnxPredictor
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r'nometa\.onnx: task None'): OnnxPredictor(q)


def test_onnx_truncated_and_not_onnx(onnx_file, tmp_path):
    from facelab.predict import OnnxPredictor
    t = tmp_path/'truncated.onnx'; t.write_bytes(onnx_file.read_bytes()[:len(onnx_file.read_bytes()) // 2])
    with pytest.raises(ValueError, match=r'truncated\.onnx'): verify_onnx_weights(t)
    with pytest.raises(ValueError, match=r'truncated\.onnx'): OnnxPredictor(t)
    n = tmp_path/'notes.onnx'; n.write_text('this is not a model\n')
    with pytest.raises(ValueError, match=r'notes\.onnx'): verify_onnx_weights(n)
    with pytest.raises(ValueError, match=r'notes\.onnx'): OnnxPredictor(n)


def test_onnx_hash_covers_float_data_and_external_data(onnx_file, tmp_path):
    "The same weights stored as float_data, raw_data or external data hash the same; tampering with external data is caught."
    proto = onnx.load(str(onnx_file))
    h = onnx_weights_sha256(proto)
    alt = onnx.load(str(onnx_file))
    for t in alt.graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT:
            a = onnx.numpy_helper.to_array(t); t.ClearField('raw_data'); t.float_data.extend(a.reshape(-1).tolist())
    assert onnx_weights_sha256(alt) == h
    ext = tmp_path/'ext.onnx'
    onnx.save(proto, ext, save_as_external_data=True, location='ext.bin', size_threshold=0)
    assert verify_onnx_weights(ext, strict=True) == h
    b = bytearray((tmp_path/'ext.bin').read_bytes()); b[len(b) // 2] ^= 1; (tmp_path/'ext.bin').write_bytes(bytes(b))
    with pytest.raises(ValueError, match=r'ext\.onnx: weights do not match'): verify_onnx_weights(ext)


def test_quantize_refuses_tampered_fp32(onnx_file, tmp_path):
    from facelab.export_quant import quantize_int8
    p = flipped_onnx(onnx_file, tmp_path/'flipped.onnx')
    with pytest.raises(ValueError, match=r'flipped\.onnx: weights do not match'):
        quantize_int8(p, tmp_path/'q.onnx', [np.zeros((1, 3, 32, 32), np.float32)])
    assert not (tmp_path/'q.onnx').exists()


def test_model_config_checks_do_not_refuse_shipped_configs():
    "Every training config in configs/ passes the model-config check (the whitelist is not too tight)."
    import yaml
    cfgs = sorted((Path(__file__).parent.parent/'configs').glob('*.yaml'))
    assert cfgs
    for f in cfgs:
        if f.name.startswith(('detect_', 'au_agent')): continue   # Ultralytics settings and the LoRA config: no facelab model
        m = (yaml.safe_load(f.read_text()) or {}).get('model')
        if m: check_model_config(m['name'], m.get('kwargs'), str(f))


# ------------------------------------------------------------------------------------------ the CLI: one line, exit 2
def test_cli_export_flipped_checkpoint(pt_file, tmp_path):
    p = tmp_path/'flipped.pt'; p.write_bytes(pt_file.read_bytes())
    _, t = largest(torch.load(pt_file, weights_only=True)['state_dict'])
    flip_inside(p, t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    code, err = cli('export', '--task', 'macro', '--checkpoint', p, '--out', tmp_path/'x.onnx')
    assert_cli_error(code, err, p, 'weights do not match')
    assert not (tmp_path/'x.onnx').exists()


def test_cli_export_bad_kwarg_and_directory(pt_file, tmp_path):
    "The audit's bare TypeError: a config kwarg the model does not accept; and a checkpoint path that is a folder."
    p = crafted(pt_file, tmp_path, 'kw.pt', lambda d: d['config']['kwargs'].update(num_clases=7))
    code, err = cli('export', '--task', 'macro', '--checkpoint', p, '--out', tmp_path/'x.onnx')
    assert_cli_error(code, err, p, "unknown keyword 'num_clases'", "did you mean 'num_classes'")
    (tmp_path/'folder.pt').mkdir()
    code, err = cli('export', '--task', 'macro', '--checkpoint', tmp_path/'folder.pt', '--out', tmp_path/'x.onnx')
    assert_cli_error(code, err, tmp_path/'folder.pt')


def test_cli_predict_corrupted_model(onnx_file, tmp_path):
    from PIL import Image
    p = flipped_onnx(onnx_file, tmp_path/'flipped.onnx')
    img = tmp_path/'face.png'; Image.new('RGB', (32, 32), (120, 90, 80)).save(img)
    code, err = cli('predict', '--model', p, '--no-detect', img, '--out', tmp_path/'pred.csv')
    assert_cli_error(code, err, p, 'weights do not match')
    assert not (tmp_path/'pred.csv').exists()


def test_cli_index_build_label_file_is_directory_or_unreadable(tmp_path):
    root = tmp_path/'rafdb'
    (root/'Image'/'aligned').mkdir(parents=True)
    label = root/'EmoLabel'/'list_patition_label.txt'
    label.mkdir(parents=True)                                   # a folder where the label file belongs
    code, err = cli('index', 'build', '--dataset', 'rafdb', '--root', root, '--out', tmp_path/'idx', '--quiet')
    assert_cli_error(code, err, 'list_patition_label.txt')
    label.rmdir(); label.write_bytes(b'\xff\xfe\x00\x81\x00 not text\n')   # bytes that are no text at all
    code, err = cli('index', 'build', '--dataset', 'rafdb', '--root', root, '--out', tmp_path/'idx', '--quiet')
    assert_cli_error(code, err, 'list_patition_label.txt')


def test_cli_train_bad_config_path(tmp_path):
    (tmp_path/'cfg.yaml').mkdir()
    code, err = cli('train', 'macro', '--config', tmp_path/'cfg.yaml', '--out', tmp_path/'runs', env={'FACELAB_RUNS': str(tmp_path/'runs')})
    assert_cli_error(code, err, tmp_path/'cfg.yaml')


def test_cli_debug_shows_traceback(pt_file, tmp_path):
    p = crafted(pt_file, tmp_path, 'name.pt', lambda d: d['config'].update(name='nope'))
    code, err = cli('--debug', 'export', '--task', 'macro', '--checkpoint', p, '--out', tmp_path/'x.onnx')
    assert code == 2 and 'Traceback' in err and f"{p}: unknown model 'nope'" in err, err
