"""ONNX export (facelab.export, facelab.export_quant): full-size exports (exporter, parity), fp32 vs int8 latency of the
full-size image models (onnxruntime CPU, one thread, runs interleaved, P50 after warm-up) and the accuracy / F1 change of
int8 on held-out FaceSynth faces for tiny models trained on FaceSynth until they clearly learn."""
import os, tempfile, time
from pathlib import Path

import numpy as np
import onnx

from facelab.export import export_registered
from facelab.export_quant import quantize_int8, facesynth_calibration, compare_latency, prelu_as_max, int8_experiment

FULL = ('poster_v2', 'videomae_v2_b', 'opengraphau_r50', 'spotting_tcn')
INT8_FULL = ('poster_v2', 'opengraphau_r50')
# --quick: the deploy-shape tiny models of the C++ deploy configs, fewer latency runs, no int8 accuracy training
QUICK_MODELS = ('poster_v2_tiny', 'videomae_tiny', 'opengraphau_tiny', 'spotting_tiny')
QUICK_INT8 = ('poster_v2_tiny', 'opengraphau_tiny')
RUNS, WARMUP, THREADS = 30, 5, 1   # one intra-op thread: the 2 cores are shared with other jobs

def _load() -> str: return f'load avg {os.getloadavg()[0]:.1f}'

def int8_latency_rows(name:str, path:Path, meta:dict, d:Path, runs:int=RUNS, warmup:int=WARMUP, n_calib:int=32) -> list[dict]:
    "fp32 vs int8 latency of one full-size export; with PRelus, also fp32 with the same exact PRelu -> Max rewrite."
    t = time.time()
    q = quantize_int8(path, d/f'{name}.int8.onnx', facesynth_calibration(meta, n=n_calib))
    q_s = time.time() - t
    proto = onnx.load(str(path))
    n_prelu = len(prelu_as_max(proto))
    models = {'fp32': path}
    if n_prelu:   # reference: how much of the gain is the rewrite alone (it would speed fp32 up too)
        onnx.save(proto, str(d/f'{name}.max.onnx')); models['fp32 PRelu->Max'] = d/f'{name}.max.onnx'
    models['int8'] = q
    del proto
    x = facesynth_calibration(meta, n=1, seed=3000)[0]
    lat = compare_latency(models, x, warmup=warmup, runs=runs, threads=THREADS)
    how = f'onnxruntime CPU, {THREADS} thread, P50 of {runs} after {warmup} warm-up, runs of the models interleaved'
    rows = [dict(benchmark=f'export {name}', metric=f'latency {k} b1', value=v['p50_ms'], unit='ms',
                 note=f"{how} (P90 {v['p90_ms']:.1f}); {_load()}") for k, v in lat.items()]
    qm = q.stat().st_size / 1e6
    rows.append(dict(benchmark=f'export {name}', metric='int8 speed-up', value=lat['fp32']['p50_ms'] / lat['int8']['p50_ms'],
                     unit='x', target='>= 2', summary='int8 vs fp32 inference',
                     note=f'P50 fp32 (as exported) / P50 int8; static QDQ, per-channel, {n_calib} FaceSynth calibration faces, '
                          f'Softmax and activation x activation MatMuls fp32{f", {n_prelu} PRelu as Max(x, a*x)" if n_prelu else ""}; '
                          f'{path.stat().st_size / 1e6:.0f} -> {qm:.0f} MB; quantised in {q_s:.0f} s'))
    if n_prelu:
        rows.append(dict(benchmark=f'export {name}', metric='int8 speed-up vs fp32 PRelu->Max', unit='x',
                         value=lat['fp32 PRelu->Max']['p50_ms'] / lat['int8']['p50_ms'],
                         note='the int8 gain alone: fp32 with the same exact PRelu -> Max rewrite as the int8 model'))
    for p in models.values(): Path(p).unlink()
    return rows

def bench(quick:bool=False) -> list[dict]:
    rows, parity = [], {}
    models, int8_models = (QUICK_MODELS, QUICK_INT8) if quick else (FULL, INT8_FULL)
    lat_kw = dict(runs=10, warmup=2, n_calib=8) if quick else {}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for name in models:
            t = time.time()
            _, r = export_registered(name, d)
            m = r.metadata
            parity[name] = r.parity_max_abs
            rows += [dict(benchmark=f'export {name}', metric='parity max abs diff', value=r.parity_max_abs, unit='',
                          target='< 1e-5', note=f"{m['parity_inputs']} inputs (random + FaceSynth) + batch 2; exporter {r.exporter}, opset {m['opset']}"),
                     dict(benchmark=f'export {name}', metric='export time', value=time.time() - t, unit='s',
                          note=f"{r.path.stat().st_size / 1e6:.0f} MB, input {m['input_shape']}; {_load()}")]
            if name in int8_models: rows += int8_latency_rows(name, r.path, m, d, **lat_kw)
            elif r.path.exists(): r.path.unlink()
        worst = max(parity, key=parity.get)
        rows.append(dict(benchmark='export parity', metric='max abs diff, worst model', value=parity[worst], unit='',
                         target='< 1e-5', summary='export parity',
                         note=f'{worst}; all: ' + ', '.join(f'{k} {v:.2g}' for k, v in parity.items()) +
                              '; ONNX Runtime vs PyTorch on random + FaceSynth inputs, batch 1 and 2'))
        for task in (() if quick else ('macro', 'au')):
            e = int8_experiment(task, d)
            b = f"int8 {e['model']} ({e['input']} px, trained on FaceSynth)"
            rows.append(dict(benchmark=b, metric=f"{e['metric']} fp32", value=e['fp32'], unit='%',
                             note=f"tiny model, not the deploy size; {e['n_test']} held-out aligned FaceSynth faces (unseen identities); "
                                  f"chance {e['chance']:.1f}; fit on training faces {e['train_fit']:.1f}; {e['n_train']} training faces, "
                                  f"{e['epochs']} epochs in {e['train_s']:.0f} s, last epoch kept"))
            rows.append(dict(benchmark=b, metric=f"{e['metric']} int8", value=e['int8'], unit='%',
                             note=f"same quantize_int8 settings as the latency rows; {e['n_calib']} calibration faces of their own"))
            rows.append(dict(benchmark=b, metric='int8 change', value=e['delta'], unit='points',
                             target='>= -1', note='int8 minus fp32 on the same held-out faces'))
    return rows

if __name__ == '__main__':
    for r in bench(): print(r)
