"""`lighthubert demo`: the whole pipeline on one CPU machine, from audio to a report.

Data -> pre-train a small teacher (HuBERT iteration 1) -> LightHuBERT stage 1 -> stage 2 ->
subnet search at three parameter budgets -> DistilHuBERT with the same steps and audio ->
probes of every model, the teacher and MFCCs -> `report.md`, `report.json`, `report.png`.

Corpora (`corpora.py`): the built-in generated one (word, speaker and phoneme probes); any
audio folder whose file names carry labels (`--data`, e.g. the Free Spoken Digit Dataset with
`--labels word='^(\\d)_' --labels speaker='^\\d_(\\w+)_'`); or a folder in the LibriSpeech layout
(`--librispeech`, e.g. librispeech-mini), scored on PER, CER / WER and speaker identification.
"""

from .config import LIBRISPEECH, DemoConfig, budget_fraction
from .corpora import prepare_data, probe_tasks
from .pipeline import counts, run
from .report import report_markdown, report_text

__all__ = ["LIBRISPEECH", "DemoConfig", "budget_fraction", "counts", "prepare_data", "probe_tasks", "report_markdown",
           "report_text", "run"]
