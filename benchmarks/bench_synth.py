"""FaceSynth rendering speed: images per second at 128 px on one core (default preset, random AUs and poses)."""
import time
import numpy as np

def _rate(fn, n):
    fn(0)                                                  # warm caches (geometry, backgrounds)
    w0, c0 = time.perf_counter(), time.process_time()
    for i in range(n): fn(i)
    return n/(time.perf_counter() - w0), n/(time.process_time() - c0)

def bench(quick:bool=False) -> list:
    from facelab.synth.face import (AU_KEYS, render_face, sample_identity, sample_appearance, sample_pose,
                                    expression_aus, EXPRESSIONS, encode_jpeg)
    from facelab.synth.video import macro_event, render_clip
    rng = np.random.default_rng(0)
    ids = [sample_identity(rng) for _ in range(50)]; apps = [sample_appearance(rng) for _ in range(50)]
    poses = [sample_pose(rng) for _ in range(50)]; emos = list(EXPRESSIONS)
    aus = [expression_aus(emos[i % len(emos)], 0.8, rng) for i in range(50)]
    img = lambda i: render_face(ids[i % 50], aus[i % 50], poses[i % 50], 128, apps[i % 50], seed=i)
    n = 150 if quick else 600
    w, c = _rate(img, n)
    jw, jc = _rate(lambda i: encode_jpeg(img(i).image, 90), n // 2)
    ev = macro_event(rng, 30, 2, 'happiness')
    t0 = time.process_time(); clip = render_clip(ids[0], [ev], 120, 30, size=128, appearance=apps[0], seed=1)
    fc = len(clip.frames)/(time.process_time() - t0)
    note = 'CPU time of this process (wall-clock is lower when other jobs share the cores)'
    return [
        dict(benchmark='synth.render_face', metric='images/s @128px (CPU time)', value=c, unit='img/s', target='>= 300', summary='FaceSynth render throughput', note=f'{n} faces; ' + note),
        dict(benchmark='synth.render_face', metric='images/s @128px (wall clock)', value=w, unit='img/s', target='', note='depends on machine load'),
        dict(benchmark='synth.render_face+encode_jpeg', metric='images/s @128px (CPU time)', value=jc, unit='img/s', target='', note='render + JPEG q90'),
        dict(benchmark='synth.render_clip', metric='frames/s @128px (CPU time)', value=fc, unit='frames/s', target='>= 300', note='30 fps clip with head drift and blinks'),
    ]

if __name__ == '__main__':
    for r in bench(): print(r)
