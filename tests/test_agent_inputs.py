"""AU agent, part 1: OpenFace CSVs as OpenFace writes them, AU-model predictions, the FACS describer, the instruction
dataset builder and `facelab agent` through `facelab.cli.main`."""
import json, tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from facelab.agent.openface import read_openface_csv, au_frames_from_predictions, R_COLS, C_COLS
from facelab.agent.describe import describe_frame, describe_clip, active_aus
from facelab.agent.dataset import build_instruction_dataset, au_input_text
from facelab.cli import main

R_AUS = ['01', '02', '04', '05', '06', '07', '09', '10', '12', '14', '15', '17', '20', '23', '25', '26', '45']
C_AUS = ['01', '02', '04', '05', '06', '07', '09', '10', '12', '14', '15', '17', '20', '23', '25', '26', '28', '45']

def openface_header() -> list[str]:
    "The full column list of OpenFace 2.2 FeatureExtraction (gaze, eye landmarks, pose, 2-D/3-D landmarks, PDM, AUs)."
    h = ['frame', 'face_id', 'timestamp', 'confidence', 'success',
         'gaze_0_x', 'gaze_0_y', 'gaze_0_z', 'gaze_1_x', 'gaze_1_y', 'gaze_1_z', 'gaze_angle_x', 'gaze_angle_y']
    h += [f'eye_lmk_{a}_{i}' for a in ('x', 'y') for i in range(56)] + [f'eye_lmk_{a}_{i}' for a in 'XYZ' for i in range(56)]
    h += ['pose_Tx', 'pose_Ty', 'pose_Tz', 'pose_Rx', 'pose_Ry', 'pose_Rz']
    h += [f'{a}_{i}' for a in ('x', 'y') for i in range(68)] + [f'{a}_{i}' for a in 'XYZ' for i in range(68)]
    h += ['p_scale', 'p_rx', 'p_ry', 'p_rz', 'p_tx', 'p_ty'] + [f'p_{i}' for i in range(34)]
    return h + [f'AU{a}_r' for a in R_AUS] + [f'AU{a}_c' for a in C_AUS]

HEADER = openface_header()

def of_line(frame, face, success=1, r=None, c=None, conf=0.98) -> str:
    "One data line as OpenFace writes it: ', ' between values, 3 decimals for time, 2 for AUs, zeros when success is 0."
    r, c = r or {}, c or {}
    vals = [str(frame), str(face), f'{(frame - 1) / 30:.3f}', f'{conf if success else 0:.2f}', str(success)]
    vals += ['0.000000'] * (len(HEADER) - 5 - len(R_AUS) - len(C_AUS))
    vals += [f"{r.get(a, 0.0) if success else 0.0:.2f}" for a in R_AUS] + [f"{c.get(a, 0) if success else 0:.2f}" for a in C_AUS]
    return ', '.join(vals)

def write(path, lines) -> Path:
    path.write_text('\n'.join(lines) + '\n'); return path

@pytest.fixture
def video_csv(tmp_path):
    "Two faces over 20 frames: face 0 smiles (AU6+AU12 up to 4 and back), face 1 frowns (AU4) and is lost at frames 5-6."
    lines = [', '.join(HEADER)]
    for f in range(1, 21):
        k = 4.0 * np.sin(np.pi * (f - 1) / 19) ** 2
        lines.append(of_line(f, 0, 1, {'06': 0.9 * k, '12': k}, {'06': int(k >= 1), '12': int(k >= 1)}))
        lines.append(of_line(f, 1, 0 if f in (5, 6) else 1, {'04': 3.0}, {'04': 1, '28': 1}))
    return write(tmp_path/'video.csv', lines)

def test_reads_openface_layout(video_csv):
    assert video_csv.read_text().splitlines()[0].startswith('frame, face_id, timestamp, confidence, success, gaze_0_x')
    assert len(HEADER) == 714
    df = read_openface_csv(video_csv)
    assert df.attrs['skipped'] == 2 and len(df) == 38
    assert list(df.columns) == ['frame', 'face_id', 'timestamp', 'confidence'] + R_COLS + C_COLS
    assert df[df.face_id == 1].frame.tolist() == [f for f in range(1, 21) if f not in (5, 6)]
    f0 = df[df.face_id == 0].set_index('frame')
    assert f0.AU12_r[10] == pytest.approx(round(4.0 * np.sin(np.pi * 9 / 19) ** 2, 2))
    assert f0.timestamp[11] == pytest.approx(10 / 30, abs=1e-3)
    assert (df[df.face_id == 1].AU28_c == 1).all() and 'AU28_r' not in df.columns

def _cells(line): return line.split(', ')

@pytest.mark.parametrize('case, expect', [
    ('missing_column', "missing OpenFace column(s) ['AU12_r']"),
    ('missing_success', "missing OpenFace column(s) ['success']"),
    ('non_numeric', "row 4, column 'AU06_r': 'high' is not a finite number"),
    ('empty_value', "row 3, column 'timestamp': '' is empty"),
    ('out_of_range', "row 2, column 'AU04_r': '6.50' is outside the AU intensity range 0-5"),
    ('all_failed', 'every one of its 40 row(s) has success 0'),
    ('empty_file', 'the OpenFace CSV is empty'),
    ('header_only', 'has a header but no data rows'),
    ('blank_file', 'the OpenFace CSV is empty (no text)'),
])
def test_bad_csvs_name_file_and_place(video_csv, tmp_path, case, expect):
    lines = video_csv.read_text().splitlines()
    i_r12, i_c6 = HEADER.index('AU12_r'), HEADER.index('AU06_r')
    if case == 'missing_column': lines = [', '.join(c for j, c in enumerate(_cells(l)) if j != i_r12) for l in lines]
    elif case == 'missing_success': lines = [', '.join(c for j, c in enumerate(_cells(l)) if j != 4) for l in lines]
    elif case == 'non_numeric': c = _cells(lines[3]); c[i_c6] = 'high'; lines[3] = ', '.join(c)
    elif case == 'empty_value': c = _cells(lines[2]); c[2] = ''; lines[2] = ', '.join(c)
    elif case == 'out_of_range': c = _cells(lines[1]); c[HEADER.index('AU04_r')] = '6.50'; lines[1] = ', '.join(c)
    elif case == 'all_failed': lines = lines[:1] + [', '.join(c[:4] + ['0'] + c[5:]) for c in map(_cells, lines[1:])]
    elif case == 'header_only': lines = lines[:1]
    p = tmp_path/f'{case}.csv'
    if case == 'empty_file': p.write_bytes(b'')
    elif case == 'blank_file': p.write_text('\n  \n')
    else: write(p, lines)
    with pytest.raises(ValueError) as e: read_openface_csv(p)
    assert str(p) in str(e.value) and expect in str(e.value), str(e.value)

def test_predictions_table_maps_tracks_and_times(tmp_path):
    "facelab predict's table of a video (frame, time, track per face) becomes the same frame table."
    rows = []
    for f in range(4):
        for tr in (0, 1):
            r = {'input': 'v.mp4', 'frame': f, 'time': f / 25, 'track': tr, 'active': ''}
            for a in R_AUS:
                r[f'AU{a}_prob'] = 0.9 if (a == '12' and tr == 0) else 0.1
                r[f'AU{a}_intensity'] = 3.6 if (a == '12' and tr == 0) else 0.05
            rows.append(r)
    pd.DataFrame(rows).to_parquet(tmp_path/'pred.parquet')
    df = au_frames_from_predictions(tmp_path/'pred.parquet')
    assert df.face_id.tolist() == [0, 0, 0, 0, 1, 1, 1, 1] and df.frame.tolist() == [0, 1, 2, 3] * 2
    assert df.timestamp.tolist() == pytest.approx([0, 0.04, 0.08, 0.12] * 2)
    assert (df[df.face_id == 0].AU12_c == 1).all() and (df[df.face_id == 1].AU12_c == 0).all()
    assert df.AU28_c.isna().all()
    assert 'AU12 lip corner puller, severe (D)' in describe_clip(df[df.face_id == 0])

def test_describer_happiness_words():
    d = describe_frame({'AU06_r': 4.0, 'AU12_r': 4.0})
    for w in ('cheek raiser', 'lip corner puller', 'severe (D)', 'consistent with happiness', 'hypothesis', 'cheeks', 'mouth corners'):
        assert w in d, (w, d)
    assert describe_frame({'AU06_r': 4.0, 'AU12_r': 4.0}) == d
    # weak or absent AUs are not named; the presence column decides where given
    assert 'AU4' not in describe_frame({'AU06_r': 4.0, 'AU12_r': 4.0, 'AU04_r': 0.3})
    assert 'AU4' not in describe_frame({'AU04_r': 2.0}, {'AU04_c': 0})
    assert [a.au for a in active_aus({'AU01_r': 3, 'AU02_r': 3, 'AU05_r': 3, 'AU26_r': 3})] == [1, 2, 5, 26]
    assert 'consistent with surprise' in describe_frame({'AU01_r': 3, 'AU02_r': 3, 'AU05_r': 3, 'AU26_r': 3})
    assert 'left side only' in describe_frame({'L12': 2.5}) and 'contempt' in describe_frame({'L12': 2.5})

def test_clip_change_wording(video_csv):
    df = read_openface_csv(video_csv)
    d = describe_clip(df[df.face_id == 0])
    assert d.startswith('Clip of 8 frames sampled evenly from frames 1-20.')
    assert 'AU12 lip corner puller rises from absent to' in d and '(onset, apex)' in d and '(offset)' in d, d
    assert 'onset, apex and offset inside the clip' in d and 'consistent with happiness' in d
    d1 = describe_clip(df[df.face_id == 1])
    assert 'AU4 brow lowerer stays marked (C) throughout (sustained)' in d1 and 'AU28 lip suck is present in 8 of 8' in d1, d1

def _records(path): return [json.loads(l) for l in open(path)]

def test_dataset_split_by_subject_and_dedupe(tmp_path):
    r = build_instruction_dataset('facesynth', tmp_path/'ds', n_pairs=300, seed=3, val_fraction=0.25, clips_per_subject=8)
    tr, va = _records(r['train']), _records(r['val'])
    assert len(tr) + len(va) == 300 and len(va) > 30
    assert not ({x['subject'] for x in tr} & {x['subject'] for x in va})
    assert len({x['input'] for x in tr + va}) == 300
    assert all(set(x) == {'id', 'subject', 'instruction', 'input', 'response'} for x in tr + va)
    # a response describes exactly its input: re-describing a frame pair's values gives the same text
    fr = next(x for x in tr if not x['input'].startswith('frame') and x['input'] != 'none')
    vals = dict((k, float(v)) for k, v in (t.split(' ') for t in fr['input'].split(', ')))
    assert describe_frame(vals) == fr['response']

def test_dataset_dedupes_openface_windows(tmp_path):
    "Still faces give identical windows: written once. Both faces of a file stay on the same side of the split."
    src = tmp_path/'csvs'; src.mkdir()
    for s in range(4):
        lines = [', '.join(HEADER)] + [of_line(f, fid, 1, {'12': 2.0 * fid + 0.1 * s}, {'12': fid}) for f in range(1, 41) for fid in (0, 1)]
        write(src/f'sub{s}_task1.csv', lines)
    with pytest.warns(UserWarning, match='the OpenFace source ran out after'):
        r = build_instruction_dataset(src, tmp_path/'of', n_pairs=1000, seed=0, val_fraction=0.25, window=10, subject_pattern=r'^(sub\d)_')
    assert r['exhausted'] and r['duplicates_skipped'] > 0
    recs = _records(r['train']) + _records(r['val'])
    assert len({x['input'] for x in recs}) == len(recs) == r['n_pairs']
    tr, va = ({x['subject'].split('#')[0] for x in _records(r[k])} for k in ('train', 'val'))
    assert tr and va and not (tr & va)

def test_dataset_streams(tmp_path):
    "Peak traced memory while writing 1,500 pairs stays far below what was written: records are not held."
    tracemalloc.start()
    r = build_instruction_dataset('facesynth', tmp_path/'big', n_pairs=1500, seed=1)
    peak = tracemalloc.get_traced_memory()[1]; tracemalloc.stop()
    size = Path(r['train']).stat().st_size + Path(r['val']).stat().st_size
    assert r['n_pairs'] == 1500 and peak < size / 4, (peak, size)

def test_cli_describe_and_dataset(video_csv, tmp_path, capsys):
    assert main(['agent', 'describe', '--openface', str(video_csv), '--clip']) == 0
    out, err = capsys.readouterr()
    assert out.count('[face ') == 2 and 'consistent with happiness' in out and '2 frame(s) skipped' in err
    assert main(['agent', 'describe', '--openface', str(video_csv), '--face-id', '0', '--out', str(tmp_path/'d.jsonl')]) == 0
    assert len(_records(tmp_path/'d.jsonl')) == 20
    capsys.readouterr()
    bad = tmp_path/'bad.csv'; bad.write_text(video_csv.read_text().replace('AU45_c', 'AU46_c'))
    assert main(['agent', 'describe', '--openface', str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and str(bad) in err and "['AU45_c']" in err, err
    assert main(['agent', 'dataset', '--source', 'facesynth', '--out', str(tmp_path/'ds'), '--n', '50', '--quiet']) == 0
    meta = json.loads((tmp_path/'ds'/'meta.json').read_text())
    assert meta['n_train'] + meta['n_val'] == 50
