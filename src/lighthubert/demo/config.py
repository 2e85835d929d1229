"""The demo's settings, its presets per corpus, and the teacher and supernet shapes it trains."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

from ..model import ModelConfig

# A 4-layer, 192-wide teacher on HuBERT's front end with 64 channels: about 1.9 M parameters.
# 64 channels train 1.7x faster than 128 and probed as well on FSDD (docs/demo.md).
CONV = [[64, 10, 5]] + [[64, 3, 2]] * 4 + [[64, 2, 2]] * 2
TEACHER = {"conv_layers": CONV, "embed_dim": 192, "heads": [3] * 4, "ffn_dim": [768] * 4, "conv_pos": 32,
           "layerdrop": 0.0, "dropout_input": 0.0, "feature_grad_mult": 1.0}
BUILT_IN_LABELS = {"word": r"^([a-z]+)_", "speaker": r"^[a-z]+_([a-z]+)_"}
MIN_SAMPLES = 4000  # 0.25 s: shorter utterances give too few frames for span masks

# `--librispeech`: the settings that differ from the built-in corpus's, sized for the 5.3 h of
# librispeech-mini's train-clean-5 and about 60 minutes on 2 idle CPU cores (docs/demo.md says
# how they were chosen): a 4,500-step teacher (1,500 lost to MFCCs on content), and two
# budgets, the paper's comparison points, so that the probes of three head seeds fit.
# A setting given with --set wins over these.
LIBRISPEECH = {
    "labels": {}, "teacher_steps": 4500, "stage1_steps": 400, "stage2_steps": 400, "batch_seconds": 20.0,
    "crop_seconds": 4.0, "teacher_clusters": 100, "population": 8, "generations": 3, "probe_train_hours": 1.5,
    "budgets": ["1/3", "distilhubert"],
}


@dataclass
class DemoConfig:
    """Settings of the demo; the defaults finish within 10 minutes on 2 CPU cores."""

    out: str = "lighthubert-demo"  # output folder
    data: Optional[str] = None  # audio folder (searched recursively); None: the built-in corpus
    librispeech: Optional[str] = None  # a folder in the LibriSpeech layout with train_split and test_split under it
    train_split: str = "train-clean-5"  # librispeech: the split trained on (a share of its utterances held out)
    test_split: str = "test-clean-subset"  # librispeech: the split scored (other speakers)
    speakers: int = 6  # built-in corpus: speakers (10 words each)
    takes: int = 20  # built-in corpus: takes of each word by each speaker (a fifth test, a tenth valid)
    labels: dict = field(default_factory=lambda: dict(BUILT_IN_LABELS))  # probe name -> regex on the stem or CSV file
    test_regex: Optional[str] = None  # --data: stems matching it are the test set (default: a seeded 20%)
    valid_fraction: float = 0.1  # --data / librispeech: share of the training files held out for validation and search
    teacher: Optional[str] = None  # a teacher of the user's (any model `load` reads: HuBERT, WavLM, data2vec, ...) instead of the one the demo pre-trains
    teacher_steps: int = 800  # HuBERT iteration-1 pre-training steps (unused with `teacher`)
    teacher_clusters: int = 50  # k-means units of the MFCC frames (the teacher's targets)
    stage1_steps: int = 150  # LightHuBERT stage 1 (the DistilHuBERT student gets stage 1 + stage 2)
    stage2_steps: int = 150  # LightHuBERT stage 2 (sandwich: the max, the min and one random subnet each step)
    lr: float = 1e-3  # peak learning rate of every training run
    batch_seconds: float = 10.0  # audio per training batch
    crop_seconds: float = 2.0  # longest crop of one utterance
    budgets: list = field(default_factory=lambda: ["1/3", "distilhubert", "2/3"])  # parameter budgets: fractions of the max subnet, or distilhubert (its student's count)
    population: int = 8  # search: candidates per generation
    generations: int = 4  # search: generations
    probe_epochs: int = 30  # classification probe head epochs
    phoneme_epochs: int = 10  # built-in corpus: phoneme probe (linear CTC head) epochs
    phoneme_lstm_layers: int = 0  # built-in corpus: phoneme probe BiLSTM layers of 128; 0 = a linear CTC head (SUPERB's PR)
    probe_train_hours: float = 0.0  # hours of training audio the probes learn from (0: all)
    probe_seeds: int = 3  # probe heads per model and task (seeds seed, seed + 1, ...) on features computed once: mean ± sd
    seed: int = 0  # corpus, splits, training, search and probes

    def __post_init__(self) -> None:
        if self.data and self.librispeech:
            raise ValueError("--data and --librispeech are two corpora: give one")
        if not self.labels and not self.librispeech:
            raise ValueError("labels: give at least one probe, name=regex or name=CSV file")
        for name in ("teacher_steps", "stage1_steps", "stage2_steps", "population", "generations", "probe_epochs",
                     "phoneme_epochs", "teacher_clusters", "probe_seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.valid_fraction < 1:
            raise ValueError(f"valid_fraction must be in (0, 1), got {self.valid_fraction}")
        if not self.probe_train_hours >= 0:
            raise ValueError(f"probe_train_hours must be >= 0 (0 = all), got {self.probe_train_hours}")
        for b in self.budgets:
            budget_fraction(b)
        if self.test_regex is not None:
            try:
                re.compile(self.test_regex)
            except re.error as e:
                raise ValueError(f"--test-regex {self.test_regex!r} is not a valid regular expression ({e})") from None

    @property
    def corpus(self) -> str:
        """`generated`, `folder` (--data) or `librispeech`."""
        return "librispeech" if self.librispeech else "folder" if self.data else "generated"


def budget_fraction(budget: Any) -> Optional[float]:
    """A budget as a fraction of the max subnet's parameters; None for `distilhubert`."""
    if budget == "distilhubert":
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*(?:/\s*(\d+))?\s*", str(budget))
    value = float(m.group(1)) / float(m.group(2) or 1) if m and float(m.group(2) or 1) else None
    if value is None or not 0 < value <= 1:
        raise ValueError(f"budget {budget!r}: give a fraction of the max subnet's parameters in (0, 1] "
                         "such as 1/3 or 0.5, or distilhubert")
    return value


def space_of(teacher: dict[str, Any]) -> dict[str, Any]:
    """The supernet's space: the teacher's shape (stage 1 starts from the teacher's weights),
    embed dims of 1/2, 3/4 and all of its width, 1 to all of its heads, FFN ratios 2-4, depths
    of half to all of its layers: 3 x 3^4 x 3^4 x 3 subnets for the 4-layer teacher. The
    front end is the built-in teacher's (group norm, raw audio) unless `teacher` says."""
    e, h, d = teacher["embed_dim"], teacher["heads"][0], len(teacher["heads"])
    return {
        "supernet": {"extractor_mode": "default", "normalize": False,
                     **{k: v for k, v in teacher.items() if k not in ("layerdrop", "dropout_input")}},
        "search_space": {"embed_dim": [e // 2, 3 * e // 4, e], "heads": list(range(1, h + 1)), "ffn_ratio": [2.0, 3.0, 4.0],
                         "depth": list(range(max(1, d // 2), d + 1))},
        "default": {"embed_dim": 3 * e // 4, "heads": [max(1, 2 * h // 3)] * d, "ffn_dim": [9 * e // 4] * d},
    }


def shape_of(teacher: ModelConfig) -> dict[str, Any]:
    """A user's teacher as the `TEACHER`-style shape its supernet copies: HuBERT-shaped (the
    student has no WavLM relative bias nor data2vec positional convs), its first layer's heads
    in every layer, its front end and input normalisation, and FFNs 4 x its width (the space's
    largest ratio; the base-size teachers' own)."""
    keep = ("conv_layers", "extractor_mode", "conv_bias", "embed_dim", "head_dim", "feature_layer_norm", "conv_pos",
            "conv_pos_groups", "layer_norm_first", "normalize")
    return {**{k: getattr(teacher, k) for k in keep}, "heads": [teacher.heads[0]] * teacher.depth, "ffn_dim": [4 * teacher.embed_dim] * teacher.depth}


# The space of the built-in teacher: what the demo has always trained.
SPACE = space_of(TEACHER)
# LightHuBERT distillation in the demo: the mean of the teacher's last 3 layers, spans of 5 frames.
DISTIL = {"mask_prob": 0.65, "mask_length": 5, "target_layers": len(TEACHER["heads"]) - 1}
