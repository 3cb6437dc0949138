"""`facelab predict` reads images through the loaders' decoder: a 16-bit PNG is scaled, not clipped to white."""
import numpy as np
from PIL import Image

from facelab.predict import read_rgb


def test_16bit_grey_png_keeps_its_values(tmp_path):
    a = (np.arange(64*64).reshape(64, 64)*16).astype(np.uint16)    # 0..65520
    p = tmp_path/'grey16.png'
    Image.fromarray(a).save(p)
    assert Image.open(p).mode.startswith('I')                       # really stored as 16 bit
    img = read_rgb(p)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[..., 0], (a >> 8).astype(np.uint8))
    assert abs(img.mean() - 127.5) < 1                              # Pillow's plain convert('RGB') gives 254.5 here


def test_resize_after_decoding(tmp_path):
    p = tmp_path/'rgba.png'
    Image.fromarray(np.full((40, 30, 4), 200, np.uint8)).save(p)
    img = read_rgb(p, size=(20, 10))
    assert img.shape == (20, 10, 3) and int(img.mean()) == 200


# --- issue 18: the micro path of `predict_faces` on a real (uncropped) video -----------------------------------------

class _Motion:
    "A micro 'model' whose first logit is how much a clip changes from its first frame: a face that moves scores high."
    @staticmethod
    def build():
        import torch
        from torch import nn
        class M(nn.Module):
            def forward(self, x):                       # (B, T, 3, H, W)
                d = (x - x[:, :1]).abs().mean((2, 3, 4)).amax(1)   # largest mean change against the first frame
                return torch.stack([10 * d, torch.zeros_like(d), 0.5 + 0 * d], 1)
        return M().eval()


def _two_face_video(path, n=16, fps=25.0, size=192):
    "Two FaceSynth people side by side in full frames (not crops): the left one makes a macro expression, the right one stays still."
    import cv2
    from facelab.synth.face import sample_identity, Appearance
    from facelab.synth.video import render_clip, macro_event
    rng = np.random.default_rng(11)
    app = Appearance(scale=0.6, offset=(0.0, 0.05))
    ev = macro_event(rng, fps, 2, emotion='surprise')
    left = render_clip(sample_identity(rng), [ev], n, fps, size=size, appearance=app, seed=1, motion=False).frames
    right = render_clip(sample_identity(rng), [], n, fps, size=size, appearance=app, seed=2, motion=False).frames
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), fps, (2 * size, size))
    assert w.isOpened()
    for a, b in zip(left, right): w.write(cv2.cvtColor(np.concatenate([a, b], 1), cv2.COLOR_RGB2BGR))
    w.release()
    return left, right


def test_micro_video_one_row_per_track(tmp_path):
    "A micro model on an uncropped video: faces are detected and tracked, each track's clip is predicted once, with its box."
    import pytest
    pytest.importorskip('dlib', reason="needs the face extra: pip install 'facelab[face]'")
    import pandas as pd
    from facelab.export import to_onnx
    from facelab.predict import OnnxPredictor, predict_faces
    from facelab.cli import main
    from facelab.core import MEGC3
    import torch
    onnx_path = to_onnx(_Motion.build(), 'micro', tmp_path/'micro.onnx', input_shape=(1, 8, 3, 48, 48), simplify=False,
                        parity_inputs=[torch.randn(1, 8, 3, 48, 48)], class_names=list(MEGC3)).path
    p = OnnxPredictor(onnx_path)
    assert p.task == 'micro' and p.frames == 8
    vid = tmp_path/'two_people.avi'
    left, right = _two_face_video(vid)
    assert np.abs(left[-1].astype(int) - left[0]).mean() > np.abs(right[-1].astype(int) - right[0]).mean()
    df = predict_faces(p, vid, detect_every=4)
    assert len(df) == 2 and sorted(df.track) == [0, 1], df       # one row per face track, not per frame
    assert (df.input == str(vid)).all() and (df.frame == 0).all() and (df.time == 0).all()
    size = left.shape[2]
    l, r = df[df.x1 < size + 10].iloc[0], df[df.x0 > size - 10].iloc[0]   # boxes: one face in each half of the frame
    assert l.track != r.track and l.x0 >= 0 and r.x1 <= 2 * size
    # the clip of each track is that face over time: the moving face's clip changes more than the still face's
    assert l.prob_negative > r.prob_negative + 0.02, df[['track', 'x0', 'x1', 'prob_negative']]
    # the same through the command line, with every column written
    out = tmp_path/'micro.csv'
    assert main(['predict', '--model', str(onnx_path), str(vid), '--out', str(out), '--quiet', '--detect-every', '4']) == 0
    got = pd.read_csv(out)
    assert sorted(got.track) == [0, 1] and set(got.label) <= set(MEGC3)
    assert np.allclose(got.sort_values('track').prob_negative, df.sort_values('track').prob_negative, atol=1e-6)
    # a single image is refused for a micro model, naming the file
    from PIL import Image
    Image.fromarray(left[0]).save(tmp_path/'still.png')
    with pytest.raises(ValueError, match='still.png: a micro model reads videos'): predict_faces(p, tmp_path/'still.png')
