"""OpenGraphAU: size and compute against the official anchors, CPU latency at batch 1, tiny training step."""
QUICK = False   # no --quick mode: `run.py --quick` skips this file
import time
import torch
from facelab.models import create_model, flop_report

# measured on the official ME-GraphAU code (see /work/shared/ANCHORS.md)
ANCHORS = {'opengraphau_official_r50': (32.22, 4.50), 'opengraphau_official_swin_t': (32.14, 4.71),
           'opengraphau_official_swin_b': (94.93, 15.82)}


def _latency(model, x, n=5, autocast=False):
    model.eval()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        model(x)   # warm-up
        t = time.perf_counter()
        for _ in range(n): model(x)
    return (time.perf_counter() - t) / n * 1e3


def bench() -> list[dict]:
    torch.set_num_threads(2)
    rows = []
    for name, (p_ref, g_ref) in ANCHORS.items():
        torch.manual_seed(0)
        m = create_model(name)
        r = flop_report(m, torch.randn(1, 3, 256, 256))
        rows += [dict(benchmark=name, metric='params', value=r['params'] / 1e6, unit='M', target=f'{p_ref} ±2%', note='official layout, 41 outputs, + intensity head'),
                 dict(benchmark=name, metric='compute', value=r['macs'] / 1e9, unit='GMACs', target=f'{g_ref} ±2%', note='256 input centre-cropped to 224')]
        del m
    for name in ('opengraphau_r50', 'opengraphau_swin_t'):
        m = create_model(name)
        x = torch.randn(1, 3, 256, 256)
        rows.append(dict(benchmark=name, metric='cpu latency fp32, batch 1', value=_latency(m, x), unit='ms', target='', note='2 threads'))
        rows.append(dict(benchmark=name, metric='cpu latency bf16 autocast, batch 1', value=_latency(m, x, autocast=True), unit='ms', target='', note='2 threads, AMX'))
        del m
    m = create_model('opengraphau_tiny')
    x, opt = torch.randn(32, 3, 56, 56), torch.optim.AdamW(m.parameters(), 1e-3)
    m.train(); t = time.perf_counter()
    for _ in range(5):
        p, i = m(x); loss = p.mean() + i.mean(); opt.zero_grad(); loss.backward(); opt.step()
    rows.append(dict(benchmark='opengraphau_tiny', metric='train step, batch 32 @ 48px', value=(time.perf_counter() - t) / 5 * 1e3,
                     unit='ms', target='', note='fast-path budget of the overfit test'))
    return rows
