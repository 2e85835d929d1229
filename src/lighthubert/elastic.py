"""Elastic layers: dense layers whose active shape is a slice of their weights (once-for-all).

Each elastic layer *is* its dense layer (same parameters, same state-dict keys). It stores
integers, never sliced tensors: the input width comes from the input tensor, the output
width from `active_out_features`, and `forward` slices on every call, so nothing goes stale
after `.to()` or `.half()`. `export()` hands back the plain dense module of the active shape.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .model import ConvBlock, Ops, PosConv, autocast_dtype


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


def _offsets(ranges: list[tuple[int, int]]) -> list[int]:
    """Where each range starts once the ranges are laid side by side: [0, len0, len0 + len1, ...]."""
    out = [0]
    for a, b in ranges:
        out.append(out[-1] + b - a)
    return out


def _zeros_outside(t: Tensor, rows: list, cols: Optional[list]) -> Tensor:
    """A new tensor like `t`, zero outside the blocks `rows` x `cols`, which are left unset:
    the backward writes them next, so filling them first would be a wasted pass."""
    out = torch.empty_like(t)
    for a, b in _gaps(rows, t.size(0)):
        out[a:b] = 0
    if cols is not None:
        for ra, rb in rows:
            for a, b in _gaps(cols, t.size(1)):
                out[ra:rb, a:b] = 0
    return out


def _gaps(ranges: list, total: int) -> list[tuple[int, int]]:
    """The `[start, stop)` stretches of `0..total` that no range covers (ranges in order)."""
    gaps, at = [], 0
    for a, b in ranges:
        if a > at:
            gaps.append((at, a))
        at = b
    return gaps + [(at, total)] if at < total else gaps


def _gather(t: Tensor, rows: list, cols: Optional[list], dtype: torch.dtype) -> Tensor:
    """The blocks `rows` x `cols` of `t` side by side, as one new tensor in `dtype`."""
    ro = _offsets(rows)
    out = t.new_empty((ro[-1],) if cols is None else (ro[-1], _offsets(cols)[-1]), dtype=dtype)
    for (ra, rb), r0 in zip(rows, ro):
        if cols is None:
            out[r0 : r0 + rb - ra] = t[ra:rb]
        else:
            for (ca, cb), c0 in zip(cols, _offsets(cols)):
                out[r0 : r0 + rb - ra, c0 : c0 + cb - ca] = t[ra:rb, ca:cb]
    return out


def _scatter(full: Tensor, rows: list, cols: Optional[list], active: Tensor) -> Tensor:
    """Writes `active` (the blocks side by side) into the blocks of `full`; returns `full`."""
    for (ra, rb), r0 in zip(rows, _offsets(rows)):
        if cols is None:
            full[ra:rb] = active[r0 : r0 + rb - ra]
        else:
            for (ca, cb), c0 in zip(cols, _offsets(cols)):
                full[ra:rb, ca:cb] = active[r0 : r0 + rb - ra, c0 : c0 + cb - ca]
    return full


class _BlockLinear(torch.autograd.Function):
    """y = x W[rows, cols]^T + b[rows] over blocks of one full-size weight.

    Slicing with autograd costs a full-size zero-filled gradient per slice (`SliceBackward0`:
    22 of them for one fc1 + fc2 backward at e640 / f2240), and gathering block rows with
    `torch.cat` copies the weight on every forward. Here, in the weight's dtype, each
    (row block, column block) pair is one matrix product on a view of the weight, written
    into its columns of the output: nothing is copied. The backward writes each block's
    gradient into one full-size gradient per call and returns it, so autograd accumulates it
    (and DDP's reducer hooks, which fire on the parameter's AccumulateGrad, see it) like any
    other gradient.

    Under autocast the product runs in the autocast dtype, as `F.linear` does there: the
    weight's blocks are cast into one matrix of that dtype (the copy autocast makes of any
    weight; never the full weight), which is one product and is kept for the backward, as
    autocast keeps its cast; the weight's gradient is computed in that dtype too and stored
    in the weight's own.

    Args (of `apply`):
        x: (N, sum of column-range lengths).
        rows, cols: `[start, stop)` ranges of the weight's rows (outputs) and columns (inputs).
        dtype: the autocast dtype, or None outside autocast (no casts).

    Returns:
        (N, sum of row-range lengths).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Optional[Tensor], rows: list, cols: list,
                dtype: Optional[torch.dtype]) -> Tensor:
        ctx.rows, ctx.cols, ctx.amp = rows, cols, dtype is not None
        if dtype is not None:
            with torch.autocast(x.device.type, enabled=False):
                x, w = x.to(dtype), _gather(weight, rows, cols, dtype)
                b = None if bias is None else _gather(bias, rows, None, dtype)
                y = torch.mm(x, w.t()) if b is None else torch.addmm(b, x, w.t())
            ctx.save_for_backward(x, w, weight, bias)
            return y
        ro, co = _offsets(rows), _offsets(cols)
        y = x.new_empty(x.size(0), ro[-1])
        for (ra, rb), r0 in zip(rows, ro):
            out = y[:, r0 : r0 + rb - ra]
            for j, ((ca, cb), c0) in enumerate(zip(cols, co)):
                w, xb = weight[ra:rb, ca:cb].t(), x[:, c0 : c0 + cb - ca]
                if j:
                    out.addmm_(xb, w)
                elif bias is None:
                    torch.mm(xb, w, out=out)
                else:
                    torch.addmm(bias[ra:rb], xb, w, out=out)
        ctx.save_for_backward(x, None, weight, bias)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple:
        x, w, weight, bias = ctx.saved_tensors
        rows, cols = ctx.rows, ctx.cols
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        if bias is not None and need_b:
            grad_b = _scatter(_zeros_outside(bias, rows, None), rows, None, grad.sum(0, dtype=bias.dtype))
        if ctx.amp:
            with torch.autocast(grad.device.type, enabled=False):
                grad_x = grad @ w if need_x else None
                if need_w:
                    grad_w = _scatter(_zeros_outside(weight, rows, cols), rows, cols, grad.t() @ x)
            return grad_x, grad_w, grad_b, None, None, None
        ro, co = _offsets(rows), _offsets(cols)
        if need_x:
            grad_x = grad.new_empty(grad.size(0), co[-1])
            for (ca, cb), c0 in zip(cols, co):
                out = grad_x[:, c0 : c0 + cb - ca]
                for i, ((ra, rb), r0) in enumerate(zip(rows, ro)):
                    w, g = weight[ra:rb, ca:cb], grad[:, r0 : r0 + rb - ra]
                    if i:
                        out.addmm_(g, w)
                    else:
                        torch.mm(g, w, out=out)
        if need_w:
            grad_w = _zeros_outside(weight, rows, cols)
            for (ra, rb), r0 in zip(rows, ro):
                g = grad[:, r0 : r0 + rb - ra].t()
                for (ca, cb), c0 in zip(cols, co):
                    torch.mm(g, x[:, c0 : c0 + cb - ca], out=grad_w[ra:rb, ca:cb])
        return grad_x, grad_w, grad_b, None, None, None


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
        e = x.size(-1)
        if not 0 < e <= self.in_features:
            raise ValueError(f"input width must be in 1..{self.in_features}, got {e}")
        out = self.active_out_features
        if out == self.out_features and e == self.in_features:  # the whole layer: nothing to slice
            return F.linear(x, self.weight, self.bias)
        rows = block_ranges(out, e, self.out_features, self.out_blocks)
        cols = block_ranges(e, out, self.in_features, self.in_blocks)
        y = _BlockLinear.apply(x.reshape(-1, e), self.weight, self.bias, rows, cols, autocast_dtype(x))
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


class ElasticConvBlock(ConvBlock):
    """Conv front-end block whose leading output channels can be switched off.

    The conv reads the leading `x.size(-1)` input channels and writes the leading
    `active_out_channels`; the norm covers the active channels only. Both norms slice
    exactly: a LayerNorm over the active channels is the LayerNorm of that width, and the
    `default` mode's GroupNorm has one group per channel, so its leading channels keep their
    own statistics. Not in the official model (issue 14): the front end is elastic only in
    spaces with a `conv_dim` choice.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, norm: str, bias: bool) -> None:
        super().__init__(c_in, c_out, kernel, stride, norm, bias)
        self.active_out_channels = c_out

    def set_active(self, out_channels: int) -> None:
        if not 0 < out_channels <= self.conv.out_channels:
            raise ValueError(f"out_channels must be in 1..{self.conv.out_channels}, got {out_channels}")
        self.active_out_channels = out_channels

    def sliced(self, c_in: int) -> tuple[Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        """Conv weight (C_out, c_in, k), conv bias, norm weight and bias of the active channels;
        the parameters themselves at full width."""
        if not 0 < c_in <= self.conv.in_channels:
            raise ValueError(f"input width must be in 1..{self.conv.in_channels}, got {c_in}")
        c = self.active_out_channels
        params = (self.conv.weight, self.conv.bias, *((None, None) if self.norm is None else (self.norm.weight, self.norm.bias)))
        if (c, c_in) == (self.conv.out_channels, self.conv.in_channels):
            return params
        w, *rest = params
        return (w[:c, :c_in], *(None if p is None else p[:c] for p in rest))

    def forward(self, x: Tensor, frames: Optional[Tensor] = None) -> Tensor:  # (B, N, C_in) -> (B, T, active_out_channels)
        return self.run(x, frames, *self.sliced(x.size(-1)))

    def export(self, c_in: int) -> ConvBlock:
        w, b, norm_w, norm_b = self.sliced(c_in)
        norm = {nn.LayerNorm: "layer_norm", nn.GroupNorm: "group_norm"}.get(type(self.norm), "none")
        dense = ConvBlock(c_in, w.size(0), self.conv.kernel_size[0], self.conv.stride[0], norm, b is not None).to(w)
        with torch.no_grad():  # both norms have the default eps, as ConvBlock builds them
            dense.conv.weight.copy_(w)
            if b is not None:
                dense.conv.bias.copy_(b)
            if dense.norm is not None:
                dense.norm.weight.copy_(norm_w)
                dense.norm.bias.copy_(norm_b)
        return dense


ELASTIC = Ops(linear=ElasticLinear, layer_norm=ElasticLayerNorm, pos_conv=ElasticPosConv, conv_block=ElasticConvBlock)
