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


# measured 2026-12 after issue 18 part 5 (soft 3-D shading, turned-head silhouette): 98.75% over the 4 conditions
# (frontal studio 1.0, frontal default imaging 1.0, pose +-15 0.95, yaw +-30 1.0); it was 87.5% (pose 0.9, yaw 0.6)
def test_hog_detection_rate_goal(det):
    assert (det.hog_rate * det.n).sum() / det.n.sum() >= 0.98, det


def test_fer_reads_facesynth_happiness(fer):
    assert fer['recall']['happiness'] >= 0.9, fer['recall']


@pytest.mark.xfail(strict=True, reason='measured 2026-12 after issue 18 part 5: FER2013 mini-Xception accuracy 0.44 on '
                   'frontal full-intensity FaceSynth expressions (was 0.29-0.30; chance 0.14); goal >= 0.6')
def test_fer_overall_accuracy_goal(fer):
    assert fer['accuracy'] >= 0.6, fer['confusion']


@pytest.mark.xfail(strict=True, reason='measured 2026-12 after issue 18 part 5: per-class recall neutral 0.9, happiness 0.9, '
                   'sadness 0.2, surprise 0.3, fear 0.2, disgust 0.0, anger 0.6 (was 0.8/0.9/0.1/0.0/0.1/0.0/0.2; sadness '
                   'reads as neutral or fear, fear as neutral or happiness, disgust as anger or sadness, surprise partly as '
                   'fear); goal: no class below 0.3')
def test_fer_no_class_below_goal(fer):
    assert min(fer['recall'].values()) >= 0.3, fer['recall']


def test_fer_confusion_is_complete(fer):
    cm = fer['confusion']
    assert list(cm.index) == list(EMOTION7) and int(cm.to_numpy().sum()) == fer['n'] == 70


def test_fer_faces_table_matches_confusion(fer):
    import pandas as pd
    f = fer['faces']
    assert len(f) == fer['n'] and f.glasses.dtype == bool and f.p_true.between(0, 1).all()
    counts = pd.crosstab(f.emotion, f.predicted).reindex(index=list(EMOTION7), columns=list(EMOTION7), fill_value=0)
    assert (counts.to_numpy() == fer['confusion'].to_numpy()).all()
