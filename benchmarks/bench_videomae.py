"""VideoMAE V2 benchmarks: full-size parameter counts and MACs, CPU latency of ViT-S (PyTorch eager and
onnxruntime), and the ONNX parity of the deploy-size export `[1,16,3,224,224]`."""
QUICK = False   # no --quick mode: `run.py --quick` skips this file
import tempfile, time
from pathlib import Path

import numpy as np
import torch

from facelab.models.videomae import videomae_report
from facelab.models import create_model


def _latency(fn, reps=3):
    fn()  # warm-up
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def bench() -> list[dict]:
    rows = []
    for name, p_target, mac_target in (('videomae_v2_s', 21.9e6, 57), ('videomae_v2_b', 86.2e6, 180)):
        plain, adapted = videomae_report(name)
        rows += [
            dict(benchmark=name, metric='params (backbone + 3-class head)', value=plain['params'] / 1e6, unit='M',
                 target=f'{p_target / 1e6:.1f} ±2%', note='counted on the meta device'),
            dict(benchmark=name, metric='GMACs per 16x224² view', value=plain['gmacs'], unit='GMAC',
                 target=f'{mac_target}', note='papers call these GFLOPs'),
            dict(benchmark=name, metric='trainable share with adapters', value=100 * adapted['trainable_params'] / plain['params'],
                 unit='%', target='<= 10', note='adapters + fc_norm + head, backbone frozen'),
        ]
    m = create_model('videomae_v2_s').eval()
    x = torch.randn(1, 16, 3, 224, 224)
    with torch.no_grad():
        rows.append(dict(benchmark='videomae_v2_s', metric='CPU latency fp32 eager, batch 1', value=_latency(lambda: m(x)),
                         unit='s', target='', note=f'{torch.get_num_threads()} threads'))
        with torch.autocast('cpu', dtype=torch.bfloat16):
            rows.append(dict(benchmark='videomae_v2_s', metric='CPU latency bf16 autocast, batch 1',
                             value=_latency(lambda: m(x)), unit='s', target='', note='AMX where available'))
    from facelab.export import to_onnx, onnx_session
    with tempfile.TemporaryDirectory() as d:
        with torch.no_grad():
            for a in m.adapters: a.up.weight.normal_(0, 0.02)
        res = to_onnx(m, 'micro', Path(d)/'videomae_v2_s.onnx', input_shape=(2, 16, 3, 224, 224),
                      parity_inputs=[x], parity_tol=1e-4)
        rows.append(dict(benchmark='videomae_v2_s', metric='ONNX parity max |diff|', value=res.parity_max_abs, unit='',
                         target='< 1e-4', note=f'{res.exporter} exporter, export {res.seconds:.0f}s'))
        sess = onnx_session(Path(d)/'videomae_v2_s.onnx')
        xn = x.numpy()
        rows.append(dict(benchmark='videomae_v2_s', metric='onnxruntime latency fp32, batch 1',
                         value=_latency(lambda: sess.run(None, {'clip': xn})), unit='s', target='', note='CPU EP'))
    return rows


if __name__ == '__main__':
    for r in bench(): print(r)
