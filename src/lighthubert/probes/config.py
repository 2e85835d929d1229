"""Settings of the probes: one dataclass for every task, each field used by the heads it names."""

from __future__ import annotations

from dataclasses import dataclass

CLASSIFICATION_TASKS = ("utterance-classification", "speaker-id")
SEQUENCE_TASKS = ("phoneme", "asr")
TASKS = CLASSIFICATION_TASKS + SEQUENCE_TASKS


@dataclass
class ProbeConfig:
    """Settings of a probe. The utterance defaults train in seconds for FSDD-sized sets; the
    sequence (CTC) defaults are sized for librispeech-mini on a 2-core CPU (docs/probes.md)."""

    task: str = "utterance-classification"  # one of TASKS (what `probe` runs)
    epochs: int = 30  # utterance heads: passes over the training set
    lr: float = 1e-3  # utterance heads: Adam learning rate, for the layer weights and the head alike
    batch_size: int = 32  # utterance heads: utterances per step
    hidden: int = 256  # utterance heads: ReLU layer width; 0 = linear head (SUPERB's)
    layer_norm: bool = True  # layer-normalise each hidden state before weighting (see `Featurizer`)
    seed: int = 0  # seeds the head's init and the batch order (the first head's), and the train_hours subset
    seeds: int = 1  # head seeds: heads at seed, seed + 1, ... on the same features and subset; results give mean and sd
    max_batch_seconds: float = 60.0  # padded audio per forward pass of the upstream
    train_hours: float = 0.0  # when > 0: train every head on a seeded random subset of about this much audio
    threads: int = 1  # torch threads while a head trains (0: leave as set); see `torch_threads`
    ctc_epochs: int = 3  # sequence heads: passes over the training set
    ctc_lr: float = 5e-3  # sequence heads: peak Adam learning rate (10% warm-up, then linear decay)
    ctc_batch_seconds: float = 100.0  # sequence heads: audio per training batch (padded), seconds
    lstm_layers: int = 1  # sequence heads: BiLSTM layers; 0 = a linear CTC head (SUPERB's PR)
    lstm_dim: int = 128  # sequence heads: LSTM units per direction (SUPERB's ASR: 2 layers of 1024)
    downsample: int = 2  # sequence heads: adjacent frames concatenated before the LSTM (s3prl's `concat`): 25 Hz
    dropout: float = 0.0  # sequence heads: dropout on the LSTM's input and between its layers

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        counts = {"epochs": self.epochs, "batch_size": self.batch_size, "ctc_epochs": self.ctc_epochs,
                  "lstm_dim": self.lstm_dim, "downsample": self.downsample, "seeds": self.seeds}
        bad = {k: v for k, v in counts.items() if v < 1}
        if bad or self.hidden < 0 or self.lstm_layers < 0 or self.threads < 0:
            raise ValueError(f"epochs, batch_size, ctc_epochs, lstm_dim, downsample and seeds must be >= 1 and hidden, "
                             f"lstm_layers and threads >= 0, got {dict(counts, hidden=self.hidden, lstm_layers=self.lstm_layers, threads=self.threads)}")
        positive = {"lr": self.lr, "max_batch_seconds": self.max_batch_seconds, "ctc_lr": self.ctc_lr,
                    "ctc_batch_seconds": self.ctc_batch_seconds}
        if not all(v > 0 for v in positive.values()):
            raise ValueError(f"lr, max_batch_seconds, ctc_lr and ctc_batch_seconds must be positive, got {positive}")
        if self.train_hours < 0:
            raise ValueError(f"train_hours must be >= 0 (0 = all training audio), got {self.train_hours}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
