"""Real faces in (issue 18): detection, landmarks and alignment on a real photo, the FER2013 reference model in PyTorch and
through its ONNX export with `facelab predict`, bad inputs skipped, videos predicted per face per frame."""
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip('dlib', reason="needs the face extra: pip install 'facelab[face]'")
skimage_data = pytest.importorskip('skimage.data')

from facelab.core import EMOTION7


@pytest.fixture(scope='module')
def art(tmp_path_factory):
    d = tmp_path_factory.mktemp('face')
    os.environ.setdefault('FACELAB_ARTIFACTS', str(d/'artifacts'))
    return d


@pytest.fixture(scope='module')
def fer_onnx(art):
    "The reference model exported as a user does it: `facelab face export-fer2013`."
    from facelab.cli import main
    from facelab.export import read_metadata
    out = art/'fer2013.onnx'
    assert main(['face', 'export-fer2013', '--out', str(out)]) == 0
    meta = read_metadata(out)
    assert meta['task'] == 'macro' and meta['align_template'] == 'fer2013' and meta['trained_on'] == 'FER2013 (real faces)', meta
    return out


def test_astronaut_face_landmarks_and_happiness_pytorch(art):
    import torch
    from facelab.face.detect import detect_faces
    from facelab.face.align import align_face
    from facelab.models.fer import fer2013_minixception
    img = skimage_data.astronaut()
    faces = detect_faces(img)
    assert len(faces) == 1
    f = faces[0]
    x0, y0, x1, y1 = f.box
    pad = 0.15 * (x1 - x0)
    lm = f.landmarks
    assert lm.shape == (68, 2)
    assert ((lm[:, 0] > x0 - pad) & (lm[:, 0] < x1 + pad) & (lm[:, 1] > y0 - pad) & (lm[:, 1] < y1 + pad)).all()
    crop = align_face(img, lm, 'fer2013')
    x = torch.from_numpy((crop.astype(np.float32) / 255 - 0.5) * 2)[None, None]
    with torch.no_grad(): p = fer2013_minixception(pretrained=True)(x).softmax(1)[0]
    assert EMOTION7[int(p.argmax())] == 'happiness' and float(p.max()) > 0.9, p


def test_astronaut_happiness_through_onnx_and_cli(art, fer_onnx, capsys):
    from PIL import Image
    from facelab.cli import main
    photo = art/'astronaut.jpg'
    Image.fromarray(skimage_data.astronaut()).save(photo, quality=95)
    out = art/'pred.csv'
    assert main(['predict', '--model', str(fer_onnx), str(photo), '--out', str(out), '--quiet']) == 0
    df = pd.read_csv(out)
    assert len(df) == 1 and df.label[0] == 'happiness' and df.confidence[0] > 0.9, df
    assert df.x0[0] < df.x1[0] and df.track[0] == 0


def test_bad_files_are_skipped_and_reported(art, fer_onnx, capsys):
    from PIL import Image
    from facelab.cli import main
    good = art/'astronaut2.png'
    Image.fromarray(skimage_data.astronaut()).save(good)
    bad = art/'broken.jpg'; bad.write_bytes(b'\xff\xd8 not really a jpeg')
    out = art/'pred_bad.csv'
    rc = main(['predict', '--model', str(fer_onnx), str(bad), str(art/'missing.png'), str(good), '--out', str(out), '--quiet'])
    err = capsys.readouterr().err
    assert rc == 1
    assert f'skipped {bad}' in err and 'not a readable image' in err and 'missing.png: no such file' in err
    df = pd.read_csv(out)
    assert list(df.input) == [str(good)] and df.label[0] == 'happiness'


def test_video_one_row_per_face_per_frame(art, fer_onnx):
    import cv2
    from facelab.cli import main
    from facelab.synth.face import sample_identity, Appearance
    from facelab.synth.video import render_clip, micro_event
    rng = np.random.default_rng(4)
    clip = render_clip(sample_identity(rng), [micro_event(rng, 25.0, 3)], 12, 25.0, size=256,
                       appearance=Appearance(scale=0.55, offset=(-0.1, 0.05)), seed=2)
    vid = art/'faces.avi'
    w = cv2.VideoWriter(str(vid), cv2.VideoWriter_fourcc(*'MJPG'), 25.0, (256, 256))
    for f in clip.frames: w.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    w.release()
    out = art/'video.csv'
    assert main(['predict', '--model', str(fer_onnx), str(vid), '--out', str(out), '--quiet', '--detect-every', '4']) == 0
    df = pd.read_csv(out)
    assert list(df.frame) == list(range(12)) and set(df.track) == {0}
    assert np.allclose(np.diff(df.time), 0.04, atol=1e-3)
    assert set(df.label) <= set(EMOTION7)
    # the face box follows the face: FaceSynth's landmarks of frame 0 are inside the row's box
    assert (df.x0 < 0.5 * 256).all() and (df.x1 > 0.2 * 256).all()


def test_missing_models_are_named(monkeypatch, tmp_path):
    import facelab.face.detect as d
    monkeypatch.setenv('FACELAB_FACE_MODELS', str(tmp_path))
    with pytest.raises(FileNotFoundError, match='FACELAB_FACE_MODELS'):
        d.face_model_path('not_there.dat')
