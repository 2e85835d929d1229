"""Transcribed corpora: `lighthubert manifest` on a tiny LibriSpeech-layout folder writes
fairseq's `.ltr` / `.wrd` and CMUdict `.phn` label files, checked against hand-made lines;
bad input (missing audio or transcript, unknown words, empty transcripts, label files that do
not follow their manifest) is one line each."""

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from lighthubert import transcripts
from lighthubert.cli import main
from lighthubert.manifest import read_manifest, write_manifest

# speaker 11, chapter 100 (Ogg Vorbis, as train-clean-5) and chapter 200 (FLAC); speaker 22, chapter 300
TEXTS = {
    "11-100-0000": "AS YOU KNOW",
    "11-100-0001": "THE CAT'S HAT",
    "11-200-0000": "HELLO WORLD",
    "22-300-0000": "A ZZYZX READ",
}
# What each label file must hold for them, written out by hand: fairseq's libri_labels.py puts
# `|` after every word; phones are CMUdict's first pronunciation with stress removed.
LETTERS = {
    "11-100-0000": "A S | Y O U | K N O W |",
    "11-100-0001": "T H E | C A T ' S | H A T |",
    "11-200-0000": "H E L L O | W O R L D |",
    "22-300-0000": "A | Z Z Y Z X | R E A D |",
}
PHONES = {
    "11-100-0000": "AE Z Y UW N OW",
    "11-100-0001": "DH AH K AE T S HH AE T",
    "11-200-0000": "HH AH L OW W ER L D",
    "22-300-0000": "AH SPN R EH D",  # ZZYZX is not in CMUdict
}


def write_corpus(root: Path, texts: dict = TEXTS, audio: bool = True) -> Path:
    """SPLIT/SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt with one short file per utterance."""
    rng = np.random.default_rng(0)
    chapters: dict[Path, list[str]] = {}
    for uid, text in texts.items():
        speaker, chapter, _ = uid.split("-")
        folder = root / speaker / chapter
        folder.mkdir(parents=True, exist_ok=True)
        chapters.setdefault(folder, []).append(f"{uid} {text}")
        if audio:
            ext = "ogg" if chapter == "100" else "flac"
            sf.write(folder / f"{uid}.{ext}", 0.1 * rng.standard_normal(4000).astype(np.float32), 16000)
    for folder, lines in chapters.items():
        (folder / f"{folder.parent.name}-{folder.name}.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def entries(tsv: Path) -> list[str]:
    return [Path(rel).stem for rel, _ in read_manifest(tsv).entries]


def test_label_helpers_by_hand():
    assert transcripts.letters("AS  YOU\tKNOW") == "A S | Y O U | K N O W |"
    assert transcripts.words(" AS  YOU KNOW ") == "AS YOU KNOW"
    assert transcripts.words_from_letters("A S | Y O U |".split()) == ["AS", "YOU"]
    assert transcripts.words_from_letters(["|", "A", "|", "|", "B"]) == ["A", "B"]
    assert transcripts.Lexicon().phones("hello zzyzx") == ("HH AH L OW SPN", ["zzyzx"])
    assert set(transcripts.PHONES) == {p for ph in transcripts.Lexicon().table.values() for p in ph}


def test_manifest_writes_label_files_line_for_line(tmp_path, caplog):
    corpus = write_corpus(tmp_path / "train-clean")
    with caplog.at_level(logging.WARNING):
        train, valid = write_manifest(corpus, tmp_path / "m", valid_percent=0.0)
    assert entries(train) == list(TEXTS) and entries(valid) == []
    assert [n for _, n in read_manifest(train).entries] == [4000] * 4
    assert train.with_suffix(".wrd").read_text() == "".join(t + "\n" for t in TEXTS.values())
    assert train.with_suffix(".ltr").read_text() == "".join(t + "\n" for t in LETTERS.values())
    assert train.with_suffix(".phn").read_text() == "".join(t + "\n" for t in PHONES.values())
    assert valid.with_suffix(".ltr").read_text() == ""
    assert "1 of 11 words (1 distinct, e.g. ZZYZX) are not in cmudict; each is written as SPN (1 of 4 utterances)" in caplog.text


def test_valid_split_by_utterance_or_chapter_and_a_separate_test_manifest(tmp_path):
    corpus = write_corpus(tmp_path / "c")
    for by in ("utterance", "chapter"):
        train, valid = write_manifest(corpus, tmp_path / by, valid_percent=0.5, seed=1, valid_by=by)
        assert sorted(entries(train) + entries(valid)) == sorted(TEXTS) and entries(valid)
        for tsv in (train, valid):  # labels follow their own manifest
            assert tsv.with_suffix(".ltr").read_text().splitlines() == [LETTERS[u] for u in entries(tsv)]
            assert tsv.with_suffix(".phn").read_text().splitlines() == [PHONES[u] for u in entries(tsv)]
        if by == "chapter":  # a chapter is never split
            chapters = [{u.rsplit("-", 1)[0] for u in entries(t)} for t in (train, valid)]
            assert not chapters[0] & chapters[1]
    test, none = write_manifest(corpus, tmp_path / "chapter", valid_percent=0.0, name="test")
    assert none is None and entries(test) == list(TEXTS)
    assert entries(tmp_path / "chapter" / "valid.tsv") == entries(valid)  # the train split's valid.tsv is kept


def test_a_lexicon_file_in_cmudict_format(tmp_path):
    lexicon = tmp_path / "lex.txt"
    lexicon.write_text(";;; comment\nZZYZX  Z IH1 Z IH0 K S\nREAD R IY1 D\nREAD(2) R EH1 D\nA AH0\n")
    lex = transcripts.Lexicon(lexicon)
    assert lex.phones("A ZZYZX READ") == ("AH Z IH Z IH K S R IY D", [])
    lexicon.write_text("ZZYZX\n")
    with pytest.raises(ValueError, match=r"lex.txt:1: expected 'WORD PHONE PHONE \.\.\.'"):
        transcripts.Lexicon(lexicon)



class _Word(str):
    """A word that counts how often it is compared."""

    compared = 0

    def __eq__(self, other: object) -> bool:
        _Word.compared += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


class _EmptyLexicon:
    """A `Lexicon` that knows no word and hands its missing words back as `_Word`s."""

    source = "an empty lexicon"

    def phones(self, text: str) -> tuple[str, list[str]]:
        return " ".join(transcripts.UNKNOWN_WORD for _ in text.split()), [_Word(w) for w in text.split()]


def test_missing_word_summary_is_linear_in_the_missing_words(tmp_path, caplog):
    """The `.phn` warning names the first missing words in order of appearance; finding them
    compared every word with every earlier one (3000 distinct words: 4.5 M comparisons; at
    LibriSpeech 960 h's tens of thousands, minutes)."""
    n = 3000
    _Word.compared = 0
    with caplog.at_level(logging.WARNING):
        transcripts.write_label_files(tmp_path / "m.tsv", [f"W{i} W{i}" for i in range(n)], _EmptyLexicon())
    assert f"{2 * n} of {2 * n} words ({n} distinct, e.g. W0, W1, W2, W3, W4) are not in an empty lexicon" in caplog.text
    assert (tmp_path / "m.phn").read_text().splitlines()[:2] == ["SPN SPN", "SPN SPN"]
    assert _Word.compared < 2 * n, f"{_Word.compared} comparisons for {2 * n} missing words"

def test_missing_audio_missing_transcript_and_empty_transcript_are_left_out_with_one_line_each(tmp_path, caplog):
    corpus = write_corpus(tmp_path / "c")
    (corpus / "11" / "100" / "11-100-0001.ogg").unlink()  # a transcript line with no audio
    sf.write(corpus / "22" / "300" / "22-300-0009.flac", np.zeros(4000, np.float32), 16000)  # audio, no transcript
    trans = corpus / "11" / "200" / "11-200.trans.txt"
    trans.write_text(trans.read_text() + "11-200-0001\n")  # an empty transcript...
    sf.write(corpus / "11" / "200" / "11-200-0001.flac", np.zeros(4000, np.float32), 16000)  # ...of existing audio
    with caplog.at_level(logging.WARNING):
        train, _ = write_manifest(corpus, tmp_path / "m", valid_percent=0.0)
    assert entries(train) == ["11-100-0000", "11-200-0000", "22-300-0000"]
    assert train.with_suffix(".ltr").read_text().splitlines() == [LETTERS[u] for u in entries(train)]
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.endswith("11-100.trans.txt:2: transcript without audio: no 11-100-0001.<ext> under " + str(corpus) + "; left out")
               for m in messages)
    assert any("22-300-0009.flac: skipped, no transcript for 22-300-0009" in m for m in messages)
    assert any("11-200.trans.txt:2: empty transcript for 11-200-0001; the utterance is left out" in m for m in messages)
    assert any("2 audio files without a transcript and 1 transcripts without audio left out" in m for m in messages)
    assert all("\n" not in m for m in messages)


def test_label_file_that_does_not_follow_its_manifest(tmp_path):
    train, _ = write_manifest(write_corpus(tmp_path / "c"), tmp_path / "m", valid_percent=0.0)
    ltr = train.with_suffix(".ltr")
    tokens = transcripts.read_label_file(ltr, 4, train)
    assert tokens[0] == ["A", "S", "|", "Y", "O", "U", "|", "K", "N", "O", "W", "|"]
    texts = transcripts.read_transcripts(tmp_path / "c")
    transcripts.check_order(ltr, "ltr", tokens, entries(train), texts)  # in order: no error
    with pytest.raises(ValueError, match=r"train.ltr:1: does not match the transcript of manifest entry 1 \(11-100-0001"):
        transcripts.check_order(ltr, "ltr", tokens, entries(train)[1:2] + entries(train)[:1], texts)
    with pytest.raises(ValueError, match=r"train.ltr: 4 lines but .*train.tsv lists 5 utterances"):
        transcripts.read_label_file(ltr, 5, train)
    ltr.write_text("A |\n\nB |\nC |\n")
    with pytest.raises(ValueError, match=r"train.ltr:2: empty label line"):
        transcripts.read_label_file(ltr, 4, train)
    with pytest.raises(ValueError, match=r"nope.phn: label file not found"):
        transcripts.read_label_file(tmp_path / "nope.phn", 4, train)


def test_transcribed_twice_is_an_error(tmp_path):
    corpus = write_corpus(tmp_path / "c")
    (corpus / "11" / "200" / "extra.trans.txt").write_text("11-100-0000 AGAIN\n")
    with pytest.raises(ValueError, match=r"utterance 11-100-0000 is transcribed twice"):
        write_manifest(corpus, tmp_path / "m")


def test_cli_manifest_for_train_and_test_folders(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "train-clean")
    assert main(["manifest", str(corpus), "--out", str(tmp_path / "m"), "--valid-percent", "0.5", "--valid-by", "chapter"]) == 0
    out = capsys.readouterr().out
    assert "train.tsv (" in out and "valid.tsv (" in out and "labels beside each: .ltr, .wrd, .phn" in out
    test = write_corpus(tmp_path / "test-clean", {"33-400-0000": "HELLO"})
    assert main(["manifest", str(test), "--out", str(tmp_path / "m"), "--name", "test", "--valid-percent", "0"]) == 0
    assert (tmp_path / "m" / "test.phn").read_text() == "HH AH L OW\n"
    assert sorted(entries(tmp_path / "m" / "train.tsv") + entries(tmp_path / "m" / "valid.tsv")) == sorted(TEXTS)
    assert main(["manifest", str(test), "--out", str(tmp_path / "m"), "--name", "valid"]) == 2
    assert "name must be a file name other than 'valid'" in capsys.readouterr().err
