"""The built-in corpus: determinism, signal ranges, the FSDD-style layout and split, reuse of a
finished corpus, argument checks, and that words and speakers are learnable from MFCCs.

Corpora here are small (2-3 speakers, 3-10 takes) so the whole file runs in a few seconds.
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from lighthubert import corpus, probes
from lighthubert.audio import SAMPLE_RATE
from lighthubert.manifest import read_manifest

WORD = re.compile(r"^([a-z]+)_")  # the label regexes `lighthubert demo` probes with
SPEAKER = re.compile(r"^[a-z]+_([a-z]+)_")


def entries(manifest: Path) -> dict[str, int]:
    """File name -> frames, with the root checked against the corpus layout."""
    m = read_manifest(manifest)
    assert m.root == manifest.parent / "audio"
    return dict(m.entries)


def take_of(name: str) -> int:
    return int(Path(name).stem.rsplit("_", 1)[1])


@pytest.fixture(scope="module")
def ten_takes(tmp_path_factory: pytest.TempPathFactory) -> corpus.Corpus:
    """2 speakers x 10 takes: takes 0-1 test, 2 valid, 3-9 train."""
    return corpus.write_corpus(tmp_path_factory.mktemp("corpus"), n_speakers=2, takes=10)


def test_synthesize_is_deterministic_per_seed_and_take():
    ada = corpus.speakers()[0]
    first = corpus.synthesize("seven", ada, take=3, seed=0)
    assert np.array_equal(first, corpus.synthesize("seven", ada, take=3, seed=0))
    for other in (corpus.synthesize("seven", ada, take=3, seed=1), corpus.synthesize("seven", ada, take=4, seed=0)):
        assert other.shape != first.shape or not np.allclose(other, first)


def test_same_seed_writes_bit_identical_files(tmp_path: Path):
    a = corpus.write_corpus(tmp_path / "a", n_speakers=2, takes=3, seed=5)
    b = corpus.write_corpus(tmp_path / "b", n_speakers=2, takes=3, seed=5)
    c = corpus.write_corpus(tmp_path / "c", n_speakers=2, takes=3, seed=6)
    names = sorted(p.name for p in (a.root / "audio").iterdir())
    assert len(names) == 10 * 2 * 3
    assert all((a.root / "audio" / n).read_bytes() == (b.root / "audio" / n).read_bytes() for n in names)
    assert (a.root / "train.tsv").read_text().splitlines()[1:] == (b.root / "train.tsv").read_text().splitlines()[1:]
    assert sum((a.root / "audio" / n).read_bytes() != (c.root / "audio" / n).read_bytes() for n in names) == len(names)


def test_speakers_are_seeded_spread_and_stable_in_n():
    six = corpus.speakers(6, seed=0)
    assert six == corpus.speakers(6, seed=0) and six[:4] == corpus.speakers(4, seed=0)
    assert six != corpus.speakers(6, seed=1)
    assert len({s.name for s in six}) == 6 and all(re.fullmatch(r"[a-z]+", s.name) for s in six)
    assert all(95 <= s.f0 <= 240 and 0.85 <= s.tract <= 1.2 for s in corpus.speakers(26))
    pitches = sorted(s.f0 for s in six)
    assert pitches[0] < 150 and pitches[-1] > 165  # both low and high voices


def test_utterances_are_mono_float32_bounded_and_word_length():
    for voice in corpus.speakers(2, seed=3):
        for word in corpus.WORDS:
            wav = corpus.synthesize(word, voice, take=1, seed=3)
            assert wav.dtype == np.float32 and wav.ndim == 1 and np.isfinite(wav).all()
            assert 0.3 <= len(wav) / SAMPLE_RATE <= 1.1, (word, voice.name, len(wav))
            assert 0.05 < np.abs(wav).max() <= 0.9
            # 50-200 ms of near-silence at each end: the first 50 ms is well below the peak.
            assert np.abs(wav[: SAMPLE_RATE // 20]).max() < 0.1 * np.abs(wav).max()


def test_splits_are_disjoint_by_take_and_cover_every_word_and_speaker(ten_takes: corpus.Corpus):
    splits = {name: entries(getattr(ten_takes, name)) for name in ("train", "valid", "test")}
    assert {name: sorted({take_of(f) for f in e}) for name, e in splits.items()} == {
        "train": list(range(3, 10)), "valid": [2], "test": [0, 1]}
    files = sorted(p.name for p in (ten_takes.root / "audio").iterdir())
    assert sorted(f for e in splits.values() for f in e) == files  # disjoint and complete
    voices = {s.name for s in corpus.speakers(2)}
    for e in splits.values():
        assert {(WORD.search(f).group(1), SPEAKER.search(f).group(1)) for f in e} == {
            (w, s) for w in corpus.WORDS for s in voices}


def test_manifest_counts_match_the_files(ten_takes: corpus.Corpus):
    for name in ("train", "valid", "test"):
        for file, frames in entries(getattr(ten_takes, name)).items():
            info = sf.info(str(ten_takes.root / "audio" / file))
            assert (info.frames, info.samplerate, info.channels, info.subtype) == (frames, SAMPLE_RATE, 1, "PCM_16")


def test_label_files_follow_each_manifest_line_for_line(ten_takes: corpus.Corpus):
    """Hand-written: `seven` is spoken as the phones `s e v ^ n`, spelt `S E V E N |`."""
    for manifest in (ten_takes.train, ten_takes.valid, ten_takes.test):
        words = [name.split("_")[0] for name in entries(manifest)]
        assert manifest.with_suffix(".wrd").read_text().splitlines() == [w.upper() for w in words]
        assert manifest.with_suffix(".ltr").read_text().splitlines() == [" ".join(w.upper()) + " |" for w in words]
        phones = manifest.with_suffix(".phn").read_text().splitlines()
        assert len(phones) == len(words) and phones[words.index("seven")] == "s e v ^ n"
        assert {w: p for w, p in zip(words, phones)}["three"] == "th r i"


def test_a_finished_corpus_is_reused_and_a_changed_one_rewritten(tmp_path: Path):
    first = corpus.write_corpus(tmp_path, n_speakers=2, takes=4)
    files = sorted((tmp_path / "audio").iterdir()) + [first.train, first.valid, first.test, tmp_path / "corpus.json"]
    stamps = [p.stat().st_mtime_ns for p in files]
    assert corpus.write_corpus(tmp_path, n_speakers=2, takes=4) == first
    assert [p.stat().st_mtime_ns for p in files] == stamps
    assert json.loads((tmp_path / "corpus.json").read_text())["takes"] == 4

    lost = tmp_path / "audio" / "nine_ben_2.wav"
    lost.unlink()
    corpus.write_corpus(tmp_path, n_speakers=2, takes=4)
    assert lost.is_file()  # an incomplete corpus is written again

    smaller = corpus.write_corpus(tmp_path, n_speakers=2, takes=3)
    left = {p.name for p in (tmp_path / "audio").iterdir()}
    assert len(left) == 10 * 2 * 3 and not any(take_of(n) == 3 for n in left)  # no stale takes
    assert all(f in left for name in ("train", "valid", "test") for f in entries(getattr(smaller, name)))


@pytest.mark.parametrize("call, message", [
    (lambda: corpus.write_corpus("unused", n_speakers=1), "n_speakers must be in 2..26"),
    (lambda: corpus.write_corpus("unused", n_speakers=27), "n_speakers must be in 2..26"),
    (lambda: corpus.write_corpus("unused", takes=2), "takes must be >= 3"),
    (lambda: corpus.speakers(4, seed=-1), "seed must be >= 0"),
    (lambda: corpus.synthesize("eleven", corpus.speakers()[0], 0), "unknown word 'eleven'; expected one of zero, one"),
    (lambda: corpus.synthesize("one", corpus.speakers()[0], -1), "take and seed must be >= 0"),
])
def test_bad_arguments_raise_with_the_allowed_values(call, message: str, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=re.escape(message)):
        call()
    assert not (tmp_path / "unused").exists()  # checked before anything is written


def test_words_and_speakers_are_learnable_but_not_trivial():
    """Nearest class mean on mean-pooled MFCCs (c0-c12, standardised): 4 speakers x 6 takes,
    takes 2-5 to train, 0-1 to test. Chance is 0.1 for words and 0.25 for speakers; seed 0
    gives about 0.76 and 0.90. Neither should be perfect, or a learned model has nothing to add.
    """
    voices = corpus.speakers(4)
    rows = [(w, s.name, k, probes.mfcc(torch.from_numpy(corpus.synthesize(w, s, k)))[:, :13].mean(0).numpy())
            for w in corpus.WORDS for s in voices for k in range(6)]
    feats = np.stack([r[3] for r in rows])
    train = np.array([r[2] >= 2 for r in rows])
    feats = (feats - feats[train].mean(0)) / feats[train].std(0)
    for column, chance in ((0, 0.1), (1, 0.25)):
        labels = np.array([r[column] for r in rows])
        classes = sorted(set(labels))
        means = np.stack([feats[train & (labels == c)].mean(0) for c in classes])
        guess = np.array(classes)[((feats[~train, None] - means) ** 2).sum(-1).argmin(1)]
        accuracy = (guess == labels[~train]).mean()
        assert max(0.5, 2 * chance) < accuracy < 1.0, (column, accuracy)
