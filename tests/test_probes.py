"""SUPERB-style probes: MFCC features, labels, the featurizer, and probes on FSDD recordings
with the MFCC baseline and a tiny random LightHuBERT, through the API and the CLI.

The FSDD split is the dataset's standard one (recording index 0-4 is test) thinned to keep the
tests fast: all six speakers, indices 5-9 for training (300 files) and 0-2 for test (180).
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from lighthubert import atomic, checkpoint, formats, probes
from lighthubert.cli import main
from lighthubert.audio import load_audio
from lighthubert.supernet import LightHuBERT

from conftest import FSDD, require_shared

DIGIT = r"^(\d)_"
SPEAKER = r"^\d_(\w+)_"


def fsdd_files(speakers=None, indices=range(50), digits=range(10)) -> list[Path]:
    """FSDD recordings `digit_speaker_index.wav` matching the filters, sorted; skips the test without FSDD."""
    out = []
    for p in sorted(require_shared(FSDD).glob("*.wav")):
        digit, speaker, index = p.stem.split("_")
        if (speakers is None or speaker in speakers) and int(index) in indices and int(digit) in digits:
            out.append(p)
    return out


def write_manifest(path: Path, files: list[Path], root: Path = FSDD) -> Path:
    lines = [str(root)] + [f"{p.relative_to(root)}\t{sf.info(str(p)).frames}" for p in files]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> tuple[Path, Path]:
    """(train.tsv, test.tsv): six speakers, recording indices 5-9 train (300), 0-2 test (180)."""
    folder = tmp_path_factory.mktemp("fsdd")
    return (write_manifest(folder / "train.tsv", fsdd_files(indices=range(5, 10))),
            write_manifest(folder / "test.tsv", fsdd_files(indices=range(3))))


@pytest.fixture(scope="module")
def small_split(tmp_path_factory) -> tuple[Path, Path]:
    """(train.tsv, test.tsv): george and jackson saying 0 and 1; 20 train, 12 test files."""
    folder = tmp_path_factory.mktemp("fsdd_small")
    pick = {"speakers": ("george", "jackson"), "digits": (0, 1)}
    return (write_manifest(folder / "train.tsv", fsdd_files(indices=range(5, 10), **pick)),
            write_manifest(folder / "test.tsv", fsdd_files(indices=range(3), **pick)))


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------------
# mfcc


def test_mfcc_shape_matches_hubert_frames_and_is_deterministic():
    wav = load_audio(fsdd_files(speakers=("theo",), indices=(0,), digits=(3,))[0])
    feats = probes.mfcc(wav)
    assert feats.shape == (1 + (wav.numel() - 400) // 320, 39)  # HuBERT's frame count for N samples
    assert abs(feats.shape[0] - wav.numel() / 320) < 2  # 50 Hz
    assert feats.dtype == torch.float32 and torch.isfinite(feats).all()
    assert torch.equal(feats, probes.mfcc(wav.clone()))
    assert probes.mfcc(wav[:400]).shape == (1, 39)


def test_mfcc_of_silence_and_of_a_steady_tone():
    """Silence hits the log floor in every band, so the orthonormal DCT of that constant is
    c0 = sqrt(40) log(1e-10) and zero elsewhere. A 1 kHz tone repeats every 16 samples, so
    all its 20 ms frames are identical and its deltas vanish."""
    silent = probes.mfcc(torch.zeros(16000))
    assert torch.allclose(silent[:, 0], torch.tensor(np.sqrt(40) * np.log(1e-10), dtype=torch.float32))
    assert silent[:, 1:].abs().max() < 1e-4
    tone = probes.mfcc(0.5 * torch.sin(2 * torch.pi * torch.arange(16) / 16).repeat(1000))  # exactly periodic
    assert torch.allclose(tone[:, :13], tone[:1, :13].expand(tone.shape[0], -1), atol=1e-3)
    assert tone[:, 13:].abs().max() < 1e-3


@pytest.mark.parametrize("wav, match", [(torch.zeros(399), "at least 400 samples"), (torch.zeros(2, 800), "1-D")])
def test_mfcc_rejects_short_or_batched_input(wav, match):
    with pytest.raises(ValueError, match=match):
        probes.mfcc(wav)


# ---------------------------------------------------------------------------------------------
# labels


def test_labels_from_regex_group_or_whole_match():
    paths = [Path("/a/3_theo_7.wav"), Path("/b/0_george_12.wav")]
    assert probes.labels_from(DIGIT, paths) == ["3", "0"]
    assert probes.labels_from(SPEAKER, paths) == ["theo", "george"]
    assert probes.labels_from(r"[a-z]+", paths) == ["theo", "george"]


@pytest.mark.parametrize("spec, match", [
    (r"^x(\d)", r"label regex '\^x\(\\d\)' finds no label in any file stems, e.g. '3_theo_7'"),
    (r"^3_", "in 1 of 2 file stems, e.g. '0_george_12'"),
    (r"^(\d", "neither a file nor a valid regular expression"),
])
def test_labels_from_regex_errors_name_the_regex_and_a_stem(spec, match):
    with pytest.raises(ValueError, match=match):
        probes.labels_from(spec, [Path("/a/3_theo_7.wav"), Path("/b/0_george_12.wav")])


def test_labels_from_csv_relative_absolute_and_header(tmp_path):
    root = tmp_path / "audio"
    paths = [root / "x.wav", root / "sub" / "y.wav"]
    csv = tmp_path / "labels.csv"
    csv.write_text(f"path,label\nx.wav,cat\n{root / 'sub' / 'y.wav'},dog\nunused.wav,cow\n")
    assert probes.labels_from(str(csv), paths, root) == ["cat", "dog"]
    csv.write_text("audio/x.wav,cat\naudio/sub/y.wav,dog\n")  # no header; relative to the CSV's folder
    assert probes.labels_from(str(csv), paths) == ["cat", "dog"]


@pytest.mark.parametrize("text, match", [
    ("x.wav,cat\n", r"no label for .*y\.wav; add 'path,label' rows"),
    ("x.wav,cat\ny.wav,dog\nx.wav,cow\n", r"labels.csv:3: x.wav is labelled both 'cat' and 'cow'"),
    ("x.wav,cat,extra\n", r"labels.csv:1: expected 'path,label'"),
])
def test_labels_from_csv_errors(tmp_path, text, match):
    csv = tmp_path / "labels.csv"
    csv.write_text(text)
    with pytest.raises(ValueError, match=match):
        probes.labels_from(str(csv), [tmp_path / "x.wav", tmp_path / "y.wav"], tmp_path)


# ---------------------------------------------------------------------------------------------
# featurizer and classifier


def test_featurizer_is_a_softmax_weighted_sum_of_layer_normed_states():
    hidden = torch.randn(2, 3, 5, 8) * torch.tensor([1.0, 10.0, 100.0])[:, None, None]
    feat = probes.Featurizer(3)
    with torch.no_grad():
        feat.weights.copy_(torch.tensor([0.5, -1.0, 2.0]))
    w = torch.softmax(torch.tensor([0.5, -1.0, 2.0]), 0)
    expected = sum(w[i] * F.layer_norm(hidden[:, i], (8,)) for i in range(3))
    assert torch.allclose(feat(hidden), expected, atol=1e-6)
    assert sum(feat.layer_weights()) == pytest.approx(1.0)
    assert probes.Featurizer(3).layer_weights() == pytest.approx([1 / 3] * 3)  # uniform at init, as in s3prl
    single = torch.randn(2, 1, 5, 8)
    assert torch.equal(probes.Featurizer(1)(single), single[:, 0])  # one state: used as it is


def test_pooling_each_state_first_equals_superb_weight_then_pool():
    hidden = torch.randn(3, 7, 8) * torch.tensor([1.0, 10.0, 100.0])[:, None, None]  # (layers, T, E)
    clf = probes.UtteranceClassifier(3, 8, 5, hidden=16).eval()
    with torch.no_grad():
        clf.featurizer.weights.copy_(torch.tensor([0.3, -0.2, 1.0]))
        superb = clf.head(clf.featurizer(hidden[None]).mean(dim=1))
        assert torch.allclose(clf(clf.pool(hidden)[None]), superb, atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"task": "frame-classification"}, "task must be one of utterance-classification, speaker-id, phoneme, asr"),
    ({"epochs": 0}, "epochs, batch_size, .* must be >= 1"),
    ({"seeds": 0}, "downsample and seeds must be >= 1"),
    ({"lr": 0.0}, "lr, max_batch_seconds, .* must be positive"),
])
def test_probe_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        probes.ProbeConfig(**kwargs)


# ---------------------------------------------------------------------------------------------
# probes on FSDD


def test_mfcc_probe_learns_digits_and_speakers(split):
    """Measured with the default config: digits 0.867, speakers 0.956 (chance 0.10 and 0.17)."""
    digits = probes.probe(probes.MFCC, *split, DIGIT).runs[0]
    assert (digits.n_train, digits.n_test, digits.classes) == (300, 180, [str(d) for d in range(10)])
    assert digits.accuracy > 0.75
    assert digits.layer_weights == [1.0]
    assert sum(digits.test_counts.values()) == 180 and set(digits.class_accuracy) == set(digits.classes)
    speakers = probes.probe(probes.MFCC, *split, SPEAKER).runs[0]
    assert speakers.classes == ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
    assert speakers.accuracy > 0.85


def test_probe_is_deterministic_for_a_seed_and_leaves_the_global_rng_alone(small_split):
    state = torch.random.get_rng_state()
    first = probes.probe(probes.MFCC, *small_split, SPEAKER, probes.ProbeConfig(epochs=5, seed=3))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert first == probes.probe(probes.MFCC, *small_split, SPEAKER, probes.ProbeConfig(epochs=5, seed=3))
    other = probes.probe(probes.MFCC, *small_split, SPEAKER, probes.ProbeConfig(epochs=5, seed=4))
    assert first.runs[0].train_loss != other.runs[0].train_loss


def test_seeds_share_the_features_and_each_equals_its_own_single_seed_run(small_split, feature_computes):
    """`seeds=3` computes each manifest's features once and trains heads at seeds 3, 4, 5; each
    head is the one a single-seed run at that seed gives, and the spread is theirs."""
    computed = feature_computes
    seeded = probes.probe(probes.MFCC, *small_split, SPEAKER, probes.ProbeConfig(epochs=5, seed=3, seeds=3))
    assert computed == [20, 12]  # train and test, once each, for three heads
    assert seeded.seeds == [3, 4, 5]
    for run in seeded.runs:
        alone = probes.probe(probes.MFCC, *small_split, SPEAKER, probes.ProbeConfig(epochs=5, seed=run.seed)).runs[0]
        assert run == alone
    losses = {r.train_loss for r in seeded.runs}
    assert len(losses) == 3  # the seeds differ
    spread = seeded.metrics["accuracy"]
    assert spread.values == tuple(r.accuracy for r in seeded.runs)
    as_json = json.loads(json.dumps(seeded.to_dict()))
    assert as_json["seeds"] == [3, 4, 5] and [r["seed"] for r in as_json["runs"]] == [3, 4, 5]
    assert as_json["metrics"]["accuracy"]["values"] == [r.accuracy for r in seeded.runs]


def test_seed_statistics_against_hand_computed_values():
    """Sample sd (n - 1): for 0.40, 0.46, 0.52 the mean is 0.46 and the sd sqrt((0.06^2 * 2) / 2) = 0.06."""
    s = probes.Spread.of([0.40, 0.46, 0.52])
    assert s.mean == pytest.approx(0.46, abs=1e-12) and s.sd == pytest.approx(0.06, abs=1e-12)
    two = probes.Spread.of([0.30, 0.34])  # mean 0.32, sd |0.30 - 0.34| / sqrt(2) = 0.028284...
    assert two.mean == pytest.approx(0.32) and two.sd == pytest.approx(0.04 / 2 ** 0.5)
    assert probes.Spread.of([0.7]).sd is None  # one seed: no spread
    assert s.format(100, 1, "%") == "46.0 ± 6.0%" and probes.Spread.of([0.7]).format() == "0.700"
    # the rule: |difference| against 2 x sqrt(sd1^2 + sd2^2) = 2 x sqrt(0.06^2 + 0.028284^2) = 0.132665
    c = probes.compare(s, two)
    assert c.difference == pytest.approx(0.14) and c.margin == pytest.approx(2 * (0.06 ** 2 + 0.0008) ** 0.5)
    assert c.margin == pytest.approx(0.132665, abs=1e-6) and c.beyond_spread is True
    near = probes.compare(s, probes.Spread.of([0.35, 0.39]))  # difference 0.09 < 0.132665
    assert near.difference == pytest.approx(0.09) and near.beyond_spread is False
    assert probes.compare(s, probes.Spread.of([0.1])).beyond_spread is None
    with pytest.raises(ValueError, match="at least one value"):
        probes.Spread.of([])


@pytest.fixture
def tiny_checkpoint(tiny_space, tmp_path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    atomic.save_file(formats.official.checkpoint(LightHuBERT(tiny_space)), path)
    return path


def test_cli_probe_with_a_tiny_lighthubert_weights_every_hidden_state(tiny_checkpoint, small_split, capsys):
    code, out, _ = run(capsys, "probe", "--checkpoint", tiny_checkpoint, "--subnet", "min", "--train", small_split[0],
                       "--test", small_split[1], "--labels", SPEAKER, "--epochs", "3", "--quiet", "--json")
    assert code == 0
    seeded = json.loads(out)
    result = seeded["runs"][0]
    assert seeded["source"].startswith("e64") and seeded["seeds"] == [0] and seeded["metrics"]["accuracy"]["sd"] is None
    depth = checkpoint.load_model(tiny_checkpoint, "min").subnet.depth
    assert len(result["layer_weights"]) == depth + 1
    assert sum(result["layer_weights"]) == pytest.approx(1.0)
    assert (result["n_train"], result["n_test"]) == (20, 12)
    assert 0.0 <= result["accuracy"] <= 1.0 and result["classes"] == ["george", "jackson"]


def test_cli_probe_text_output(small_split, capsys):
    code, out, _ = run(capsys, "probe", "--checkpoint", "mfcc", "--train", small_split[0], "--test", small_split[1],
                       "--labels", DIGIT, "--epochs", "3", "--quiet")
    assert code == 0
    head, table, row = out.splitlines()
    assert head.startswith("utterance-classification on mfcc: accuracy ") and "/12 test utterances; 2 classes, 20 training" in head
    assert table.split() == ["layer", "weight"] and row.split()[:2] == ["0", "1.000"]


def test_cli_probe_seeds_print_mean_sd_and_every_seed(small_split, capsys):
    code, out, _ = run(capsys, "probe", "--checkpoint", "mfcc", "--train", small_split[0], "--test", small_split[1],
                       "--labels", SPEAKER, "--epochs", "3", "--seeds", "3", "--seed", "1", "--quiet", "--json")
    assert code == 0
    seeded = json.loads(out)
    values = [r["accuracy"] for r in seeded["runs"]]
    assert seeded["seeds"] == [1, 2, 3] and seeded["metrics"]["accuracy"]["values"] == values
    assert seeded["metrics"]["accuracy"]["mean"] == pytest.approx(sum(values) / 3)
    code, out, _ = run(capsys, "probe", "--checkpoint", "mfcc", "--train", small_split[0], "--test", small_split[1],
                       "--labels", SPEAKER, "--epochs", "3", "--seeds", "3", "--seed", "1", "--quiet")
    head = out.splitlines()[0]
    spread = probes.Spread.of(values)
    assert head.startswith(f"utterance-classification on mfcc: accuracy {spread.format()} (mean ± sd over 3 head seeds; "
                           f"seed 1 {values[0]:.3f}; seed 2 {values[1]:.3f}; seed 3 {values[2]:.3f}"), head
    assert "(mean over 3 seeds)" in out.splitlines()[1]


@pytest.mark.parametrize("case, match", [
    ("regex", r"label regex '\^x\(\\d\)' finds no label in any file stems, e.g. '0_george_5'"),
    ("unseen", r"test class\(es\) absent from training: 'lucas'"),
    ("csv", r"labels.csv: no label for .*0_george_6.wav \(and 18 more\)"),
    ("one class", r"the labels give 1 class \('0'\); a classifier needs at least 2"),
    ("missing audio", r"0_george_99.wav: cannot read audio \(file not found\)"),
    ("mfcc subnet", r"--subnet and --device need a checkpoint"),
])
def test_cli_probe_errors_are_one_line(small_split, tmp_path, capsys, case, match):
    train, test = small_split
    labels = SPEAKER
    extra = []
    if case == "regex":
        labels = r"^x(\d)"
    elif case == "unseen":
        test = write_manifest(tmp_path / "test.tsv", fsdd_files(speakers=("lucas", "george"), indices=(0,), digits=(0,)))
    elif case == "csv":
        labels = tmp_path / "labels.csv"
        labels.write_text("path,label\n0_george_5.wav,george\n")
    elif case == "one class":
        labels = DIGIT
        train = write_manifest(tmp_path / "train.tsv", fsdd_files(speakers=("george",), indices=(5, 6), digits=(0,)))
    elif case == "missing audio":
        train = tmp_path / "train.tsv"
        train.write_text(small_split[0].read_text() + "0_george_99.wav\t8000\n")
    else:
        extra = ["--subnet", "min"]
    code, _, err = run(capsys, "probe", "--checkpoint", "mfcc", "--train", train, "--test", test, "--labels", labels,
                       "--quiet", *extra)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("lighthubert: error: ")
    assert re.search(match, err), err


def test_cli_probe_task_choices(capsys):
    with pytest.raises(SystemExit) as e:
        main(["probe", "--checkpoint", "mfcc", "--train", "a", "--test", "b", "--labels", "x", "--task", "keywords"])
    assert e.value.code == 2
    assert "invalid choice: 'keywords'" in capsys.readouterr().err
