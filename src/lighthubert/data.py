"""The training pipeline: a dataset over a manifest that reports bad files instead of raising,
size-bucketed batches sharded across ranks, fairseq's crop-to-shortest collate, and the count
of skipped files by cause."""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from . import transcripts
from .audio import SAMPLE_RATE, SKIP_KINDS, AudioError, collate, load_audio
from .manifest import read_manifest

log = logging.getLogger(__name__)

SILENCE_PEAK = 1e-6  # a waveform whose peak |x| is below this is silent: nothing to distil


class EpochIndex(NamedTuple):
    """A dataset index with the epoch whose batch order drew it (`BucketBatchSampler`'s items).

    The epoch travels with the index through DataLoader workers into the item, so the crop
    collate can draw new offsets each epoch without being told the epoch by the trainer.
    """

    index: int
    epoch: int


class AudioDataset(Dataset):
    """Utterances of a manifest as 16 kHz mono float32; a bad file is reported, never raised.

    Length filters use the manifest's frame counts as 16 kHz samples, as fairseq's
    `HubertDataset` does (`min_keep`/`max_keep`); `write_manifest` writes them so (see
    `manifest_frames`). A fairseq manifest of audio at another rate counts frames at that
    rate, and its filters and batches are then off by the rate ratio.
    A file is still checked against `min_samples` after loading, so a short resampled file is
    reported rather than batched.

    Args:
        manifest: path of a `.tsv` manifest.
        min_samples: drop utterances with fewer frames (fairseq's `min_sample_size`).
        max_samples: drop utterances with more frames; None keeps all.
        labels: a label kind (`ltr`, `wrd`, `phn`) whose file beside the manifest gives each
            utterance's tokens (`transcripts.read_label_file`), or None.
    """

    def __init__(self, manifest: Union[str, Path], min_samples: int = 0, max_samples: Optional[int] = None,
                 labels: Optional[str] = None) -> None:
        m = read_manifest(manifest)
        self.manifest = Path(manifest)
        self.root = m.root
        self.min_samples = min_samples
        rows, self.label_file = None, None
        if labels is not None:
            self.label_file = transcripts.label_path(manifest, labels)
            rows = transcripts.read_label_file(self.label_file, len(m.entries), manifest)
        kept = [i for i, (_, n) in enumerate(m.entries) if n >= min_samples and (max_samples is None or n <= max_samples)]
        self.lines = [i + 2 for i in kept]  # manifest line of each kept entry (line 1 is the root), for messages
        self.paths = [m.entries[i][0] for i in kept]
        self.sizes = [m.entries[i][1] for i in kept]  # 16 kHz samples
        self.labels = None if rows is None else [rows[i] for i in kept]  # token list per kept entry
        kept = [m.entries[i] for i in kept]
        short = sum(n < min_samples for _, n in m.entries)
        log.info("%s: kept %d of %d utterances; filtered %d below min_samples %d and %d above max_samples %s",
                 manifest, len(kept), len(m.entries), short, min_samples, len(m.entries) - len(kept) - short, max_samples)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: Union[int, EpochIndex]) -> dict:
        """Returns `{"index": i, "epoch": e, "wav": (N,) float32 or None, "error": None or
        "<kind>: <path>: <why>", "labels": its tokens or None}`; a plain index `i` is epoch 0."""
        i, epoch = key if isinstance(key, EpochIndex) else (key, 0)
        path = self.root / self.paths[i]
        try:
            wav = load_audio(path, min_samples=self.min_samples)
            low, high = torch.aminmax(wav)  # one pass, no |wav| copy
            peak = max(-low.item(), high.item())
            if peak < SILENCE_PEAK:
                raise AudioError(f"{path}: silent (peak {peak:.1e} below {SILENCE_PEAK:.0e})", "silent")
        except AudioError as e:
            log.debug("%s", e.reason)
            return {"index": i, "epoch": epoch, "wav": None, "error": e.reason}
        return {"index": i, "epoch": epoch, "wav": wav, "error": None,
                "labels": None if self.labels is None else self.labels[i]}

    def keep_at_least(self, samples: int) -> list[str]:
        """Leaves out the utterances shorter than `samples` (e.g. what the model needs for two
        frames, when `min_samples` asked for less) and checks loaded files against it too.

        Returns:
            One skip reason per utterance left out (`SkipCounter`'s "too short" kind).
        """
        if samples <= self.min_samples:
            return []
        short = [i for i, n in enumerate(self.sizes) if n < samples]
        reasons = [f"too short: {self.root / self.paths[i]}: {self.sizes[i]} samples, the model needs at least {samples}"
                   for i in short]
        keep = [i for i in range(len(self.sizes)) if self.sizes[i] >= samples]
        self.paths, self.sizes, self.lines = ([x[i] for i in keep] for x in (self.paths, self.sizes, self.lines))
        if self.labels is not None:
            self.labels = [self.labels[i] for i in keep]
        self.min_samples = samples
        return reasons

    def label_source(self, i: int) -> str:
        """`file:line` of item `i`'s labels, for messages."""
        return f"{self.label_file or self.manifest}:{self.lines[i] - 1}"


def batch_by_size(sizes: Sequence[int], max_batch_samples: int, max_crop: Optional[int] = None) -> list[list[int]]:
    """Groups indices, shortest first (ties by index), so that `len(batch) * largest <= max_batch_samples`.

    Sizes are capped at `max_crop` first, since the collate crops to at most that. This is
    fairseq's `batch_by_size` under `max_tokens` with sizes sorted as `ordered_indices` does.

    Raises:
        ValueError: one utterance alone exceeds the budget; names it and the ways out.
    """
    capped = [n if max_crop is None else min(n, max_crop) for n in sizes]
    batches: list[list[int]] = []
    for i in sorted(range(len(sizes)), key=lambda i: (capped[i], i)):
        if capped[i] > max_batch_samples:
            raise ValueError(f"utterance {i} has {capped[i]} samples, more than max_batch_samples {max_batch_samples}; "
                             "raise the budget, set max_crop or filter with max_samples")
        if batches and (len(batches[-1]) + 1) * capped[i] <= max_batch_samples:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


class BucketBatchSampler(Sampler[list[EpochIndex]]):
    """Size-bucketed batches under a total-samples budget, shuffled per epoch and sharded by rank.

    Batches are formed once (`batch_by_size`) and yielded as lists of `EpochIndex`, so the
    collate knows the epoch and crops a batch differently in each. Each epoch shuffles their
    order with `random.Random(seed + epoch)`, the same on every rank, then rank r takes
    batches r, r + R, r + 2R, ... The batch count is made a multiple of R so every rank steps
    the same number of times (DDP hangs otherwise): `drop_last` drops the last few shuffled
    batches (different ones each epoch), otherwise the first few are repeated, as
    `DistributedSampler` pads. Everything runs in the main process, so DataLoader workers
    cannot change it.

    Args:
        sizes: utterance lengths in samples (`AudioDataset.sizes`).
        max_batch_samples: budget for `len(batch) * largest size in batch`.
        seed: shuffling seed; the same on every rank.
        num_replicas: number of ranks R.
        rank: this rank, in 0..R-1.
        shuffle: shuffle the batch order each epoch; otherwise shortest batches first.
        drop_last: drop rather than repeat batches to make the count a multiple of R.
        max_crop: cap on sizes when batching, for a collate that crops to this many samples.
        even: give every rank the same number of batches (training under DDP needs it);
            False shards every batch exactly once, for evaluation that counts each utterance once.

    Raises:
        ValueError: a bad rank or budget, an utterance over budget, or no batch for this rank.
    """

    def __init__(self, sizes: Sequence[int], max_batch_samples: int, seed: int, num_replicas: int = 1, rank: int = 0,
                 shuffle: bool = True, drop_last: bool = True, max_crop: Optional[int] = None, even: bool = True) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in 0..num_replicas-1 with num_replicas >= 1, got rank {rank} of {num_replicas}")
        if max_batch_samples < 1:
            raise ValueError(f"max_batch_samples must be positive, got {max_batch_samples}")
        self.batches = batch_by_size(sizes, max_batch_samples, max_crop)
        self.seed, self.num_replicas, self.rank = seed, num_replicas, rank
        self.shuffle, self.drop_last, self.even = shuffle, drop_last, even
        self.epoch = 0
        self.skip = 0  # batches of `epoch` already done (`set_position`); every __iter__ starts after them
        if even and len(self) == 0:
            raise ValueError(f"{len(self.batches)} batch(es) for {num_replicas} ranks leaves none per rank; "
                             "lower max_batch_samples, add data or set drop_last=False")

    def __len__(self) -> int:
        """Batches per rank in a full epoch (also after `set_position`, which only skips)."""
        n, r = len(self.batches), self.num_replicas
        if not self.even:  # every batch once: ranks below n % r take one more
            return len(range(self.rank, n, r))
        return n // r if self.drop_last else -(-n // r)

    def set_epoch(self, epoch: int) -> None:
        """Selects the batch order of `epoch` from its start; call before each epoch, as with
        `DistributedSampler`."""
        self.epoch, self.skip = epoch, 0

    def set_position(self, epoch: int, batches_done: int) -> None:
        """Resumes mid-epoch: `__iter__` yields `epoch`'s batches after the first `batches_done`.

        The position holds for every `__iter__` until the next `set_position` or `set_epoch`:
        torch's DataLoader calls `iter(batch_sampler)` twice when it starts worker processes,
        and a skip spent by the first call replayed the epoch from its first batch.

        Raises:
            ValueError: `batches_done` outside 0..len(self).
        """
        if not 0 <= batches_done <= len(self):
            raise ValueError(f"batches_done must be in 0..{len(self)} (batches per rank), got {batches_done}")
        self.epoch, self.skip = epoch, batches_done

    def __iter__(self) -> Iterator[list[EpochIndex]]:
        order = list(range(len(self.batches)))
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(order)
        if self.even:
            total = len(self) * self.num_replicas
            order = [order[k % len(order)] for k in range(total)]  # drop the tail, or repeat from the head
        mine, epoch = order[self.rank :: self.num_replicas][self.skip :], self.epoch  # fixed now, as iter() is called
        # one batch at a time: a whole epoch of index tuples built up front made the garbage
        # collector rescan them, quadratic in the epoch (benchmarks/bench_scale.py)
        return ([EpochIndex(i, epoch) for i in self.batches[b]] for b in mine)


class CropCollate:
    """DataLoader `collate_fn`: drops bad items, crops the rest to the shortest, capped.

    fairseq's `HubertDataset.collater` with `pad_audio=False, random_crop=True`: every
    utterance is cropped to the shortest in the batch (at most `max_samples`) at a random
    offset, so no padding or mask is needed. The offsets come from an RNG seeded by `seed`, the
    epoch the items carry (`EpochIndex`) and the batch's sorted indices: a batch is cropped anew
    each epoch (batches are formed once, so without the epoch every epoch would repeat the
    first one's windows), the same whichever worker builds it, and again after a resume.
    A plain class with int fields, so it pickles into worker processes.

    Args:
        max_samples: crop cap (fairseq's `max_sample_size`, 250000 in the HuBERT recipe); None: no cap.
        seed: non-negative crop seed.
    """

    def __init__(self, max_samples: Optional[int] = None, seed: int = 0) -> None:
        if seed < 0 or (max_samples is not None and max_samples < 1):
            raise ValueError(f"seed must be >= 0 and max_samples positive or None, got seed {seed}, max_samples {max_samples}")
        self.max_samples = max_samples
        self.seed = seed

    def __call__(self, items: Sequence[dict]) -> dict:
        """Items from `AudioDataset` -> `{"wav": (B, N) float32 or None, "indices": [B ints], "skipped": [(index, reason)]}`.

        Output rows follow ascending index, whatever order the items came in; the items share
        one epoch, as a sampler's batch does.
        """
        items = sorted(items, key=lambda it: it["index"])
        skipped = [(it["index"], it["error"]) for it in items if it["wav"] is None]
        good = [it for it in items if it["wav"] is not None]
        if not good:
            return {"wav": None, "indices": [], "skipped": skipped}
        length = min(it["wav"].numel() for it in good)
        if self.max_samples is not None:
            length = min(length, self.max_samples)
        rng = np.random.default_rng([self.seed, items[0]["epoch"], *(it["index"] for it in items)])  # one epoch per batch
        offsets = [int(rng.integers(0, it["wav"].numel() - length + 1)) for it in good]
        wav = torch.stack([it["wav"][o : o + length] for it, o in zip(good, offsets)])
        return {"wav": wav, "indices": [it["index"] for it in good], "skipped": skipped}


class PadCollate:
    """DataLoader `collate_fn` for recipes that need whole utterances (CTC fine-tuning: a crop
    would cut the transcript): drops bad items and pads the rest at the end to the longest,
    with their lengths and labels (fairseq's fine-tuning collater, `pad_audio=True`)."""

    def __call__(self, items: Sequence[dict]) -> dict:
        """Items from `AudioDataset` -> `{"wav": (B, N) or None, "lengths": (B,), "indices",
        "labels", "skipped"}`, rows in ascending index."""
        items = sorted(items, key=lambda it: it["index"])
        skipped = [(it["index"], it["error"]) for it in items if it["wav"] is None]
        good = [it for it in items if it["wav"] is not None]
        if not good:
            return {"wav": None, "lengths": None, "indices": [], "labels": None, "skipped": skipped}
        wav, lengths = collate([it["wav"] for it in good])
        return {"wav": wav, "lengths": lengths, "indices": [it["index"] for it in good],
                "labels": [it["labels"] for it in good], "skipped": skipped}


def batch_collate(batching: str, max_samples: int, seed: int):
    """The collate of a recipe's `batching`: `crop` (`CropCollate`) or `pad` (`PadCollate`)."""
    if batching == "crop":
        return CropCollate(max_samples, seed)
    if batching == "pad":
        return PadCollate()
    raise ValueError(f"batching must be 'crop' or 'pad', got {batching!r}")


@dataclass
class Batch:
    """One training or validation batch, as the trainer hands it to a recipe."""

    wav: Tensor  # (B, N) float32 audio, raw (recipes normalise for models that expect it)
    lengths: Optional[Tensor]  # (B,) valid samples per row; None when every row is whole (crops)
    indices: list[int]  # dataset indices of the rows
    labels: Optional[list] = None  # each row's tokens, for recipes that learn from labels

    @classmethod
    def from_collated(cls, out: dict) -> "Batch":
        """A batch from a collate's dict (which must hold audio)."""
        return cls(out["wav"], out.get("lengths"), out["indices"], out.get("labels"))

    @property
    def seconds(self) -> float:
        """Audio in the batch, in seconds at 16 kHz (valid samples only)."""
        n = self.wav.numel() if self.lengths is None else int(self.lengths.sum())
        return n / SAMPLE_RATE

    def to(self, device: torch.device) -> "Batch":
        lengths = None if self.lengths is None else self.lengths.to(device)
        return Batch(self.wav.to(device), lengths, self.indices, self.labels)


def validation_batches(dataset: "AudioDataset", max_batch_samples: int, max_sample_size: int, seed: int,
                       replicas: int = 1, rank: int = 0, batching: str = "crop") -> Iterator[tuple[int, Batch]]:
    """Validation batches in a fixed order, each utterance on exactly one rank: (batch index,
    batch); batches whose files were all unusable are left out. Crops (epoch 0 always: the
    sampler's epoch is never advanced) and masks seeded by the index make losses comparable
    across validations and subnets."""
    sampler = BucketBatchSampler(dataset.sizes, max_batch_samples, seed, replicas, rank, shuffle=False,
                                 max_crop=max_sample_size if batching == "crop" else None, even=False)
    collate = batch_collate(batching, max_sample_size, seed)
    for k, indices in enumerate(sampler):  # unshuffled: rank r holds batches r, r + R, ...
        out = collate([dataset[i] for i in indices])
        if out["wav"] is not None:
            yield rank + k * replicas, Batch.from_collated(out)


class SkipCounter:
    """Skipped files by cause, for the end-of-run summary.

    Reasons are `AudioDataset`'s `"<kind>: <path>: <why>"`; a file skipped again in a later
    epoch has the same reason and counts once.
    """

    def __init__(self) -> None:
        self._kinds: dict[str, str] = {}  # reason -> kind, in first-seen order

    def add(self, reason: str) -> None:
        kind = reason.split(":", 1)[0]
        self._kinds.setdefault(reason, kind if kind in SKIP_KINDS else "unusable")

    def __len__(self) -> int:
        return len(self._kinds)

    def state(self) -> list[str]:
        """The reasons seen, for a checkpoint; `load` restores them on resume."""
        return list(self._kinds)

    def load(self, reasons: Sequence[str]) -> None:
        for reason in reasons:
            self.add(reason)

    def summary(self) -> str:
        """E.g. "skipped 3 files: 1 missing, 1 empty, 1 unreadable" (most common first)."""
        counts = Counter(self._kinds.values()).most_common()
        n = len(self._kinds)
        head = f"skipped {n} file{'' if n == 1 else 's'}"
        return head + (": " + ", ".join(f"{c} {k}" for k, c in counts) if counts else "")
