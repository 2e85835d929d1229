"""Once-for-all channel sorting of the conv front end (issue 14, part 2).

An elastic conv layer keeps its leading channels, so stage 2 trains prefixes; a stage-1
student's channels are in no particular order, and a narrow prefix starts from arbitrary ones.
Once-for-all (Cai et al., 2020) reorders each layer's channels by importance before training
the smaller widths, so the prefixes start from the channels the rest of the network relies on.
Here a channel's importance is the L1 norm of the weights that read it: the next conv layer's
input-channel slice, or, after the last layer, `post_extract_proj`'s column times the feature
LayerNorm's scale of that channel. Permuting a channel and everything that reads it (its conv
row, bias and norm entries, the next layer's input column) leaves the full model's function
unchanged: every norm of the front end is per-channel (GroupNorm(C, C)) or over all channels
(LayerNorm), which a permutation does not change.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .model import HuBERT


def channel_importance(model: HuBERT) -> list[Tensor]:
    """Per conv layer, (C_i,) importance of its output channels, from the weights that read them."""
    blocks = model.feature_extractor.conv_layers
    out = []
    for i, block in enumerate(blocks):
        if i + 1 < len(blocks):
            reader = blocks[i + 1].conv.weight.detach()  # (C_{i+1}, C_i, k)
            out.append(reader.abs().sum(dim=(0, 2)))
        else:
            proj = model.post_extract_proj.weight.detach()  # (E, C_last)
            scale = model.layer_norm.weight.detach() if model.layer_norm is not None else torch.ones_like(proj[0])
            out.append((proj * scale).abs().sum(dim=0))
    return out


@torch.no_grad()
def sort_conv_channels(model: HuBERT) -> list[Tensor]:
    """Reorders every conv layer's channels by descending `channel_importance`, in place.

    Returns:
        per layer, the permutation applied: new channel j is old channel `order[j]`.
    """
    blocks = model.feature_extractor.conv_layers
    orders = [torch.argsort(imp, descending=True, stable=True) for imp in channel_importance(model)]
    for i, (block, order) in enumerate(zip(blocks, orders)):
        own = [block.conv.weight, block.conv.bias] + ([block.norm.weight, block.norm.bias] if block.norm is not None else [])
        for t in own:
            if t is not None:
                t.copy_(t.index_select(0, order))
        if i + 1 < len(blocks):
            nxt = blocks[i + 1].conv.weight
            nxt.copy_(nxt.index_select(1, order))
        else:
            if model.layer_norm is not None:
                for t in (model.layer_norm.weight, model.layer_norm.bias):
                    t.copy_(t.index_select(0, order))
            proj = model.post_extract_proj.weight
            proj.copy_(proj.index_select(1, order))
    return orders
