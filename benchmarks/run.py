"""Run `benchmarks/bench_*.py` and write one table: `benchmarks/RESULTS.md` (Markdown) and `benchmarks/RESULTS.json`.

    python benchmarks/run.py                 # every benchmark, full settings (make bench)
    python benchmarks/run.py --quick         # the smallest settings; benchmarks without a quick mode are skipped
    python benchmarks/run.py --only cpp --merge   # re-run some, keep the other benchmarks' rows from RESULTS.json

Each module defines `bench(quick=False) -> list[dict]` (modules without a quick mode set `QUICK = False`); a row has
`benchmark`, `metric`, `value`, `unit`, and optionally `target`, `note` and `summary` (the headline item it answers,
one of `ITEMS`). Every ratio of a headline item is measured side by side inside one benchmark run, never across runs.
The run writes a machine line (CPU, flags incl. AMX / AVX-512-BF16, threads, load average before and after) and each
row records the load average when its benchmark started: on a shared machine the absolute numbers move with the load,
the side-by-side ratios much less. Speed targets live here, never in timed unit tests.
"""
from __future__ import annotations
import argparse, importlib.util, inspect, json, os, platform, sys, time, traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
COLS = ['benchmark', 'metric', 'value', 'unit', 'target', 'note']
# the headline items of issue 19, in table order
ITEMS = ['export parity', 'C++ engine vs bare ONNX Runtime', 'total per-frame latency (deploy configs)',
         'POSTER++ GFLOP/s in onnxruntime vs matmul peak', 'fastai loop vs raw PyTorch loop',
         'bf16 autocast vs fp32 training (full-size)', 'int8 vs fp32 inference', 'cached vs uncached clip loading',
         'FaceSynth render throughput']
FLAGS = ('avx2', 'avx512f', 'avx512_vnni', 'avx512_bf16', 'amx_tile', 'amx_bf16', 'amx_int8')

def load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod

def fmt(v):
    if isinstance(v, float): return f'{v:.4g}'
    return '' if v is None else str(v).replace('|', '\\|').replace('\n', ' ')

def machine() -> dict:
    "CPU model and flags, cores, thread settings and library versions."
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        txt = Path('/proc/cpuinfo').read_text()
        cpu = next((l.split(':', 1)[1].strip() for l in txt.splitlines() if l.startswith('model name')), cpu)
        flags = set(next((l.split(':', 1)[1].split() for l in txt.splitlines() if l.startswith('flags')), []))
    except OSError: pass
    m = dict(cpu=cpu, flags={f: f in flags for f in FLAGS}, cores=os.cpu_count(), python=platform.python_version(),
             omp_num_threads=os.environ.get('OMP_NUM_THREADS', ''))
    try:
        import torch, onnxruntime
        m.update(torch=torch.__version__, torch_threads=torch.get_num_threads(), onnxruntime=onnxruntime.__version__)
    except ImportError: pass
    return m

def machine_line(m:dict) -> str:
    flags = ', '.join(f'{k} {"yes" if v else "no"}' for k, v in m['flags'].items())
    la = m.get('load_before', ()), m.get('load_after', ())
    ld = lambda l: '/'.join(f'{x:.2f}' for x in l) if l else '?'
    return (f"Machine: {m['cpu']}, {m['cores']} cores; {flags}; torch {m.get('torch', '?')} "
            f"({m.get('torch_threads', '?')} threads by default), onnxruntime {m.get('onnxruntime', '?')}, "
            f"Python {m['python']}. Load average (1/5/15 min) {ld(la[0])} before, {ld(la[1])} after the run"
            f"{' (a shared machine: absolute timings are inflated, compare the side-by-side ratios)' if la[0] and la[0][0] > 0.5 * m['cores'] else ''}.")

def merge_rows(old:list[dict], new:list[dict], rerun:set[str]) -> list[dict]:
    "`new` plus the rows of `old` from benchmarks (the `bench` key) that were not re-run, old ones first in their order."
    return [r for r in old if r.get('bench') not in rerun] + new

def summary(rows:list[dict]) -> list[dict]:
    "The headline table: for every item of `ITEMS`, the rows marked with it (or one 'not measured' row)."
    out = []
    for it in ITEMS:
        got = [r for r in rows if r.get('summary') == it]
        out += got or [dict(summary=it, benchmark='', metric='not measured in this table', value='', unit='',
                            note='its benchmark was not run (see Skipped/Failed) or has no row for it')]
    unknown = sorted({r['summary'] for r in rows if r.get('summary') and r['summary'] not in ITEMS})
    if unknown: raise ValueError(f'rows name summary items that are not in ITEMS: {unknown}')
    return out

def _table(rows, cols, head=None):
    lines = ['| ' + ' | '.join(head or cols) + ' |', '|' + '---|' * len(cols)]
    return lines + ['| ' + ' | '.join(fmt(r.get(c, '')) for c in cols) + ' |' for r in rows]

def write_results(rows:list[dict], mach:dict, md:Path, js:Path, skipped:dict|None=None, failed:dict|None=None):
    "Write the Markdown table (headline items first, then every row) and the same data as JSON."
    skipped, failed = skipped or {}, failed or {}
    for r in rows:
        missing = {'bench', 'benchmark', 'metric', 'value', 'unit'} - set(r)
        if missing: raise ValueError(f'benchmark row {r} lacks {sorted(missing)}')
    when = lambda r: (f"{r.get('run_at', '')}, load {r['load']:.1f}" if isinstance(r.get('load'), (int, float))
                      else r.get('run_at', '')) + (', --quick' if r.get('quick') else '')
    summ = [{**r, 'value': r['value'], 'when': when(r) if r.get('bench') else ''} for r in summary(rows)]
    lines = ['# facelab benchmarks', '', machine_line(mach), '',
             f"Written by `python benchmarks/run.py{' --quick' if mach.get('quick') else ''}{' --merge' if mach.get('merge') else ''}` (`make bench`); "
             'the same data is in [RESULTS.json](RESULTS.json). Every ratio is measured side by side in one run of '
             'its benchmark; `load` is the 1-minute load average when that benchmark started.', '',
             '## Headline', '']
    lines += _table(summ, ['summary', 'benchmark', 'metric', 'value', 'unit', 'target', 'when', 'note'],
                    ['item', 'benchmark', 'metric', 'value', 'unit', 'target', 'run (UTC), load', 'how'])
    lines += ['', '## All rows', '']
    lines += _table([{**r, 'when': when(r)} for r in rows], ['bench', *COLS[:-1], 'when', 'note'],
                    ['file', *COLS[:-1], 'run (UTC), load', 'note'])
    if skipped: lines += ['', 'Skipped: ' + '; '.join(f'{k} ({v})' for k, v in skipped.items())]
    if failed: lines += ['', 'Failed: ' + '; '.join(f'{k} ({v})' for k, v in failed.items())]
    md.write_text('\n'.join(lines) + '\n')
    js.write_text(json.dumps(dict(machine=mach, summary=[{k: v for k, v in r.items() if k != 'when'} for r in summ],
                                  rows=rows, skipped=skipped, failed=failed), indent=1, default=str) + '\n')

def main(argv=None):
    p = argparse.ArgumentParser(description='Run facelab benchmarks and write one table (Markdown + JSON).')
    p.add_argument('--out', default=str(HERE/'RESULTS.md'), help='Markdown file to write (the JSON goes beside it)')
    p.add_argument('--json', default=None, help='JSON file to write (default: --out with .json)')
    p.add_argument('--only', nargs='*', default=None, help='substrings of benchmark file names to run')
    p.add_argument('--quick', action='store_true', help="smallest settings; benchmarks without a quick mode are skipped")
    p.add_argument('--merge', action='store_true', help='keep the rows of benchmarks not re-run from the existing JSON')
    a = p.parse_args(argv)
    md = Path(a.out); js = Path(a.json) if a.json else md.with_suffix('.json')
    files = sorted(HERE.glob('bench_*.py'))
    if a.only: files = [f for f in files if any(s in f.name for s in a.only)]
    mach = machine(); mach.update(quick=a.quick, merge=a.merge, load_before=list(os.getloadavg()))
    rows, ran, skipped, failed = [], set(), {}, {}
    for f in files:
        mod = load(f)
        if a.quick and not getattr(mod, 'QUICK', True):
            skipped[f.stem] = 'no quick mode'; print(f'== {f.name}: skipped (no quick mode)'); continue
        t0 = time.time(); la = os.getloadavg()[0]; print(f'== {f.name} (load {la:.1f})', flush=True)
        try:
            kw = {'quick': a.quick} if 'quick' in inspect.signature(mod.bench).parameters else {}
            new = mod.bench(**kw)
        except Exception as e:
            traceback.print_exc(); failed[f.stem] = f'{type(e).__name__}: {e}'.splitlines()[0][:200]; continue
        ran.add(f.stem)
        stamp = time.strftime('%Y-%m-%d %H:%M', time.gmtime(t0))
        for r in new:
            r.update(bench=f.stem, run_at=stamp, load=round(la, 2), quick=a.quick)
            print('   ', ' | '.join(fmt(r.get(c, '')) for c in COLS[1:]))
        rows += new; print(f'   ({time.time()-t0:.1f}s)', flush=True)
    if a.merge and js.exists():
        old = json.loads(js.read_text())
        rows = merge_rows(old.get('rows', []), rows, ran)
        kept = {r['bench'] for r in rows if r['bench'] not in ran}
        skipped = {k: v for k, v in skipped.items() if k not in kept}
        skipped.update({k: 'not re-run: rows kept from an earlier run' for k in sorted(kept)})
    mach['load_after'] = list(os.getloadavg())
    write_results(rows, mach, md, js, skipped, failed)
    print(f'wrote {md} and {js}')
    return 1 if failed else 0

if __name__ == '__main__':
    sys.exit(main())
