"""POSTER++ (facelab.models.poster_v2): forward latency at batch 1 (fp32 and bf16 autocast), parameters and MACs."""
QUICK = False   # no --quick mode: `run.py --quick` skips this file
import os, statistics, time
import torch
from facelab.models import create_model, flop_report

def _latency_ms(model, x, autocast_bf16=False, warmup=2, runs=10):
    ctx = torch.autocast('cpu', dtype=torch.bfloat16) if autocast_bf16 else torch.autocast('cpu', enabled=False)
    times = []
    with torch.inference_mode(), ctx:
        for i in range(warmup + runs):
            t = time.perf_counter(); model(x); dt = time.perf_counter() - t
            if i >= warmup: times.append(dt * 1e3)
    return statistics.median(times)

def bench() -> list[dict]:
    rows = []
    for name, target_params, target_macs in [('poster_v2', 43.72e6, 8.48e9), ('poster_v2_tiny', None, None)]:
        torch.manual_seed(0)
        model = create_model(name).eval()
        s = model.cfg.img_size
        x = torch.randn(1, 3, s, s)
        rep = flop_report(model, x)
        rows += [
            dict(benchmark=name, metric='params', value=rep['params'] / 1e6, unit='M',
                 target=f'{target_params/1e6:.2f} ±2%' if target_params else '', note='all parameters; none unused in forward'),
            dict(benchmark=name, metric='MACs', value=rep['macs'] / 1e9, unit='G',
                 target=f'{target_macs/1e9:.2f} ±2%' if target_macs else '', note=f'torch.utils.flop_counter FLOPs/2 at {s}x{s}'),
            dict(benchmark=name, metric='latency fp32 b1', value=_latency_ms(model, x), unit='ms',
                 note=f'median of 10, {torch.get_num_threads()} threads, load avg {os.getloadavg()[0]:.1f}'),
            dict(benchmark=name, metric='latency bf16 autocast b1', value=_latency_ms(model, x, True), unit='ms',
                 note='median of 10, torch.autocast cpu bfloat16'),
        ]
        with torch.inference_mode():
            ref = model(x)
            with torch.autocast('cpu', dtype=torch.bfloat16): low = model(x).float()
        rows.append(dict(benchmark=name, metric='bf16 max |Δlogit|', value=(low - ref).abs().max().item(), unit='',
                         note='random weights; vs fp32'))
    return rows

if __name__ == '__main__':
    for r in bench(): print(r)
