"""Sequence probes (SUPERB's PR and ASR shape): the featurizer, a BiLSTM, a CTC output layer
over phones or letters, greedy decoding.

SUPERB's ASR downstream is two BiLSTM layers of 1024 units over characters and its PR
downstream a linear CTC layer over phones (s3prl `downstream/asr`, `downstream/ctc/
libriphone.yaml`). One `CTCProbe` covers both: `lstm_layers` BiLSTM layers of `lstm_dim`
units per direction, 0 layers for the linear head. The defaults are far smaller (one layer of
256) so that a model's probes fit in minutes on a CPU: a probe compares representations, and
a small head makes it more a measure of what the features hold than of what a large head
can learn on top of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model import BLANK
from ..progress import progress_bar
from .config import ProbeConfig
from .features import Featurizer, FrozenFeatures, torch_threads
from .metrics import BLANK_INDEX, greedy_tokens

log = logging.getLogger(__name__)


@dataclass
class Standardizer:
    """Per-dimension mean and standard deviation of the training frames (global CMVN).

    A single hidden state (the MFCC baseline) is not layer-normalised (see `Featurizer`), and
    raw cepstra span two orders of magnitude across dimensions, which saturates LSTM gates;
    fixed training-set statistics bring them to unit scale and, unlike a per-frame norm, keep
    loudness differences between frames.
    """

    mean: Tensor  # (E,)
    std: Tensor  # (E,)

    @classmethod
    def fit(cls, feats: FrozenFeatures) -> Standardizer:
        total = torch.zeros(feats.dim, dtype=torch.float64)
        square = torch.zeros(feats.dim, dtype=torch.float64)
        n = 0
        for h in feats.hidden:
            x = h[0].double()
            total += x.sum(0)
            square += (x * x).sum(0)
            n += x.shape[0]
        mean = total / n
        return cls(mean.float(), (square / n - mean * mean).clamp_min(1e-8).sqrt().float())


class BiLSTM(nn.Module):
    """Bidirectional LSTM layers over padded batches, each direction a unidirectional `nn.LSTM`.

    The backward direction reads each utterance reversed within its own length, so padding
    never reaches a real frame's state: the same outputs as a packed `nn.LSTM(bidirectional=True)`.
    Packing is avoided because its backward pass in torch's CPU kernels slices the gradient
    per time step into full-size zero tensors: quadratic in length, 14 s instead of 0.4 s for
    8 utterances of 12 s (one layer of 256) here.

    Args:
        dim: input width.
        hidden: units per direction.
        layers: stacked layers; each takes both directions of the one below.
        dropout: between layers.
    """

    def __init__(self, dim: int, hidden: int, layers: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.forward_layers = nn.ModuleList(nn.LSTM(dim if i == 0 else 2 * hidden, hidden, batch_first=True) for i in range(layers))
        self.backward_layers = nn.ModuleList(nn.LSTM(dim if i == 0 else 2 * hidden, hidden, batch_first=True) for i in range(layers))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """(B, T, dim) and (B,) valid frames -> (B, T, 2 * hidden); frames past a length are garbage."""
        t = torch.arange(x.shape[1], device=x.device)
        reverse = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # (B, T) a permutation per row
        for i, (fwd, bwd) in enumerate(zip(self.forward_layers, self.backward_layers)):
            if i:
                x = self.dropout(x)
            flipped = x.gather(1, reverse[:, :, None].expand_as(x))
            back = bwd(flipped)[0]
            x = torch.cat([fwd(x)[0], back.gather(1, reverse[:, :, None].expand_as(back))], dim=-1)
        return x


class CTCProbe(nn.Module):
    """Featurizer -> optional frame concatenation -> BiLSTM layers -> Linear -> CTC log-probs.

    Args:
        n_layers: hidden states per utterance.
        dim: their width E.
        vocab: output tokens (the blank is added as index `BLANK_INDEX`, 0).
        cfg: `lstm_layers`, `lstm_dim`, `downsample`, `dropout` and `layer_norm` are read.
        standardizer: fixed input statistics for a single hidden state; None: no standardisation.
    """

    def __init__(self, n_layers: int, dim: int, vocab: Sequence[str], cfg: ProbeConfig,
                 standardizer: Optional[Standardizer] = None) -> None:
        super().__init__()
        self.vocab = list(vocab)
        self.downsample = cfg.downsample
        self.featurizer = Featurizer(n_layers, cfg.layer_norm)
        if standardizer is not None:
            self.register_buffer("mean", standardizer.mean)
            self.register_buffer("std", standardizer.std)
        else:
            self.mean = self.std = None
        width = dim * cfg.downsample
        self.dropout = nn.Dropout(cfg.dropout)
        self.lstm = None
        if cfg.lstm_layers:
            self.lstm = BiLSTM(width, cfg.lstm_dim, cfg.lstm_layers, cfg.dropout)
            width = 2 * cfg.lstm_dim
        self.out = nn.Linear(width, len(self.vocab) + 1)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """(B,) input frames -> (B,) output frames after concatenating `downsample` frames."""
        return lengths // self.downsample

    def forward(self, hidden: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, layers, T, E) padded hidden states and (B,) frame counts -> (B, T', V + 1) log-probs and (B,) T'."""
        x = self.featurizer(hidden)  # (B, T, E)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        out_lengths = self.output_lengths(lengths)
        k = self.downsample
        if k > 1:
            t = x.shape[1] // k
            x = x[:, : t * k].reshape(x.shape[0], t, k * x.shape[2])
        x = self.dropout(x)
        if self.lstm is not None:
            x = self.lstm(x, out_lengths)
        return self.out(x).log_softmax(-1), out_lengths


def vocabulary(labels: Sequence[Sequence[str]]) -> list[str]:
    """The sorted set of tokens in the training labels: the probe's output units."""
    return sorted({t for row in labels for t in row})


def batches(lengths: Sequence[int], max_frames: int) -> list[list[int]]:
    """Indices grouped by similar length, shortest first, with `len(batch) * longest <= max_frames`
    (one over-long utterance forms a batch alone), so padding stays small."""
    out: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: (lengths[i], i)):
        if out and (len(out[-1]) + 1) * lengths[i] <= max_frames:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _pad(feats: FrozenFeatures, idx: Sequence[int]) -> tuple[Tensor, Tensor]:
    """(B, layers, T_max, E) float32 hidden states of utterances `idx`, zero-padded, and (B,) frames."""
    hs = [feats.hidden[i] for i in idx]
    lengths = torch.tensor([h.shape[1] for h in hs])
    batch = torch.zeros(len(hs), hs[0].shape[0], int(lengths.max()), hs[0].shape[2])
    for b, h in enumerate(hs):
        batch[b, :, : h.shape[1]] = h.float()
    return batch, lengths


def fit_ctc(feats: FrozenFeatures, labels: Sequence[Sequence[str]], cfg: ProbeConfig, progress: bool = False,
            vocab: Optional[Sequence[str]] = None, ) -> tuple[CTCProbe, list[float]]:
    """Trains a `CTCProbe` on frozen features with Adam, CTC loss, a 10% linear warm-up and
    linear decay, for `cfg.ctc_epochs` epochs on the CPU.

    Utterances whose labels are longer than their output frames cannot be aligned by CTC;
    they are left out of training with one warning and a count. The init and the batch order
    come from `cfg.seed` alone (the global RNG is left as it was).

    Args:
        feats: training features.
        labels: token list per utterance, in `feats` order.
        vocab: output tokens; None: `vocabulary(labels)`.

    Returns:
        The trained probe in eval mode, and the mean CTC loss (per target token) of each epoch.

    Raises:
        ValueError: labels and features of different counts, or no utterance CTC can align.
    """
    if len(labels) != len(feats):
        raise ValueError(f"{len(labels)} label lines for {len(feats)} utterances; give one per utterance")
    vocab = list(vocab) if vocab is not None else vocabulary(labels)
    index = {t: i + 1 for i, t in enumerate(vocab)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        std = Standardizer.fit(feats) if feats.n_layers == 1 else None
        model = CTCProbe(feats.n_layers, feats.dim, vocab, cfg, std)
    frames = [h.shape[1] // cfg.downsample for h in feats.hidden]
    usable = [i for i, row in enumerate(labels) if 0 < len(row) <= frames[i]]
    if len(usable) < len(labels):
        log.warning("%d of %d training utterances have more label tokens than output frames (%d frames per second); "
                    "CTC cannot align them and they are left out", len(labels) - len(usable), len(labels),
                    50 // cfg.downsample)
    if not usable:
        raise ValueError("no training utterance can be aligned by CTC: every label sequence is longer than its audio's frames")
    targets = [torch.tensor([index[t] for t in labels[i]]) for i in range(len(labels))]
    groups = batches([feats.hidden[i].shape[1] for i in usable], max(1, int(cfg.ctc_batch_seconds * 50)))
    groups = [[usable[j] for j in g] for g in groups]
    opt = torch.optim.Adam(model.parameters(), lr=cfg.ctc_lr)
    total_steps = cfg.ctc_epochs * len(groups)
    warmup = max(1, total_steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (total_steps - s) / max(1, total_steps - warmup))))
    order_rng = torch.Generator().manual_seed(cfg.seed)
    history = []
    bar = progress_bar(total=total_steps, unit="batch", desc=f"ctc ({len(vocab)} tokens)", disable=not progress)
    with torch_threads(cfg.threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # dropout masks
        model.train()
        for epoch in range(cfg.ctc_epochs):
            total, tokens = 0.0, 0
            for g in torch.randperm(len(groups), generator=order_rng).tolist():
                idx = groups[g]
                hidden, lengths = _pad(feats, idx)
                log_probs, out_lengths = model(hidden, lengths)
                tgt = [targets[i] for i in idx]
                loss = F.ctc_loss(log_probs.transpose(0, 1), torch.cat(tgt), out_lengths, torch.tensor([len(t) for t in tgt]),
                                  blank=BLANK_INDEX, reduction="sum", zero_infinity=True)
                n = sum(len(t) for t in tgt)
                opt.zero_grad()
                (loss / n).backward()
                nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                opt.step()
                sched.step()
                total, tokens = total + loss.item(), tokens + n
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{total / tokens:.3f}")
            history.append(total / tokens)
            log.debug("ctc epoch %d: loss %.4f per token", epoch + 1, history[-1])
    bar.close()
    return model.eval(), history


@torch.no_grad()
def decode(model: CTCProbe, feats: FrozenFeatures, max_frames: int = 20000, threads: int = 1) -> list[list[str]]:
    """Greedy CTC decoding: the best token per frame, repeats merged, blanks dropped.

    Returns:
        Token list per utterance, in `feats` order.
    """
    model.eval()
    out: list[Optional[list[str]]] = [None] * len(feats)
    with torch_threads(threads):
        for idx in batches([h.shape[1] for h in feats.hidden], max_frames):
            hidden, lengths = _pad(feats, idx)
            log_probs, out_lengths = model(hidden, lengths)
            for i, tokens in zip(idx, greedy_tokens(log_probs, out_lengths, [BLANK, *model.vocab])):
                out[i] = tokens
    return out  # type: ignore[return-value]

