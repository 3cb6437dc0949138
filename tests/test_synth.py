"""FaceSynth: AU locality and monotonicity, determinism, video timing, and the `facelab synth` CLI."""
import subprocess, sys
from pathlib import Path

import numpy as np
import pytest

from facelab.synth.face import (AU_KEYS, EXPRESSIONS, Appearance, au_region_mask, encode_jpeg, expression_aus,
                                render_face, sample_appearance, sample_identity, sample_pose)
from facelab.synth.video import long_video, macro_event, micro_event, render_clip

SIZE = 128

def _faces(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(sample_identity(rng), sample_pose(rng)) for _ in range(n)]

def _diff(a, b): return np.abs(a.astype(np.int32) - b.astype(np.int32)).sum(-1)

@pytest.mark.parametrize('au', AU_KEYS, ids=str)
def test_au_local_and_monotonic(au):
    "Each AU alone: >= 80% of the pixel-difference mass inside its region; the change grows with intensity."
    for idn, pose in _faces(4, seed=11):
        base = render_face(idn, None, pose, SIZE)
        mask = au_region_mask(au, base.landmarks, SIZE)
        assert 0.005 < mask.mean() < 0.25, f'AU{au} region covers {mask.mean():.1%} of the image'
        prev = 0
        for i in range(1, 6):
            d = _diff(render_face(idn, {au: i}, pose, SIZE).image, base.image)
            total = d.sum()
            assert total > prev, f'AU{au}: change at intensity {i} ({total}) is not above intensity {i-1} ({prev})'
            assert d[mask].sum() >= 0.8*total, f'AU{au} at {i}: only {d[mask].sum()/total:.1%} inside its region'
            prev = total

def test_regions_are_specific():
    "Negative control: a brow AU's change is not inside the mouth region and vice versa."
    for idn, pose in _faces(3, seed=5):
        base = render_face(idn, None, pose, SIZE)
        d1 = _diff(render_face(idn, {1: 4}, pose, SIZE).image, base.image)
        d12 = _diff(render_face(idn, {12: 4}, pose, SIZE).image, base.image)
        assert d1[au_region_mask(12, base.landmarks, SIZE)].sum() < 0.05*d1.sum()
        assert d12[au_region_mask(1, base.landmarks, SIZE)].sum() < 0.05*d12.sum()
        # unilateral AU12 stays on its side: L12 is the subject's left = image right
        dl = _diff(render_face(idn, {'L12': 4}, pose, SIZE).image, base.image)
        assert dl[au_region_mask('L12', base.landmarks, SIZE)].sum() > 0.8*dl.sum()
        assert dl[au_region_mask('R12', base.landmarks, SIZE) & ~au_region_mask('L12', base.landmarks, SIZE)].sum() < 0.1*dl.sum()

def test_low_intensity_moves_landmarks():
    "Micro-expression intensities must be learnable: intensity 2 moves some landmark >= 1 px at 128 px."
    for idn, pose in _faces(3, seed=2):
        base = render_face(idn, None, (0, 0, 0), SIZE).landmarks
        for au in AU_KEYS:
            mv = np.abs(render_face(idn, {au: 2}, (0, 0, 0), SIZE).landmarks - base).max()
            assert mv >= 1.0, f'AU{au} at intensity 2 moves landmarks only {mv:.2f} px'

def test_deterministic_bytes():
    rng = np.random.default_rng(3); idn = sample_identity(rng); app = sample_appearance(rng)
    a = render_face(idn, expression_aus('anger', 0.9, np.random.default_rng(1)), (4, -6, 3), 96, app, seed=9)
    b = render_face(idn, expression_aus('anger', 0.9, np.random.default_rng(1)), (4, -6, 3), 96, app, seed=9)
    assert a.image.tobytes() == b.image.tobytes() and np.array_equal(a.landmarks, b.landmarks)
    assert encode_jpeg(a.image, app.jpeg_quality) == encode_jpeg(b.image, app.jpeg_quality)
    c = render_face(idn, None, (4, -6, 3), 96, app, seed=10)
    assert c.image.tobytes() != a.image.tobytes()
    # identities and appearances are pure functions of the generator state
    assert sample_identity(np.random.default_rng(7)) == sample_identity(np.random.default_rng(7))

def test_pose_moves_landmarks_consistently():
    idn = sample_identity(np.random.default_rng(0))
    f0 = render_face(idn, None, (0, 0, 0), SIZE)
    fr = render_face(idn, None, (15, 0, 0), SIZE)
    ang = lambda L: np.degrees(np.arctan2(*(L[45] - L[36])[::-1]))
    assert abs(ang(fr.landmarks) - ang(f0.landmarks) - 15) < 1.0      # roll rotates the eye line
    fy = render_face(idn, None, (0, 20, 0), SIZE)
    assert fy.landmarks[30, 0] - f0.landmarks[30, 0] > 2               # yaw moves the nose tip sideways
    x, y, w, h = f0.face_box
    assert (f0.landmarks[:, 0] >= x).all() and (f0.landmarks[:, 0] <= x + w).all() and (f0.landmarks[:, 1] <= y + h).all()

def test_expressions_cover_labels():
    from facelab.core import EMOTION7
    assert set(EXPRESSIONS) == set(EMOTION7) | {'contempt'}
    rng = np.random.default_rng(0)
    for e in EXPRESSIONS:
        for _ in range(20):
            aus = expression_aus(e, float(rng.uniform(0, 1)), rng)
            assert all(k in AU_KEYS and 0 <= v <= 5 for k, v in aus.items())

def test_micro_macro_timing():
    rng = np.random.default_rng(0)
    for fps in (30, 100, 200):
        for _ in range(30):
            m = micro_event(rng, fps, 5)
            assert m.length <= 0.5*fps + 1 and all(1 <= v <= 2 for v in m.aus.values()) and 1 <= len(m.aus) <= 3
            M = macro_event(rng, fps, 5)
            assert 0.5*fps <= M.length <= 4*fps + 1 and max(M.aus.values()) >= 1.5

def test_clip_ground_truth_and_motion():
    rng = np.random.default_rng(1); idn = sample_identity(rng)
    ev = macro_event(rng, 30, 10, 'happiness')
    clip = render_clip(idn, [ev], ev.offset + 15, 30, size=64, seed=4, motion=True)
    j = AU_KEYS.index(12)
    a = clip.au_intensity[:, j]
    assert a[:ev.onset].max() == 0 and a[ev.offset + 1:].max() == 0 and abs(a[ev.apex] - ev.aus[12]) < 1e-5
    assert np.all(np.diff(a[ev.onset:ev.apex + 1]) >= 0) and np.all(np.diff(a[ev.apex:ev.offset + 1]) <= 0)
    # the head drifts: consecutive frames differ even outside the event
    assert _diff(clip.frames[0], clip.frames[5]).sum() > 0
    still = render_clip(idn, [], 6, 30, size=64, seed=4, motion=False, appearance=Appearance())
    assert _diff(still.frames[0], still.frames[5]).sum() == 0

def test_long_video_schedule():
    for s in range(5):
        ev = long_video(np.random.default_rng(s), 30, 60, n_micro=3, n_macro=3, n_distractors=4)
        kinds = [e.kind for e in ev]
        assert kinds.count('micro') == 3 and kinds.count('macro') == 3 and len(ev) == 10
        assert all(a.offset < b.onset for a, b in zip(ev, ev[1:])) and ev[-1].offset < 1800
    with pytest.raises(ValueError, match='too short'):
        long_video(np.random.default_rng(0), 30, 2, n_macro=5)

BIN = Path(sys.executable).parent

def test_cli_unknown_dataset_and_missing_writer(tmp_path):
    r = subprocess.run([str(BIN/'facelab'), 'synth', '--dataset', 'nope', '--out', str(tmp_path)], capture_output=True, text=True)
    assert r.returncode != 0 and 'nope' in r.stderr
    r = subprocess.run([str(BIN/'facelab'), 'synth', '--help'], capture_output=True, text=True)
    assert r.returncode == 0 and '--dataset' in r.stdout and '--all' in r.stdout

def test_cli_writes_only_under_out(tmp_path):
    out = tmp_path/'out'
    r = subprocess.run([str(BIN/'facelab'), 'synth', '--dataset', 'rafdb', '--out', str(out), '--subjects', '1', '--quiet'],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert [p.name for p in tmp_path.iterdir()] == ['out'] and [p.name for p in out.iterdir()] == ['rafdb']
    assert any((out/'rafdb').rglob('*.jpg'))
