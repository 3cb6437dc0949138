"""The C++ tools (cpp/: facelab_run, --ab, facelab_bench) driven as a user drives them, on tiny models that
`facelab.export` writes and a config that `facelab serve-config` writes; results checked against facelab.predict."""
import json, os, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from facelab.export import to_onnx
from facelab.predict import OnnxPredictor

ROOT = Path(__file__).resolve().parent.parent
BUILD = Path(os.environ.get('FACELAB_CPP_BUILD', ROOT/'cpp'/'build'))
RUN, BENCH = BUILD/'facelab_run', BUILD/'facelab_bench'
BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}

pytestmark = pytest.mark.skipif(not RUN.exists(), reason=f'the C++ tools are not built ({RUN}): run `make cpp`')

class Img(nn.Module):
    def __init__(self, n=7, two=False):
        super().__init__(); self.conv = nn.Conv2d(3, 4, 5, stride=4); self.fc = nn.Linear(4, n); self.two = two
    def forward(self, x):
        z = self.fc(self.conv(x).relu().mean((2, 3)))
        return (torch.sigmoid(z), z.relu()) if self.two else z

def run(*args):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=ENV, timeout=300)

@pytest.fixture(scope='module')
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp('cpp')
    torch.manual_seed(0)
    for name, task, m, s in [('macro', 'macro', Img(7), 64), ('macro2', 'macro', Img(7), 64),
                             ('au', 'au', Img(17, True), 48)]:
        to_onnx(m, task, d/f'{name}.onnx', input_shape=(1, 3, s, s), parity_inputs=[torch.randn(1, 3, s, s)], simplify=False)
    frames = d/'frames'; frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6): Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(frames/f'{i:03d}.png')
    for cfg, macro in [('a.json', 'macro.onnx'), ('b.json', 'macro2.onnx')]:
        r = subprocess.run([str(BIN/'facelab'), 'serve-config', str(d), '--out', str(d/cfg), '--model', f'macro={d/macro}',
                            '--model', f'au={d/"au.onnx"}'], capture_output=True, text=True, env=ENV, timeout=300)
        assert r.returncode == 0, r.stderr
    return d

def jsonl(p): return [json.loads(l) for l in Path(p).read_text().splitlines()]

def test_run_matches_python(models):
    "facelab_run's per-frame JSONL (schema of cpp/README.md) equals facelab.predict on the same images."
    r = run(RUN, '--config', models/'a.json', '--input', models/'frames', '--out', models/'a.jsonl')
    assert r.returncode == 0, r.stderr
    rows = jsonl(models/'a.jsonl')
    assert len(rows) == 7 and rows[-1] == {**rows[-1], 'end': True, 'frames': 6}
    ref_m = OnnxPredictor(models/'macro.onnx').predict_images([models/'frames'])
    for row, (_, ref) in zip(rows[:-1], ref_m.iterrows()):
        assert row['source'] == ref.input and row['macro']['label'] == ref.label
        assert set(row) >= {'frame', 'source', 'macro', 'au', 'flow', 'latency_ms'}
        for c, p in row['macro']['probs'].items(): assert abs(p - ref[f'prob_{c}']) < 1e-5
    # au: the 64 px frames are resized to 48 (OpenCV here, PIL in Python): close, not bit-identical
    ref_a = OnnxPredictor(models/'au.onnx').predict_images([models/'frames'])
    diffs = [abs(v['prob'] - ref[f'{au}_prob']) for row, (_, ref) in zip(rows[:-1], ref_a.iterrows()) for au, v in row['au'].items()]
    assert len(diffs) == 6 * 17 and max(diffs) < 0.05

def test_ab(models):
    "Same config on both sides agrees fully; a different macro model agrees exactly as often as Python says."
    r = run(RUN, '--ab', models/'a.json', models/'a.json', '--input', models/'frames')
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep['frames'] == 6 and rep['agreement']['macro_label'] == 1.0 and rep['agreement']['au_presence'] == 1.0
    assert rep['agreement']['macro_max_abs_prob_diff'] == 0.0
    assert set(rep['latency_ms']['macro']) == {'old', 'new', 'p50_diff_ms'}
    r = run(RUN, '--ab', models/'a.json', models/'b.json', '--input', models/'frames', '--out', models/'ab.json')
    assert r.returncode == 0, r.stderr
    rep = json.loads((models/'ab.json').read_text())
    la = OnnxPredictor(models/'macro.onnx').predict_images([models/'frames']).label
    lb = OnnxPredictor(models/'macro2.onnx').predict_images([models/'frames']).label
    assert rep['agreement']['macro_label'] == pytest.approx(float((la == lb).mean()))

def test_bench(models):
    r = run(BENCH, '--config', models/'a.json', '--iters', 5, '--warmup', 2)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    for task in ('macro', 'au'):
        e = rep['engines'][task]
        assert {'engine', 'engine_infer', 'bare', 'ratio'} <= set(e) and e['bare']['n'] == 5 and e['ratio'] > 0
        assert e['engine']['p50'] <= e['engine']['p99']
    assert rep['total_per_frame']['n'] == 5

def test_clear_errors(models, tmp_path):
    "Bad inputs fail with exit 2 and a message naming the file, never a crash."
    bad = tmp_path/'bad.json'; bad.write_text('{"models": {"macro": {"path": "nope.onnx"}}}')
    r = run(RUN, '--config', bad, '--input', models/'frames')
    assert r.returncode == 2 and 'nope.onnx' in r.stderr and 'not found' in r.stderr
    bad.write_text('{"models": {"macro": {"path": "m.onnx", "strde": 3}}}')
    r = run(RUN, '--config', bad, '--input', models/'frames')
    assert r.returncode == 2 and "bad.json.models.macro: unknown key 'strde'" in r.stderr
    r = run(RUN, '--config', models/'a.json', '--input', tmp_path/'missing')
    assert r.returncode == 2 and 'missing' in r.stderr
    cfg = json.loads((models/'a.json').read_text()); cfg['models']['macro']['sha256'] = '0' * 64
    bad.write_text(json.dumps({**cfg, 'models': {'macro': {**cfg['models']['macro'], 'path': str(models/'macro.onnx')}}}))
    r = run(RUN, '--config', bad, '--input', models/'frames')
    assert r.returncode == 2 and 'sha256' in r.stderr and 'macro.onnx' in r.stderr

def test_video_input(models, tmp_path):
    "A video file works like a frame folder: one JSON line per decoded frame, sources named video#index."
    import cv2
    vid = tmp_path/'clip.avi'
    w = cv2.VideoWriter(str(vid), cv2.VideoWriter_fourcc(*'MJPG'), 30, (64, 64))
    assert w.isOpened()
    for f in sorted((models/'frames').iterdir()): w.write(cv2.imread(str(f)))
    w.release()
    r = run(RUN, '--config', models/'a.json', '--input', vid)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(l) for l in r.stdout.splitlines()]
    assert len(rows) == 7 and rows[0]['source'] == f'{vid}#0' and rows[-1]['frames'] == 6
    assert all(len(x['macro']['probs']) == 7 for x in rows[:-1])

def test_watch_config_live_apply(models, tmp_path):
    "--watch-config: a config rewritten mid-run is applied between frames; later frames come from the new macro model."
    from facelab.serve_config import write_engine_config
    frames = tmp_path/'many'; frames.mkdir()
    src = sorted((models/'frames').iterdir())
    for i in range(300): (frames/f'{i:04d}.png').write_bytes(src[i % len(src)].read_bytes())
    cfg = write_engine_config(models, tmp_path/'live.json', models={'macro': models/'macro.onnx'})
    ref = {}
    for name, m in [('a', 'macro.onnx'), ('b', 'macro2.onnx')]:
        c = write_engine_config(models, tmp_path/f'{name}.json', models={'macro': models/m})
        r = run(RUN, '--config', c, '--input', models/'frames')
        ref[name] = [json.loads(l)['macro']['probs'] for l in r.stdout.splitlines()[:-1]]
    assert ref['a'] != ref['b']
    p = subprocess.Popen([str(RUN), '--config', str(cfg), '--input', str(frames), '--watch-config'],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    first = json.loads(p.stdout.readline())   # the runner blocks on a full pipe, so it cannot finish before the rewrite
    write_engine_config(models, cfg, models={'macro': models/'macro2.onnx'})
    rest = p.stdout.read(); err = p.stderr.read()   # not communicate(): it would skip what readline() buffered
    assert p.wait(timeout=300) == 0, err
    rows = [first] + [json.loads(l) for l in rest.splitlines()[:-1]]
    assert len(rows) == 300 and 'config reloaded at frame' in err
    assert rows[0]['macro']['probs'] == ref['a'][0]
    assert rows[-1]['macro']['probs'] == ref['b'][299 % len(src)]
    switched = next(i for i, r in enumerate(rows) if r['macro']['probs'] == ref['b'][i % len(src)])
    assert all(r['macro']['probs'] == ref['a'][i % len(src)] for i, r in enumerate(rows[:switched]))
    assert all(r['macro']['probs'] == ref['b'][i % len(src)] for i, r in enumerate(rows[switched:], switched))

def test_run_face_front_end(models, tmp_path):
    "Raw frames with a `face` section: dlib detection + alignment in C++ (FaceFrontEnd) finds the faces Python finds, "
    "and the macro model sees the crop Python's front end makes (probabilities close: resize differs, OpenCV vs PIL)."
    pytest.importorskip('dlib')
    if not (BUILD/'tests'/'facelab_face_test').exists(): pytest.skip('the C++ build has no FaceFrontEnd (dlib not found by cmake)')
    from facelab.face.detect import FaceDetector
    from facelab.face.align import align_face
    from facelab.synth.face import render_face, sample_identity, Appearance
    import skimage.data
    # the config as a user writes it: `facelab serve-config --face` (templates file beside it, dlib model found)
    r = run(BIN/'facelab', 'serve-config', models, '--out', tmp_path/'face.json', '--model', f'macro={models/"macro.onnx"}',
            '--model', f'au={models/"au.onnx"}', '--face')
    assert r.returncode == 0 and 'face: detect every 1 frame' in r.stdout, r.stderr
    assert (tmp_path/'face_templates.json').is_file()
    cfg = json.loads((tmp_path/'face.json').read_text())
    assert cfg['face']['templates'] == 'face_templates.json' and cfg['face']['template'] == 'macro' 
    frames = tmp_path/'raw'; frames.mkdir()
    imgs = [skimage.data.astronaut(), np.full((120, 160, 3), 90, np.uint8),
            render_face(sample_identity(np.random.default_rng(3)), {}, size=320, appearance=Appearance(scale=0.5, offset=(0.15, -0.05))).image]
    for i, im in enumerate(imgs): Image.fromarray(im).save(frames/f'{i:03d}.png')
    r = run(RUN, '--config', tmp_path/'face.json', '--input', frames, '--out', tmp_path/'f.jsonl')
    assert r.returncode == 0, r.stderr
    rows = jsonl(tmp_path/'f.jsonl')[:-1]
    assert len(rows) == 3 and rows[1]['face'] is None and 'macro' not in rows[1]
    det, pred = FaceDetector('hog'), OnnxPredictor(models/'macro.onnx')
    for i in (0, 2):
        f = det(imgs[i])[0]
        assert np.abs(np.array(rows[i]['face']['box']) - np.array(f.box)).max() <= 1, (rows[i]['face'], f.box)
        crop = align_face(imgs[i], f.landmarks, 'macro')
        Image.fromarray(crop).save(tmp_path/f'crop{i}.png')
        ref = pred.predict_images([tmp_path/f'crop{i}.png']).iloc[0]
        assert max(abs(p - ref[f'prob_{c}']) for c, p in rows[i]['macro']['probs'].items()) < 0.05
        assert rows[i]['latency_ms']['face'] > 0
    # a config asking for an unknown template is refused with the file named
    cfg['face']['template'] = 'nope'; (tmp_path/'bad.json').write_text(json.dumps(cfg))
    r = run(RUN, '--config', tmp_path/'bad.json', '--input', frames)
    assert r.returncode == 2 and "unknown alignment template 'nope'" in r.stderr and "bad.json" in r.stderr
