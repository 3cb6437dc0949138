"""Issue 7, adapter training: a tiny VideoMAE whose backbone was pre-trained on *another* FaceSynth task (7-class
macro-expressions of other people), then frozen, learns 3-class micro-expressions of held-out subjects by training
only its temporal adapters, `fc_norm` and head. A frozen *random* backbone is the control.

The recipe is fixed (no selection on the test subjects) and is the one in nbs/21_models_videomae.ipynb. About a
minute of CPU on one thread (measured: 62 s user time, 2 min wall on a 2-core machine shared with other jobs);
run with `-s` to see the numbers."""
import time

import numpy as np
import pytest
import torch

from facelab.core import EMOTION7, MEGC3
from facelab.evaluate import uf1
from facelab.models import create_model
from facelab.models.videomae import facesynth_pretrain, fit_clip_classifier, load_videomae_weights, predict_clips
from facelab.synth.clipset import expression_clips

TRAINABLE = ('adapters.', 'fc_norm.', 'head.')


@pytest.fixture(scope='module')
def one_thread():
    # one thread: on a loaded 2-core machine a second OpenMP thread made each step ~10x slower (measured in nbs/21)
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def micro(one_thread):
    "Micro-expression clips: 30 training subjects (seed 0) and 10 held-out subjects (seed 1), 9 clips each."
    t0 = time.time()
    train = expression_clips('micro', MEGC3, subjects=30, per_class=3, seed=0)
    test = expression_clips('micro', MEGC3, subjects=10, per_class=3, seed=1)
    print(f'\nmicro clips: {len(train)} train / {len(test)} held-out, rendered in {time.time() - t0:.0f}s')
    return train, test


@pytest.fixture(scope='module')
def pretrained(one_thread):
    "Stage 1: the whole backbone trained on 7-class macro-expression clips of other people (seeds 100 / 101)."
    t0 = time.time()
    sd, info = facesynth_pretrain(clip_residual=True)
    print(f"\nstage 1: {info['clips']} macro clips, loss {info['losses'][0]:.3f} -> {info['losses'][-1]:.3f}, "
          f"held-out 7-class accuracy {info['heldout_accuracy']:.3f}, {time.time() - t0:.0f}s")
    return sd, info


def stage2(weights, micro) -> dict:
    "Stage 2: adapters + fc_norm + head on a frozen backbone (`weights`, or random when None); one fixed recipe."
    train, test = micro
    torch.manual_seed(0)
    m = create_model('videomae_tiny', clip_residual=True)      # freeze_backbone=True is the default
    report = load_videomae_weights(m, weights, verbose=False) if weights is not None else None
    backbone_before = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    others_before = {k: v.clone() for k, v in m.state_dict().items() if not k.startswith('backbone.')}
    t0 = time.time()
    losses = fit_clip_classifier(m, train.tensor(), torch.from_numpy(train.labels), epochs=12)
    pred = predict_clips(m, test.tensor()).argmax(1).numpy()
    return dict(model=m, report=report, losses=losses, seconds=time.time() - t0, uf1=uf1(test.labels, pred, 3),
                backbone_before=backbone_before, others_before=others_before,
                trainable=[n for n, p in m.named_parameters() if p.requires_grad])


@pytest.fixture(scope='module')
def runs(pretrained, micro):
    out = {'pretrained': stage2(pretrained[0], micro), 'random': stage2(None, micro)}
    for k, r in out.items():
        print(f"stage 2 on the {k} frozen backbone: loss {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f}, "
              f"held-out-subject UF1 {r['uf1']:.3f}, {r['seconds']:.0f}s")
    return out


def test_stage1_is_another_task_on_other_people(pretrained, micro):
    sd, info = pretrained
    train, test = micro
    assert not set(info['subjects']) & (set(train.subjects) | set(test.subjects))
    assert not set(train.subjects) & set(test.subjects)
    assert info['classes'] == list(EMOTION7) and 'neutral' in EMOTION7
    assert sd['head.weight'].shape == (7, 96) and not any('adapter' in k for k in sd)
    # the stage-1 backbone learned its own task (7 classes, chance 1/7) on people it never saw
    assert info['heldout_accuracy'] >= 0.4, info['heldout_accuracy']


def test_checkpoint_loads_like_a_released_one(runs):
    rep = runs['pretrained']['report']
    assert sorted(rep.mismatched) == ['head.bias', 'head.weight']           # 7-class head, 3-class model
    assert {k.split('.')[0] for k in rep.missing} <= {'adapters', 'head'}
    assert any(k.startswith('backbone.encoder.layer.3.') for k in rep.loaded) and 'fc_norm.weight' in rep.loaded


@pytest.mark.parametrize('kind', ['pretrained', 'random'])
def test_only_adapters_norm_and_head_train(runs, kind):
    r = runs[kind]
    assert r['trainable'] and all(n.startswith(TRAINABLE) for n in r['trainable']), r['trainable']
    assert {n.split('.')[0] for n in r['trainable']} == {'adapters', 'fc_norm', 'head'}
    after = r['model'].backbone.state_dict()
    assert after.keys() == r['backbone_before'].keys()
    assert all(torch.equal(v, after[k]) for k, v in r['backbone_before'].items()), 'a frozen backbone weight changed'
    # ... while the adapters did train (their zero-initialised up-projections are no longer zero)
    sd = r['model'].state_dict()
    assert all(sd[f'adapters.{i}.up.weight'].abs().sum() > 0 for i in range(4))
    assert not torch.equal(sd['head.weight'], r['others_before']['head.weight'])


def test_frozen_pretrained_backbone_with_adapters_learns_micro(runs):
    assert runs['pretrained']['uf1'] >= 0.6, runs['pretrained']['uf1']


def test_pretraining_is_what_enables_it(runs):
    # the control: the same stage 2 on a random frozen backbone. Measured 0.30 here, but 0.27-0.51 over other seeds and
    # people (pre-trained: 0.755-0.80), so only a gap that held in every run is asserted, not the control's value
    gap = runs['pretrained']['uf1'] - runs['random']['uf1']
    assert gap >= 0.15, (runs['pretrained']['uf1'], runs['random']['uf1'])
