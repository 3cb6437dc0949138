"""AU agent part 2 outside the notebooks: the LoRA run driven by configs/au_agent_lora.yaml (tiny section end to end,
plan section checked for shape on a tiny Qwen2), and the text-feature interface the CLI calls."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facelab.core import load_config

CONFIG = Path(__file__).resolve().parent.parent/'configs'/'au_agent_lora.yaml'

@pytest.fixture(autouse=True)
def one_thread():
    # tiny models: one thread costs far less CPU than two on a shared machine
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

@pytest.fixture(scope='module')
def pairs(tmp_path_factory):
    from facelab.agent.dataset import build_instruction_dataset
    return build_instruction_dataset('facesynth', tmp_path_factory.mktemp('ds'), n_pairs=300, seed=0, val_fraction=0.2)

def test_tiny_config_run_learns_and_evaluates(pairs, tmp_path):
    from facelab.agent.lm import run_lora, load_adapter, tiny_lm, generate, read_instruction_jsonl
    from transformers import AutoTokenizer
    res = run_lora(CONFIG, 'tiny', train=pairs['train'], val=pairs['val'], out_dir=tmp_path/'out', n_eval=4)
    assert res['train_loss_last'] < 0.5*res['train_loss_first'], res
    assert res['val_loss'][-1] < res['val_loss'][0], res
    assert res['skipped'] > 0 and res['n_train'] <= 120               # clip pairs beyond max_len are counted, not silent
    for k in ('rougeL', 'au_precision', 'au_recall'): assert 0.0 <= res[k] <= 1.0
    assert json.loads((tmp_path/'out'/'metrics.json').read_text())['steps'] == res['steps']
    # the saved adapter + tokenizer reload onto a fresh base of the config's shape
    c = load_config(CONFIG).tiny.model
    tok = AutoTokenizer.from_pretrained(tmp_path/'out'/'adapter')
    lm = load_adapter(tiny_lm(tok, 'llama', hidden=c.hidden, layers=c.layers, heads=c.heads, kv_heads=c.kv_heads,
                              intermediate=c.intermediate, max_len=c.max_len, seed=c.seed), tmp_path/'out'/'adapter')
    recs = [r for r in read_instruction_jsonl(pairs['val']) if '\n' not in r['input']][:2]
    assert all(isinstance(s, str) for s in generate(lm, tok, recs, max_new_tokens=8))

def test_plan_section_is_the_plan_and_fits_qwen2():
    from facelab.agent.lm import train_tokenizer, tiny_lm, add_lora
    p = load_config(CONFIG).plan
    assert p.model.name == 'Qwen/Qwen2.5-7B-Instruct' and p.lora.r == 64 and p.train.epochs == 3
    assert p.model.device == 'cuda' and p.train.precision == 'bf16'
    # the plan's LoRA target modules exist in a Qwen2 model (a tiny one of the same architecture)
    tok = train_tokenizer(['AU6 cheek raiser, slight (B).', 'AU12 lip corner puller, marked (C).'], 300)
    m = add_lora(tiny_lm(tok, 'qwen2', hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64), **p.lora)
    lora = {n.split('.lora_A')[0].rsplit('.', 1)[-1] for n, _ in m.named_parameters() if 'lora_A' in n}
    assert lora == set(p.lora.target_modules), lora
    assert all(('lora_' in n) == p.requires_grad for n, p in m.named_parameters())

def test_run_lora_bad_config(tmp_path):
    from facelab.agent.lm import run_lora
    bad = tmp_path/'bad.yaml'; bad.write_text('tiny: {model: {name: tiny:llama}}\n')
    with pytest.raises(ValueError, match="bad.yaml: section 'tiny' lacks 'lora'"): run_lora(bad, 'tiny')
    with pytest.raises(ValueError, match="no section 'gpu'"): run_lora(bad, 'gpu')

def test_text_features_interface():
    from facelab.agent.features import text_features
    F = text_features(['AU12 lip corner puller, marked (C).', 'No action unit is active.'])
    assert F.shape == (2, 384) and F.dtype == np.float32
    with pytest.raises(ValueError, match="unknown text encoder 'clip'"): text_features(['x'], encoder='clip')

def test_open_clip_text_tower_from_local_weights(tmp_path):
    "open_clip path: a small architecture registered from a JSON config, random weights saved locally, loaded strictly."
    open_clip = pytest.importorskip('open_clip')
    from facelab.agent.features import text_features
    cfg = {'embed_dim': 512, 'vision_cfg': {'image_size': 32, 'layers': 1, 'width': 64, 'patch_size': 16},
           'text_cfg': {'context_length': 77, 'vocab_size': 49408, 'width': 64, 'heads': 2, 'layers': 1}}
    (tmp_path/'facelab-test-clip.json').write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path/'facelab-test-clip.json')
    torch.manual_seed(0)
    w = tmp_path/'clip.pt'; torch.save(open_clip.create_model('facelab-test-clip', pretrained=None).state_dict(), w)
    F = text_features(['AU12 lip corner puller, marked (C).', 'No action unit is active.'],
                      encoder='open_clip:facelab-test-clip', weights=w, cache_dir=tmp_path/'cache')
    assert F.shape == (2, 512) and F.dtype == np.float32
    assert np.allclose(np.linalg.norm(F, axis=1), 1, atol=1e-4)
    assert (tmp_path/'cache'/'open_clip_facelab-test-clip').is_dir()
    other = tmp_path/'other.pt'; torch.save({'text_projection': torch.zeros(3, 3)}, other)
    with pytest.raises(ValueError, match='other.pt: does not match open_clip facelab-test-clip'):
        text_features(['x'], encoder='open_clip:facelab-test-clip', weights=other)
    with pytest.raises(FileNotFoundError, match='no local weights given'):
        text_features(['x'], encoder='open_clip:facelab-test-clip')
