"""Distillation targets and losses: LightHuBERT's layer-averaged L1 and DistilHuBERT's L1 + cosine."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def layer_average_target(layer_results: Sequence[Tensor], top_k: int = 8, instance_norm: bool = True) -> Tensor:
    """The mean of the teacher's last `top_k` FFN outputs (`layer_result`), data2vec style.

    The maintainers (lighthubert issue #6): "we extract the `layer_result` from the last 8
    layers and then average them". Per-layer instance norm over time is data2vec's
    `instance_norm_target_layer`, which LightHuBERT does not confirm; hence optional.

    Args:
        layer_results: per teacher layer, (B, T, D).

    Returns:
        (B, T, D) target.
    """
    if not 0 < top_k <= len(layer_results):
        raise ValueError(f"target_layers must be in 1..{len(layer_results)} (the teacher's depth), got {top_k}")
    layers = layer_results[-top_k:]
    if instance_norm:
        layers = [F.instance_norm(t.float().transpose(1, 2)).transpose(1, 2) for t in layers]
    return sum(t.float() for t in layers) / top_k


def masked_l1(pred: Tensor, target: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Mean absolute error over the frames in `mask` (B, T), or over all frames when None.

    Recipes refuse `loss_on: masked` without masks up front; `span_mask` masks at least two
    spans of any row of two frames or more."""
    err = (pred.float() - target).abs().mean(-1)  # (B, T)
    if mask is None:
        return err.mean()
    # A masked sum over a count, not err[mask]: boolean indexing (and `if mask.any()`) waits for
    # the device every micro-batch. The emptiness check runs where it is free, on a host mask;
    # an empty mask on a device gives NaN, which the trainer's non-finite check catches.
    if mask.device.type == "cpu" and not mask.any():
        raise ValueError("the loss mask selects no frame; raise mask_prob or use loss_on=all")
    return (err * mask).sum() / mask.sum()


def distilhubert_loss(preds: Sequence[Tensor], targets: Sequence[Tensor], cos_weight: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """DistilHuBERT: L1 + cos_weight * -log sigmoid(cosine), averaged over heads, frames and dims.

    The reference code (`DistillerForPretrain.compute_loss`) averages where the paper sums;
    averaging is kept (it only rescales against the learning rate and clipping).

    Returns:
        (total, l1, cosine term).
    """
    pred, target = torch.stack([p.float() for p in preds]), torch.stack([t.float() for t in targets])
    l1 = (pred - target).abs().mean()
    cos = -F.logsigmoid(F.cosine_similarity(pred, target, dim=-1)).mean()
    return l1 + cos_weight * cos, l1, cos


def span_mask(batch: int, frames: int, prob: float, length: int, generator: torch.Generator, min_spans: int = 2,
              lengths: Optional[Tensor] = None) -> Tensor:
    """fairseq's static span masking (`compute_mask_indices` defaults).

    Each row gets int(prob * frames / length + U[0,1)) spans (at least `min_spans`) of
    `length` frames starting at distinct positions, overlaps allowed, as fairseq draws them.
    With `lengths` (B,), row b's spans are drawn within its first `lengths[b]` frames (padded
    batches); otherwise every row has `frames`. Also masks channels (fairseq's
    `mask_channel_*`): pass the channel count as `frames` and `min_spans=0`.

    Returns:
        (batch, frames) bool, True = masked.
    """
    mask = torch.zeros(batch, frames, dtype=torch.bool)
    if prob <= 0:
        return mask
    for row in range(batch):
        n = frames if lengths is None else int(lengths[row])
        if n < 2:
            continue
        span = min(length, n - 1)
        count = int(prob * n / span + torch.rand((), generator=generator).item())
        count = min(max(count, min_spans), n - span)
        starts = torch.randperm(n - span, generator=generator)[:count]
        idx = (starts[:, None] + torch.arange(span)[None, :]).flatten()
        mask[row, idx] = True
    return mask


def ctc_loss(log_probs: Tensor, frames: Tensor, targets: Tensor, target_lengths: Tensor) -> Tensor:
    """CTC loss summed over tokens and averaged over utterances (fairseq's `ctc` criterion with
    `sentence_avg`, `zero_infinity`); blank is index 0.

    Args:
        log_probs: (B, T, V) log-softmax outputs.
        frames: (B,) valid frames per row.
        targets: (sum of target lengths,) token indices, 1..V-1, concatenated.
        target_lengths: (B,).
    """
    loss = F.ctc_loss(log_probs.float().transpose(0, 1), targets, frames, target_lengths, blank=0, reduction="sum",
                      zero_infinity=True)
    return loss / log_probs.size(0)
