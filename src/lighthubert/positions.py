"""The positional encoders of teachers beyond HuBERT's: data2vec's conv stack, WavLM's gated relative bias.

HuBERT and wav2vec 2.0 add one weight-normed positional conv (`model.PosConv`). data2vec
audio replaces it by a stack of plain convs with LayerNorm; WavLM keeps the conv and adds a
bucketed relative position bias to every layer's attention scores, gated per head from the
query. Imports only torch: `model.py`, which imports this file, is copied with it into
remote-code exports.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNormPosConv(nn.Sequential):
    """data2vec audio's positional encoder: `layers` x (grouped conv -> SamePad -> LayerNorm
    without weights -> GELU), on (B, T, E).

    fairseq's `pos_conv_depth > 1` (`Data2VecAudioPositionalConvEmbedding` in transformers).
    Each block is a Sequential whose entry 0 is the conv, so fairseq's keys
    `encoder.pos_conv.{j}.0.{weight,bias}` load unchanged.
    """

    def __init__(self, embed_dim: int, kernel: int, groups: int, layers: int) -> None:
        super().__init__(*(nn.Sequential(nn.Conv1d(embed_dim, embed_dim, kernel, padding=kernel // 2, groups=groups))
                           for _ in range(layers)))
        self.kernel = kernel

    def forward(self, x: Tensor) -> Tensor:  # (B, T, E) -> (B, T, E)
        y = x.transpose(1, 2)
        for block in self:
            y = block[0](y)
            if self.kernel % 2 == 0:  # SamePad drops the extra frame of an even kernel
                y = y[..., :-1]
            y = F.gelu(F.layer_norm(y.transpose(1, 2), (y.size(1),)).transpose(1, 2))
        return y.transpose(1, 2)


def relative_buckets(t: int, buckets: int, max_distance: int, device: torch.device) -> Tensor:
    """(T, T) bucket of each key offset from each query: T5's bidirectional buckets, as WavLM's
    `_relative_positions_bucket`. Half the buckets per direction; offsets below a quarter of the
    buckets get one each, longer ones share log-spaced buckets up to `max_distance`."""
    pos = torch.arange(t, device=device)
    rel = pos[None, :] - pos[:, None]  # key - query
    half = buckets // 2
    exact = half // 2
    dist = rel.abs()
    far = exact + (torch.log(dist.clamp(min=exact).float() / exact) / math.log(max_distance / exact)
                   * (half - exact)).long()
    return (rel > 0).long() * half + torch.where(dist < exact, dist, far.clamp(max=half - 1))


def position_bias(embedding: nn.Embedding, t: int, max_distance: int) -> Tensor:
    """(H, T, T) bias of the first layer's bucket embedding (`relative_attention_bias`, (buckets, H))."""
    buckets = relative_buckets(t, embedding.num_embeddings, max_distance, embedding.weight.device)
    return embedding(buckets).permute(2, 0, 1)


def gated_bias(x: Tensor, bias: Tensor, grep_linear: nn.Linear, grep_a: Tensor) -> Tensor:
    """WavLM's gate (`gru_rel_pos`): the shared bias scaled per head and query frame.

    Args:
        x: (B, T, E) the attention's input (the queries before projection), E = H x head_dim.
        bias: (H, T, T) the first layer's `position_bias`.
        grep_linear: Linear(head_dim, 8) of this layer; `grep_a`: (1, H, 1, 1).

    Returns:
        (B, H, T, T) to add to the attention scores.
    """
    b, t, _ = x.shape
    h = bias.size(0)
    g = grep_linear(x.view(b, t, h, -1).transpose(1, 2))  # (B, H, T, 8)
    gate_a, gate_b = torch.sigmoid(g.view(b, h, t, 2, 4).sum(-1)).chunk(2, dim=-1)  # each (B, H, T, 1)
    return (gate_a * (gate_b * grep_a - 1.0) + 2.0) * bias
