"""Training-loop overhead and mixed precision on this CPU.

1. The fastai loop from `facelab.train.make_learner` (checkpoint, NaN guard, scheduler and metric callbacks; no
   tracking) against a minimal raw PyTorch loop on the same model, data, batch size and optimizer family (Adam with
   decoupled weight decay). Both run train + validation epochs; throughput is training samples per second of wall
   time, best of `REPEATS` interleaved runs after a warm-up. Target: fastai >= 0.9x raw.
2. The same fastai loop in bf16 autocast vs fp32. Without native bf16 (AVX-512-BF16/AMX) the CPU emulates bf16,
   so bf16 may be slower here; the row says which CPU features were present.
3. bf16 autocast vs fp32 training steps of a full-size model (POSTER++, 224x224, AdamW): forward, backward and
   optimizer step, the two precisions interleaved step by step. This is where AMX (bf16 tile matmuls) makes the
   difference; with AVX-512-BF16 alone the gain is smaller, and without either bf16 is emulated.
"""
import os, tempfile, time
import torch
from torch import nn
import torch.nn.functional as F

N_TRAIN, N_VALID, BS, SIZE, EPOCHS, REPEATS = 1024, 256, 64, 32, 2, 3


def _data():
    from facelab.train.core import toy_shapes
    x, y, _ = toy_shapes(N_TRAIN, SIZE, seed=0)
    xv, yv, _ = toy_shapes(N_VALID, SIZE, seed=1)
    return x, y, xv, yv


def _model():
    from facelab.train.core import tiny_cnn
    torch.manual_seed(0)
    return tiny_cnn(4, width=32)


def raw_loop(x, y, xv, yv):
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    t0 = time.perf_counter()
    for _ in range(EPOCHS):
        model.train()
        perm = torch.randperm(len(x))
        for i in range(0, len(x) - BS + 1, BS):
            idx = perm[i:i+BS]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(); loss.backward(); opt.step()
        model.eval()
        with torch.no_grad():
            correct = sum((model(xv[i:i+2*BS]).argmax(1) == yv[i:i+2*BS]).sum().item() for i in range(0, len(xv), 2*BS))
    return EPOCHS * (len(x) // BS) * BS / (time.perf_counter() - t0), correct / len(xv)


def fastai_loop(x, y, xv, yv, precision='fp32'):
    from fastai.data.load import DataLoader
    from fastai.data.core import DataLoaders
    from facelab.train.core import make_learner
    train = [(x[i], y[i]) for i in range(len(x))]; valid = [(xv[i], yv[i]) for i in range(len(xv))]
    tdl, vdl = DataLoader(train, bs=BS, shuffle=True, drop_last=True), DataLoader(valid, bs=2*BS)
    for dl in (tdl, vdl): dl.n_inp = 1
    with tempfile.TemporaryDirectory() as d:
        learn = make_learner('classification', _model(), DataLoaders(tdl, vdl, device='cpu'),
                             {'lr': 1e-3, 'epochs': EPOCHS, 'run_dir': d, 'mlflow': False, 'progress': False,
                              'precision': precision, 'monitor': 'accuracy'})
        t0 = time.perf_counter()
        with learn.no_logging(): learn.fit_warmup_cosine()
        dt = time.perf_counter() - t0
        return EPOCHS * (len(x) // BS) * BS / dt, learn.recorder.values[-1][2]


def full_size_steps(name='poster_v2', bs=4, steps=4, warmup=1):
    "Seconds per training step (fwd + bwd + AdamW) of a full-size model, fp32 and bf16 autocast interleaved; median."
    import statistics
    from facelab.models import create_model
    torch.manual_seed(0)
    model = create_model(name).train()
    s = model.cfg.img_size
    x, y = torch.randn(bs, 3, s, s), torch.randint(0, 7, (bs,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    def step(bf16):
        t = time.perf_counter()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
            loss = F.cross_entropy((out[0] if isinstance(out, (tuple, list)) else out).float(), y)
        opt.zero_grad(); loss.backward(); opt.step()
        return time.perf_counter() - t
    for _ in range(warmup): step(False); step(True)
    t32, t16 = [], []
    for _ in range(steps): t32.append(step(False)); t16.append(step(True))
    return statistics.median(t32), statistics.median(t16), sum(p.numel() for p in model.parameters()), s

def bench(quick:bool=False):
    from facelab.core import get_device
    global N_TRAIN, REPEATS
    if quick: N_TRAIN, REPEATS = 512, 2
    torch.set_num_threads(os.cpu_count() or 1)
    x, y, xv, yv = _data()
    raw_loop(x[:256], y[:256], xv[:64], yv[:64]); fastai_loop(x[:256], y[:256], xv[:64], yv[:64])   # warm-up
    raw, fa32, fa16 = [], [], []
    for _ in range(REPEATS):   # interleaved, so that load from other processes hits both loops alike
        raw.append(raw_loop(x, y, xv, yv)[0]); fa32.append(fastai_loop(x, y, xv, yv, 'fp32')[0])
    raw, fa32 = max(raw), max(fa32)
    fa16 = fastai_loop(x, y, xv, yv, 'bf16')[0]   # one run: emulated bf16 is slow on CPUs without it
    dev = get_device('cpu')
    feats = f"AMX={dev.amx}, native bf16={dev.bf16}"
    note = f'tiny_cnn w32 on {SIZE}x{SIZE}, bs {BS}, {N_TRAIN} train + {N_VALID} valid, {EPOCHS} epochs, {torch.get_num_threads()} threads'
    bs, steps = (2, 3) if quick else (4, 6)
    s32, s16, n_par, size = full_size_steps(bs=bs, steps=steps)
    full = (f'poster_v2 ({n_par / 1e6:.1f} M params) at {size}x{size}, batch {bs}, AdamW, median of {steps} steps each, '
            f'fp32 and bf16 steps interleaved, {torch.get_num_threads()} threads; {feats}; load avg {os.getloadavg()[0]:.1f}')
    return [
        dict(benchmark='train step full-size', metric='fp32 s/step', value=s32, unit='s', note=full),
        dict(benchmark='train step full-size', metric='bf16 autocast s/step', value=s16, unit='s', note=full),
        dict(benchmark='train step full-size', metric='bf16 speed-up (fp32 time / bf16 time)', value=s32 / s16, unit='x',
             target='> 1 with AMX', summary='bf16 autocast vs fp32 training (full-size)', note=full),
        dict(benchmark='train loop', metric='raw PyTorch throughput', value=raw, unit='samples/s', target='', note=note),
        dict(benchmark='train loop', metric='fastai make_learner throughput (fp32)', value=fa32, unit='samples/s', target='', note=note),
        dict(benchmark='train loop', metric='fastai / raw', value=fa32 / raw, unit='x', target='>= 0.9',
             summary='fastai loop vs raw PyTorch loop', note=f'best of {REPEATS} interleaved runs; ' 'make_learner callbacks: checkpoint per epoch, NaN guard, warmup+cosine, accuracy + UAR'),
        dict(benchmark='train precision', metric='bf16 autocast throughput', value=fa16, unit='samples/s', target='', note=feats),
        dict(benchmark='train precision', metric='bf16 / fp32', value=fa16 / fa32, unit='x', target='> 1 with AMX', note=feats),
    ]


if __name__ == '__main__':
    for r in bench(): print(r)
