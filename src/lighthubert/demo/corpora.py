"""The demo's data: train / valid / test manifests and the probes each corpus supports.

- `generated`: the built-in corpus (`corpus.py`): word, speaker and phoneme probes.
- `folder` (`--data`): any audio folder, labels from file names or CSV files (`--labels`).
- `librispeech` (`--librispeech`): a folder in the LibriSpeech layout, e.g. librispeech-mini or
  a full LibriSpeech: its train split (a share of its utterances held out for validation and
  the speaker probe) and its test split (other speakers), with `.ltr` / `.wrd` / `.phn`
  labels; probes PER (phoneme), CER / WER (asr) and speaker identification.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Union

from .. import corpus, probes, transcripts
from ..audio import AUDIO_EXTENSIONS
from ..manifest import manifest_line, write_manifest
from .config import DemoConfig

log = logging.getLogger(__name__)

PHONEME = "phoneme"  # the phoneme probe's name (its PER is the report's `PER`)
Tasks = dict[str, Union[str, probes.ProbeTask]]


def prepare_data(cfg: DemoConfig, out: Path) -> dict[str, Path]:
    """train / valid / test manifests of the demo's corpus."""
    if cfg.corpus == "generated":
        c = corpus.write_corpus(out / "corpus", cfg.speakers, cfg.takes, seed=cfg.seed, progress=True)
        return {"train": c.train, "valid": c.valid, "test": c.test}
    if cfg.corpus == "librispeech":
        return _librispeech(cfg, out / "data")
    return _folder(cfg, out / "data")


def probe_tasks(cfg: DemoConfig, data: dict[str, Path]) -> Tasks:
    """The probes of the corpus: one per label set, a phoneme probe where the train and test
    manifests have `.phn` labels, and for LibriSpeech ASR (`.ltr`) and speaker identification
    (tested on the held-out utterances of the training speakers)."""
    tasks: Tasks = dict(cfg.labels)
    if all(transcripts.label_path(data[split], "phn").is_file() for split in ("train", "test")):
        tasks[PHONEME] = probes.ProbeTask("phoneme")
    if cfg.corpus == "librispeech":
        tasks["asr"] = probes.ProbeTask("asr")
        tasks["speaker"] = probes.ProbeTask("speaker-id", test=data["valid"])
    return tasks


def _librispeech(cfg: DemoConfig, out: Path) -> dict[str, Path]:
    root = Path(cfg.librispeech)
    for split in (cfg.train_split, cfg.test_split):
        if not (root / split).is_dir():
            raise ValueError(f"--librispeech {root}: no {split}/ folder in it; pass a folder in the LibriSpeech layout "
                             "(SPLIT/SPEAKER/CHAPTER/) and name its splits with --set train_split=... test_split=...")
    done = all((out / f"{name}.{ext}").is_file() for name in ("train", "valid", "test") for ext in ("tsv", "ltr", "phn"))
    if not done:  # manifests and label files once; a rerun reuses them
        write_manifest(root / cfg.train_split, out, cfg.valid_fraction, seed=cfg.seed)
        write_manifest(root / cfg.test_split, out, 0.0, seed=cfg.seed, name="test")
    return {"train": out / "train.tsv", "valid": out / "valid.tsv", "test": out / "test.tsv"}


def _folder(cfg: DemoConfig, out: Path) -> dict[str, Path]:
    root = Path(cfg.data).resolve()
    if not root.is_dir():
        raise ValueError(f"--data {cfg.data}: not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower().lstrip(".") in AUDIO_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(f"--data {cfg.data}: no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    rng = random.Random(cfg.seed)
    if cfg.test_regex:
        test = [p for p in files if re.search(cfg.test_regex, p.stem)]
        if not test or len(test) == len(files):
            raise ValueError(f"--test-regex {cfg.test_regex!r} matches {len(test)} of {len(files)} files; it must "
                             "select some files but not all")
    else:
        test = rng.sample(files, max(1, len(files) // 5))
    held_out = set(test)  # built once: a set per file made the split quadratic in the folder's size
    rest = [p for p in files if p not in held_out]
    valid = rng.sample(rest, max(1, round(len(rest) * cfg.valid_fraction)))
    held_out = set(valid)
    splits = {"train": [p for p in rest if p not in held_out], "valid": sorted(valid), "test": sorted(test)}
    paths = {}
    for name, chosen in splits.items():
        paths[name] = out / f"{name}.tsv"
        paths[name].parent.mkdir(parents=True, exist_ok=True)
        lines = [str(root)] + [line for p in chosen if (line := manifest_line(root, p.relative_to(root).as_posix()))]
        paths[name].write_text("\n".join(lines) + "\n")
    log.info("data: %s", ", ".join(f"{k} {len(v)} files" for k, v in splits.items()))
    return paths
