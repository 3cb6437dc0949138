"""`facelab index build/show` run as a user runs them, on FaceSynth BP4D and AffectNet layouts."""
import os, subprocess, sys
from pathlib import Path

import pandas as pd
import pytest

from facelab.synth.write_images import write_affectnet, write_bp4d
from facelab.data.index import load_index

BIN = Path(sys.executable).parent


def run(*args):
    return subprocess.run([str(BIN/'facelab'), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, 'MPLBACKEND': 'Agg'})


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp('synth')
    write_bp4d(d/'bp4d', subjects=3, tasks=1, frames=3, progress=False)
    write_affectnet(d/'affectnet', n_train=2, n_extra=1, n_val=1, progress=False)
    return d


def test_build_show_and_incremental_rebuild(data, tmp_path):
    out = tmp_path/'index'
    r = run('index', 'build', '--dataset', 'bp4d', '--root', data/'bp4d', '--out', out, '--quiet')
    assert r.returncode == 0, r.stderr
    assert 'bp4d: 9 rows, 3 subjects; 3 unit(s) scanned, 0 reused' in r.stdout
    r = run('index', 'build', '--dataset', 'affectnet', '--root', data/'affectnet', '--out', out, '--quiet')
    assert r.returncode == 0, r.stderr
    # contempt (code 7) and codes 8-10 are excluded and reported
    assert "dropped (by reason): {'contempt': 3, 'no_face': 1, 'none': 1, 'uncertain': 1}" in r.stdout
    # a second build of an unchanged dataset rescans nothing
    r = run('index', 'build', '--dataset', 'bp4d', '--root', data/'bp4d', '--out', out, '--quiet')
    assert '0 unit(s) scanned, 3 reused' in r.stdout, r.stdout
    df = load_index(out)
    assert sorted(df.dataset.unique()) == ['affectnet', 'bp4d']
    assert len(df[df.dataset == 'affectnet']) == 7*3
    assert df.attrs['roots']['bp4d'] == str((data/'bp4d').resolve())
    r = run('index', 'show', '--out', out)
    assert r.returncode == 0, r.stderr
    assert 'sample index at' in r.stdout and '30 rows' in r.stdout
    assert 'train:14 val:7' in r.stdout


def test_build_errors_are_clear(data, tmp_path):
    bad = tmp_path/'bp4d'
    write_bp4d(bad, subjects=1, tasks=1, frames=2, progress=False)
    f = bad/'AUCoding/AU_OCC/F001_T1.csv'
    t = pd.read_csv(f, dtype=str); t.loc[1, '17'] = '3'; t.to_csv(f, index=False)
    r = run('index', 'build', '--dataset', 'bp4d', '--root', bad, '--out', tmp_path/'ix', '--quiet')
    assert r.returncode == 2
    assert "F001_T1.csv row 3: AU17 value '3' is not 0, 1 or 9" in r.stderr
