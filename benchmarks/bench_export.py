"""ONNX export (facelab.export, facelab.export_quant): full-size exports (exporter, parity), fp32 vs int8 latency
(onnxruntime CPU, P50 after warm-up) and the accuracy / F1 change of int8 on FaceSynth for briefly trained tiny models."""
import os, tempfile, time
from pathlib import Path

import numpy as np

from facelab.export import export_registered
from facelab.export_quant import quantize_int8, facesynth_calibration, ort_latency, int8_experiment

FULL = ('poster_v2', 'videomae_v2_b', 'opengraphau_r50', 'spotting_tcn')
INT8_FULL = ('poster_v2', 'opengraphau_r50')

def _load() -> str: return f'load avg {os.getloadavg()[0]:.1f}'

def bench() -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for name in FULL:
            t = time.time()
            _, r = export_registered(name, d)
            m = r.metadata
            rows += [dict(benchmark=f'export {name}', metric='parity max |diff|', value=r.parity_max_abs, unit='',
                          target='< 1e-5', note=f"{m['parity_inputs']} inputs (random + FaceSynth) + batch 2; exporter {r.exporter}, opset {m['opset']}"),
                     dict(benchmark=f'export {name}', metric='export time', value=time.time() - t, unit='s',
                          note=f"{r.path.stat().st_size / 1e6:.0f} MB, input {m['input_shape']}; {_load()}")]
            if name in INT8_FULL:
                q = quantize_int8(r.path, d/f'{name}.int8.onnx', facesynth_calibration(m, n=32))
                x = facesynth_calibration(m, n=1, seed=3000)[0]
                lat = {k: ort_latency(p, x, warmup=5, runs=30, threads=2) for k, p in (('fp32', r.path), ('int8', q))}
                for k in ('fp32', 'int8'):
                    rows.append(dict(benchmark=f'export {name}', metric=f'latency {k} b1', value=lat[k]['p50_ms'], unit='ms',
                                     note=f"onnxruntime CPU P50 of 30 after 5 warm-up, 2 threads (P90 {lat[k]['p90_ms']:.1f}); {_load()}"))
                rows.append(dict(benchmark=f'export {name}', metric='int8 speed-up', value=lat['fp32']['p50_ms'] / lat['int8']['p50_ms'],
                                 unit='x', target='>= 2', note='P50 fp32 / P50 int8 (static QDQ, per-channel, FaceSynth calibration)'))
                q.unlink()
            r.path.unlink()
        for task in ('macro', 'au'):
            e = int8_experiment(task, d)
            rows.append(dict(benchmark=f"int8 {e['model']} (trained)", metric=f"{e['metric']} fp32", value=e['fp32'], unit='%',
                             note=f"FaceSynth, {e['n_train']} train / {e['n_test']} held-out faces at {e['input']} px; "
                                  f"fit on train {e['train_fit']:.1f}%, chance {e['chance']:.1f}; trained {e['train_s']:.0f} s"))
            rows.append(dict(benchmark=f"int8 {e['model']} (trained)", metric=f"{e['metric']} int8", value=e['int8'], unit='%'))
            rows.append(dict(benchmark=f"int8 {e['model']} (trained)", metric='int8 change', value=e['delta'], unit='points',
                             target='>= -1', note='int8 minus fp32 on the same held-out faces'))
    return rows

if __name__ == '__main__':
    for r in bench(): print(r)
