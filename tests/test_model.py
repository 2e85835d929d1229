"""The dense HuBERT's inference caches: derived weights are rebuilt whenever their parameters change."""

from __future__ import annotations

import torch

from lighthubert.model import HuBERT

from conftest import randomize_, tiny_model_config


def fresh_copy(model: HuBERT) -> HuBERT:
    """The same weights in a new model: nothing cached, an independent reference."""
    other = HuBERT(model.cfg).to(model.mask_emb.dtype).eval()
    other.load_state_dict(model.state_dict())
    return other


def test_inference_cache_follows_in_place_updates_and_dtype_changes():
    torch.manual_seed(0)
    model = randomize_(HuBERT(tiny_model_config()), 1).eval()
    wav = torch.randn(2, 3000, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        first = model(wav).hidden_states[-1]
        assert model.feature_extractor.conv_layers[1].__dict__.get("_inference_cache")  # k=3 taps were cached
        assert model.encoder.pos_conv[0].__dict__.get("_inference_cache")  # weight-normed weight too
        torch.testing.assert_close(first, fresh_copy(model)(wav).hidden_states[-1], rtol=0, atol=0)
    keys = set(model.state_dict())
    with torch.no_grad():  # as an optimizer step or load_state_dict changes them: in place
        for block in model.feature_extractor.conv_layers:
            block.conv.weight.mul_(1.5)
        model.encoder.pos_conv[0].weight_g.mul_(0.5)
    with torch.inference_mode():
        changed = model(wav).hidden_states[-1]
        torch.testing.assert_close(changed, fresh_copy(model)(wav).hidden_states[-1], rtol=0, atol=0)
        assert (changed - first).abs().max() > 1e-2  # the change is seen, not the stale cache
    model.double()
    with torch.inference_mode():
        out = model(wav.double()).hidden_states[-1]
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, fresh_copy(model)(wav.double()).hidden_states[-1], rtol=0, atol=0)
    assert set(model.state_dict()) == keys  # caches never reach the state dict


def test_cache_filled_under_inference_mode_serves_a_frozen_pos_conv_in_training():
    """A frozen pos conv (fine-tuning) uses the cached weight while autograd records the
    input's graph; a cache filled under inference_mode must be a normal tensor for that."""
    torch.manual_seed(0)
    model = randomize_(HuBERT(tiny_model_config()), 1).train()
    model.encoder.pos_conv.requires_grad_(False)
    with torch.inference_mode():
        model(torch.randn(1, 3000))
    model(torch.randn(1, 3000)).hidden_states[-1].square().mean().backward()
    assert model.encoder.layers[0].fc1.weight.grad is not None and model.post_extract_proj.weight.grad.abs().sum() > 0


def test_training_computes_derived_weights_with_autograd():
    torch.manual_seed(0)
    model = randomize_(HuBERT(tiny_model_config()), 1).train()
    with torch.inference_mode():
        model(torch.randn(1, 3000))  # fills the caches
    model(torch.randn(1, 3000)).hidden_states[-1].square().mean().backward()
    pos = model.encoder.pos_conv[0]
    assert pos.weight_v.grad is not None and pos.weight_g.grad.abs().sum() > 0
    assert all(b.conv.weight.grad.abs().sum() > 0 for b in model.feature_extractor.conv_layers)
