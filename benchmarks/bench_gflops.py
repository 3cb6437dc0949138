"""Full-size POSTER++ (poster_v2, 224x224, batch 1) in onnxruntime: achieved GFLOP/s against a matmul peak measured in
the same run, with the same session options (onnxruntime CPU, 1 intra-op thread).

FLOPs = 2 x the MACs counted by `facelab.models.flop_report` (torch.utils.flop_counter) on the same model. The peak is
a single fp32 MatMul of 1024x1024 by 1024x1024 in onnxruntime (MLAS sgemm), the best a dense fp32 kernel reaches
here; the two sessions' runs are interleaved so that both see the same load."""
import os, tempfile, time
from pathlib import Path

import numpy as np

N = 1024

def _matmul_model(path:Path):
    import onnx
    from onnx import helper, TensorProto
    g = helper.make_graph([helper.make_node('MatMul', ['a', 'b'], ['c'])], 'mm',
                          [helper.make_tensor_value_info('a', TensorProto.FLOAT, [N, N])],
                          [helper.make_tensor_value_info('c', TensorProto.FLOAT, [N, N])],
                          [onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((N, N), np.float32), 'b')])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)]), str(path))

def bench(quick:bool=False) -> list[dict]:
    import torch
    from facelab.export import export_registered
    from facelab.export_quant import facesynth_calibration
    from facelab.models import flop_report
    from facelab.export import onnx_session
    runs, warmup = (8, 2) if quick else (30, 5)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        model, res = export_registered('poster_v2', d)
        macs = flop_report(model, torch.randn(1, 3, 224, 224))['macs']
        del model
        _matmul_model(d/'mm.onnx')
        sess = {'poster': onnx_session(res.path, threads=1), 'matmul': onnx_session(d/'mm.onnx', threads=1)}
        x = np.ascontiguousarray(facesynth_calibration(res.metadata, n=1, seed=3000)[0], np.float32)
        feeds = {'poster': {sess['poster'].get_inputs()[0].name: x},
                 'matmul': {'a': np.random.default_rng(1).standard_normal((N, N), np.float32)}}
        for _ in range(warmup):
            for k, s in sess.items(): s.run(None, feeds[k])
        t = {k: [] for k in sess}
        for _ in range(runs):
            for k, s in sess.items():
                t0 = time.perf_counter(); s.run(None, feeds[k]); t[k].append(time.perf_counter() - t0)
    p50 = {k: float(np.median(v)) for k, v in t.items()}
    gf_poster = 2 * macs / p50['poster'] / 1e9
    gf_peak = 2 * N**3 / p50['matmul'] / 1e9
    how = f'onnxruntime CPU EP, 1 intra-op thread, P50 of {runs} interleaved runs after {warmup} warm-up; load avg {os.getloadavg()[0]:.1f}'
    return [
        dict(benchmark='poster_v2 onnxruntime', metric='latency fp32 b1', value=p50['poster'] * 1e3, unit='ms', note=how),
        dict(benchmark='poster_v2 onnxruntime', metric='achieved GFLOP/s', value=gf_poster, unit='GFLOP/s',
             note=f'2 x {macs / 1e9:.2f} GMACs (torch flop counter) / P50 latency'),
        dict(benchmark=f'matmul {N}x{N}x{N} fp32 onnxruntime', metric='peak GFLOP/s', value=gf_peak, unit='GFLOP/s',
             note=f'one MatMul node (MLAS sgemm); {how}'),
        dict(benchmark='poster_v2 onnxruntime', metric='achieved / matmul peak', value=gf_poster / gf_peak, unit='x',
             summary='POSTER++ GFLOP/s in onnxruntime vs matmul peak',
             note=f'{gf_poster:.1f} of {gf_peak:.1f} GFLOP/s; full-size POSTER++ (43.7 M params), fp32, batch 1, 1 thread'),
    ]

if __name__ == '__main__':
    for r in bench(quick=True): print(r)
