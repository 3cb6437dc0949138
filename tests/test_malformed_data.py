"""Malformed datasets, as an adversary or a careless copy makes them: every case must give a clear error naming the
file (exit code 2 and one line from `facelab index build`, no traceback) or a counted drop / quarantine, never a
traceback and never a silent change. One small FaceSynth dataset per dataset (module fixture), copied per case."""
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from facelab.cli import main
from facelab.data.index import build_index, load_index
from facelab.data.io import decode_image
from facelab.synth.write_images import write_affectnet, write_bp4d, write_disfa, write_rafdb
from facelab.synth.write_micro import write_casme2, write_casme3, write_samm, write_smic

WRITERS = {
    'affectnet': lambda o: write_affectnet(o, n_train=1, n_extra=1, n_val=1, size=48, progress=False),
    'rafdb': lambda o: write_rafdb(o, n_train=1, n_test=1, size=48, progress=False),
    'bp4d': lambda o: write_bp4d(o, subjects=3, tasks=1, frames=3, size=48, progress=False),
    'disfa': lambda o: write_disfa(o, subjects=3, frames=4, size=48, progress=False),
    'casme2': lambda o: write_casme2(o, subjects=2, clips_per_subject=4, size=32, progress=False),
    'smic': lambda o: write_smic(o, subjects=2, clips_per_subject=3, size=32, progress=False),
    'samm': lambda o: write_samm(o, subjects=2, clips_per_subject=3, size=32, progress=False),
    'casme3': lambda o: write_casme3(o, subjects=1, seconds=4, size=32, n_micro=1, n_macro=1, n_distractors=0,
                                     missing_frames=1, progress=False),
}

LABEL = {'affectnet': 'training.csv', 'rafdb': 'EmoLabel/list_patition_label.txt', 'bp4d': 'AUCoding/AU_OCC/F001_T1.csv',
         'disfa': 'ActionUnit_Labels/SN001/SN001_au1.txt', 'casme2': 'CASME2-coding-20190701.xlsx',
         'samm': 'SAMM_Micro_FACS_Codes_v2.xlsx', 'casme3': 'part_A/annotation/cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx'}


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp('malformed_base')
    for name, w in WRITERS.items(): w(d/name)
    # the unbroken row counts (no check: these are what the cases compare against)
    rows = {name: len(build_index(name, d/name, progress=False)[0]) for name in WRITERS}
    return d, rows


@pytest.fixture
def ds(base, tmp_path):
    "copy(name) -> a fresh copy of the base dataset `name` under this test's folder."
    d, _ = base
    def copy(name):
        shutil.copytree(d/name, tmp_path/name, symlinks=True)
        return tmp_path/name
    return copy


def build(capsys, root, dataset, out, *extra):
    "Run `facelab index build` in-process: (exit code, stdout, stderr)."
    rc = main(['index', 'build', '--dataset', dataset, '--root', str(root), '--out', str(out), '--quiet', *extra])
    o = capsys.readouterr()
    return rc, o.out, o.err


def assert_clear_error(capsys, root, dataset, out, *must, extra=()):
    rc, so, se = build(capsys, root, dataset, out, *extra)
    assert rc == 2, (rc, so, se)
    assert 'Traceback' not in se and len(se.strip().splitlines()) == 1, se
    for m in must: assert m in se, (m, se)
    return se


# ------------------------------------------------------------------ label files that are not label files
# (dataset, how to break the label file, text the one-line error must contain)
def _empty(p, root=None): p.write_bytes(b'')
def _folder(p, root=None): p.unlink(); p.mkdir(); (p/'x').write_text('x')
def _blank(p, root=None): p.write_text('\n  \n\n')
def _latin1(p, root=None): p.write_bytes(p.read_bytes() + 'caf\xe9 1\n'.encode('latin-1'))
def _escape(p, root):
    outside = root.parent/f'outside_{p.name}'
    shutil.copy(p, outside); p.unlink(); p.symlink_to(outside)

LABEL_CASES = [
    ('affectnet', _empty, 'the AffectNet label file is empty (0 bytes)'),
    ('affectnet', _folder, 'the AffectNet label file is a folder'),
    ('affectnet', _latin1, 'not UTF-8 text'),
    ('affectnet', _escape, 'outside the dataset root'),
    ('affectnet', _blank, 'the AffectNet label file is empty'),
    ('rafdb', _empty, 'the RAF-DB label file is empty (0 bytes)'),
    ('rafdb', _folder, 'the RAF-DB label file is a folder'),
    ('rafdb', _latin1, 'line 15: not UTF-8 text'),
    ('rafdb', _escape, 'outside the dataset root'),
    ('rafdb', _blank, 'the RAF-DB label file is empty'),
    ('bp4d', _empty, 'the AU_OCC file is empty (0 bytes)'),
    ('bp4d', _folder, 'the AU_OCC file is a folder'),
    ('bp4d', _latin1, 'not UTF-8 text'),
    ('bp4d', _escape, 'outside the dataset root'),
    ('disfa', _empty, 'the DISFA label file is empty (0 bytes)'),
    ('disfa', _folder, 'the DISFA label file is a folder'),
    ('disfa', _latin1, 'line 5: not UTF-8 text'),
    ('disfa', _escape, 'outside the dataset root'),
    ('casme2', _empty, 'the annotation file is empty (0 bytes)'),
    ('casme2', _folder, 'the annotation file is a folder'),
    ('casme2', _escape, 'outside the dataset root'),
    ('samm', _empty, 'the annotation file is empty (0 bytes)'),
    ('samm', _folder, 'the annotation file is a folder'),
    ('samm', _escape, 'outside the dataset root'),
    ('casme3', _empty, 'the annotation file is empty (0 bytes)'),
    ('casme3', _folder, 'the annotation file is a folder'),
    ('casme3', _escape, 'outside the dataset root'),
]


@pytest.mark.parametrize('dataset,breaker,msg', LABEL_CASES,
                         ids=[f'{d}-{b.__name__[1:]}' for d, b, _ in LABEL_CASES])
def test_label_file_refused(ds, tmp_path, capsys, dataset, breaker, msg):
    root = ds(dataset)
    breaker(root/LABEL[dataset], root)
    se = assert_clear_error(capsys, root, dataset, tmp_path/'ix', msg)
    assert Path(LABEL[dataset]).name in se                       # the error names the file


@pytest.mark.parametrize('dataset', ['affectnet', 'rafdb', 'bp4d', 'disfa'])
def test_bom_accepted(ds, base, tmp_path, capsys, dataset):
    "A UTF-8 byte-order mark is accepted everywhere, and changes nothing."
    root = ds(dataset)
    f = root/LABEL[dataset]
    f.write_bytes(b'\xef\xbb\xbf' + f.read_bytes())
    rc, so, se = build(capsys, root, dataset, tmp_path/'ix')
    assert rc == 0, se
    assert len(load_index(tmp_path/'ix', datasets=[dataset])) == base[1][dataset]


# ------------------------------------------------------------------ names and extensions
def test_bp4d_upper_case_extension(ds, base, tmp_path, capsys):
    root = ds('bp4d')
    f = root/LABEL['bp4d']; f.rename(f.with_name('F001_T1.CSV'))
    rc, so, se = build(capsys, root, 'bp4d', tmp_path/'ix')
    assert rc == 0, se
    assert len(load_index(tmp_path/'ix')) == base[1]['bp4d']     # F001's rows are not lost


def test_bp4d_same_labels_twice(ds, tmp_path, capsys):
    root = ds('bp4d')
    f = root/LABEL['bp4d']; shutil.copy(f, f.with_name('F001_T1.CSV'))
    assert_clear_error(capsys, root, 'bp4d', tmp_path/'ix', 'F001_T1', 'given twice')


def test_disfa_upper_case_label_file(ds, base, tmp_path, capsys):
    root = ds('disfa')
    f = root/LABEL['disfa']; f.rename(f.with_name('SN001_AU1.TXT'))
    rc, so, se = build(capsys, root, 'disfa', tmp_path/'ix')
    assert rc == 0, se
    assert len(load_index(tmp_path/'ix')) == base[1]['disfa']


@pytest.mark.parametrize('dataset', ['casme2', 'samm'])
def test_upper_case_sheet_extension(ds, base, tmp_path, capsys, dataset):
    root = ds(dataset)
    f = root/LABEL[dataset]; f.rename(f.with_suffix('.XLSX'))
    rc, so, se = build(capsys, root, dataset, tmp_path/'ix')
    assert rc == 0, se
    assert len(load_index(tmp_path/'ix')) == base[1][dataset]


def test_smic_upper_case_frame_extension(ds, base, tmp_path, capsys):
    root = ds('smic')
    clip = sorted(p for p in (root/'HS').glob('s*/micro/*/*') if p.is_dir())[0]
    for f in clip.iterdir(): f.rename(f.with_suffix('.JPG'))
    rc, so, se = build(capsys, root, 'smic', tmp_path/'ix')
    assert rc == 0, se
    assert len(load_index(tmp_path/'ix')) == base[1]['smic']


def test_rafdb_file_name_too_long(ds, tmp_path, capsys):
    root = ds('rafdb')
    f = root/LABEL['rafdb']
    f.write_text(f.read_text() + 'train_' + 'x'*300 + '.jpg 1\n')
    assert_clear_error(capsys, root, 'rafdb', tmp_path/'ix', 'list_patition_label.txt line 15', 'File name too long')


def kept(t):
    "Position of the first AffectNet CSV row whose class is kept (codes 7-10 are excluded before the path is read)."
    return int(np.flatnonzero(t.expression.astype(int) < 7)[0])


def test_affectnet_file_name_too_long_is_quarantined(ds, base, tmp_path, capsys):
    root = ds('affectnet')
    f = root/LABEL['affectnet']
    t = pd.read_csv(f, dtype=str)
    sub = t.subDirectory_filePath[kept(t)].split('/')[0]                  # an existing sub-folder: the name itself is refused
    t.loc[kept(t), 'subDirectory_filePath'] = f'{sub}/' + 'y'*300 + '.jpg'; t.to_csv(f, index=False)
    rc, so, se = build(capsys, root, 'affectnet', tmp_path/'ix')
    assert rc == 0, se
    assert "quarantined (by reason): {'unreadable path': 1}" in so, so
    q = pd.read_csv(tmp_path/'ix'/'_quarantine'/'affectnet.csv')
    assert q.reason.str.contains('File name too long').sum() == 1


def test_affectnet_empty_path_cell_is_counted(ds, base, tmp_path, capsys):
    root = ds('affectnet')
    f = root/LABEL['affectnet']
    t = pd.read_csv(f, dtype=str)
    i = kept(t)
    t.loc[i, 'subDirectory_filePath'] = ''; t.to_csv(f, index=False)
    rc, so, se = build(capsys, root, 'affectnet', tmp_path/'ix')
    assert rc == 0, se
    assert "'empty_path': 1" in so
    df = load_index(tmp_path/'ix')
    assert len(df) == base[1]['affectnet'] - 1 and not df.path.str.endswith('/nan').any()


def test_affectnet_empty_csv_names_file(ds, tmp_path, capsys):
    root = ds('affectnet')
    (root/'validation.csv').write_text('\n')
    assert_clear_error(capsys, root, 'affectnet', tmp_path/'ix', 'validation.csv', 'empty')


def test_affectnet_missing_column(ds, tmp_path, capsys):
    root = ds('affectnet')
    f = root/LABEL['affectnet']
    pd.read_csv(f, dtype=str).drop(columns=['expression']).to_csv(f, index=False)
    assert_clear_error(capsys, root, 'affectnet', tmp_path/'ix', 'training.csv', "missing column(s) ['expression']")


def test_affectnet_path_escape(ds, tmp_path, capsys):
    root = ds('affectnet')
    f = root/LABEL['affectnet']
    t = pd.read_csv(f, dtype=str); t.loc[kept(t), 'subDirectory_filePath'] = '../../../etc/passwd'; t.to_csv(f, index=False)
    assert_clear_error(capsys, root, 'affectnet', tmp_path/'ix', f'training.csv row {kept(t) + 2}', 'escapes the dataset root')


# ------------------------------------------------------------------ image files: quarantined and counted
def _delete(p): p.unlink()
def _corrupt(p): p.write_bytes(b'\xff\xd8\xff\xe0 this is not a jpeg' * 4)
def _zero(p): p.write_bytes(b'')
def _truncate(p): b = p.read_bytes(); p.write_bytes(b[:len(b)//2])

IMAGE_CASES = [('affectnet', 'Manually_Annotated_Images/**/*.jpg', _delete, 'missing'),
               ('affectnet', 'Manually_Annotated_Images/**/*.jpg', _corrupt, 'corrupt'),
               ('affectnet', 'Manually_Annotated_Images/**/*.jpg', _zero, 'empty file'),
               ('rafdb', 'Image/aligned/*.jpg', _corrupt, 'corrupt'),
               ('rafdb', 'Image/aligned/*.jpg', _truncate, 'truncated'),
               ('bp4d', 'F00*/T1/*.jpg', _corrupt, 'corrupt'),
               ('disfa', 'Images_LeftCamera/SN*/*.jpg', _zero, 'empty file')]


@pytest.mark.parametrize('dataset,pattern,breaker,reason', IMAGE_CASES,
                         ids=[f'{d}-{b.__name__[1:]}' for d, _, b, _ in IMAGE_CASES])
def test_bad_image_quarantined(ds, base, tmp_path, capsys, dataset, pattern, breaker, reason):
    root = ds(dataset)
    # a file the index references (AffectNet also has images of excluded classes)
    ref = load_index_paths(root, dataset)
    img = sorted(p for p in root.glob(pattern) if p.relative_to(root).as_posix() in ref)[0]
    breaker(img)
    rc, so, se = build(capsys, root, dataset, tmp_path/'ix')
    assert rc == 0, se
    assert f"quarantined (by reason): {{'{reason}': 1}}" in so, so
    assert len(load_index(tmp_path/'ix')) == base[1][dataset] - 1
    q = pd.read_csv(tmp_path/'ix'/'_quarantine'/f'{dataset}.csv')
    assert q.file.tolist() == [img.relative_to(root).as_posix()] and q.reason.str.startswith(reason).all()


def load_index_paths(root, dataset):
    return set(build_index(dataset, root, progress=False)[0].path)


def test_no_check_files_keeps_row_and_says_so(ds, base, tmp_path, capsys):
    root = ds('affectnet')
    img = sorted(root.glob('Manually_Annotated_Images/**/*.jpg'))
    ref = load_index_paths(root, 'affectnet')
    next(p for p in img if p.relative_to(root).as_posix() in ref).unlink()
    rc, so, se = build(capsys, root, 'affectnet', tmp_path/'ix', '--no-check-files')
    assert rc == 0 and 'files not checked (--no-check-files)' in so
    assert len(load_index(tmp_path/'ix')) == base[1]['affectnet']


@pytest.mark.parametrize('dataset', ['casme2', 'smic', 'samm'])
def test_bad_clip_frame_is_padded_and_counted(ds, base, tmp_path, capsys, dataset):
    root = ds(dataset)
    frames = build_index(dataset, root, progress=False)[0].frames[0]
    _corrupt(root/frames[1])
    rc, so, se = build(capsys, root, dataset, tmp_path/'ix')
    assert rc == 0, se
    assert 'padded frames: 1' in so, so
    df = load_index(tmp_path/'ix')
    assert len(df) == base[1][dataset] and frames[1] not in set(df.frames[0])
    q = pd.read_csv(tmp_path/'ix'/'_quarantine'/f'{dataset}.csv')
    assert q.action.tolist() == ['padded'] and q.file.tolist() == [frames[1]]


def test_16bit_png_frame_decodes_true_grey(ds, tmp_path, capsys):
    "A 16-bit grey PNG frame (BP4D) is indexed and decodes to its grey level, not all white."
    root = ds('bp4d')
    jpg = sorted(root.glob('F001/T1/*.jpg'))[0]
    g16 = np.full((48, 48), 27000, np.uint16)
    jpg.unlink(); cv2.imwrite(str(jpg.with_suffix('.png')), g16)
    rc, so, se = build(capsys, root, 'bp4d', tmp_path/'ix')
    assert rc == 0 and "quarantined (by reason): none" in so, so
    df = load_index(tmp_path/'ix')
    assert jpg.with_suffix('.png').relative_to(root).as_posix() in set(df.path)
    assert decode_image(jpg.with_suffix('.png')).mean() == 27000 >> 8


# ------------------------------------------------------------------ counts the CLI used to hide
@pytest.mark.parametrize('dataset', ['casme2', 'samm', 'smic', 'casme3'])
def test_micro_drops_and_counts_are_printed(ds, tmp_path, capsys, dataset):
    root = ds(dataset)
    df, stats = build_index(dataset, root, progress=False)
    st = df.attrs['stats']
    rc, so, se = build(capsys, root, dataset, tmp_path/'ix')
    assert rc == 0, se
    assert f"dropped (by reason): {st['dropped'] or 'none'}" in so, so
    assert f"missing_frames': {st['missing_frames']}" in so, so


def test_casme2_excluded_class_counted(ds, base, tmp_path, capsys):
    root = ds('casme2')
    f = root/LABEL['casme2']
    t = pd.read_excel(f, dtype=object)
    t.loc[0, 'Estimated Emotion'] = 'fear'                   # not in the 5-class space: dropped and counted
    t.to_excel(f, index=False)
    rc, so, se = build(capsys, root, 'casme2', tmp_path/'ix')
    assert rc == 0, se
    assert "dropped (by reason): {'fear': 1}" in so, so
    assert len(load_index(tmp_path/'ix')) == base[1]['casme2'] - 1


def test_missing_bp4d_frame_counted(ds, base, tmp_path, capsys):
    root = ds('bp4d')
    sorted(root.glob('F002/T1/*.jpg'))[0].unlink()
    rc, so, se = build(capsys, root, 'bp4d', tmp_path/'ix')
    assert rc == 0 and "dropped (by reason): {'missing_image': 1}" in so, so


# ------------------------------------------------------------------ identity
def test_smic_s01_and_s1_refused(ds, tmp_path, capsys):
    root = ds('smic')
    shutil.copytree(root/'HS'/'s1', root/'HS'/'s01')
    assert_clear_error(capsys, root, 'smic', tmp_path/'ix', "'s01'", "'s1'", 'same subject')


def test_smic_subject_ids_normalised(ds, base, tmp_path, capsys):
    root = ds('smic')
    (root/'HS'/'s2').rename(root/'HS'/'S02')
    rc, so, se = build(capsys, root, 'smic', tmp_path/'ix')
    assert rc == 0, se
    df = load_index(tmp_path/'ix')
    assert sorted(df.subject.unique()) == ['smic/s1', 'smic/s2'] and len(df) == base[1]['smic']


def test_cross_fold_duplicate_is_an_error(ds, tmp_path, capsys):
    "F002's frames replaced by F001's: identical images in different folds would leak."
    root = ds('bp4d')
    df = build_index('bp4d', root, progress=False)[0]
    a, b = df[df.subject == 'bp4d/F001'], df[df.subject == 'bp4d/F002']
    assert a.fold.iat[0] != b.fold.iat[0]                          # 3 subjects, 3 subject-exclusive folds
    for pa, pb in zip(a.path, b.path): shutil.copy(root/pa, root/pb)
    assert_clear_error(capsys, root, 'bp4d', tmp_path/'ix', 'near-duplicate', 'across folds or splits', '--allow-duplicates')
    rc, so, se = build(capsys, root, 'bp4d', tmp_path/'ix', '--allow-duplicates')
    assert rc == 0 and 'near-duplicate pairs:' in so and 'across folds' in so, so


# ------------------------------------------------------------------ rebuilds
def test_rebuild_to_zero_rows_removes_old_partition(ds, base, tmp_path, capsys):
    root = ds('bp4d')
    rc, so, se = build(capsys, root, 'bp4d', tmp_path/'ix')
    assert rc == 0 and len(load_index(tmp_path/'ix')) == base[1]['bp4d']
    for f in root.glob('[FM]*/T1/*.jpg'): f.unlink()
    rc, so, se = build(capsys, root, 'bp4d', tmp_path/'ix')
    assert rc == 0 and 'bp4d: 0 rows' in so and f"'missing_image': {base[1]['bp4d']}" in so, (so, se)
    assert 'files checked: 0; quarantined (by reason): none' in so, so
    assert len(load_index(tmp_path/'ix')) == 0
    assert main(['index', 'show', '--out', str(tmp_path/'ix')]) == 0 and ': 0 rows' in capsys.readouterr().out


def test_edit_keeping_size_and_mtime_is_rebuilt(ds, tmp_path, capsys):
    import os
    root = ds('bp4d')
    rc, so, se = build(capsys, root, 'bp4d', tmp_path/'ix')
    f = root/LABEL['bp4d']
    st, text = f.stat(), f.read_text()
    t = pd.read_csv(f, dtype=str)
    col = next(c for c in t.columns[1:] if t[c].iat[0] in ('0', '1'))
    old = t[col].iat[0]
    t.loc[0, col] = '1' if old == '0' else '0'; t.to_csv(f, index=False)
    assert f.stat().st_size == st.st_size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    rc, so, se = build(capsys, root, 'bp4d', tmp_path/'ix')
    assert rc == 0 and '1 unit(s) scanned, 2 reused' in so, so
    df = load_index(tmp_path/'ix')
    from facelab.data.index import INDEX_AUS
    row = df[df.sample_id == f"bp4d/F001/T1/{int(t['0'].iat[0])}"].iloc[0]
    assert row.au_present[INDEX_AUS.index(int(col))] == float(t.loc[0, col])


def test_stale_quarantine_list_removed(ds, tmp_path, capsys):
    root = ds('rafdb')
    img = sorted(root.glob('Image/aligned/*.jpg'))[0]
    good = img.read_bytes(); _corrupt(img)
    build(capsys, root, 'rafdb', tmp_path/'ix')
    assert (tmp_path/'ix'/'_quarantine'/'rafdb.csv').exists()
    img.write_bytes(good)
    rc, so, se = build(capsys, root, 'rafdb', tmp_path/'ix')
    assert rc == 0 and "quarantined (by reason): none" in so and not (tmp_path/'ix'/'_quarantine'/'rafdb.csv').exists()


# ------------------------------------------------------------------ a label source with a header and no rows
def _csv_header_only(f): pd.read_csv(f, dtype=str).iloc[:0].to_csv(f, index=False)
def _xlsx_header_only(f): pd.read_excel(f, dtype=object).iloc[:0].to_excel(f, index=False)

@pytest.mark.parametrize('dataset,breaker', [('affectnet', _csv_header_only), ('bp4d', _csv_header_only),
                                             ('casme2', _xlsx_header_only)])
def test_header_only_label_file(ds, tmp_path, capsys, dataset, breaker):
    root = ds(dataset)
    breaker(root/LABEL[dataset])
    assert_clear_error(capsys, root, dataset, tmp_path/'ix', Path(LABEL[dataset]).name, 'no rows')
