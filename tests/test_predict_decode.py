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
