"""Sequence and speaker probes: edit distance and error rates against hand-computed cases,
greedy CTC decoding, and phoneme / ASR / speaker-id probes that learn on generated audio (any
checkout) and on a few real LibriSpeech utterances (slow), through the API and the CLI."""

import json
import re
from pathlib import Path

import pytest
import torch

from lighthubert import corpus, probes, transcripts
from lighthubert.cli import main
from lighthubert.manifest import read_manifest, write_manifest
from lighthubert.probes import ctc

LIBRI = Path(__file__).resolve().parents[2] / "shared" / "data" / "librispeech-mini"
SPEAKER = r"^[a-z]+_([a-z]+)_"
# Small heads so that each probe trains in seconds; the defaults are sized for librispeech-mini.
SMALL = dict(ctc_epochs=25, lstm_dim=32, ctc_batch_seconds=4.0, ctc_lr=5e-3, epochs=10)


# ---------------------------------------------------------------------------------------------
# metrics


@pytest.mark.parametrize("ref, hyp, distance", [
    ("kitten", "sitting", 3),  # k->s, e->i, +g
    ("flaw", "lawn", 2),  # -f, +n
    ("intention", "execution", 5),
    ("abc", "abc", 0),
    ("", "ab", 2),
    ("ab", "", 2),
    (["AH", "B"], ["B", "AH"], 2),
])
def test_edit_distance_by_hand(ref, hyp, distance):
    assert probes.edit_distance(list(ref), list(hyp)) == distance
    assert probes.edit_distance(list(hyp), list(ref)) == distance


def test_error_rate_is_summed_over_the_corpus():
    refs = [["a", "b", "c"], ["d"]]
    assert probes.error_rate(refs, [["a", "x", "c"], []]) == pytest.approx(2 / 4)  # not the mean of 1/3 and 1
    assert probes.error_rate(refs, refs) == 0.0
    assert probes.error_rate([["a"]], [["a", "b", "c"]]) == 2.0  # insertions can take it above 1
    ref = transcripts.words_from_letters("T H E | C A T |".split())
    assert probes.error_rate([ref], [transcripts.words_from_letters("T H E | C A P |".split())]) == 0.5
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        probes.error_rate(refs, [[]])
    with pytest.raises(ValueError, match="hold no token"):
        probes.error_rate([[]], [["a"]])


def test_greedy_decoding_merges_repeats_and_drops_blanks():
    """A linear head whose output is its one-hot input, so the best path is the input's."""
    vocab = ["a", "b"]
    model = ctc.CTCProbe(1, 3, vocab, probes.ProbeConfig(lstm_layers=0, downsample=1))
    with torch.no_grad():
        model.out.weight.copy_(10 * torch.eye(3))
        model.out.bias.zero_()
    paths = [[0, 1, 1, 0, 1, 2, 2, 0], [2, 2, 2], [0, 0]]  # blank is 0
    feats = probes.FrozenFeatures([Path(f"{i}.wav") for i in range(3)],
                                  [torch.eye(3)[p].unsqueeze(0).half() for p in paths])
    assert ctc.decode(model, feats) == [["a", "a", "b"], ["b"], []]


@pytest.mark.parametrize("kwargs, match", [
    ({"task": "asr", "ctc_epochs": 0}, "ctc_epochs"),
    ({"lstm_layers": -1}, "lstm_layers"),
    ({"dropout": 1.0}, "dropout must be in"),
    ({"ctc_lr": 0}, "ctc_lr"),
])
def test_sequence_settings_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        probes.ProbeConfig(**kwargs)


# ---------------------------------------------------------------------------------------------
# learning on generated audio


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """The built-in corpus, 2 speakers x 10 words x 5 takes, and MFCC features of its train split."""
    c = corpus.write_corpus(tmp_path_factory.mktemp("corpus"), n_speakers=2, takes=5, seed=0)
    m = read_manifest(c.train)
    feats = probes.FrozenFeatures.compute(probes.MFCC, [m.root / rel for rel, _ in m.entries])
    return c, feats


def test_features_beyond_float16_range_stay_float32(generated, monkeypatch):
    """float16 would turn a feature above 65504 into inf and the probe would train on it: such
    a file is kept in float32, unchanged; the others are stored in float16."""
    from lighthubert.probes import features as features_module
    c, _ = generated
    m = read_manifest(c.train)
    paths = [m.root / rel for rel, _ in m.entries[:3]]
    scale = iter([1.0, 1e6, 1.0])
    monkeypatch.setattr(features_module, "mfcc", lambda w: next(scale) * torch.ones(5, 39))
    feats = probes.FrozenFeatures.compute(probes.MFCC, paths)
    assert [h.dtype for h in feats.hidden] == [torch.float16, torch.float32, torch.float16]
    assert torch.equal(feats.hidden[1], torch.full((1, 5, 39), 1e6)) and torch.isfinite(feats.hidden[1]).all()


def train_error(model, feats, labels) -> float:
    return probes.error_rate(labels, ctc.decode(model, feats))


@pytest.mark.parametrize("kind, suffix", [("phoneme", "phn"), ("asr", "ltr")])
def test_ctc_probe_learns_on_generated_audio(generated, kind, suffix):
    c, feats = generated
    labels = transcripts.read_label_file(c.train.with_suffix("." + suffix), len(feats), c.train)
    cfg = probes.ProbeConfig(**SMALL)
    model, history = probes.fit_ctc(feats, labels, cfg)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        untrained = ctc.CTCProbe(1, feats.dim, model.vocab, cfg, ctc.Standardizer.fit(feats))
    assert history[-1] < history[0] / 4, history
    trained, before = train_error(model, feats, labels), train_error(untrained, feats, labels)
    assert before > 0.9 and trained < 0.3 * before, (trained, before)


def test_probe_tasks_share_features_across_phoneme_asr_and_speaker(generated, feature_computes):
    c, _ = generated
    computed = feature_computes
    seeded = probes.probe_tasks(probes.MFCC, c.train, c.test, {
        "phoneme": probes.ProbeTask("phoneme"), "asr": probes.ProbeTask("asr"),
        "speaker": probes.ProbeTask("speaker-id", SPEAKER, test=c.valid)}, probes.ProbeConfig(**SMALL))
    assert computed == [60, 20, 20]  # train, test, valid: once each
    results = {name: r.runs[0] for name, r in seeded.items()}
    assert set(results["phoneme"].metrics) == {"per"} and set(results["asr"].metrics) == {"cer", "wer"}
    assert results["phoneme"].metrics["per"] < 0.5 and results["asr"].metrics["cer"] < 0.6
    assert results["speaker"].task == "speaker-id" and results["speaker"].accuracy > 0.8  # chance 0.5
    assert results["phoneme"].vocab == sorted({p for w in corpus.WORDS for p in corpus._WORD_PHONES[w].split()})
    assert results["phoneme"].examples[0]["ref"] == "z I r o"
    assert json.dumps(seeded["asr"].to_dict())


def test_cli_probe_phoneme_and_asr(generated, capsys):
    c, _ = generated
    code = main(["probe", "--checkpoint", "mfcc", "--train", str(c.train), "--test", str(c.test), "--task", "phoneme",
                 "--task", "asr", "--ctc-epochs", "2", "--lstm-dim", "16", "--quiet", "--json"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["task"] for r in rows] == ["phoneme", "asr"] and rows[0]["source"] == "mfcc"
    assert len(rows[1]["runs"][0]["loss_history"]) == 2 and rows[1]["runs"][0]["n_test"] == 20
    assert set(rows[1]["metrics"]) == {"cer", "wer"} and rows[1]["metrics"]["cer"]["values"] == [rows[1]["runs"][0]["metrics"]["cer"]]
    code = main(["probe", "--checkpoint", "mfcc", "--train", str(c.train), "--test", str(c.test), "--task", "phoneme",
                 "--ctc-epochs", "1", "--lstm-dim", "8", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and re.match(r"phoneme on mfcc: PER \d+\.\d\d% \(20 test utterances; 17 tokens, 60 training", out), out


@pytest.mark.parametrize("case, match", [
    ("count", r"test.phn: 19 lines but .*test.tsv lists 20 utterances"),
    ("missing", r"test.ltr: label file not found"),
    ("no labels", r"--task utterance-classification needs --labels"),
    ("labels for asr", r"--train-labels / --test-labels name label files of the phoneme or asr task"),
])
def test_cli_probe_label_file_errors_are_one_line(generated, tmp_path, capsys, case, match):
    c, _ = generated
    test = tmp_path / "test.tsv"
    test.write_text(c.test.read_text())
    for kind in transcripts.LABEL_KINDS:
        transcripts.label_path(test, kind).write_text(transcripts.label_path(c.test, kind).read_text())
    task, extra = "phoneme", []
    if case == "count":
        test.with_suffix(".phn").write_text("".join(test.with_suffix(".phn").read_text().splitlines(True)[1:]))
    elif case == "missing":
        task = "asr"
        test.with_suffix(".ltr").unlink()
    elif case == "no labels":
        task = "utterance-classification"
    else:
        task, extra = "speaker-id", ["--labels", SPEAKER, "--train-labels", str(c.train.with_suffix(".ltr"))]
    code = main(["probe", "--checkpoint", "mfcc", "--train", str(c.train), "--test", str(test), "--task", task,
                 "--quiet", *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("lighthubert: error: ") and re.search(match, err), err


def librispeech_text_tree(folder: Path, n: int) -> tuple[Path, Path]:
    """A LibriSpeech-layout tree of `n` utterances without audio (checking labels reads none):
    `*.trans.txt` per chapter, train and test manifests of n / 2 utterances each, and their
    .ltr / .phn files. Returns (train, test) manifests."""
    root = folder / "audio"
    words = ["AS", "YOU", "LIKE", "IT"]
    chapters: dict[Path, list[str]] = {}
    entries = []
    for i in range(n):
        speaker, chapter = 100 + i % 3, 7 + i % 2
        stem, text = f"{speaker}-{chapter}-{i:04d}", " ".join(words[: 1 + i % 4])
        chapters.setdefault(root / str(speaker) / str(chapter), []).append(f"{stem} {text}")
        entries.append((f"{speaker}/{chapter}/{stem}.flac", text))
    for ch, lines in chapters.items():
        ch.mkdir(parents=True)
        (ch / f"{ch.parent.name}-{ch.name}.trans.txt").write_text("\n".join(lines) + "\n")
    manifests = []
    for name, part in (("train", entries[: n // 2]), ("test", entries[n // 2 :])):
        tsv = folder / f"{name}.tsv"
        tsv.write_text("\n".join([str(root)] + [f"{rel}\t16000" for rel, _ in part]) + "\n")
        tsv.with_suffix(".ltr").write_text("".join(transcripts.letters(t) + "\n" for _, t in part))
        tsv.with_suffix(".phn").write_text("".join(" ".join(w.lower() for w in t.split()) + "\n" for _, t in part))
        manifests.append(tsv)
    return manifests[0], manifests[1]


@pytest.mark.parametrize("hours", [0.0, 20 * 16000 / 3600 / 16000])  # all utterances; a 20-utterance subset
def test_checking_labels_reads_each_file_once_whatever_the_size(tmp_path, monkeypatch, hours):
    """Label checking was quadratic: the label file, every `*.trans.txt` and the order check
    were redone for every kept utterance (1,000 utterances 10.8 s, 2,000 50.9 s). Each file
    is now read once per `check_tasks` call, so the count of reads does not grow with N."""
    from lighthubert import settings
    real = settings.read_text
    reads: dict[str, int] = {}

    def counting(path, *args, **kwargs):
        reads[Path(path).name] = reads.get(Path(path).name, 0) + 1
        return real(path, *args, **kwargs)

    monkeypatch.setattr(settings, "read_text", counting)
    tasks = {"phoneme": probes.ProbeTask("phoneme"), "asr": probes.ProbeTask("asr"),
             "speaker": probes.ProbeTask("speaker-id")}
    seen = []
    for n in (60, 240):
        reads.clear()
        train, test = librispeech_text_tree(tmp_path / str(n), n)
        checked = probes.check_tasks(train, test, tasks, train_hours=hours)
        texts = [" ".join(["AS", "YOU", "LIKE", "IT"][: 1 + int(p.stem[-4:]) % 4]) for p in checked["asr"].train_paths]
        assert checked["asr"].train_labels == [transcripts.letters(t).split() for t in texts]  # labels follow the subset
        assert len(checked["phoneme"].train_paths) == (n // 2 if not hours else 20)
        seen.append(dict(reads))
    assert seen[0] == seen[1], seen  # as many reads at 240 utterances as at 60
    assert set(seen[1].values()) == {1}, seen[1]  # every manifest, label file and transcript once
    assert {"train.tsv", "test.tsv", "train.ltr", "test.ltr", "train.phn", "test.phn", "100-7.trans.txt"} <= set(seen[1])


# ---------------------------------------------------------------------------------------------
# learning on a few real utterances


@pytest.fixture(scope="module")
def libri(tmp_path_factory):
    """Manifests of train-clean-5's first speaker-chapters: 24 utterances, and their MFCC features."""
    if not (LIBRI / "train-clean-5").is_dir():
        pytest.skip(f"librispeech-mini not found at {LIBRI}")
    folder = tmp_path_factory.mktemp("libri")
    chapters = sorted((LIBRI / "train-clean-5").glob("*/*"))[:4]
    audio = folder / "audio"
    for ch in chapters:  # a LibriSpeech-layout folder of 6 utterances per chapter
        target = audio / ch.parent.name / ch.name
        target.mkdir(parents=True)
        (target / f"{ch.parent.name}-{ch.name}.trans.txt").symlink_to(next(ch.glob("*.trans.txt")))
        for f in sorted(ch.glob("*.ogg"))[:6]:
            (target / f.name).symlink_to(f)
    train, valid = write_manifest(audio, folder / "m", valid_percent=0.25, seed=3)  # 6 held out, 1-2 per chapter
    m = read_manifest(train)
    return train, valid, probes.FrozenFeatures.compute(probes.MFCC, [m.root / rel for rel, _ in m.entries])


@pytest.mark.slow
@pytest.mark.parametrize("kind, suffix", [("phoneme", "phn"), ("asr", "ltr")])
def test_ctc_probe_learns_on_real_speech(libri, kind, suffix):
    train, _, feats = libri
    labels = transcripts.read_label_file(train.with_suffix("." + suffix), len(feats), train)
    cfg = probes.ProbeConfig(ctc_epochs=40, lstm_dim=64, ctc_batch_seconds=40.0, ctc_lr=5e-3)
    model, history = probes.fit_ctc(feats, labels, cfg)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        untrained = ctc.CTCProbe(1, feats.dim, model.vocab, cfg, ctc.Standardizer.fit(feats))
    assert history[-1] < history[0] / 2, history
    trained, before = train_error(model, feats, labels), train_error(untrained, feats, labels)
    assert before > 0.9 and trained < 0.6 * before, (trained, before)


@pytest.mark.slow
def test_speaker_id_on_held_out_real_utterances(libri):
    train, valid, _ = libri
    result = probes.probe(probes.MFCC, train, valid, cfg=probes.ProbeConfig(task="speaker-id")).runs[0]
    assert len(result.classes) == len({p.split("/")[0] for p, _ in read_manifest(train).entries})
    assert result.accuracy > 0.6, result  # chance is at most 1/2


def test_bilstm_equals_a_packed_bidirectional_lstm():
    """The reference is torch's own packed nn.LSTM(bidirectional=True) with the same weights."""
    from torch import nn
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(0)
    ours = ctc.BiLSTM(5, 7, 2)
    ref = nn.LSTM(5, 7, num_layers=2, bidirectional=True, batch_first=True)
    with torch.no_grad():
        for i in range(2):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(ref, f"{name}_l{i}").copy_(getattr(ours.forward_layers[i], f"{name}_l0"))
                getattr(ref, f"{name}_l{i}_reverse").copy_(getattr(ours.backward_layers[i], f"{name}_l0"))
    x, lengths = torch.randn(3, 9, 5), torch.tensor([9, 4, 6])
    expected, _ = pad_packed_sequence(ref(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))[0],
                                      batch_first=True)
    valid = torch.arange(9)[None] < lengths[:, None]
    assert torch.allclose(ours(x, lengths)[valid], expected[valid], atol=1e-6)


def test_train_hours_takes_one_seeded_subset_for_every_task(generated):
    c, _ = generated
    frames = dict(read_manifest(c.train).entries)
    tasks = {"phoneme": probes.ProbeTask("phoneme"), "speaker": probes.ProbeTask("speaker-id", SPEAKER)}
    checked = probes.check_tasks(c.train, c.test, tasks, train_hours=10 / 3600, seed=1)  # about 10 s of audio
    paths = checked["phoneme"].train_paths
    assert paths == checked["speaker"].train_paths and 5 < len(paths) < 30
    assert sum(frames[p.name] for p in paths[:-1]) < 10 * 16000 <= sum(frames[p.name] for p in paths) + 16000
    phones = {w: corpus._WORD_PHONES[w].split() for w in corpus.WORDS}
    assert checked["phoneme"].train_labels == [phones[p.name.split("_")[0]] for p in paths]  # labels follow the subset
    assert checked["speaker"].train_labels == [p.name.split("_")[1] for p in paths]
    assert probes.check_tasks(c.train, c.test, tasks, train_hours=10 / 3600, seed=2)["phoneme"].train_paths != paths
    assert len(probes.check_tasks(c.train, c.test, tasks)["phoneme"].train_paths) == 60
