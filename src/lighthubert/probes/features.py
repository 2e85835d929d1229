"""Frozen features and SUPERB's featurizer: every hidden state computed once, and a learned
softmax-weighted sum of them that every probe head reads."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..audio import SAMPLE_RATE, load_audio
from ..extract import extract, finite_features, min_samples
from ..model import HuBERT
from ..progress import progress_bar
from .mfcc import MFCC, MFCC_WINDOW_SECONDS, mfcc


@dataclass
class FrozenFeatures:
    """Every hidden state of every utterance, computed once and kept in float16.

    Frames are kept, not pooled: the featurizer normalises each frame before anything is
    averaged, and frame-level tasks need them. float16 halves the memory (HuBERT Base: about
    1 MB per second of audio) at a precision far below what a probe can resolve; a file with
    a feature beyond float16's range (65504, which would become inf) stays float32.
    """

    paths: list[Path]  # the audio files, in order
    hidden: list[Tensor]  # per file (layers, T_i, E) float16 (float32 where it would overflow); index 0 as in `extract`

    @classmethod
    def compute(cls, source: Union[HuBERT, str], paths: Sequence[Path], max_batch_seconds: float = 60.0,
                files_per_chunk: int = 64, progress: bool = False) -> FrozenFeatures:
        """Loads each file (mono, 16 kHz) and runs the frozen upstream on it.

        Args:
            source: a model, run as it is (device, dtype, active subnet), or `"mfcc"`, whose
                (T, 39) features become a single hidden state.
            paths: audio files.
            max_batch_seconds: padded audio per forward pass of a model.
            files_per_chunk: files held as waveforms at once.
            progress: show progress (a bar on a terminal, plain lines otherwise).

        Raises:
            AudioError: a file that cannot be read, is shorter than one frame or gives
                non-finite features; names it.
        """
        shortest = round(MFCC_WINDOW_SECONDS * SAMPLE_RATE) if source == MFCC else min_samples(source)
        hidden: list[Tensor] = []
        bar = progress_bar(total=len(paths), unit="file", desc="features", disable=not progress)
        for start in range(0, len(paths), files_per_chunk):
            chunk = paths[start : start + files_per_chunk]
            wavs = [load_audio(p, min_samples=shortest) for p in chunk]
            if source == MFCC:
                feats = [mfcc(w).unsqueeze(0) for w in wavs]
            else:
                feats = extract(source, wavs, int(max_batch_seconds * SAMPLE_RATE))
            hidden.extend(_compact(finite_features(f, w, p)) for f, w, p in zip(feats, wavs, chunk))
            bar.update(len(wavs))
        bar.close()
        return cls(list(paths), hidden)

    @property
    def n_layers(self) -> int:
        return self.hidden[0].shape[0]

    @property
    def dim(self) -> int:
        return self.hidden[0].shape[-1]

    def __len__(self) -> int:
        return len(self.hidden)


def _compact(feats: Tensor) -> Tensor:
    """`feats` in float16 where every value fits, else in float32: every reader casts to float32."""
    return feats.half() if feats.abs().max() <= torch.finfo(torch.float16).max else feats.float()


class Featurizer(nn.Module):
    """SUPERB's learnable softmax-weighted sum of hidden states (s3prl's `Featurizer`).

    As in s3prl (`upstream/interfaces.py`, `_weighted_sum`), the weights start at zero, that is
    uniform after the softmax, and each hidden state can first be layer-normalised over E with
    no affine parameters. s3prl does that only with `--upstream_feature_normalize` (off by
    default, on in the SUPERB challenge scripts); we do it by default, because hidden-state
    scales differ by orders of magnitude across layers (and models), and without it the
    weights say more about scale than about which layer is useful. As in s3prl, a single
    hidden state (the MFCC baseline) passes through unchanged: its weight is 1 and it is not
    normalised, since normalising each MFCC frame would erase its loudness (c0): on the FSDD
    split of the tests that drops digit accuracy from 0.87 to 0.61.

    Args:
        n_layers: hidden states per utterance (layers + 1 for a HuBERT).
        layer_norm: normalise each hidden state before weighting, when there are several.
    """

    def __init__(self, n_layers: int, layer_norm: bool = True) -> None:
        super().__init__()
        self.layer_norm = layer_norm and n_layers > 1
        self.weights = nn.Parameter(torch.zeros(n_layers))

    def forward(self, hidden: Tensor) -> Tensor:
        """(B, layers, T, E) -> (B, T, E): the weighted sum of the normalised hidden states."""
        return self.weigh(self.normalize(hidden))

    def normalize(self, hidden: Tensor) -> Tensor:
        """(..., E) -> (..., E): layer-normalised over E when this featurizer normalises, else as is."""
        return F.layer_norm(hidden, hidden.shape[-1:]) if self.layer_norm else hidden

    def weigh(self, hidden: Tensor) -> Tensor:
        """(B, layers, ...) -> (B, ...): the softmax-weighted sum of states already normalised."""
        return torch.einsum("l,bl...->b...", self.weights.softmax(0), hidden)

    def layer_weights(self) -> list[float]:
        """The softmax weights, one per hidden state; they sum to 1."""
        return self.weights.detach().softmax(0).tolist()


@contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Runs torch's CPU ops on `n` threads inside the block (0: as they are), then restores the count.

    A probe head's tensors are small, so a thread pool buys little, and on a busy machine every
    op waits until each pool thread gets a core: with both cores of a 2-core machine busy, the
    FSDD MFCC digit probe of the tests took 76 s on 2 threads and 5 s on one.
    """
    threads = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
