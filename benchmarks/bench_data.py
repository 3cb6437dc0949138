"""Clip loading: decoded-clip cache vs decoding JPEGs every epoch (facelab.data.clips).

Writes a small FaceSynth CASME II (128 px frames), then times full passes over the clips with T=16 at 112 px:
without a cache, and with a warm cache (second epoch). Target: cached loading >= 10x faster.
"""
import shutil, tempfile, time
from pathlib import Path

import torch

def _epoch(ds):
    t0 = time.perf_counter()
    for i in range(len(ds)): ds[i]
    return time.perf_counter() - t0

def bench(quick:bool=False) -> list[dict]:
    from facelab.synth.write_micro import write_casme2
    from facelab.data.casme2 import load_casme2
    from facelab.data.clips import ClipDataset
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix='fl-bench-data-'))
    try:
        write_casme2(tmp/'casme2', subjects=2 if quick else 3, clips_per_subject=4 if quick else 6, size=128, seed=0, progress=False)
        df = load_casme2(tmp/'casme2', keep_dropped=True)
        kw = dict(T=16, size=112)
        plain = ClipDataset(df, tmp/'casme2', **kw)
        cached = ClipDataset(df, tmp/'casme2', cache_dir=tmp/'cache', **kw)
        _epoch(cached)                                        # first epoch fills the cache
        dec = cached.stats['decoded_frames']
        reps = 2 if quick else 3
        t_plain = min(_epoch(plain) for _ in range(reps))
        t_cached = min(_epoch(cached) for _ in range(reps))
        assert cached.stats['decoded_frames'] == dec, 'a cached epoch decoded JPEGs'
        n = len(df)
        return [
            {'benchmark': 'clip loading (CASME II FaceSynth, T=16, 112 px)', 'metric': 'uncached ms/clip',
             'value': 1000*t_plain/n, 'unit': 'ms', 'target': '', 'note': f'{n} clips, JPEG decode + resize + interpolation'},
            {'benchmark': 'clip loading (CASME II FaceSynth, T=16, 112 px)', 'metric': 'cached ms/clip',
             'value': 1000*t_cached/n, 'unit': 'ms', 'target': '', 'note': 'raw uint8 [T,3,H,W] cache file, one read'},
            {'benchmark': 'clip loading (CASME II FaceSynth, T=16, 112 px)', 'metric': 'cached vs uncached speed-up',
             'value': t_plain/t_cached, 'unit': 'x', 'target': '>= 10', 'summary': 'cached vs uncached clip loading', 'note': f'best of {reps} epochs each; 0 JPEGs decoded when cached'},
        ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

if __name__ == '__main__':
    for r in bench(): print(r)
