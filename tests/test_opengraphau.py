"""Full-size OpenGraphAU checks that are too heavy for the notebook's fast path."""
import pytest, torch
from facelab.models import create_model, count_params
from facelab.models.opengraphau import (OFFICIAL_AUS, to_official_state_dict, load_official_checkpoint,
                                        checkpoint_filter_fn)


def _randomise_bn(model):
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5); m.running_var.uniform_(0.5, 2.0)


def test_official_r50_round_trip(tmp_path):
    "Our full ResNet-50 weights -> official key layout (DataParallel-style) -> torch.save -> weights_only load -> same output."
    torch.manual_seed(0)
    a = create_model('opengraphau_official_r50').eval(); _randomise_bn(a)
    sd = to_official_state_dict(a, prefix='module.')
    assert len(sd) == 525 and all(k.startswith('module.') for k in sd)   # the official ANFL R-50 has 525 keys
    f = tmp_path/'OpenGprahAU-ResNet50_first_stage.pth'
    torch.save({'epoch': 5, 'state_dict': sd, 'optimizer': {'state': {}, 'param_groups': []}}, f)
    torch.manual_seed(1)
    b = create_model('opengraphau_official_r50').eval()
    rep = load_official_checkpoint(b, f, verbose=False)
    assert rep.counts() == {'loaded': len(b.state_dict()) - 4, 'partial': 0, 'missing': 4, 'unexpected': 0,
                            'used': 525, 'unused': 0, 'derived': 0}
    assert all(k.startswith('intensity.') for k in rep.missing)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad(): pa, pb = a(x)[0], b(x)[0]
    assert pa.shape == (1, 41) and torch.equal(pa, pb)


def test_official_r50_into_deploy_model():
    "The 41-AU official weights initialise the 17-AU deploy model: 16 AUs load, AU45 is reported, nothing is silent."
    torch.manual_seed(0)
    off = create_model('opengraphau_official_r50')
    dep = create_model('opengraphau_r50')
    sd, rep = checkpoint_filter_fn({'state_dict': to_official_state_dict(off)}, dep)
    assert rep.n_checkpoint_keys == len(rep.used) + len(rep.unused) + len(rep.derived) + len(rep.unexpected)
    assert not rep.unexpected and rep.missing == [k for k in dep.state_dict() if k.startswith('intensity.')]
    assert 'presence.main_sc' in rep.partial and rep.partial['presence.main_sc'].startswith('1/17 rows')
    # the backbone is the same tensor data
    assert torch.equal(sd['backbone.layer4.2.conv3.weight'], off.state_dict()['backbone.layer4.2.conv3.weight'])


@pytest.mark.parametrize('name,params', [('opengraphau_official_swin_t', 32.14e6), ('opengraphau_official_swin_b', 94.93e6)])
def test_swin_param_counts(name, params):
    "Swin variants match the measured official ANFL parameter counts within 2%."
    m = create_model(name)
    assert abs(count_params(m) / params - 1) < 0.02
    assert len(m.au_names) == len(OFFICIAL_AUS)
