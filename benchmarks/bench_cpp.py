"""C++ serving engines (cpp/, facelab_bench): per-engine P50/P90/P99 after warm-up, engine/bare-ORT ratio, and the total
per frame of two deploy configs against the plan's < 10 ms target, measured side by side in one run.

Deploy configs (named in the rows): `tiny-fp32` = poster_v2_tiny (macro 224), opengraphau_tiny (au 256), videomae_tiny
(micro 16x224, a window every 4 frames) and spotting_tiny; `tiny-int8` = the same with macro and au statically
quantised (facelab.export_quant, FaceSynth calibration). Random weights: latency does not depend on them."""
import json, os, subprocess, sys, tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
BUILD = Path(os.environ.get('FACELAB_CPP_BUILD', ROOT/'cpp'/'build'))
MODELS = {'macro': 'poster_v2_tiny', 'au': 'opengraphau_tiny', 'micro': 'videomae_tiny', 'spotting': 'spotting_tiny'}
ITERS, WARMUP = 100, 10
QUICK_ITERS, QUICK_WARMUP = 30, 5

def _export(d:Path) -> dict:
    from facelab.export import export_registered, EXPORT_MODELS
    from facelab.export_quant import quantize_int8, facesynth_calibration
    paths, int8 = {}, {}
    for task, name in MODELS.items():
        shape = [1, 256, 70] if task == 'spotting' else None
        if shape is None:
            from facelab.export import CONTRACTS
            shape = [1, *CONTRACTS[task].inputs[next(iter(CONTRACTS[task].inputs))][1:]]
        _, res = export_registered(name, d, parity_inputs=[torch.randn(*shape)])
        paths[task] = res.path
        if task in ('macro', 'au'):
            int8[task] = quantize_int8(res.path, d/f'{name}.int8.onnx', facesynth_calibration(res.metadata, n=8))
    return paths, {**paths, **int8}

def _face_inputs(d:Path) -> Path:
    "Raw frames for the FaceFrontEnd row: skimage's astronaut (512x512, upsampled once as in Python) and a 640x480 FaceSynth frame."
    import numpy as np, skimage.data
    from PIL import Image
    from facelab.synth.face import render_face, sample_identity, Appearance
    f = d/'raw'; f.mkdir()
    Image.fromarray(skimage.data.astronaut()).save(f/'0_astronaut.png')
    face = render_face(sample_identity(np.random.default_rng(3)), {}, size=480, appearance=Appearance(scale=0.5)).image
    canvas = np.full((480, 640, 3), 110, np.uint8); canvas[:, 80:560] = face
    Image.fromarray(canvas).save(f/'1_synth_640x480.png')
    return f

def bench(quick:bool=False) -> list[dict]:
    iters, warmup = (QUICK_ITERS, QUICK_WARMUP) if quick else (ITERS, WARMUP)
    exe = BUILD/'facelab_bench'
    if not exe.exists(): raise FileNotFoundError(f'{exe} is not built: run `make cpp`')
    from facelab.serve_config import write_engine_config
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as t:
        d = Path(t)
        fp32, int8 = _export(d)
        reports = {}
        raw = _face_inputs(d)
        subprocess.run([sys.executable, str(ROOT/'cpp'/'tools'/'face_templates.py'), str(d/'face_templates.json')], check=True,
                       capture_output=True)
        for name, models in [('tiny-fp32', fp32), ('tiny-int8', int8)]:
            cfg = write_engine_config(d, d/f'{name}.json', models=models, threads={'intra_op': 1})
            extra = []
            if name == 'tiny-fp32':   # the FaceFrontEnd row (dlib HOG + 68 landmarks + rafdb alignment), once
                c = json.loads(Path(cfg).read_text())
                c['face'] = {'detect': True, 'every': 1, 'templates': str(d/'face_templates.json'), 'template': 'macro'}
                Path(cfg).write_text(json.dumps(c, indent=1))
                extra = ['--face-input', str(raw)]
            r = subprocess.run([str(exe), '--config', str(cfg), '--iters', str(iters), '--warmup', str(warmup), *extra],
                               capture_output=True, text=True, timeout=1800, env={**os.environ, 'OMP_NUM_THREADS': '1'})
            if r.returncode: raise RuntimeError(f'facelab_bench failed: {r.stderr}')
            reports[name] = json.loads(r.stdout)
        how = f'facelab_bench, 1 intra-op thread, {iters} runs after {warmup} warm-up; load avg {os.getloadavg()[0]:.1f}'
        for name, rep in reports.items():
            for task, e in rep['engines'].items():
                b = f'cpp {name} {task}'
                src = e.get('engine', e['engine_infer'])
                what = 'predict from a BGR frame' if 'engine' in e else 'one window'
                for q in ('p50', 'p90', 'p99'):
                    rows.append(dict(benchmark=b, metric=f'engine {q}', value=src[q], unit='ms', note=f'{what}; {how}'))
                rows.append(dict(benchmark=b, metric='bare ORT p50', value=e['bare']['p50'], unit='ms', note=how))
                rows.append(dict(benchmark=b, metric='engine/bare', value=e['ratio'], unit='x', target='<= 1.02',
                                 note='engine inference on a ready tensor vs a plain Ort::Session with the same options, runs interleaved, P50'))
            if 'face' in rep:
                fr = rep['face']
                for q in ('p50', 'p90', 'p99'):
                    rows.append(dict(benchmark='cpp FaceFrontEnd', metric=f'detect+landmarks+align {q}',
                                     value=fr['detect_landmarks_align'][q], unit='ms',
                                     note=f"dlib HOG + 68-point shape predictor + {fr['template']} alignment, per raw frame, "
                                          f"alternating the 512x512 astronaut (upsampled once) and a 640x480 FaceSynth frame; {how}"))
                rows.append(dict(benchmark='cpp FaceFrontEnd', metric='landmarks+align p50 (between detections)',
                                 value=fr['landmarks_align']['p50'], unit='ms',
                                 note=f"face.every > 1: the frames between detections only refit the landmarks; {how}"))
            tot = rep['total_per_frame']
            spot = rep['engines']['spotting']['engine_infer']['p50'] / 128
            ratios = {t: e['ratio'] for t, e in rep['engines'].items()}
            worst = max(ratios, key=ratios.get)
            rows.append(dict(benchmark=f'cpp {name}', metric='engine/bare, worst of the engines', value=ratios[worst], unit='x',
                             target='<= 1.02', summary='C++ engine vs bare ONNX Runtime',
                             note=f"{worst}; all: " + ', '.join(f'{t} {r:.3f}' for t, r in ratios.items()) +
                                  '; engine inference on a ready tensor vs a plain Ort::Session with the same options, runs interleaved, P50'))
            rows.append(dict(benchmark=f'cpp {name}', metric='total per frame p50', value=tot['p50'], unit='ms', target='< 10',
                             summary='total per-frame latency (deploy configs)',
                             note=f"Pipeline::process: macro + au + micro (window every 4 frames) + optical-flow baseline; "
                                  f"P90 {tot['p90']:.2f}, P99 {tot['p99']:.2f}; spotting adds {spot:.3f} ms/frame amortised "
                                  f"(one 256-frame window every 128 frames); on raw frames add the FaceFrontEnd row; {how}"))
    return rows
