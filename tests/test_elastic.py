"""Elastic layers: block-wise FFN ranges, sliced forwards against hand-gathered weights, exports."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lighthubert.elastic import ElasticConvBlock, ElasticLayerNorm, ElasticLinear, ElasticPosConv, block_ranges
from lighthubert.model import ConvBlock, PosConv


def indices(ranges: list[tuple[int, int]]) -> list[int]:
    return [i for a, b in ranges for i in range(a, b)]


# -- block_ranges (reference notes §2.6) ------------------------------------------------------
@pytest.mark.parametrize(
    "e, f, expected",
    [
        (640, 2240, [(0, 640), (768, 1408), (1536, 2176), (2304, 2624)]),  # r = 3.5
        (640, 2560, [(0, 640), (768, 1408), (1536, 2176), (2304, 2944)]),  # r = 4.0
        (384, 1152, [(0, 384), (768, 1152), (1536, 1920)]),  # r = 3.0
        (256, 896, [(0, 256), (768, 1024), (1536, 1792), (2304, 2432)]),  # r = 3.5, small space
    ],
)
def test_block_ranges_official_examples(e, f, expected):
    assert block_ranges(f, e, 3072, 4) == expected


@pytest.mark.parametrize("f", [2688, 3072])  # e = 768 at r = 3.5 and 4.0
def test_block_ranges_full_width_is_a_prefix(f):
    assert indices(block_ranges(f, 768, 3072, 4)) == list(range(f))


def test_block_ranges_single_block_is_a_prefix():
    assert block_ranges(500, 768, 768, 1) == [(0, 500)]
    assert block_ranges(3072, 640, 3072, 4) == [(0, 3072)]


@pytest.mark.parametrize(
    "dim, other",
    [
        (2240, 448),  # ratio 5 needs 5 blocks, the layer has 4
        (1000, 1000),  # ratio 1 but 1000 units do not fit a block of 768
    ],
)
def test_block_ranges_impossible_width_raises(dim, other):
    with pytest.raises(ValueError, match="blocks"):
        block_ranges(dim, other, 3072, 4)


# -- ElasticLinear -----------------------------------------------------------------------------
def seeded_linear(*args, seed: int = 0, **kw) -> ElasticLinear:
    torch.manual_seed(seed)
    layer = ElasticLinear(*args, **kw)
    if layer.bias is not None:
        with torch.no_grad():
            layer.bias.normal_()
    return layer


@pytest.mark.parametrize("bad", [0, -1, 513])
def test_linear_set_active_rejects_out_of_range(bad):
    layer = seeded_linear(128, 512, out_blocks=4)
    with pytest.raises(ValueError, match=r"1\.\.512"):
        layer.set_active(bad)
    assert layer.active_out_features == 512  # unchanged


def test_linear_rejects_input_wider_than_the_layer():
    layer = seeded_linear(128, 512, out_blocks=4)
    with pytest.raises(ValueError, match=r"1\.\.128"):
        layer(torch.randn(2, 129))


def test_linear_block_rows_match_explicit_gather():
    """fc1 of a tiny layer (4 blocks of 128): e=96, f=288 keeps rows 0:96, 128:224, 256:352."""
    layer = seeded_linear(128, 512, out_blocks=4)
    layer.set_active(288)
    x = torch.randn(2, 5, 96)
    rows = torch.cat([torch.arange(0, 96), torch.arange(128, 224), torch.arange(256, 352)])
    expected = F.linear(x, layer.weight[rows][:, :96], layer.bias[rows])
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-6)


def test_linear_block_cols_match_explicit_gather():
    """fc2 of the same layer reads its input columns from the same blocks."""
    layer = seeded_linear(512, 128, in_blocks=4)
    layer.set_active(96)
    x = torch.randn(2, 5, 288)
    cols = torch.cat([torch.arange(0, 96), torch.arange(128, 224), torch.arange(256, 352)])
    expected = F.linear(x, layer.weight[:96][:, cols], layer.bias[:96])
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-6)


def test_linear_prefix_slice_matches_explicit_gather():
    """Without blocks (q/k/v, post_extract_proj) the slice is W[:out, :in], b[:out]."""
    layer = seeded_linear(128, 128)
    layer.set_active(96)
    x = torch.randn(3, 64)
    expected = F.linear(x, layer.weight[:96, :64], layer.bias[:96])
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-6)


def test_linear_slices_again_after_dtype_change():
    """Nothing sliced is cached: after .double() the forward uses the converted weights."""
    layer = seeded_linear(128, 512, out_blocks=4)
    layer.set_active(288)
    layer(torch.randn(1, 96))
    layer.double()
    x = torch.randn(4, 96, dtype=torch.float64)
    rows = torch.cat([torch.arange(0, 96), torch.arange(128, 224), torch.arange(256, 352)])
    y = layer(x)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, F.linear(x, layer.weight[rows][:, :96], layer.bias[rows]))


@pytest.mark.parametrize(
    "in_f, out_f, kw, active, width",
    [
        (128, 512, {"out_blocks": 4}, 288, 96),  # fc1
        (512, 128, {"in_blocks": 4}, 64, 192),  # fc2
        (128, 64, {"bias": False}, 64, 96),  # prediction head, no bias
    ],
)
def test_linear_export_is_plain_linear_with_same_output(in_f, out_f, kw, active, width):
    layer = seeded_linear(in_f, out_f, **kw)
    layer.set_active(active)
    dense = layer.export(width)
    assert type(dense) is nn.Linear
    assert (dense.in_features, dense.out_features) == (width, active)
    assert (dense.bias is None) == (layer.bias is None)
    x = torch.randn(2, 7, width)
    # fc2 with input blocks sums one product per block; the dense layer does one product: rounding only
    torch.testing.assert_close(dense(x), layer(x), rtol=0, atol=1e-6)
    with torch.no_grad():  # cloned, not a view of the shared weights
        dense.weight.zero_()
    assert layer.weight.abs().min() > 0


def reference_forward(layer: ElasticLinear, x: torch.Tensor) -> torch.Tensor:
    """Autograd's own route: F.linear on the gathered slice (narrow + cat), no custom backward."""
    return F.linear(x, *layer.active_weight(x.size(-1)))


LAYOUTS = [  # (in, out, kwargs, active out, input width): every block layout the supernet has
    (128, 512, {"out_blocks": 4}, 288, 96),  # fc1, block rows
    (128, 512, {"out_blocks": 4}, 256, 64),  # fc1, ratio 4
    (512, 128, {"in_blocks": 4}, 96, 288),  # fc2, block columns
    (128, 128, {}, 96, 64),  # q/k/v/out_proj, prefix slice
    (128, 64, {"bias": False}, 64, 96),  # prediction head, no bias
    (128, 512, {"out_blocks": 4}, 512, 128),  # the whole layer
]


@pytest.mark.parametrize("in_f, out_f, kw, active, width", LAYOUTS)
def test_linear_gradients_equal_autograd_slicing(in_f, out_f, kw, active, width):
    """The block backward writes each block's gradient into one full-size gradient; it must
    equal what autograd gives through slicing, zeros outside the active blocks included."""
    layer = seeded_linear(in_f, out_f, **kw)
    layer.set_active(active)
    x = torch.randn(3, 7, width, requires_grad=True)
    g = torch.randn(3, 7, active)
    grads = []
    for forward in (layer, lambda x: reference_forward(layer, x)):
        layer.zero_grad(set_to_none=True)
        x.grad = None
        (forward(x) * g).sum().backward()
        grads.append([x.grad, layer.weight.grad] + ([] if layer.bias is None else [layer.bias.grad]))
    for ours, ref in zip(*grads):
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert (grads[0][1] == 0).sum() == (grads[1][1] == 0).sum()  # the same entries untouched


@pytest.mark.parametrize("in_f, out_f, kw, active, width", LAYOUTS[:4])
def test_linear_under_bf16_autocast_matches_f_linear(in_f, out_f, kw, active, width):
    """Under CPU autocast the layer runs as F.linear does there: bf16 products on an fp32
    weight, a bf16 output, fp32 gradients of the weight (bf16 rounding: ~1e-2 relative)."""
    layer = seeded_linear(in_f, out_f, **kw)
    layer.set_active(active)
    x = torch.randn(3, 7, width, requires_grad=True)
    g = torch.randn(3, 7, active)
    outs, grads = [], []
    for forward in (layer, lambda x: reference_forward(layer, x)):
        layer.zero_grad(set_to_none=True)
        x.grad = None
        with torch.autocast("cpu", torch.bfloat16):
            y = forward(x)
        (y.float() * g).sum().backward()
        outs.append(y)
        grads.append([x.grad, layer.weight.grad, layer.bias.grad])
    assert outs[0].dtype == outs[1].dtype == torch.bfloat16
    torch.testing.assert_close(outs[0], outs[1], rtol=2e-2, atol=2e-2)
    for ours, ref in zip(*grads):
        assert ours.dtype == ref.dtype == torch.float32
        scale = ref.abs().max()
        assert (ours - ref).abs().max() <= 1e-2 * scale


def test_supernet_gradients_equal_autograd_slicing_over_sandwich_subnets(make_tiny_supernet, monkeypatch):
    """Gradients accumulated over several random subnets (sandwich sampling: one backward per
    subnet into the same .grad) equal those of autograd's slicing, for every parameter."""
    import random

    model = make_tiny_supernet().train()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    wav = torch.randn(2, 2000, generator=torch.Generator().manual_seed(0))
    rng = random.Random(0)
    subnets = [model.space.max(), model.space.min()] + [model.space.sample(rng) for _ in range(3)]
    frames = int(model.frame_lengths(torch.tensor([2000]))[0])
    mask = torch.rand(2, frames, generator=torch.Generator().manual_seed(1)) < 0.5

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        for sub in subnets:
            model.set_subnet(sub)
            out = model(wav, mask=mask)
            (sum(h.square().mean() for h in out.hidden_states) + out.prediction.abs().mean()).backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    ours = grads()
    monkeypatch.setattr(ElasticLinear, "forward", reference_forward)
    ref = grads()
    assert ours.keys() == ref.keys() and len(ref) == len(list(model.parameters()))
    top = max(g.abs().max() for g in ref.values())
    for k in ref:  # atol relative to the largest gradient: k_proj.bias's true gradient is 0 (float noise only)
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-4, atol=1e-6 * top, msg=k)


# -- ElasticLayerNorm --------------------------------------------------------------------------
def seeded_layer_norm() -> ElasticLayerNorm:
    torch.manual_seed(0)
    norm = ElasticLayerNorm(128, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.2)
        norm.bias.normal_()
    return norm


def test_layer_norm_narrow_input_uses_sliced_affine_and_own_statistics():
    norm = seeded_layer_norm()
    x = torch.randn(2, 5, 96) * 3 + 1
    expected = F.layer_norm(x, (96,), norm.weight[:96], norm.bias[:96], 1e-5)
    torch.testing.assert_close(norm(x), expected, rtol=0, atol=1e-6)
    # statistics over the 96 kept features: each output row, un-scaled, has zero mean
    unscaled = (norm(x) - norm.bias[:96]) / norm.weight[:96]
    torch.testing.assert_close(unscaled.mean(-1), torch.zeros(2, 5), rtol=0, atol=1e-5)


def test_layer_norm_full_width_equals_nn_layer_norm():
    norm = seeded_layer_norm()
    x = torch.randn(3, 128)
    torch.testing.assert_close(norm(x), nn.LayerNorm.forward(norm, x), rtol=0, atol=0)


def test_layer_norm_export_is_plain_layer_norm():
    norm = seeded_layer_norm()
    dense = norm.export(96)
    assert type(dense) is nn.LayerNorm
    assert dense.normalized_shape == (96,) and dense.eps == norm.eps
    x = torch.randn(4, 96)
    torch.testing.assert_close(dense(x), norm(x), rtol=0, atol=0)


# -- ElasticPosConv ----------------------------------------------------------------------------
def seeded_pos_conv() -> ElasticPosConv:
    torch.manual_seed(0)
    conv = ElasticPosConv(128, 16, 4)
    with torch.no_grad():
        conv.weight_g.mul_(torch.rand_like(conv.weight_g) + 0.5)  # g != ||v||
        conv.bias.normal_()
    return conv


def by_hand(conv: ElasticPosConv, x: torch.Tensor, e: int) -> torch.Tensor:
    """weight = g * v / ||v|| (norm over dims 0 and 1 of the full v), then weight[:e, :e // groups]."""
    v, g = conv.weight_v, conv.weight_g
    norm = v.pow(2).sum(dim=(0, 1), keepdim=True).sqrt()
    w = (g * v / norm)[:e, : e // 4]
    y = F.conv1d(x.transpose(1, 2), w, conv.bias[:e], padding=8, groups=4)[..., :-1]  # SamePad, even kernel
    return F.gelu(y).transpose(1, 2)


@pytest.mark.parametrize("e", [64, 96, 128])
def test_pos_conv_slices_the_full_weight_norm(e):
    conv = seeded_pos_conv()
    x = torch.randn(2, 21, e)
    y = conv(x)
    assert y.shape == (2, 21, e)
    torch.testing.assert_close(y, by_hand(conv, x, e), rtol=0, atol=1e-5)


def test_pos_conv_slice_is_not_group_preserving():
    """At e=96, subnet group 1 (rows 24:48) reads supernet rows 24:48, columns 0:24: the
    official quirk, not rows from supernet group 1 (32:64)."""
    conv = seeded_pos_conv()
    weight, _ = conv.sliced(96)
    torch.testing.assert_close(weight[24:48], conv.full_weight()[24:48, :24], rtol=0, atol=0)


def test_pos_conv_rejects_width_not_a_multiple_of_groups():
    conv = seeded_pos_conv()
    with pytest.raises(ValueError, match="multiple of 4"):
        conv(torch.randn(1, 8, 66))


@pytest.mark.parametrize("e", [64, 96])
def test_pos_conv_export_is_plain_pos_conv(e):
    conv = seeded_pos_conv()
    dense = conv.export(e)
    assert type(dense) is PosConv
    assert dense.weight_v.shape == (e, e // 4, 16) and dense.weight_g.shape == (1, 1, 16)
    x = torch.randn(2, 13, e)
    torch.testing.assert_close(dense(x), conv(x), rtol=0, atol=1e-5)


# -- conv front-end block (issue 14) -----------------------------------------------------------
def seeded_conv_block(norm: str, kernel: int, stride: int, seed: int = 0) -> ElasticConvBlock:
    torch.manual_seed(seed)
    block = ElasticConvBlock(32, 24, kernel, stride, norm, bias=True)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return block


@pytest.mark.parametrize("bad", [0, 25])
def test_conv_block_set_active_rejects_out_of_range(bad):
    with pytest.raises(ValueError, match=r"out_channels must be in 1\.\.24"):
        seeded_conv_block("layer_norm", 3, 2).set_active(bad)


@pytest.mark.parametrize("norm", ["layer_norm", "group_norm", "none"])
@pytest.mark.parametrize("kernel, stride", [(3, 2), (2, 2)])  # overlapping taps, and a plain strided view
def test_conv_block_slice_matches_hand_sliced_conv_and_its_export(norm, kernel, stride):
    """Against F.conv1d on the leading channels and the norm over them, in the training path
    (conv1d) and the inference paths (cached strided products), before and after switching width."""
    block = seeded_conv_block(norm, kernel, stride)
    x = torch.randn(2, 40, 16)  # reads the leading 16 of 32 input channels
    for c in (8, 24, 12):
        block.set_active(c)
        w, b = block.conv.weight[:c, :16], block.conv.bias[:c]
        y = F.conv1d(x.transpose(1, 2), w, b, stride=stride)
        if norm == "layer_norm":
            y = F.layer_norm(y.transpose(1, 2), (c,), block.norm.weight[:c], block.norm.bias[:c]).transpose(1, 2)
        elif norm == "group_norm":
            y = F.group_norm(y, c, block.norm.weight[:c], block.norm.bias[:c])
        expected = F.gelu(y).transpose(1, 2)
        dense = block.export(16)
        assert type(dense) is ConvBlock and dense.conv.weight.shape == (c, 16, kernel)
        for grad in (True, False):
            with torch.set_grad_enabled(grad):
                torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-5)
                torch.testing.assert_close(dense(x), expected, rtol=0, atol=1e-5)
