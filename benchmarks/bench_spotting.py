"""Spotting speed: ROI flow features per frame (rendering excluded), SpottingNet window latency in torch and
onnxruntime, and the held-out F1 of the notebook's protocol (32 train / 8 test FaceSynth videos)."""
QUICK = False   # no --quick mode: `run.py --quick` skips this file
import tempfile, time

import numpy as np
import torch


def _ms(fn, n):
    fn(); t = time.perf_counter()
    for _ in range(n): fn()
    return (time.perf_counter() - t) / n * 1000


def bench() -> list[dict]:
    import onnxruntime as ort
    from facelab.models import create_model
    from facelab.models.spotting import export_onnx, spotting_experiment
    from facelab.models.spotting_flow import FlowFeaturizer, FlowFeatureConfig, synth_spotting_set
    from facelab.synth.face import sample_identity, sample_appearance, render_face
    from facelab.synth.video import long_video, iter_frames
    rows = []
    rng = np.random.default_rng(0)
    idn, app = sample_identity(rng), sample_appearance(rng)
    ev = long_video(rng, fps=30., seconds=10, n_micro=2, n_macro=1, n_distractors=1)
    for size in (96, 128):
        frames = [f for _, f in iter_frames(idn, ev, 300, 30., size=size, appearance=app, seed=0)]
        fz = FlowFeaturizer(render_face(idn, size=size, appearance=app).landmarks, 30., (size, size), FlowFeatureConfig())
        t = time.perf_counter()
        for f in frames: fz.update(f)
        fz.finish()
        rows.append({'benchmark': 'spotting features', 'metric': f'Farneback ROI features, {size}px frames',
                     'value': (time.perf_counter() - t) / len(frames) * 1000, 'unit': 'ms/frame',
                     'note': '2 flows per frame (micro and macro k), crop 64px'})
    for name in ('spotting_tiny', 'spotting_tcn'):
        net = create_model(name).eval()
        x = torch.zeros(1, net.cfg.window, net.cfg.n_features)
        with torch.no_grad(): tms = _ms(lambda: net(x), 20)
        with tempfile.TemporaryDirectory() as d:
            s = ort.InferenceSession(str(export_onnx(net, f'{d}/s.onnx')))
            xo = x.numpy()
            oms = _ms(lambda: s.run(None, {'features': xo}), 50)
        rows += [{'benchmark': 'spotting net', 'metric': f'{name} torch, 256-frame window', 'value': tms, 'unit': 'ms'},
                 {'benchmark': 'spotting net', 'metric': f'{name} onnxruntime, 256-frame window', 'value': oms, 'unit': 'ms'}]
    video = dict(seconds=18, size=96, n_micro=4, n_macro=2, n_distractors=2)
    train = synth_spotting_set(range(32), progress=False, **video)
    test = synth_spotting_set(range(1000, 1008), progress=False, **video)
    t = time.perf_counter()
    res = spotting_experiment(train, test, steps=400, progress=False)
    rows += [{'benchmark': 'spotting held-out', 'metric': 'train + fit (spotting_tiny, 400 steps)',
              'value': time.perf_counter() - t, 'unit': 's'},
             {'benchmark': 'spotting held-out', 'metric': 'overall F1, SpottingNet', 'value': res['spotter']['overall']['f1'],
              'unit': '', 'target': '>= 0.5', 'note': '8 unseen identities, IoU >= 0.5'},
             {'benchmark': 'spotting held-out', 'metric': 'overall F1, flow-threshold baseline',
              'value': res['baseline_scores']['overall']['f1'], 'unit': '', 'note': 'fitted on the same training videos'}]
    return rows


if __name__ == '__main__':
    for r in bench(): print(r)
