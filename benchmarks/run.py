"""Run every `benchmarks/bench_*.py` and write one Markdown table.

Each module defines `bench() -> list[dict]`; a row has the keys
`benchmark`, `metric`, `value`, `unit`, and optionally `target` and `note`.
Speed and memory targets live here, never in timed unit tests.
"""
import argparse, importlib.util, platform, sys, time, traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
COLS = ['benchmark', 'metric', 'value', 'unit', 'target', 'note']

def load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod

def fmt(v):
    return f'{v:.4g}' if isinstance(v, float) else str(v)

def main(argv=None):
    p = argparse.ArgumentParser(description='Run facelab benchmarks and write a Markdown table.')
    p.add_argument('--out', default=str(HERE/'RESULTS.md'), help='Markdown file to write')
    p.add_argument('--only', nargs='*', default=None, help='substrings of benchmark file names to run')
    a = p.parse_args(argv)
    files = sorted(HERE.glob('bench_*.py'))
    if a.only: files = [f for f in files if any(s in f.name for s in a.only)]
    rows, failed = [], []
    for f in files:
        t0 = time.time(); print(f'== {f.name}', flush=True)
        try: new = load(f).bench()
        except Exception:
            traceback.print_exc(); failed.append(f.name); continue
        for r in new: print('   ', ' | '.join(fmt(r.get(c, '')) for c in COLS[1:]))
        rows += new; print(f'   ({time.time()-t0:.1f}s)')
    lines = [f'# facelab benchmarks', '',
             f'Machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}, '
             f'{time.strftime("%Y-%m-%d %H:%M")}.', '',
             '| ' + ' | '.join(COLS) + ' |', '|' + '---|' * len(COLS)]
    lines += ['| ' + ' | '.join(fmt(r.get(c, '')) for c in COLS) + ' |' for r in rows]
    if failed: lines += ['', 'Failed: ' + ', '.join(failed)]
    Path(a.out).write_text('\n'.join(lines) + '\n')
    print(f'wrote {a.out}')
    return 1 if failed else 0

if __name__ == '__main__':
    sys.exit(main())
