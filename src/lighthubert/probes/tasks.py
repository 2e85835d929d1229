"""Running probes: check every task's labels, compute each manifest's frozen features once,
fit one head per task and head seed and score it on its test set."""

from __future__ import annotations

import dataclasses
import functools
import logging
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from .. import transcripts
from ..audio import SAMPLE_RATE
from ..manifest import Manifest, read_manifest
from ..model import HuBERT
from .config import SEQUENCE_TASKS, TASKS, ProbeConfig
from .ctc import decode, fit_ctc
from .features import FrozenFeatures
from .metrics import error_rate
from .mfcc import MFCC
from .spread import Spread
from .utterance import fit_classifier, labels_from, predict

log = logging.getLogger(__name__)

LIBRISPEECH_SPEAKER = r"^(\d+)-\d+-\d+$"  # speaker-id's default labels: the SPEAKER of LibriSpeech's stems
LABEL_KIND = {"phoneme": "phn", "asr": "ltr"}  # the label file a sequence task reads beside its manifests
PathLike = Union[str, Path]


@dataclass(frozen=True)
class ProbeTask:
    """One probe for `probe_tasks`: what it predicts and, where they differ from the call's, its manifests.

    `speaker-id` is utterance classification with speaker labels; tested on held-out
    utterances of the training speakers (e.g. train-clean-5's valid.tsv), not on other speakers.
    """

    kind: str = "utterance-classification"  # one of TASKS
    labels: Optional[str] = None  # classification: regex on the stem or CSV; speaker-id default: LIBRISPEECH_SPEAKER
    train: Optional[PathLike] = None  # training manifest; None: the one given to `probe_tasks`
    test: Optional[PathLike] = None  # test manifest; None: the one given to `probe_tasks`
    train_labels: Optional[PathLike] = None  # sequence tasks: label file; None: beside the manifest (.phn / .ltr)
    test_labels: Optional[PathLike] = None  # sequence tasks: the same for the test manifest

    def __post_init__(self) -> None:
        if self.kind not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.kind!r}")
        if self.kind == "utterance-classification" and not self.labels:
            raise ValueError("utterance-classification needs labels: a regex on the file stem or a CSV file")
        if self.kind in SEQUENCE_TASKS and self.labels:
            raise ValueError(f"{self.kind} reads label files (train_labels / test_labels), not labels={self.labels!r}")


@dataclass
class ProbeResult:
    """What a classification probe measured; `to_dict()` gives its JSON form."""

    task: str
    seed: int  # the head's seed (init and batch order)
    accuracy: float  # fraction of test utterances classified correctly
    n_train: int  # training utterances
    n_test: int  # test utterances
    classes: list[str]  # class names, sorted; the head's output order
    layer_weights: list[float]  # learned softmax weight per hidden state (sums to 1)
    class_accuracy: dict[str, float]  # class -> accuracy on its test utterances (classes with any)
    train_counts: dict[str, int]  # class -> training utterances
    test_counts: dict[str, int]  # class -> test utterances
    train_loss: float  # mean cross entropy over the last epoch

    @property
    def metrics(self) -> dict[str, float]:
        return {"accuracy": self.accuracy}

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SequenceResult:
    """What a phoneme or ASR probe measured; `to_dict()` gives its JSON form."""

    task: str
    seed: int  # the head's seed (init, batch order, dropout)
    metrics: dict[str, float]  # phoneme: {"per"}; asr: {"cer", "wer"}; fractions, lower is better
    n_train: int  # training utterances
    n_test: int  # test utterances
    vocab: list[str]  # output tokens (blank excluded), from the training labels
    layer_weights: list[float]  # learned softmax weight per hidden state (sums to 1)
    loss_history: list[float]  # mean CTC loss per target token, each epoch
    train_seconds: float  # wall time of the head's training
    examples: list[dict] = field(default_factory=list)  # the first test utterances: {"ref", "hyp"}

    @property
    def train_loss(self) -> float:
        return self.loss_history[-1]

    def to_dict(self) -> dict:
        return asdict(self)


Result = Union[ProbeResult, SequenceResult]


@dataclass
class SeedResults:
    """One task probed with several head seeds on the same frozen features: every seed's
    result and each metric's spread (`spread.Spread`: mean, sample sd, values)."""

    task: str
    runs: list[Result]  # one per seed, in seed order

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    @property
    def metrics(self) -> dict[str, Spread]:
        """metric -> its spread over the seeds: `{"accuracy"}`, `{"per"}` or `{"cer", "wer"}`."""
        return {k: Spread.of([r.metrics[k] for r in self.runs]) for k in self.runs[0].metrics}

    def to_dict(self) -> dict:
        """JSON form: task, seeds, `metrics` (metric -> mean, sd, values) and every seed's full result."""
        return {"task": self.task, "seeds": self.seeds, "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
                "runs": [r.to_dict() for r in self.runs]}


@dataclass
class CheckedTask:
    """A task whose labels have been read and checked: audio paths and labels, line for line."""

    task: ProbeTask
    train: Path  # manifest
    test: Path
    train_paths: list[Path]
    test_paths: list[Path]
    train_labels: list  # class names, or token lists for sequence tasks
    test_labels: list


def probe(source: Union[HuBERT, str], train_manifest: PathLike, test_manifest: PathLike, labels: Optional[str] = None,
          cfg: Optional[ProbeConfig] = None, progress: bool = False) -> SeedResults:
    """Trains a probe of `cfg.task` on frozen features of `train_manifest`, scores it on `test_manifest`,
    once per head seed (`cfg.seed`, ... `cfg.seed + cfg.seeds - 1`).

    Labels are read and checked first, so bad labels fail before any audio is processed.

    Args:
        source: a frozen model (any `HuBERT`; a `LightHuBERT` at its active subnet) or `"mfcc"`.
        train_manifest: fairseq `.tsv` manifest of the training utterances.
        test_manifest: the same for the test utterances.
        labels: classification: CSV file or regular expression (see `labels_from`); speaker-id
            defaults to LibriSpeech's speaker; sequence tasks read `.phn` / `.ltr` beside the manifests.
        cfg: probe settings; defaults when None.
        progress: show progress (bars on a terminal, plain lines otherwise).

    Returns:
        Its `SeedResults`: per seed a `ProbeResult` (classification) or a `SequenceResult`
        (phoneme, asr), and each metric's mean and sd.

    Raises:
        ValueError: unusable labels, fewer than two training classes, a test class absent from
            training, a label file that does not follow its manifest, an empty manifest, an
            unreadable audio file, or a `source` that is neither a model nor `"mfcc"`.
    """
    cfg = cfg or ProbeConfig()
    return probe_tasks(source, train_manifest, test_manifest, {cfg.task: ProbeTask(cfg.task, labels)}, cfg, progress)[cfg.task]


def probe_tasks(source: Union[HuBERT, str], train_manifest: PathLike, test_manifest: PathLike,
                tasks: dict[str, Union[str, ProbeTask]], cfg: Optional[ProbeConfig] = None,
                progress: bool = False) -> dict[str, SeedResults]:
    """Several probes of one upstream: every task is checked first, the features of each
    manifest are computed once and shared by every task and head seed that reads it, then one
    head is fitted per task and seed. E.g. phoneme + asr on train / test and speaker-id on
    train / valid, at 3 seeds: the upstream's forward pass is paid once, the heads 3 times.

    Args:
        tasks: name -> a `ProbeTask`, or a label spec (regex or CSV) for utterance classification.

    Returns:
        name -> `SeedResults`, in the order of `tasks`.
    """
    cfg = cfg or ProbeConfig()
    if isinstance(source, str) and source != MFCC:
        raise ValueError(f"source must be a model or {MFCC!r}, got {source!r}")
    checked = check_tasks(train_manifest, test_manifest, tasks, cfg.train_hours, cfg.seed)
    feats: dict[Path, FrozenFeatures] = {}
    for c in checked.values():
        for manifest, paths in ((c.train, c.train_paths), (c.test, c.test_paths)):
            if manifest not in feats:
                log.info("features of %s (%d files)", manifest, len(paths))
                feats[manifest] = FrozenFeatures.compute(source, paths, cfg.max_batch_seconds, progress=progress)
    results = {}
    for name, c in checked.items():
        train, test = feats[c.train], feats[c.test]
        seeded = [dataclasses.replace(cfg, seed=seed) for seed in range(cfg.seed, cfg.seed + cfg.seeds)]
        runs = [_fit_sequence(c, train, test, s, progress) if c.task.kind in SEQUENCE_TASKS
                else _fit_classifier(c, train, test, s) for s in seeded]
        results[name] = SeedResults(c.task.kind, runs)
        log.info("probe %s (%d seed(s)): %s", name, cfg.seeds, ", ".join(
            f"{k} {v.mean:.4f}" + (f" ± {v.sd:.4f}" if v.sd is not None else "") for k, v in results[name].metrics.items()))
    return results


def check_tasks(train_manifest: PathLike, test_manifest: PathLike, tasks: dict[str, Union[str, ProbeTask]],
                train_hours: float = 0.0, seed: int = 0) -> dict[str, CheckedTask]:
    """Reads and checks every task's manifests and labels without touching audio, so a
    pipeline can fail early. Each manifest, label file and `*.trans.txt` is read once per
    call, so the cost is linear in the utterances (it was quadratic: the label file and the
    transcripts were re-read for every kept utterance).

    Args:
        train_hours: when positive, each training manifest is cut to a seeded random subset
            of about this much audio (see `ProbeConfig.train_hours`); the same subset for
            every task that reads it.
        seed: seeds that subset.

    Raises:
        ValueError: see `probe`.
    """
    manifests = functools.cache(read_manifest)  # each file once per call, whatever the number of tasks
    texts = functools.cache(transcripts.read_transcripts)
    checked = {}
    for name, spec in tasks.items():
        task = ProbeTask(labels=spec) if isinstance(spec, str) else spec
        train, test = Path(task.train or train_manifest), Path(task.test or test_manifest)
        (train_paths, train_root), (test_paths, test_root) = _audio_paths(train, manifests), _audio_paths(test, manifests)
        keep = _subset(train, manifests(train), train_hours, seed)
        train_paths = [train_paths[i] for i in keep]
        if task.kind in SEQUENCE_TASKS:
            kind = LABEL_KIND[task.kind]
            labels = _label_file(train, manifests(train), task.train_labels, kind, texts)
            train_labels = [labels[i] for i in keep]
            test_labels = _label_file(test, manifests(test), task.test_labels, kind, texts)
        else:
            labels = task.labels or LIBRISPEECH_SPEAKER
            train_labels = labels_from(labels, train_paths, train_root)
            test_labels = labels_from(labels, test_paths, test_root)
            classes = sorted(set(train_labels))
            if len(classes) < 2:
                raise ValueError(f"{train}: the labels give {len(classes)} class ({classes[0]!r}); "
                                 f"a classifier needs at least 2 (labels {labels!r})")
            unseen = sorted(set(test_labels) - set(train_labels))
            if unseen:
                raise ValueError(f"test class(es) absent from training: {', '.join(map(repr, unseen))} (labels {labels!r}); "
                                 f"add them to {train} or remove them from {test}")
        checked[name] = CheckedTask(task, train, test, train_paths, test_paths, train_labels, test_labels)
    return checked


def _subset(path: Path, manifest: Manifest, hours: float, seed: int) -> list[int]:
    """Indices of a seeded random subset of the manifest's utterances with about `hours` of
    audio (by its frame counts), in manifest order; all of them when `hours` is 0."""
    sizes = [n for _, n in manifest.entries]
    if hours <= 0:
        return list(range(len(sizes)))
    order = list(range(len(sizes)))
    random.Random(seed).shuffle(order)
    keep, total = [], 0
    for i in order:
        if total >= hours * 3600 * SAMPLE_RATE:
            break
        keep.append(i)
        total += sizes[i]
    log.info("%s: probing on %d of %d utterances (%.2f h)", path, len(keep), len(sizes), total / SAMPLE_RATE / 3600)
    return sorted(keep)


def _label_file(path: Path, manifest: Manifest, given: Optional[PathLike], kind: str,
                texts: Callable[[Path], dict[str, transcripts.Transcript]]) -> list[list[str]]:
    """The token lists of a manifest's label file, checked line for line against it; `texts`
    reads the transcripts under a root (cached by the caller: one read per root)."""
    labels = Path(given) if given else transcripts.label_path(path, kind)
    tokens = transcripts.read_label_file(labels, len(manifest.entries), path)
    transcripts.check_order(labels, kind, tokens, [Path(rel).stem for rel, _ in manifest.entries], texts(manifest.root))
    return tokens


def _fit_classifier(c: CheckedTask, train: FrozenFeatures, test: FrozenFeatures, cfg: ProbeConfig) -> ProbeResult:
    train_counts, test_counts = Counter(c.train_labels), Counter(c.test_labels)
    classes = sorted(train_counts)
    index = {k: i for i, k in enumerate(classes)}
    log.info("probe: %d train, %d test utterances, %d classes, %d hidden state(s) of width %d",
             len(train), len(test), len(classes), train.n_layers, train.dim)
    clf, loss = fit_classifier(train, torch.tensor([index[y] for y in c.train_labels]), len(classes), cfg)
    predicted = [classes[i] for i in predict(clf, test).tolist()]
    correct = Counter(y for y, p in zip(c.test_labels, predicted) if y == p)
    return ProbeResult(
        task=c.task.kind,
        seed=cfg.seed,
        accuracy=sum(correct.values()) / len(c.test_labels),
        n_train=len(train),
        n_test=len(test),
        classes=classes,
        layer_weights=clf.featurizer.layer_weights(),
        class_accuracy={k: correct[k] / test_counts[k] for k in classes if test_counts[k]},
        train_counts={k: train_counts[k] for k in classes},
        test_counts={k: test_counts[k] for k in classes if test_counts[k]},
        train_loss=loss,
    )


def _fit_sequence(c: CheckedTask, train: FrozenFeatures, test: FrozenFeatures, cfg: ProbeConfig,
                  progress: bool) -> SequenceResult:
    log.info("probe %s: %d train, %d test utterances, %d hidden state(s) of width %d",
             c.task.kind, len(train), len(test), train.n_layers, train.dim)
    start = time.perf_counter()
    model, history = fit_ctc(train, c.train_labels, cfg, progress)
    seconds = time.perf_counter() - start
    hyps = decode(model, test)
    if c.task.kind == "phoneme":
        metrics = {"per": error_rate(c.test_labels, hyps)}
    else:
        metrics = {"cer": error_rate(c.test_labels, hyps),
                   "wer": error_rate([transcripts.words_from_letters(r) for r in c.test_labels],
                                     [transcripts.words_from_letters(h) for h in hyps])}
    return SequenceResult(
        task=c.task.kind, seed=cfg.seed, metrics=metrics, n_train=len(train), n_test=len(test), vocab=model.vocab,
        layer_weights=model.featurizer.layer_weights(), loss_history=history, train_seconds=round(seconds, 1),
        examples=[{"ref": " ".join(r), "hyp": " ".join(h)} for r, h in zip(c.test_labels[:3], hyps[:3])])


def _audio_paths(path: Path, read: Callable[[Path], Manifest]) -> tuple[list[Path], Path]:
    """The audio files of a manifest, and its root."""
    m = read(path)
    if not m.entries:
        raise ValueError(f"{path}: no utterances; list at least one 'relative/path<TAB>frames' after the root line")
    return [m.root / rel for rel, _ in m.entries], m.root
