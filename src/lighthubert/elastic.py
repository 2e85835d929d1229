"""Elastic layers: dense layers whose active shape is a slice of their weights (once-for-all).

Each elastic layer *is* its dense layer (same parameters, same state-dict keys). It stores
integers, never sliced tensors: the input width comes from the input tensor, the output
width from `active_out_features`, and `forward` slices on every call, so nothing goes stale
after `.to()` or `.half()`. `export()` hands back the plain dense module of the active shape.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .model import Ops, PosConv


def block_ranges(dim: int, other: int, total: int, blocks: int) -> list[tuple[int, int]]:
    """Which of `total` units a width of `dim` keeps, `[start, stop)` per range.

    The official `SLinear` lays the FFN units out as `blocks` equal blocks (4 blocks of 768
    for HuBERT Base): a ratio r = dim / other takes ceil(r) blocks and keeps the first
    `other` units of each (fewer in the last). E.g. e=640, r=3.5 keeps [0:640] [768:1408]
    [1536:2176] [2304:2624]. A full width or a single block is a plain prefix. Needed to
    load the official checkpoints; the float arithmetic mirrors `SLinear._sample_parameters`.
    """
    if blocks == 1 or dim == total:
        return [(0, dim)]
    ratio = dim / other
    size = int(dim / ratio)
    block = total // blocks
    count = math.ceil(ratio)
    if count > blocks or size > block:
        raise ValueError(
            f"a width of {dim} over {other} needs {count} blocks of {size} units, "
            f"but the layer has {blocks} blocks of {block}; use an FFN ratio of at most {blocks}"
        )
    return [(i * block, i * block + min(size, dim - i * size)) for i in range(count)]


def _take(t: Tensor, ranges: list[tuple[int, int]], dim: int) -> Tensor:
    """Slices `ranges` of dimension `dim`; a view when there is one range, a copy otherwise."""
    if len(ranges) == 1:
        return t.narrow(dim, ranges[0][0], ranges[0][1] - ranges[0][0])
    return torch.cat([t.narrow(dim, a, b - a) for a, b in ranges], dim)


class ElasticLinear(nn.Linear):
    """nn.Linear whose leading (or block-wise leading) units can be switched off; weights stay shared.

    Args:
        in_blocks, out_blocks: block layout of the input / output units (FFN `fc2` / `fc1`),
            see `block_ranges`. 1 means plain prefixes.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, in_blocks: int = 1, out_blocks: int = 1) -> None:
        super().__init__(in_features, out_features, bias)
        self.in_blocks, self.out_blocks = in_blocks, out_blocks
        self.active_out_features = out_features

    def set_active(self, out_features: int) -> None:
        if not 0 < out_features <= self.out_features:
            raise ValueError(f"out_features must be in 1..{self.out_features}, got {out_features}")
        self.active_out_features = out_features

    def active_weight(self, in_features: int) -> tuple[Tensor, Tensor | None]:
        """The (active_out, in_features) weight and its bias for an input of `in_features`."""
        if not 0 < in_features <= self.in_features:
            raise ValueError(f"input width must be in 1..{self.in_features}, got {in_features}")
        out = self.active_out_features
        rows = block_ranges(out, in_features, self.out_features, self.out_blocks)
        cols = block_ranges(in_features, out, self.in_features, self.in_blocks)
        weight = _take(_take(self.weight, rows, 0), cols, 1)
        bias = None if self.bias is None else _take(self.bias, rows, 0)
        return weight, bias

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., active_out_features)
        cols = block_ranges(x.size(-1), self.active_out_features, self.in_features, self.in_blocks)
        if len(cols) == 1:
            return F.linear(x, *self.active_weight(x.size(-1)))
        # Input blocks (FFN fc2): one product per block, summed in place, instead of copying the
        # weight's column blocks into one matrix on every call.
        out = self.active_out_features
        flat = x.reshape(-1, x.size(-1))
        y = F.linear(flat[:, : cols[0][1]], self.weight[:out, cols[0][0] : cols[0][1]], None if self.bias is None else self.bias[:out])
        start = cols[0][1]
        for a, b in cols[1:]:  # in-place products are not autocast: the weight takes y's dtype
            y.addmm_(flat[:, start : start + b - a].to(y.dtype), self.weight[:out, a:b].t().to(y.dtype))
            start += b - a
        return y.view(*x.shape[:-1], out)

    def export(self, in_features: int) -> nn.Linear:
        weight, bias = self.active_weight(in_features)
        dense = nn.Linear(in_features, self.active_out_features, bias is not None).to(weight)
        with torch.no_grad():
            dense.weight.copy_(weight)
            if bias is not None:
                dense.bias.copy_(bias)
        return dense


class ElasticLayerNorm(nn.LayerNorm):
    """nn.LayerNorm over the leading `x.size(-1)` features; statistics over those only."""

    def forward(self, x: Tensor) -> Tensor:
        e = x.size(-1)
        return F.layer_norm(x, (e,), self.weight[:e], self.bias[:e], self.eps)

    def export(self, dim: int) -> nn.LayerNorm:
        dense = nn.LayerNorm(dim, eps=self.eps).to(self.weight)
        with torch.no_grad():
            dense.weight.copy_(self.weight[:dim])
            dense.bias.copy_(self.bias[:dim])
        return dense


class ElasticPosConv(PosConv):
    """Positional conv over the leading `x.size(-1)` channels, keeping 16 groups.

    Slices the weight-normed full weight as `weight[:e, :e // groups]`: the first e output
    rows and the first e/groups input columns of each, so subnet group g covers supernet rows
    other than group g's (official `SConv1d` quirk, needed by its checkpoints). The norm is
    that of the full weight; slices are not renormalised.
    """

    def sliced(self, e: int) -> tuple[Tensor, Tensor]:
        if e % self.groups or not 0 < e <= self.bias.numel():
            raise ValueError(f"width must be a multiple of {self.groups} up to {self.bias.numel()}, got {e}")
        return self.weight_block(e, e // self.groups), self.bias[:e]

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x, *self.sliced(x.size(-1)))

    def export(self, e: int) -> PosConv:
        weight, bias = self.sliced(e)
        dense = PosConv(e, self.kernel, self.groups).to(weight)
        with torch.no_grad():  # g = ||v|| makes the dense full_weight() equal the slice
            dense.weight_v.copy_(weight)
            dense.weight_g.copy_(weight.norm(dim=(0, 1), keepdim=True))
            dense.bias.copy_(bias)
        return dense


ELASTIC = Ops(linear=ElasticLinear, layer_norm=ElasticLayerNorm, pos_conv=ElasticPosConv)
