"""SUPERB-style probes on frozen features: how much a representation knows about a label.

The protocol is SUPERB's constrained track (Yang et al., 2021; s3prl's `run_downstream.py`):
the upstream stays frozen, every hidden state is computed once, a learnable softmax-weighted
sum of them (s3prl's `Featurizer`) feeds a light task head, and only the weights and the head
are trained. The one task so far is utterance classification (KS, SID, ER and IC in SUPERB):
mean over frames, then a linear or one-hidden-layer head.

The upstream is any `HuBERT` (a teacher, a `LightHuBERT` at its active subnet, a compact
export) or `"mfcc"`, the built-in baseline: `mfcc` features as a single hidden state.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from scipy.fft import dct, rfft
from torch import Tensor, nn
from tqdm import tqdm

from .data import SAMPLE_RATE, load_audio, read_manifest
from .extract import extract, min_samples
from .model import HuBERT

log = logging.getLogger(__name__)

MFCC = "mfcc"  # the `source` that selects the MFCC baseline instead of a model
TASKS = ("utterance-classification",)

# ---------------------------------------------------------------------------------------------
# MFCC baseline

MFCC_WINDOW_SECONDS = 0.025  # 400 samples at 16 kHz: HuBERT's receptive field per frame
MFCC_HOP_SECONDS = 0.020  # 320 samples: HuBERT's 50 Hz frame rate (speech front ends use 10 ms)
MFCC_BANDS = 40  # mel filters
MFCC_COEFFS = 13  # cepstra kept, c0 included; deltas and delta-deltas triple this to 39
_LOW_HZ = 20.0  # lowest filter edge, Kaldi's default (`--low-freq`); the highest is Nyquist
_PREEMPHASIS = 0.97
_LOG_FLOOR = 1e-10  # mel energies below this are clamped before the log (digital silence)
_DELTA_REACH = 2  # frames each side in the delta regression (HTK DELTAWINDOW, Kaldi --delta-window)


def mfcc(wav: Tensor, sample_rate: int = SAMPLE_RATE) -> Tensor:
    """MFCCs with deltas and delta-deltas, on HuBERT's frame grid.

    The recipe is HTK's and Kaldi's: per 25 ms frame, remove the DC offset, pre-emphasise
    (0.97, the first sample against itself as in Kaldi), apply a Hamming window, take the power
    spectrum (FFT size the next power of two), sum it through 40 triangular filters spaced
    evenly on the HTK mel scale `2595 log10(1 + f / 700)` from 20 Hz to Nyquist, take the log
    (floored at 1e-10) and an orthonormal DCT-II, and keep c0..c12. Deltas use HTK's regression
    over ±2 frames with the edge frames repeated; delta-deltas are the deltas of the deltas.

    Deliberate differences from those defaults, each for a reason:
      - 20 ms hop instead of 10 ms, and no padding at the edges, so frame t covers samples
        [320 t, 320 t + 400): the same frames, one for one, as HuBERT's convolutional front
        end (`1 + (N - 400) // 320` of them), so MFCC features line up with hidden states
        and with pre-training targets.
      - No dither, so the features are deterministic.
      - No liftering: with an orthonormal DCT, Euclidean distances between cepstra are those
        between the smoothed log-mel spectra, which is what k-means on MFCCs should compare.

    Args:
        wav: (N,) mono waveform, float, at `sample_rate`.
        sample_rate: Hz; window and hop are 25 ms and 20 ms at any rate.

    Returns:
        (T, 39) float32: 13 cepstra, 13 deltas, 13 delta-deltas; T = 1 + (N - 400) // 320 at 16 kHz.

    Raises:
        ValueError: not a 1-D waveform, or shorter than one window.
    """
    if wav.dim() != 1:
        raise ValueError(f"mfcc expects a 1-D (N,) waveform, got shape {tuple(wav.shape)}; down-mix or index the batch first")
    window = round(MFCC_WINDOW_SECONDS * sample_rate)
    hop = round(MFCC_HOP_SECONDS * sample_rate)
    if wav.numel() < window:
        raise ValueError(f"mfcc needs at least {window} samples (25 ms at {sample_rate} Hz), got {wav.numel()}")
    # NumPy, float64: for arrays this small it is several times faster than torch (no thread pool).
    x = wav.detach().cpu().numpy().astype(np.float64)
    frames = np.lib.stride_tricks.sliding_window_view(x, window)[::hop]  # (T, window)
    frames = frames - frames.mean(axis=1, keepdims=True)
    frames = np.concatenate([frames[:, :1] * (1 - _PREEMPHASIS), frames[:, 1:] - _PREEMPHASIS * frames[:, :-1]], axis=1)
    frames = frames * np.hamming(window)
    n_fft = 1 << (window - 1).bit_length()
    power = np.abs(rfft(frames, n=n_fft, axis=1)) ** 2  # (T, n_fft // 2 + 1)
    log_mel = np.log(np.maximum(power @ _mel_filterbank(n_fft, sample_rate).T, _LOG_FLOOR))  # (T, 40)
    cepstra = dct(log_mel, type=2, norm="ortho", axis=1)[:, :MFCC_COEFFS]
    deltas = _deltas(cepstra)
    return torch.from_numpy(np.concatenate([cepstra, deltas, _deltas(deltas)], axis=1).astype(np.float32))


@lru_cache(maxsize=8)
def _mel_filterbank(n_fft: int, sample_rate: int) -> np.ndarray:
    """(40, n_fft // 2 + 1) float64 triangles, linear in mel between neighbouring centres (Kaldi's `MelBanks`)."""
    def to_mel(hz: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    edges = np.linspace(to_mel(np.array(_LOW_HZ)), to_mel(np.array(sample_rate / 2)), MFCC_BANDS + 2)
    bins = to_mel(np.arange(n_fft // 2 + 1) * sample_rate / n_fft)
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    weights = np.clip(np.minimum((bins - left) / (centre - left), (right - bins) / (right - centre)), 0.0, None)
    weights.flags.writeable = False  # shared by every call through the cache
    return weights


def _deltas(x: np.ndarray) -> np.ndarray:
    """HTK's regression `d_t = sum_n n (x_{t+n} - x_{t-n}) / (2 sum_n n^2)`, n = 1..2, edges repeated: (T, C) -> (T, C)."""
    r, t = _DELTA_REACH, x.shape[0]
    padded = np.pad(x, ((r, r), (0, 0)), mode="edge")
    numerator = sum(n * (padded[r + n : r + n + t] - padded[r - n : r - n + t]) for n in range(1, r + 1))
    return numerator / (2 * sum(n * n for n in range(1, r + 1)))


# ---------------------------------------------------------------------------------------------
# Labels


def labels_from(spec: str, paths: Sequence[Path], root: Optional[Path] = None) -> list[str]:
    """One label per audio file, from a CSV file or from a regular expression on the file stem.

    An existing file is read as CSV: rows `path,label`, an optional `path,label` header, paths
    absolute or relative to `root` (a manifest's root; the CSV's own folder when None).
    Anything else is a regular expression searched in each file's stem (`re.search`, so anchor
    it with `^` as needed); its first group, or the whole match when it has none, is the label.
    FSDD's `7_jackson_32.wav` gives the digit with `^(\\d)_` and the speaker with `^\\d_(\\w+)_`.

    Args:
        spec: CSV path or regular expression.
        paths: the audio files, as a manifest lists them (root / relative path).
        root: folder that relative CSV paths are relative to.

    Returns:
        Labels, in the order of `paths`.

    Raises:
        ValueError: an invalid regex, a file it does not match, a malformed CSV row, two labels
            for one file, or a file the CSV does not label; one line naming the culprit.
    """
    if Path(spec).is_file():
        return _labels_from_csv(Path(spec), paths, Path(spec).parent if root is None else root)
    try:
        pattern = re.compile(spec)
    except re.error as e:
        raise ValueError(f"--labels '{spec}' is neither a file nor a valid regular expression ({e})") from None
    labels, unmatched = [], []
    for p in paths:
        m = pattern.search(p.stem)
        label = None if m is None else m.group(1) if pattern.groups else m.group(0)
        if not label:  # no match, or an optional group that did not take part
            unmatched.append(p.stem)
        labels.append(label)
    if unmatched:
        which = "any" if len(unmatched) == len(paths) else f"{len(unmatched)} of {len(paths)}"
        raise ValueError(f"label regex '{spec}' finds no label in {which} file stems, e.g. {unmatched[0]!r}; "
                         "its first group (or whole match) must be non-empty for every file")
    return labels


def _labels_from_csv(path: Path, paths: Sequence[Path], root: Path) -> list[str]:
    def key(p: Union[str, Path]) -> str:  # absolute and normalised, symlinks left alone
        return os.path.normpath(os.path.abspath(Path(root) / p))

    table: dict[str, str] = {}
    with open(path, newline="") as f:
        for n, row in enumerate(csv.reader(f), start=1):
            if not row or (n == 1 and [c.strip().lower() for c in row] == ["path", "label"]):
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise ValueError(f"{path}:{n}: expected 'path,label' with both non-empty, found {row!r}")
            file, label = key(row[0].strip()), row[1].strip()
            if table.setdefault(file, label) != label:
                raise ValueError(f"{path}:{n}: {row[0].strip()} is labelled both {table[file]!r} and {label!r}")
    missing = [p for p in paths if key(p) not in table]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"{path}: no label for {missing[0]}{more}; add 'path,label' rows, paths absolute or relative to {root}")
    return [table[key(p)] for p in paths]


# ---------------------------------------------------------------------------------------------
# Frozen features, the featurizer and the head


@dataclass
class FrozenFeatures:
    """Every hidden state of every utterance, computed once and kept in float16.

    Frames are kept, not pooled: the featurizer normalises each frame before anything is
    averaged, and frame-level tasks need them. float16 halves the memory (HuBERT Base: about
    1 MB per second of audio) at a precision far below what a probe can resolve.
    """

    paths: list[Path]  # the audio files, in order
    hidden: list[Tensor]  # per file (layers, T_i, E) float16; index 0 as in `extract`

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
            progress: show a tqdm bar.

        Raises:
            AudioError: a file that cannot be read or is shorter than one frame; names it.
        """
        shortest = round(MFCC_WINDOW_SECONDS * SAMPLE_RATE) if source == MFCC else min_samples(source)
        hidden: list[Tensor] = []
        bar = tqdm(total=len(paths), unit="file", desc="features", disable=not progress)
        for start in range(0, len(paths), files_per_chunk):
            wavs = [load_audio(p, min_samples=shortest) for p in paths[start : start + files_per_chunk]]
            if source == MFCC:
                feats = [mfcc(w).unsqueeze(0) for w in wavs]
            else:
                feats = extract(source, wavs, int(max_batch_seconds * SAMPLE_RATE))
            hidden.extend(f.half() for f in feats)
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


class UtteranceClassifier(nn.Module):
    """Featurizer, mean over frames, then a head: SUPERB's utterance-level probe.

    The mean over frames is taken per hidden state, after the layer norm and before the
    weighting (`pool`), which gives exactly SUPERB's weight-then-pool: the norm works frame by
    frame and has no parameters, and the weighted sum and the mean are both linear, so they
    commute. Pooling first makes each utterance an (layers, E) tensor computed once, and
    training then costs milliseconds per epoch instead of a pass over every frame.

    SUPERB's SID, ER and IC heads are linear on the mean-pooled features, and KS's projector
    (Linear 256) plus linear is still linear; `hidden=0` gives that. A hidden ReLU layer
    (`hidden > 0`, the default in `ProbeConfig`) lets weak features combine: on the FSDD split
    of the tests it lifts the MFCC baseline from 0.62 to 0.87 on digits.

    Args:
        n_layers: hidden states per utterance.
        dim: their width E.
        n_classes: output classes.
        hidden: width of the head's ReLU layer; 0 for a linear head.
        layer_norm: passed to the `Featurizer`.
    """

    def __init__(self, n_layers: int, dim: int, n_classes: int, hidden: int = 0, layer_norm: bool = True) -> None:
        super().__init__()
        self.featurizer = Featurizer(n_layers, layer_norm)
        if hidden:
            self.head = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))
        else:
            self.head = nn.Linear(dim, n_classes)

    def pool(self, hidden: Tensor) -> Tensor:
        """One utterance's (layers, T, E) hidden states -> (layers, E): normalised, averaged over frames."""
        return self.featurizer.normalize(hidden.float()).mean(dim=1)

    def forward(self, pooled: Tensor) -> Tensor:
        """(B, layers, E) from `pool` -> (B, classes) logits."""
        return self.head(self.featurizer.weigh(pooled))


# ---------------------------------------------------------------------------------------------
# The probe


@dataclass
class ProbeConfig:
    """Settings of one probe; the defaults train in seconds on CPU for FSDD-sized sets."""

    task: str = "utterance-classification"  # one of TASKS
    epochs: int = 30  # passes over the training set
    lr: float = 1e-3  # Adam learning rate, for the layer weights and the head alike
    batch_size: int = 32  # utterances per step
    hidden: int = 256  # head's ReLU layer width; 0 = linear head (SUPERB's)
    layer_norm: bool = True  # layer-normalise each hidden state before weighting (see `Featurizer`)
    seed: int = 0  # seeds the head's init and the batch order
    max_batch_seconds: float = 60.0  # padded audio per forward pass of the upstream

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.hidden < 0:
            raise ValueError(f"epochs and batch_size must be >= 1 and hidden >= 0, got epochs {self.epochs}, "
                             f"batch_size {self.batch_size}, hidden {self.hidden}")
        if not self.lr > 0 or not self.max_batch_seconds > 0:
            raise ValueError(f"lr and max_batch_seconds must be positive, got lr {self.lr}, max_batch_seconds {self.max_batch_seconds}")


@dataclass
class ProbeResult:
    """What a probe measured; `to_dict()` gives its JSON form."""

    task: str
    accuracy: float  # fraction of test utterances classified correctly
    n_train: int  # training utterances
    n_test: int  # test utterances
    classes: list[str]  # class names, sorted; the head's output order
    layer_weights: list[float]  # learned softmax weight per hidden state (sums to 1)
    class_accuracy: dict[str, float]  # class -> accuracy on its test utterances (classes with any)
    train_counts: dict[str, int]  # class -> training utterances
    test_counts: dict[str, int]  # class -> test utterances
    train_loss: float  # mean cross entropy over the last epoch

    def to_dict(self) -> dict:
        return asdict(self)


def probe(source: Union[HuBERT, str], train_manifest: Union[str, Path], test_manifest: Union[str, Path], labels: str,
          cfg: Optional[ProbeConfig] = None, progress: bool = False) -> ProbeResult:
    """Trains a probe on frozen features of `train_manifest` and scores it on `test_manifest`.

    Labels are read and checked first, so a bad `labels` fails before any audio is processed.

    Args:
        source: a frozen model (any `HuBERT`; a `LightHuBERT` at its active subnet) or `"mfcc"`.
        train_manifest: fairseq `.tsv` manifest of the training utterances.
        test_manifest: the same for the test utterances.
        labels: CSV file or regular expression; see `labels_from`.
        cfg: probe settings; defaults when None.
        progress: show tqdm bars while computing features.

    Returns:
        Test accuracy, learned layer weights and class statistics.

    Raises:
        ValueError: unusable labels (see `labels_from`), fewer than two training classes, a
            test class absent from training, an empty manifest, an unreadable audio file, or
            a `source` that is neither a model nor `"mfcc"`.
    """
    return probe_tasks(source, train_manifest, test_manifest, {"labels": labels}, cfg, progress)["labels"]


def probe_tasks(source: Union[HuBERT, str], train_manifest: Union[str, Path], test_manifest: Union[str, Path],
                tasks: dict[str, str], cfg: Optional[ProbeConfig] = None, progress: bool = False) -> dict[str, ProbeResult]:
    """`probe` for several label sets of the same utterances (e.g. word and speaker): every
    label set is checked first, the features are computed once, and one probe is fitted per set.

    Args:
        tasks: name -> labels (CSV file or regular expression, as `probe`'s `labels`).

    Returns:
        name -> `ProbeResult`.
    """
    cfg = cfg or ProbeConfig()
    if isinstance(source, str) and source != MFCC:
        raise ValueError(f"source must be a model or {MFCC!r}, got {source!r}")
    train_paths, test_paths, checked = check_tasks(train_manifest, test_manifest, tasks)
    train = FrozenFeatures.compute(source, train_paths, cfg.max_batch_seconds, progress=progress)
    test = FrozenFeatures.compute(source, test_paths, cfg.max_batch_seconds, progress=progress)
    return {name: _fit_and_score(train, test, train_labels, test_labels, cfg)
            for name, (train_labels, test_labels) in checked.items()}


def check_tasks(train_manifest: Union[str, Path], test_manifest: Union[str, Path], tasks: dict[str, str]
                ) -> tuple[list[Path], list[Path], dict[str, tuple[list[str], list[str]]]]:
    """Reads and checks every label set without touching audio, so a pipeline can fail early.

    Returns:
        The train and test audio paths, and name -> (train labels, test labels).

    Raises:
        ValueError: see `probe`.
    """
    (train_paths, train_root), (test_paths, test_root) = _audio_paths(train_manifest), _audio_paths(test_manifest)
    checked = {}
    for name, labels in tasks.items():
        train_labels = labels_from(labels, train_paths, train_root)
        test_labels = labels_from(labels, test_paths, test_root)
        classes = sorted(set(train_labels))
        if len(classes) < 2:
            raise ValueError(f"{train_manifest}: the labels give {len(classes)} class ({classes[0]!r}); "
                             f"a classifier needs at least 2 (labels {labels!r})")
        unseen = sorted(set(test_labels) - set(train_labels))
        if unseen:
            raise ValueError(f"test class(es) absent from training: {', '.join(map(repr, unseen))} (labels {labels!r}); "
                             f"add them to {train_manifest} or remove them from {test_manifest}")
        checked[name] = (train_labels, test_labels)
    return train_paths, test_paths, checked


def _fit_and_score(train: FrozenFeatures, test: FrozenFeatures, train_labels: list[str], test_labels: list[str],
                   cfg: ProbeConfig) -> ProbeResult:
    train_counts, test_counts = Counter(train_labels), Counter(test_labels)
    classes = sorted(train_counts)
    index = {c: i for i, c in enumerate(classes)}
    log.info("probe: %d train, %d test utterances, %d classes, %d hidden state(s) of width %d",
             len(train), len(test), len(classes), train.n_layers, train.dim)
    clf, loss = fit_classifier(train, torch.tensor([index[y] for y in train_labels]), len(classes), cfg)
    predicted = [classes[i] for i in predict(clf, test).tolist()]
    correct = Counter(y for y, p in zip(test_labels, predicted) if y == p)
    return ProbeResult(
        task=cfg.task,
        accuracy=sum(correct.values()) / len(test_labels),
        n_train=len(train),
        n_test=len(test),
        classes=classes,
        layer_weights=clf.featurizer.layer_weights(),
        class_accuracy={c: correct[c] / test_counts[c] for c in classes if test_counts[c]},
        train_counts={c: train_counts[c] for c in classes},
        test_counts={c: test_counts[c] for c in classes if test_counts[c]},
        train_loss=loss,
    )


def _audio_paths(manifest: Union[str, Path]) -> tuple[list[Path], Path]:
    """The audio files of a manifest, and its root."""
    m = read_manifest(manifest)
    if not m.entries:
        raise ValueError(f"{manifest}: no utterances; list at least one 'relative/path<TAB>frames' after the root line")
    return [m.root / rel for rel, _ in m.entries], m.root


def fit_classifier(feats: FrozenFeatures, targets: Tensor, n_classes: int, cfg: ProbeConfig) -> tuple[UtteranceClassifier, float]:
    """Trains an `UtteranceClassifier` with Adam for `cfg.epochs` epochs on the CPU.

    The init and the batch order come from `cfg.seed` alone (the global RNG is left as it
    was), so a fixed seed gives the same result every run.

    Returns:
        The trained classifier, in eval mode, and the mean loss over its last epoch.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        clf = UtteranceClassifier(feats.n_layers, feats.dim, n_classes, cfg.hidden, cfg.layer_norm)
    opt = torch.optim.Adam(clf.parameters(), lr=cfg.lr)
    order_rng = torch.Generator().manual_seed(cfg.seed)
    with _one_thread():
        pooled = torch.stack([clf.pool(h) for h in feats.hidden])  # (N, layers, E)
        clf.train()
        for epoch in range(cfg.epochs):
            order = torch.randperm(len(feats), generator=order_rng)
            total = 0.0
            for idx in order.split(cfg.batch_size):
                loss = F.cross_entropy(clf(pooled[idx]), targets[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            log.debug("probe epoch %d: loss %.4f", epoch + 1, total / len(order))
    return clf.eval(), total / len(order)


@torch.no_grad()
def predict(clf: UtteranceClassifier, feats: FrozenFeatures) -> Tensor:
    """Class index per utterance: (N,) int64."""
    clf.eval()
    with _one_thread():
        return clf(torch.stack([clf.pool(h) for h in feats.hidden])).argmax(-1)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Runs torch's CPU ops on one thread inside the block, then restores the thread count.

    A probe head's tensors are small, so a thread pool buys little, and on a busy machine every
    op waits until each pool thread gets a core: with both cores of a 2-core machine busy, the
    FSDD MFCC digit probe of the tests took 76 s on 2 threads and 5 s on one.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
