"""LightHuBERT supernet: dense equivalence at max, export parity, padding, masking, gradients.

Tolerance 1e-5 (float32) wherever two models compute the same thing: the supernet multiplies
sliced, sometimes non-contiguous or concatenated weights while the dense model multiplies
contiguous copies, so BLAS may pick other kernels and summation orders; the results agree to
rounding (observed differences are around 1e-6) but are not promised bit for bit.
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from lighthubert.elastic import block_ranges
from lighthubert.model import HuBERT
from lighthubert.space import SubnetConfig, count_params, count_subnet_params
from lighthubert.supernet import LightHuBERT

ATOL = 1e-5


def assert_features_close(a, b, atol=ATOL):
    assert len(a.hidden_states) == len(b.hidden_states)
    assert len(a.layer_results) == len(b.layer_results)
    for x, y in zip(a.hidden_states, b.hidden_states):
        torch.testing.assert_close(x, y, rtol=0, atol=atol)
    for x, y in zip(a.layer_results, b.layer_results):
        torch.testing.assert_close(x, y, rtol=0, atol=atol)
    if a.prediction is None or b.prediction is None:
        assert a.prediction is None and b.prediction is None
    else:
        torch.testing.assert_close(a.prediction, b.prediction, rtol=0, atol=atol)


# -- construction and set_subnet ---------------------------------------------------------------
def test_starts_at_default_and_reports_official_count(tiny_supernet, tiny_space):
    assert tiny_supernet.subnet == tiny_space.default == tiny_space.max()
    assert tiny_supernet.num_params() == count_subnet_params(tiny_space, tiny_space.max())


def test_supernet_real_params_equal_count_plus_head_and_weight_g(tiny_supernet):
    """`count_params` excludes the prediction head and the pos-conv `weight_g` (official rule)."""
    cfg = tiny_supernet.cfg
    real = sum(p.numel() for p in tiny_supernet.parameters())
    assert real == count_params(cfg) + cfg.embed_dim * cfg.pred_dim + cfg.conv_pos


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"embed_dim": 80, "heads": [4] * 4, "ffn_dim": [320] * 4}, "embed_dim"),
        ({"embed_dim": 128, "heads": [4, 4, 1, 4], "ffn_dim": [512] * 4}, r"heads\[2\]"),
        ({"embed_dim": 128, "heads": [4] * 4, "ffn_dim": [512, 500, 512, 512]}, r"ffn_dim\[1\]"),
        ({"embed_dim": 128, "heads": [4], "ffn_dim": [512]}, "depth"),
        ("biggest", "biggest"),
        ('{"embed_dim": 128, "heads": [4, 4], "ffn_dim": [512, 512], "depth": 2}', "depth"),
    ],
)
def test_set_subnet_rejects_invalid_and_keeps_state(tiny_supernet, bad, field):
    sub = tiny_supernet.set_subnet("min")
    with pytest.raises(ValueError, match=field):
        tiny_supernet.set_subnet(bad)
    assert tiny_supernet.subnet == sub
    assert tiny_supernet.encoder.kept_layers == list(tiny_supernet.space.kept_layers(sub.depth))


def test_set_subnet_accepts_every_spelling(tiny_supernet, tiny_space):
    sub = tiny_space.sample(random.Random(4))
    assert tiny_supernet.set_subnet(sub) == sub
    ours = {"embed_dim": sub.embed_dim, "heads": list(sub.heads), "ffn_dim": list(sub.ffn_dim)}
    assert tiny_supernet.set_subnet(ours) == sub
    assert tiny_supernet.set_subnet(sub.to_official(head_dim=32)) == sub  # atten_dim = 32 * heads here
    assert tiny_supernet.set_subnet(json.dumps(sub.to_official(head_dim=32))) == sub
    with pytest.raises(ValueError, match="atten_dim"):  # 64-wide heads do not fit this space
        tiny_supernet.set_subnet(sub.to_official(head_dim=64))
    assert tiny_supernet.set_subnet("min") == tiny_space.min()
    assert tiny_supernet.encoder.kept_layers == list(tiny_space.kept_layers(tiny_space.min().depth))


# -- dense equivalence -------------------------------------------------------------------------
def test_max_subnet_equals_dense_model(tiny_supernet, wav):
    """At the max subnet every slice is the whole tensor: the supernet is the dense HuBERT."""
    tiny_supernet.set_subnet("max")
    dense = HuBERT(tiny_supernet.cfg).eval()
    dense.load_state_dict(tiny_supernet.state_dict(), strict=True)
    with torch.no_grad():
        a, b = tiny_supernet(wav), dense(wav)
    assert len(a.hidden_states) == 1 + tiny_supernet.cfg.depth
    assert_features_close(a, b)


def check_export(model: LightHuBERT, sub: SubnetConfig, wav: torch.Tensor) -> None:
    model.set_subnet(sub)
    dense, cfg = model.export()
    assert type(dense) is HuBERT and cfg == model.space.model_config(sub) and not dense.training
    with torch.no_grad():
        a, b = model(wav), dense(wav)
    assert len(a.hidden_states) == 1 + sub.depth
    assert a.hidden_states[-1].shape[-1] == sub.embed_dim
    assert a.prediction.shape[-1] == model.cfg.pred_dim
    assert_features_close(a, b)
    # the export is a plain checkpoint of its own config (keys and shapes; meta: no allocation)
    with torch.device("meta"):
        fresh = HuBERT(cfg)
    fresh.load_state_dict(dense.state_dict(), strict=True, assign=True)
    # real parameters vs the official count: the count leaves out the prediction head and
    # the pos-conv weight_g, and counts mask_emb at the supernet's full width, for the
    # subnet and its export alike
    e, full = sub.embed_dim, model.cfg.embed_dim
    real = sum(p.numel() for p in dense.parameters())
    extra = e * cfg.pred_dim + cfg.conv_pos
    assert real == count_params(cfg) - (full - e) + extra
    assert count_params(cfg) == count_subnet_params(model.space, sub) == model.num_params()
    assert dense.mask_emb.shape == (e,)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_export_matches_supernet_tiny(tiny_supernet, tiny_space, wav, seed):
    check_export(tiny_supernet, tiny_space.sample(random.Random(seed)), wav)


@pytest.mark.parametrize("which", ["min", "max"])
def test_export_matches_supernet_tiny_named(tiny_supernet, tiny_space, wav, which):
    check_export(tiny_supernet, tiny_space.subnet(which), wav)


@pytest.mark.parametrize("seed", [1, 2])
def test_export_matches_supernet_official_base(official_supernet, make_wav, seed):
    """Full-size check on 0.2 s of audio (9 frames): the real 768-wide block layout."""
    model = official_supernet("base")
    check_export(model, model.space.sample(random.Random(seed)), make_wav(3200, seed=seed))


def test_export_copies_weights(tiny_supernet, tiny_space, wav):
    tiny_supernet.set_subnet(tiny_space.sample(random.Random(1)))
    with torch.no_grad():
        before = tiny_supernet(wav).hidden_states[-1].clone()
        dense, _ = tiny_supernet.export()
        for p in dense.parameters():
            p.zero_()
        after = tiny_supernet(wav).hidden_states[-1]
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_export_with_argument_switches_subnet(tiny_supernet, tiny_space):
    dense, cfg = tiny_supernet.export("min")
    assert tiny_supernet.subnet == tiny_space.min()
    assert cfg.embed_dim == 64 and cfg.depth == 2
    assert list(dense.layer_pred_heads) == ["1"]  # keyed by the last layer, like the official head


# -- padding, masking --------------------------------------------------------------------------
LENGTHS = (1600, 1150)  # 79 and 57 frames


def padded_batch(make_wav) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    singles = [make_wav(n, seed=i) for i, n in enumerate(LENGTHS)]
    batch = torch.zeros(len(LENGTHS), max(LENGTHS))
    for i, w in enumerate(singles):
        batch[i, : w.size(1)] = w[0]
    batch[1, LENGTHS[1]:] = 3.0  # garbage in the padding must not matter either
    return batch, torch.tensor(LENGTHS), singles


def check_batched_equals_single(model, make_wav, atol=ATOL) -> None:
    batch, lengths, singles = padded_batch(make_wav)
    with torch.no_grad():
        fb = model(batch, lengths)
        frames = model.frame_lengths(lengths).tolist()
        assert frames == [79, 57]
        expected_mask = torch.arange(max(frames))[None, :] >= torch.tensor(frames)[:, None]
        assert torch.equal(fb.padding_mask, expected_mask)
        for i, w in enumerate(singles):
            fs = model(w)
            t = frames[i]
            assert fs.hidden_states[-1].shape[1] == t
            for x, y in zip(fb.hidden_states, fs.hidden_states):
                torch.testing.assert_close(x[i, :t], y[0], rtol=0, atol=atol)
            for x, y in zip(fb.layer_results, fs.layer_results):
                torch.testing.assert_close(x[i, :t], y[0], rtol=0, atol=atol)
            torch.testing.assert_close(fb.prediction[i, :t], fs.prediction[0], rtol=0, atol=atol)


@pytest.mark.parametrize("seed", [None, 3, 8])
def test_padded_batch_equals_one_at_a_time(tiny_supernet, tiny_space, make_wav, seed):
    """A padded batch with `lengths` gives the valid frames of each utterance run alone."""
    tiny_supernet.set_subnet("max" if seed is None else tiny_space.sample(random.Random(seed)))
    check_batched_equals_single(tiny_supernet, make_wav)


def test_padded_batch_equals_one_at_a_time_group_norm_front_end(  # GroupNorm statistics over valid frames only
    make_tiny_supernet, make_wav):
    check_batched_equals_single(make_tiny_supernet(extractor_mode="default"), make_wav)


def test_full_lengths_mask_nothing(tiny_supernet, make_wav):
    """`padding_mask` is None without `lengths`, and all False when nothing is padded."""
    wav = make_wav(1600, batch=2)
    with torch.no_grad():
        f = tiny_supernet(wav, torch.tensor([1600, 1600]))
        g = tiny_supernet(wav)
    assert g.padding_mask is None
    assert f.padding_mask is None or (f.padding_mask.shape == (2, 79) and not f.padding_mask.any())
    assert_features_close(f, g)


@pytest.mark.parametrize("which", ["max", "min"])
def test_mask_replaces_frames_with_mask_emb(tiny_supernet, wav, which):
    sub = tiny_supernet.set_subnet(which)
    e = sub.embed_dim
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(1, 79, generator=g) < 0.4
    assert 0 < mask.sum() < 79
    with torch.no_grad():
        masked, plain = tiny_supernet(wav, mask=mask), tiny_supernet(wav)
    h0 = masked.hidden_states[0][0]
    assert torch.equal(h0[mask[0]], tiny_supernet.mask_emb[:e].expand(int(mask.sum()), e))
    assert torch.equal(h0[~mask[0]], plain.hidden_states[0][0][~mask[0]])
    assert not torch.allclose(masked.hidden_states[-1], plain.hidden_states[-1])


# -- gradients ---------------------------------------------------------------------------------
def test_gradients_reach_only_the_active_slice(tiny_supernet, wav):
    sub = SubnetConfig(96, (3, 2, 3), (288, 192, 384))  # depth 3 keeps layers 0, 2, 3
    tiny_supernet.set_subnet(sub)
    kept = tiny_supernet.encoder.kept_layers
    assert kept == [0, 2, 3]
    mask = torch.zeros(1, 79, dtype=torch.bool)
    mask[0, 10:20] = True
    f = tiny_supernet(wav, mask=mask)
    (f.hidden_states[-1].pow(2).sum() + f.prediction.pow(2).sum()).backward()

    e = sub.embed_dim
    for j, i in enumerate(kept):
        layer = tiny_supernet.encoder.layers[i]
        a, ffn = sub.heads[j] * 32, sub.ffn_dim[j]
        rows = torch.tensor([r for s, t in block_ranges(ffn, e, 512, 4) for r in range(s, t)])
        off = torch.ones(512, dtype=torch.bool)
        off[rows] = False
        g1, g2 = layer.fc1.weight.grad, layer.fc2.weight.grad
        assert g1[off].abs().max() == 0 and g1[:, e:].abs().max() == 0
        assert (g1[rows][:, :e].abs().sum(1) > 0).all()
        assert layer.fc1.bias.grad[off].abs().max() == 0
        assert g2[:, off].abs().max() == 0 and g2[e:].abs().max() == 0
        assert (g2[:e][:, rows].abs().sum(0) > 0).all()
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
            assert proj.weight.grad[a:].abs().max() == 0 and proj.weight.grad[:, e:].abs().max() == 0
            assert proj.weight.grad[:a, :e].abs().sum() > 0
        assert layer.self_attn.out_proj.weight.grad[:, a:].abs().max() == 0
        for norm in (layer.self_attn_layer_norm, layer.final_layer_norm):
            assert norm.weight.grad[e:].abs().max() == 0 and norm.weight.grad[:e].abs().min() > 0
    skipped = tiny_supernet.encoder.layers[1]
    assert all(p.grad is None for p in skipped.parameters())
    assert tiny_supernet.post_extract_proj.weight.grad[e:].abs().max() == 0
    assert tiny_supernet.encoder.layer_norm.weight.grad[e:].abs().max() == 0
    assert tiny_supernet.encoder.pos_conv[0].bias.grad[e:].abs().max() == 0
    assert tiny_supernet.mask_emb.grad[e:].abs().max() == 0 and tiny_supernet.mask_emb.grad[:e].abs().sum() > 0
    (head,) = tiny_supernet.layer_pred_heads.values()
    assert head.weight.grad[:, e:].abs().max() == 0
    # the conv front end is shared by every subnet and always trained in full
    assert tiny_supernet.feature_extractor.conv_layers[0].conv.weight.grad.abs().min() > 0


# -- elastic conv front end (issue 14) ---------------------------------------------------------
FRONT_ENDS = [(16, 24, 32), (32, 16, 24), (24, 32, 16)]  # per conv layer; the last feeds post_extract_proj


@pytest.mark.parametrize("mode", ["layer_norm", "default"])
@pytest.mark.parametrize("conv", FRONT_ENDS)
def test_front_end_slice_equals_a_dense_model_of_the_active_widths(make_front_end_supernet, make_wav, mode, conv):
    """A narrow front end under the widest Transformer: every tensor of the subnet is a leading
    slice of the supernet's, so a dense HuBERT of the active widths loaded with those slices
    (built without `export`) is an independent reference; the export must match it too."""
    model = make_front_end_supernet(mode)
    sub = model.set_subnet(SubnetConfig(128, (4,) * 4, (512,) * 4, conv))
    cfg = model.space.model_config(sub)
    assert [c for c, _k, _s in cfg.conv_layers] == list(conv) and cfg.conv_dim == conv[-1]
    ref = HuBERT(cfg).eval()
    shapes = {k: v.shape for k, v in ref.state_dict().items()}
    ref.load_state_dict({k: v[tuple(slice(0, n) for n in shapes[k])] for k, v in model.state_dict().items()}, strict=True)
    wav = make_wav(1600)
    with torch.no_grad():
        got = model(wav)
    assert got.hidden_states[0].shape == (1, 79, 128)
    assert_features_close(got, ref(wav))
    check_export(model, sub, wav)


@pytest.mark.parametrize("mode", ["layer_norm", "default"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_front_end_export_matches_supernet_at_random_subnets(make_front_end_supernet, wav, mode, seed):
    model = make_front_end_supernet(mode)
    sub = model.space.sample(random.Random(seed))
    assert len(sub.conv_dim) == 3
    check_export(model, sub, wav)


def test_front_end_padded_batch_equals_one_at_a_time_group_norm(make_front_end_supernet, make_wav):
    """Block 0's GroupNorm over 16 of 32 channels still takes statistics over valid frames only."""
    model = make_front_end_supernet("default")
    model.set_subnet(SubnetConfig(96, (3,) * 3, (288,) * 3, (16, 24, 24)))
    check_batched_equals_single(model, make_wav)


@pytest.mark.parametrize("mode", ["layer_norm", "default"])
def test_front_end_gradients_reach_only_the_active_channels(make_front_end_supernet, wav, mode):
    model = make_front_end_supernet(mode)
    conv = (16, 24, 16)
    sub = model.set_subnet(SubnetConfig(96, (3,) * 4, (288,) * 4, conv))
    out = model(wav)
    (out.hidden_states[-1].pow(2).sum() + out.prediction.pow(2).sum()).backward()
    c_in = 1
    for block, c in zip(model.feature_extractor.conv_layers, conv):
        g = block.conv.weight.grad
        assert not g[c:].any() and not g[:, c_in:].any()  # exactly zero (block 0 reads the one audio channel)
        assert (g[:c, :c_in].abs().sum((1, 2)) > 0).all()
        if block.norm is not None:
            for p in (block.norm.weight, block.norm.bias):
                assert p.grad[c:].abs().max() == 0 and p.grad[:c].abs().min() > 0
        c_in = c
    normed = [b.norm is not None for b in model.feature_extractor.conv_layers]  # GroupNorm in block 0 only by default
    assert normed == ([True] * 3 if mode == "layer_norm" else [True, False, False])
    for p in (model.layer_norm.weight, model.layer_norm.bias):
        assert p.grad[conv[-1]:].abs().max() == 0 and p.grad[: conv[-1]].abs().min() > 0
    proj = model.post_extract_proj.weight.grad
    assert proj[:, conv[-1]:].abs().max() == 0 and proj[sub.embed_dim:].abs().max() == 0
    assert (proj[: sub.embed_dim, : conv[-1]].abs().sum(0) > 0).all()


def test_fixed_front_end_spaces_keep_the_whole_front_end(tiny_supernet, wav):
    """Without `conv_dims` every subnet runs, exports and counts the supernet's whole front end."""
    sub = tiny_supernet.set_subnet("min")
    assert sub.conv_dim == ()
    assert all(b.active_out_channels == b.conv.out_channels for b in tiny_supernet.feature_extractor.conv_layers)
    dense, cfg = tiny_supernet.export()
    assert cfg.conv_layers == tiny_supernet.cfg.conv_layers
