"""SUPERB-style probes on frozen features: how much a representation knows about a label.

The protocol is SUPERB's constrained track (Yang et al., 2021; s3prl's `run_downstream.py`):
the upstream stays frozen, every hidden state is computed once, a learnable softmax-weighted
sum of them (s3prl's `Featurizer`) feeds a light task head, and only the weights and the head
are trained. Tasks:

- `utterance-classification` (KS, ER, IC in SUPERB) and `speaker-id` (SID): mean over
  frames, then a linear or one-hidden-layer head; accuracy.
- `phoneme` (PR) and `asr` (ASR): a BiLSTM (or linear) CTC head over phones or letters,
  greedy decoding; PER, and CER / WER.

Each task can be probed with several head seeds on the same features (`ProbeConfig.seeds`):
its `SeedResults` hold every seed's result and each metric's mean and sd (`spread`).

The upstream is any `HuBERT` (a teacher, a `LightHuBERT` at its active subnet, a compact
export) or `"mfcc"`, the built-in baseline: `mfcc` features as a single hidden state.

Modules: `mfcc` (the baseline), `features` (frozen features, the featurizer), `utterance`
(classification heads, labels), `ctc` (sequence heads, decoding), `metrics` (edit distance,
error rates), `spread` (seed statistics, the rule for comparing two figures), `config`
(`ProbeConfig`), `tasks` (`probe`, `probe_tasks`).
"""

from .config import SEQUENCE_TASKS, TASKS, ProbeConfig
from .ctc import CTCProbe, decode, fit_ctc
from .features import Featurizer, FrozenFeatures
from .metrics import edit_distance, error_rate
from .mfcc import MFCC, mfcc
from .spread import SPREAD_FACTOR, Comparison, Spread, compare
from .tasks import (LIBRISPEECH_SPEAKER, ProbeResult, ProbeTask, SeedResults, SequenceResult, check_tasks, probe,
                    probe_tasks)
from .utterance import UtteranceClassifier, fit_classifier, labels_from, predict

__all__ = ["MFCC", "mfcc", "TASKS", "SEQUENCE_TASKS", "ProbeConfig", "ProbeTask", "ProbeResult", "SequenceResult",
           "SeedResults", "Spread", "Comparison", "compare", "SPREAD_FACTOR",
           "LIBRISPEECH_SPEAKER", "probe", "probe_tasks", "check_tasks", "FrozenFeatures", "Featurizer",
           "UtteranceClassifier", "fit_classifier", "predict", "labels_from", "CTCProbe", "fit_ctc", "decode",
           "edit_distance", "error_rate"]
