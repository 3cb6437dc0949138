"""Tiny facelab models, bad models and golden tensors for the C++ tests (ctest fixture "models").

    .venv/bin/python cpp/tests/make_models.py OUT_DIR

Every good model is written by `facelab.export.to_onnx` (the real exporter, metadata included). Golden files:
`<name>.golden.json` lists the inputs (PNG files at the model's size, or raw float32 .bin) and the outputs of Python
onnxruntime as raw float32 .bin files, plus the preprocessed input tensor facelab.predict computes.
"""
import json, sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from PIL import Image
from torch import nn

from facelab.export import to_onnx, onnx_session, export_registered, set_metadata, read_metadata
from facelab.integrity import onnx_weights_sha256, WEIGHTS_SHA256_KEY
from facelab.predict import OnnxPredictor, read_rgb

torch.set_num_threads(1)
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)

class Img(nn.Module):
    "Conv + pool + linear; `two`: (sigmoid, relu) heads like the AU contract."
    def __init__(self, n=7, cin=3, two=False):
        super().__init__(); self.conv = nn.Conv2d(cin, 4, 5, stride=4); self.fc = nn.Linear(4, n); self.two = two
    def forward(self, x):
        z = self.fc(self.conv(x).relu().mean((2, 3)))
        return (torch.sigmoid(z), z.relu()) if self.two else z

class Clip(nn.Module):
    def __init__(self, n=3):
        super().__init__(); self.conv = nn.Conv3d(3, 4, (3, 5, 5), stride=(2, 4, 4)); self.fc = nn.Linear(4, n)
    def forward(self, x): return self.fc(self.conv(x.transpose(1, 2)).relu().mean((2, 3, 4)))

def export(model, task, name, shape, **kw):
    torch.manual_seed(0)
    return to_onnx(model, task, out/f'{name}.onnx', input_shape=shape, parity_inputs=[torch.randn(*shape)],
                   simplify=False, **kw)

def write(a, name):
    np.ascontiguousarray(a, np.float32).tofile(out/name); return name

def golden(name, kind, n=3, seed=0):
    "PNG inputs at the model's size; preprocessed tensors and outputs from facelab.predict / Python onnxruntime."
    p = OnnxPredictor(out/f'{name}.onnx')
    sess, rng, cases = onnx_session(out/f'{name}.onnx'), np.random.default_rng(seed), []
    H, W = p.hw
    for i in range(n):
        if kind == 'image':
            img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
            f = f'{name}_{i}.png'; Image.fromarray(img).save(out/f)
            x = p.preprocess(read_rgb(out/f))[None]
            files = [f]
        else:   # clip: T frames
            files = []
            for t in range(p.frames):
                f = f'{name}_{i}_{t:02d}.png'; Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(out/f)
                files.append(f)
            x = p.preprocess(np.stack([read_rgb(out/f) for f in files]))[None]
        ys = sess.run(None, {p.input_name: x})
        cases.append({'files': files, 'input': write(x, f'{name}_{i}.in.bin'), 'input_shape': list(x.shape),
                      'outputs': [write(y, f'{name}_{i}.out{j}.bin') for j, y in enumerate(ys)],
                      'output_shapes': [list(y.shape) for y in ys]})
    (out/f'{name}.golden.json').write_text(json.dumps({'model': f'{name}.onnx', 'cases': cases}, indent=1))

# good models
torch.manual_seed(1); export(Img(7), 'macro', 'macro', (1, 3, 64, 64))
torch.manual_seed(2); export(Img(7), 'macro', 'macro_b', (1, 3, 64, 64))
torch.manual_seed(3); export(Img(7), 'macro', 'macro_bgr', (1, 3, 48, 48), mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3],
                             color_order='BGR')
torch.manual_seed(4); export(Img(17, two=True), 'au', 'au', (1, 3, 56, 56),
                             extra_metadata={'thresholds': [0.3 + 0.02 * i for i in range(17)]})
torch.manual_seed(5); export(Clip(3), 'micro', 'micro', (1, 16, 3, 32, 32))
for n, k in [('macro', 'image'), ('macro_b', 'image'), ('macro_bgr', 'image'), ('au', 'image'), ('micro', 'clip')]:
    golden(n, k, n=2 if k == 'clip' else 3)

# spotting: the registered tiny TCN at its deploy window, features from a seeded normal
model, res = export_registered('spotting_tiny', out, seed=0, parity_inputs=[torch.randn(1, 256, 70)], simplify=False)
(out/'spotting_tiny.onnx').rename(out/'spotting.onnx')
rng = np.random.default_rng(0)
feats = rng.standard_normal((300, 70)).astype(np.float32)
write(feats, 'spotting_features.bin')
from facelab.models.spotting import predict_scores
sc = predict_scores(model.model, feats)
kinds = list(model.model.cfg.kinds)
write(np.concatenate([sc[k] for k in kinds], 1), 'spotting_scores.bin')   # (300, 3 * kinds), batch reference
sess = onnx_session(out/'spotting.onnx')
x = feats[None, :256]
write(x, 'spotting_0.in.bin')
for j, y in enumerate(sess.run(None, {'features': x})): write(y, f'spotting_0.out{j}.bin')

# bad models
good = onnx.load(out/'macro.onnx')
raw = (out/'macro.onnx').read_bytes()
(out/'bad_corrupt.onnx').write_bytes(raw[:len(raw) // 2] + b'\x00garbage')
torch.manual_seed(6); export(Img(7, cin=1), 'macro', 'bad_shape', (1, 1, 64, 64), mean=[0.5], std=[0.5])
m = onnx.load(out/'macro.onnx'); del m.metadata_props[:]; onnx.save(m, out/'bad_nometa.onnx')
m = onnx.load(out/'macro.onnx')
last = m.graph.output[0].name
for node in m.graph.node:
    node.output[:] = [o + '_pre' if o == last else o for o in node.output]
m.graph.initializer.append(numpy_helper.from_array(np.array([np.nan], np.float32), 'nan_c'))
m.graph.node.append(helper.make_node('Mul', [last + '_pre', 'nan_c'], [last]))
meta = read_metadata(m); meta[WEIGHTS_SHA256_KEY] = onnx_weights_sha256(m)   # consistent: the warm-up must catch it
set_metadata(m, meta); onnx.checker.check_model(m); onnx.save(m, out/'bad_nan.onnx')
m = onnx.load(out/'macro.onnx')   # one weight changed, metadata (and its weight hash) untouched
w = numpy_helper.to_array(m.graph.initializer[0]).copy(); w.flat[0] += 1.0
m.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, m.graph.initializer[0].name)); onnx.save(m, out/'bad_weights.onnx')
# a graph whose tensors use the typed protobuf fields and Constant nodes (the exported models only use raw_data)
T = onnx.TensorProto
typed = [helper.make_tensor('f32', T.FLOAT, [2, 2], [1.5, -2., 3.25, 0.]),
         helper.make_tensor('i8', T.INT8, [3], [-1, 7, 127]), helper.make_tensor('u8', T.UINT8, [2], [0, 255]),
         helper.make_tensor('f16', T.FLOAT16, [2], np.array([0.5, -3.0], np.float16)),
         helper.make_tensor('i64', T.INT64, [2], [-5, 1 << 40]), helper.make_tensor('f64', T.DOUBLE, [1], [3.14]),
         helper.make_tensor('u32', T.UINT32, [2], [1, 4000000000]), helper.make_tensor('b', T.BOOL, [2], [True, False]),
         helper.make_tensor('s', T.STRING, [2], [b'ab', 'ü'.encode()]),
         numpy_helper.from_array(np.arange(6, dtype=np.int16).reshape(2, 3), 'i16_raw')]
consts = [helper.make_node('Constant', [], ['zc'], value=helper.make_tensor('ignored', T.FLOAT, [2], [1., 2.])),
          helper.make_node('Constant', [], ['ac'], value=numpy_helper.from_array(np.ones(2, np.float32), 'x'))]
g = helper.make_graph(consts + [helper.make_node('Add', ['zc', 'ac'], ['y'])], 'hash_cases', [],
                      [helper.make_tensor_value_info('y', T.FLOAT, [2])], initializer=typed)
onnx.save(helper.make_model(g), out/'hash_cases.onnx')
# the Python weight hash of every model, for the C++ implementation to match
(out/'weights_sha256.json').write_text(json.dumps({f.name: onnx_weights_sha256(onnx.load(f)) for f in sorted(out.glob('*.onnx'))
                                                   if f.name != 'bad_corrupt.onnx'}, indent=1))
print(f'wrote test models to {out}')

# Face front end goldens (FaceFrontEnd vs facelab.face): images as PNG, the templates JSON the C++ side reads, and the
# Python detector's boxes, 68 landmarks and aligned landmarks (landmarks mapped by align_matrix) per template.
def face_goldens(out:Path):
    from facelab.face.detect import has_dlib, FaceDetector
    from facelab.face.align import TEMPLATES, align_matrix, transform_points
    from facelab.synth.face import render_face, sample_identity, Appearance
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]/'tools'))
    from face_templates import templates_json
    d = out/'face'; d.mkdir(exist_ok=True)
    (d/'face_templates.json').write_text(json.dumps(templates_json(), indent=1))
    if not has_dlib(): print('dlib not importable in Python: no face goldens'); return
    import skimage.data
    imgs = {'astronaut': skimage.data.astronaut()}
    for i, (sz, app) in enumerate([(320, Appearance(scale=0.5, offset=(0.15, -0.05))), (256, None),
                                   (480, Appearance(scale=0.4, offset=(-0.1, 0.1)))]):
        imgs[f'synth{i}'] = render_face(sample_identity(np.random.default_rng(3 + i)), {'AU12': 3} if i == 1 else {},
                                        size=sz, appearance=app).image
    det = FaceDetector('hog')
    cases = []
    for name, img in imgs.items():
        Image.fromarray(img).save(d/f'{name}.png')
        faces = det(img)
        cases.append({'image': f'{name}.png', 'faces': [
            {'box': [float(v) for v in f.box], 'score': f.score, 'landmarks': f.landmarks.tolist(),
             'aligned': {t: transform_points(f.landmarks, align_matrix(f.landmarks, t)).tolist() for t in TEMPLATES},
             'box_aligned': {t: align_matrix(None, t, box=f.box).tolist() for t in TEMPLATES}} for f in faces]})
    (d/'face.golden.json').write_text(json.dumps({'cases': cases}, indent=1))
    print(f"face goldens: {[(c['image'], len(c['faces'])) for c in cases]}")

face_goldens(out)
