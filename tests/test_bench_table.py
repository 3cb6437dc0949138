"""benchmarks/run.py's table writer on fake rows: headline items, Markdown + JSON schema, --merge. No timing is run."""
import importlib.util, json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location('bench_run', ROOT/'benchmarks'/'run.py')
R = importlib.util.module_from_spec(spec); spec.loader.exec_module(R)

def _row(bench, metric, value, **kw):
    return dict(bench=bench, benchmark=f'{bench} b', metric=metric, value=value, unit='x', run_at='2026-12-04 22:00',
                load=3.5, **kw)

MACH = dict(cpu='Test CPU', flags={f: f == 'avx512_bf16' for f in R.FLAGS}, cores=2, python='3.11', torch='2.x',
            torch_threads=2, onnxruntime='1.x', quick=True, load_before=[3.2, 2.0, 1.0], load_after=[4.0, 2.5, 1.1])

def test_every_bench_row_names_a_known_item():
    "The `summary=` items used in benchmarks/bench_*.py are exactly ITEMS (each headline row has its benchmark)."
    import re
    used = set()
    for f in (ROOT/'benchmarks').glob('bench_*.py'):
        used |= set(re.findall(r"summary'?\s*[=:]\s*'([^']+)'", f.read_text()))
    assert used == set(R.ITEMS)

def test_write_results_schema(tmp_path):
    rows = [_row('bench_data', 'cached vs uncached speed-up', 25.0, summary='cached vs uncached clip loading', target='>= 10'),
            _row('bench_data', 'uncached ms/clip', 12.5), _row('bench_synth', 'img/s', 400.0, summary='FaceSynth render throughput')]
    md, js = tmp_path/'R.md', tmp_path/'R.json'
    R.write_results(rows, MACH, md, js, skipped={'bench_cpp': 'no quick mode'}, failed={'bench_gflops': 'RuntimeError: x'})
    d = json.loads(js.read_text())
    assert set(d) == {'machine', 'summary', 'rows', 'skipped', 'failed'}
    assert [s['summary'] for s in d['summary']] == R.ITEMS                      # one headline row per item, in order
    got = {s['summary']: s for s in d['summary']}
    assert got['cached vs uncached clip loading']['value'] == 25.0
    assert got['export parity']['metric'] == 'not measured in this table'
    assert d['rows'] == rows and d['failed'] == {'bench_gflops': 'RuntimeError: x'}
    text = md.read_text()
    assert 'avx512_bf16 yes' in text and 'amx_tile no' in text and '3.20/2.00/1.00 before' in text
    assert '| cached vs uncached clip loading | bench_data b | cached vs uncached speed-up | 25 | x | >= 10 | 2026-12-04 22:00, load 3.5 |' in text
    assert 'Skipped: bench_cpp (no quick mode)' in text and 'Failed: bench_gflops' in text
    with pytest.raises(ValueError, match='lacks'): R.write_results([{'bench': 'b', 'metric': 'm'}], MACH, md, js)
    with pytest.raises(ValueError, match='not in ITEMS'): R.write_results([_row('b', 'm', 1.0, summary='nope')], MACH, md, js)

def test_merge_keeps_rows_not_rerun():
    old = [_row('bench_cpp', 'engine/bare', 1.01), _row('bench_data', 'speed-up', 20.0), _row('bench_synth', 'img/s', 300.0)]
    new = [_row('bench_data', 'speed-up', 30.0)]
    got = R.merge_rows(old, new, {'bench_data'})
    assert [(r['bench'], r['value']) for r in got] == [('bench_cpp', 1.01), ('bench_synth', 300.0), ('bench_data', 30.0)]
    assert R.merge_rows(old, [], {'bench_data', 'bench_cpp', 'bench_synth'}) == []   # a re-run benchmark's old rows go

def test_main_merge_and_quick(tmp_path, monkeypatch):
    "run.main on two fake benchmark files: --quick skips the one without a quick mode, --merge keeps its old rows."
    b = tmp_path/'benchmarks'; b.mkdir()
    (b/'bench_a.py').write_text("def bench(quick=False):\n    return [dict(benchmark='a', metric='m', value=2.0 if quick else 1.0, unit='x', summary='export parity')]\n")
    (b/'bench_b.py').write_text("QUICK = False\ndef bench():\n    return [dict(benchmark='b', metric='m', value=5.0, unit='s')]\n")
    monkeypatch.setattr(R, 'HERE', b)
    md = tmp_path/'R.md'
    assert R.main(['--out', str(md)]) == 0
    d = json.loads(md.with_suffix('.json').read_text())
    assert [(r['bench'], r['value'], r['quick']) for r in d['rows']] == [('bench_a', 1.0, False), ('bench_b', 5.0, False)]
    assert R.main(['--out', str(md), '--quick', '--merge']) == 0
    d = json.loads(md.with_suffix('.json').read_text())
    assert [(r['bench'], r['value'], r['quick']) for r in d['rows']] == [('bench_b', 5.0, False), ('bench_a', 2.0, True)]
    assert d['skipped'] == {'bench_b': 'not re-run: rows kept from an earlier run'}
    assert R.main(['--out', str(md), '--quick']) == 0                           # without --merge: b's rows are gone
    d = json.loads(md.with_suffix('.json').read_text())
    assert [r['bench'] for r in d['rows']] == ['bench_a'] and d['skipped'] == {'bench_b': 'no quick mode'}
