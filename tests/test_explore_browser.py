"""The AU explorer (nbs/60_explore_aus.ipynb) served by Voilà on 127.0.0.1 and driven in headless Chromium with
Playwright: moving an AU slider must change the rendered face and the models' predictions. Screenshots go to the test
artefacts ($FACELAB_ARTIFACTS/test-artifacts when set, else the test's tmp_path)."""
import io, os, shutil, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = '/usr/bin/chromium'
NOTEBOOK = ROOT/'nbs'/'60_explore_aus.ipynb'

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f'{CHROMIUM} is missing: install Debian\'s chromium')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _artefacts(tmp_path) -> Path:
    env = os.environ.get('FACELAB_ARTIFACTS')
    d = Path(env)/'test-artifacts' if env else tmp_path
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture
def voila(tmp_path):
    "Voilà serving the AU explorer on a free port of 127.0.0.1; stopped (its whole process group) afterwards."
    voila_bin = Path(sys.executable).parent/'voila'
    if not voila_bin.exists(): pytest.fail(f'{voila_bin} not found: install voila into the venv (make setup)')
    port = _free_port()
    log = open(tmp_path/'voila.log', 'w')
    env = {**os.environ, 'FACELAB_EXPLORE_MODELS': '', 'PYTHONUNBUFFERED': '1'}
    proc = subprocess.Popen([str(voila_bin), str(NOTEBOOK), '--no-browser', f'--port={port}', '--Voila.ip=127.0.0.1',
                             '--show_tracebacks=True'],
                            cwd=ROOT/'nbs', stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f'http://127.0.0.1:{port}/'
    try:
        t0 = time.time()
        while True:
            if proc.poll() is not None:
                pytest.fail(f'voila exited with {proc.returncode}:\n{(tmp_path/"voila.log").read_text()[-3000:]}')
            try:
                urllib.request.urlopen(url + 'voila/static/', timeout=1)
            except urllib.error.HTTPError: break          # the server answers (404 is fine)
            except OSError:
                if time.time() - t0 > 30: pytest.fail(f'voila did not listen on {url} within 30 s')
                time.sleep(0.3); continue
            break
        yield url, tmp_path/'voila.log'
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try: proc.wait(10)
        except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL); proc.wait(5)
        log.close()


def _pixels(png:bytes) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(png)).convert('RGB'), dtype=np.int16)


def test_au_slider_changes_face_and_predictions(voila, tmp_path):
    from playwright.sync_api import sync_playwright
    url, log = voila
    out = _artefacts(tmp_path)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=['--no-sandbox', '--disable-gpu'])
        try:
            page = browser.new_page(viewport={'width': 1280, 'height': 900})
            errors = []
            page.on('pageerror', lambda e: errors.append(str(e)))
            page.goto(url, timeout=60_000)
            face = page.locator('.facelab-face img, img.facelab-face').first
            preds = page.locator('.facelab-predictions').first
            try:
                face.wait_for(state='visible', timeout=75_000)
                page.wait_for_function("document.querySelector('.facelab-predictions') && "
                                       "document.querySelector('.facelab-predictions').innerText.includes('top:')", timeout=30_000)
            except Exception:
                page.screenshot(path=str(out/'explore_aus_failed.png'), full_page=True)
                raise AssertionError(f'the explorer did not render; page text:\n{page.inner_text("body")[:2000]}\n'
                                     f'voila log:\n{log.read_text()[-3000:]}') from None
            assert 'Traceback' not in page.inner_text('body'), page.inner_text('body')[:3000]
            text0, img0 = preds.inner_text(), face.screenshot()
            page.screenshot(path=str(out/'explore_aus_before.png'), full_page=True)

            # drag the AU12 (lip-corner puller) slider's handle to the right end of its track
            slider = page.locator('.facelab-au-12').first
            handle = slider.locator('.noUi-handle').first
            track = slider.locator('.noUi-target, .slider-container').first
            hb, tb = handle.bounding_box(), track.bounding_box()
            page.mouse.move(hb['x'] + hb['width'] / 2, hb['y'] + hb['height'] / 2)
            page.mouse.down()
            page.mouse.move(tb['x'] + tb['width'] + 20, hb['y'] + hb['height'] / 2, steps=8)
            page.mouse.up()
            readout = slider.locator('.widget-readout').first
            page.wait_for_function("el => el.innerText.trim() === '5.0'", arg=readout.element_handle(), timeout=10_000)
            page.wait_for_function("t => { const e = document.querySelector('.facelab-predictions'); return e && e.innerText !== t; }",
                                   arg=text0, timeout=30_000)
            page.wait_for_function("document.querySelector('.facelab-status').innerText.includes('AU12 5.0')", timeout=30_000)
            time.sleep(0.5)   # let the new image decode
            text1, img1 = preds.inner_text(), face.screenshot()
            page.screenshot(path=str(out/'explore_aus_after.png'), full_page=True)
        finally:
            browser.close()
    a, b = _pixels(img0), _pixels(img1)
    assert a.shape == b.shape
    changed = (np.abs(a - b).sum(-1) > 30).mean()
    assert changed > 0.005, f'the face image barely changed ({changed:.4%} of its pixels)'
    assert text1 != text0, 'the predictions did not change'
    assert 'FER2013 mini-Xception' in text1, text1
    assert not errors, errors
    print(f'screenshots in {out}; {changed:.2%} of the face pixels changed')
