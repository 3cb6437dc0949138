"""FaceSynth realism measured by real models (issue 18): goals for the dlib HOG detection rate and for the FER2013 model's
reading of FaceSynth expressions. The renderer is not tuned against these models; goals not met yet are strict xfails
carrying the measured numbers (the renders are deterministic, so a change in either direction is noticed)."""
import pytest

pytest.importorskip('dlib', reason="needs the face extra: pip install 'facelab[face]'")
pytest.importorskip('h5py', reason="needs the face extra: pip install 'facelab[face]'")

from facelab.core import EMOTION7


@pytest.fixture(scope='module')
def det():
    from facelab.face.realism import detection_rates
    return detection_rates(n=20, methods=('hog',))


@pytest.fixture(scope='module')
def fer(tmp_path_factory):
    import os
    os.environ.setdefault('FACELAB_ARTIFACTS', str(tmp_path_factory.mktemp('realism')))
    from facelab.face.realism import fer_on_facesynth
    return fer_on_facesynth(per_class=10)


def test_hog_finds_frontal_faces(det):
    assert det.hog_rate.iloc[:2].min() == 1.0, det


# measured 2026-12-05 after the AU-combination and deeper-shading work: 100% on this sample (80/80). Over 3 seeds x 40
# renders per condition: 97.9% (the pose conditions 95.8%); the renderer before that work measured 98.3% the same way, and
# 87.5% before issue 18 part 5. The goal holds on the test sample with margin but sits on the line for the renderer.
def test_hog_detection_rate_goal(det):
    assert (det.hog_rate * det.n).sum() / det.n.sum() >= 0.98, det


def test_fer_reads_facesynth_happiness(fer):
    assert fer['recall']['happiness'] >= 0.9, fer['recall']


# measured 2026-12-05 (AU combinations, AU5 sclera, AU1 triangular lid fold): 0.600 on this sample, 42 of 70, on the line
# (the smallest logit margin of a prediction is 0.016, far above fp32 differences between machines); other seeds give
# 0.571-0.629. It was 0.44 after issue 18 part 5 and 0.29-0.30 before (chance 0.14).
def test_fer_overall_accuracy_goal(fer):
    assert fer['accuracy'] >= 0.6, fer['confusion']


@pytest.mark.xfail(strict=True, reason='measured 2026-12-05: per-class recall neutral 0.8, happiness 0.9, sadness 0.5, '
                   'surprise 0.5, fear 0.9, disgust 0.0, anger 0.6 (after issue 18 part 5: 0.9/0.9/0.2/0.3/0.2/0.0/0.6); only '
                   'disgust is below 0.3: it reads as sadness or anger, and the model gives it < 0.06 probability for every '
                   'FACS disgust form FaceSynth renders (9, 10, 9+10, with 15, 17, 25, 26 or 4); goal: no class below 0.3')
def test_fer_no_class_below_goal(fer):
    assert min(fer['recall'].values()) >= 0.3, fer['recall']


def test_fer_confusion_is_complete(fer):
    cm = fer['confusion']
    assert list(cm.index) == list(EMOTION7) and int(cm.to_numpy().sum()) == fer['n'] == 70
