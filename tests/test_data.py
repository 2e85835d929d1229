"""Audio loading: formats, down-mix, resampling, bad files; the training pipeline: manifests,
dataset, bucketed sampler, crop collate and skip counts; on generated audio and FSDD."""

import importlib.util
import logging
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.signal import resample_poly

from lighthubert.cli import main
from lighthubert.audio import AudioError, collate, load_audio, normalize, synthetic_speech
from lighthubert.data import AudioDataset, BucketBatchSampler, CropCollate, EpochIndex, SkipCounter, validation_batches
from lighthubert.manifest import read_manifest, write_manifest

from conftest import FSDD, LIBRISPEECH, require_shared



def test_stereo_flac_44k_is_downmixed_and_resampled(tmp_path):
    rng = np.random.default_rng(0)
    stereo = rng.uniform(-0.5, 0.5, size=(44100, 2)).astype(np.float32)
    path = tmp_path / "stereo.flac"
    sf.write(path, stereo, 44100, subtype="PCM_24")
    wav = load_audio(path)
    assert wav.dtype == torch.float32 and wav.dim() == 1
    assert wav.numel() == 16000
    stored, _ = sf.read(path, dtype="float32")  # PCM_24 quantisation
    expected = resample_poly(stored.mean(axis=1), 160, 441)
    np.testing.assert_allclose(wav.numpy(), expected, atol=1e-5)


def test_16k_mono_is_read_unchanged(tmp_path):
    x = synthetic_speech(0.5, 150.0).numpy()
    sf.write(tmp_path / "a.wav", x, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(tmp_path / "a.wav").numpy(), x)


@pytest.mark.parametrize("content, match", [(None, "empty audio"), (b"hello, not audio\n", "cannot read audio")])
def test_bad_files_raise_one_line(tmp_path, content, match):
    path = tmp_path / "bad.wav"
    if content is None:
        sf.write(path, np.zeros((0,), np.float32), 16000)
    else:
        path.write_bytes(content)
    with pytest.raises(AudioError, match=match) as e:
        load_audio(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_non_finite_audio_is_rejected(tmp_path):
    x = np.zeros(1600, np.float32)
    x[10] = np.nan
    sf.write(tmp_path / "nan.wav", x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(tmp_path / "nan.wav")


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="cannot read"):
        load_audio(tmp_path / "nope.wav")


def test_normalize_and_collate():
    a, b = torch.randn(100) * 3 + 2, torch.randn(60)
    n = normalize(a)
    assert abs(n.mean().item()) < 1e-5 and abs(n.var(unbiased=False).item() - 1) < 1e-3
    batch, lengths = collate([a, b])
    assert batch.shape == (2, 100) and lengths.tolist() == [100, 60]
    assert torch.equal(batch[1, :60], b) and torch.all(batch[1, 60:] == 0)


def test_synthetic_speech_is_deterministic_and_bounded():
    a, b = synthetic_speech(1.0, 120.0, seed=3), synthetic_speech(1.0, 120.0, seed=3)
    assert torch.equal(a, b) and a.numel() == 16000
    assert a.abs().max().item() == pytest.approx(0.9, abs=1e-6)
    assert not torch.equal(a, synthetic_speech(1.0, 120.0, seed=4))


def test_fsdd_recording_is_resampled_from_8k():
    files = sorted(require_shared(FSDD).glob("*.wav"))[:1]
    info = sf.info(files[0])
    wav = load_audio(files[0])
    assert wav.numel() == pytest.approx(info.frames * 16000 / info.samplerate, abs=2)
    assert torch.isfinite(wav).all() and wav.abs().max() > 0


# --- manifests -------------------------------------------------------------------------------


def _write(path: Path, seconds: float = 0.1, sr: int = 16000, channels: int = 1, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = synthetic_speech(seconds, 150.0, seed=seed, sample_rate=sr).numpy()
    sf.write(path, np.stack([x] * channels, axis=1) if channels > 1 else x, sr, format="FLAC" if path.suffix.lower() == ".flac" else "WAV")
    return path


def _tsv(path: Path, root: Path, entries) -> Path:
    path.write_text("\n".join([str(root)] + [f"{rel}\t{n}" for rel, n in entries]) + "\n")
    return path


def test_manifest_round_trip_nested_and_case_insensitive(tmp_path):
    audio = tmp_path / "audio"
    _write(audio / "a.wav", 0.1)
    _write(audio / "spk1" / "b.FLAC", 0.2, sr=8000, channels=2)
    _write(audio / "spk1" / "ch2" / "c.Wav", 0.3, sr=44100)
    _write(audio / "skip.aiff", 0.1)  # extension not asked for
    (audio / "notes.txt").write_text("not audio")
    train, valid = write_manifest(audio, tmp_path / "m", valid_percent=0.0)
    assert (train, valid) == (tmp_path / "m" / "train.tsv", tmp_path / "m" / "valid.tsv")
    assert valid.read_text() == f"{audio.resolve()}\n"
    m = read_manifest(train)
    assert m.root == audio.resolve() and m.root.is_absolute()
    assert [rel for rel, _ in m.entries] == ["a.wav", "spk1/b.FLAC", "spk1/ch2/c.Wav"]
    assert [sf.info(m.root / rel).frames for rel, _ in m.entries] == [1600, 1600, 13230]
    assert [n for _, n in m.entries] == [1600, 3200, 4800]  # 16 kHz samples: 0.1 s, 0.2 s, 0.3 s
    flac_only = read_manifest(write_manifest(audio, tmp_path / "f", 0.0, exts=(".flac",))[0])
    assert [rel for rel, _ in flac_only.entries] == ["spk1/b.FLAC"]


def test_manifest_split_is_seeded(tmp_path):
    for i in range(30):
        _write(tmp_path / "audio" / f"{i:02d}.wav", 0.01)

    def split(seed, out):
        return [[rel for rel, _ in read_manifest(p).entries] for p in write_manifest(tmp_path / "audio", tmp_path / out, 0.3, seed=seed)]

    train, valid = split(7, "a")
    draws = random.Random(7)
    assert valid == [f"{i:02d}.wav" for i in range(30) if draws.random() < 0.3]  # one draw per sorted file
    assert sorted(train + valid) == [f"{i:02d}.wav" for i in range(30)] and 0 < len(valid) < 30
    assert split(7, "b") == [train, valid]
    assert split(8, "c") != [train, valid]


def test_manifest_skips_unreadable_and_rejects_empty_folder(tmp_path, caplog):
    _write(tmp_path / "audio" / "good.wav")
    (tmp_path / "audio" / "garbage.wav").write_bytes(b"not a wav file at all")
    _write(tmp_path / "audio" / "tab\tname.wav")
    with caplog.at_level(logging.WARNING, logger="lighthubert.manifest"):
        train, _ = write_manifest(tmp_path / "audio", tmp_path / "m", 0.0)
    assert [rel for rel, _ in read_manifest(train).entries] == ["good.wav"]
    assert "garbage.wav: skipped, Error opening" in caplog.text and "tab\tname.wav: skipped, a tab" in caplog.text
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no files with extension .flac/.ogg/.wav"):
        write_manifest(tmp_path / "empty", tmp_path / "m")
    with pytest.raises(ValueError, match="fraction"):
        write_manifest(tmp_path / "audio", tmp_path / "m", valid_percent=1.5)


@pytest.mark.parametrize("text, match", [
    ("", r"empty manifest"),
    ("a.wav\t100\n", r":1: expected the root folder"),
    ("/root\na.wav\t100\nb.wav 200\n", r":3: expected 'relative/path<TAB>frames', found 0 tabs"),
    ("/root\na.wav\t100\t7\n", r":2: .* found 2 tabs"),
    ("/root\na.wav\t100\nb.wav\t12.5\n", r":3: frame count must be a non-negative integer, found '12.5'"),
    ("/root\na.wav\t-4\n", r":2: frame count"),
])
def test_malformed_manifest_names_file_and_line(tmp_path, text, match):
    path = tmp_path / "bad.tsv"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as e:
        read_manifest(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


# --- dataset -----------------------------------------------------------------------------------


def test_dataset_reports_bad_files_without_raising(tmp_path):
    root = tmp_path / "audio"
    _write(root / "good.wav", 0.1, sr=8000)
    root.joinpath("corrupt.wav").write_bytes(b"RIFF\x00\x00garbage bytes, not audio" * 10)
    root.joinpath("zero_bytes.wav").write_bytes(b"")
    sf.write(root / "no_samples.wav", np.zeros(0, np.float32), 16000)
    sf.write(root / "silent.wav", np.zeros(1600, np.float32), 16000)
    nan = np.full(1600, 0.1, np.float32)
    nan[5] = np.inf
    sf.write(root / "inf.wav", nan, 16000, subtype="FLOAT")
    _write(root / "short.wav", 0.01)
    names = ["good.wav", "corrupt.wav", "missing.wav", "zero_bytes.wav", "no_samples.wav", "silent.wav", "inf.wav", "short.wav"]
    # Manifest counts are claimed, not read, so every entry passes the length filter.
    ds = AudioDataset(_tsv(tmp_path / "t.tsv", root, [(n, 1600) for n in names]), min_samples=800)
    items = [ds[i] for i in range(len(ds))]
    assert [it["index"] for it in items] == list(range(len(names)))
    assert [it["epoch"] for it in items] == [0] * len(names) and ds[EpochIndex(1, 4)]["epoch"] == 4  # bad ones too
    good = items[0]
    assert good["error"] is None and good["wav"].dtype == torch.float32 and good["wav"].shape == (1600,)  # 800 at 8 kHz
    kinds = [it["error"].split(":")[0] for it in items[1:]]
    assert kinds == ["unreadable", "missing", "empty", "empty", "silent", "non-finite", "too short"]
    for name, it in zip(names[1:], items[1:]):
        assert it["wav"] is None and str(root / name) in it["error"] and "\n" not in it["error"]
    counter = SkipCounter()
    for it in items[1:] + items[1:3]:  # a file skipped again in a later epoch counts once
        counter.add(it["error"])
    assert counter.summary() == "skipped 7 files: 2 empty, 1 unreadable, 1 missing, 1 silent, 1 non-finite, 1 too short"
    assert SkipCounter().summary() == "skipped 0 files"


def test_dataset_length_filter(tmp_path, caplog):
    entries = [(f"{i}.wav", n) for i, n in enumerate([100, 500, 1000, 2000, 800])]
    with caplog.at_level(logging.INFO, logger="lighthubert.data"):
        ds = AudioDataset(_tsv(tmp_path / "t.tsv", tmp_path, entries), min_samples=500, max_samples=1000)
    assert len(ds) == 3 and ds.sizes == [500, 1000, 800] and ds.paths == ["1.wav", "2.wav", "4.wav"]
    assert "kept 3 of 5 utterances; filtered 1 below min_samples 500 and 1 above max_samples 1000" in caplog.text
    assert AudioDataset(tmp_path / "t.tsv").sizes == [100, 500, 1000, 2000, 800]


# --- sampler -----------------------------------------------------------------------------------


SIZES = [int(n) for n in np.random.default_rng(0).integers(1000, 20000, size=203)]


def _indices(sampler):
    """The sampler's batches as plain dataset indices, after checking each carries the sampler's epoch."""
    batches = list(sampler)
    assert all(isinstance(i, EpochIndex) and i.epoch == sampler.epoch for b in batches for i in b)
    return [[i.index for i in b] for b in batches]


def _epoch(sampler, epoch):
    sampler.set_epoch(epoch)
    return _indices(sampler)


def test_sampler_budget_coverage_and_determinism():
    s = BucketBatchSampler(SIZES, 60000, seed=1)
    batches = _epoch(s, 0)
    assert len(batches) == len(s)
    assert sorted(i for b in batches for i in b) == list(range(len(SIZES)))
    assert all(len(b) * max(SIZES[i] for i in b) <= 60000 for b in batches)
    assert _epoch(BucketBatchSampler(SIZES, 60000, seed=1), 0) == batches
    assert _epoch(s, 1) != batches and sorted(map(sorted, _epoch(s, 1))) == sorted(map(sorted, batches))
    assert _epoch(BucketBatchSampler(SIZES, 60000, seed=2), 0) != batches
    ordered = _indices(BucketBatchSampler(SIZES, 60000, seed=1, shuffle=False))
    assert [SIZES[b[0]] for b in ordered] == sorted(SIZES[b[0]] for b in ordered)


def test_sampler_max_crop_and_oversize():
    capped = _indices(BucketBatchSampler(SIZES, 60000, seed=0, max_crop=5000))
    assert all(len(b) * min(5000, max(SIZES[i] for i in b)) <= 60000 for b in capped)
    assert len(capped) < len(BucketBatchSampler(SIZES, 60000, seed=0))
    with pytest.raises(ValueError, match="utterance 1 has 9000 samples, more than max_batch_samples 8000"):
        BucketBatchSampler([100, 9000], 8000, seed=0)
    with pytest.raises(ValueError, match="none per rank"):
        BucketBatchSampler([100, 9000], 9000, seed=0, num_replicas=3)
    with pytest.raises(ValueError, match="rank"):
        BucketBatchSampler(SIZES, 60000, seed=0, num_replicas=2, rank=2)


@pytest.mark.parametrize("drop_last", [True, False])
def test_sampler_shards_are_equal_and_disjoint(drop_last):
    total = len(BucketBatchSampler(SIZES, 60000, seed=3).batches)
    ranks = [BucketBatchSampler(SIZES, 60000, seed=3, num_replicas=3, rank=r, drop_last=drop_last) for r in range(3)]
    shards = [_epoch(s, 5) for s in ranks]
    assert len({len(s) for s in ranks} | {len(b) for b in shards}) == 1
    seen = [tuple(b) for shard in shards for b in shard]
    if drop_last:
        assert total % 3 and len(seen) == len(set(seen)) == total - total % 3  # disjoint; the remainder dropped
    else:
        assert len(seen) == total + (-total) % 3 and len(set(seen)) == total  # all covered; the head repeated
    full = _epoch(BucketBatchSampler(SIZES, 60000, seed=3, drop_last=drop_last), 5)  # one rank: the shuffled order
    padded = [full[k % total] for k in range(len(seen))]
    assert all(shards[r] == padded[r::3] for r in range(3))  # rank r takes batches r, r + 3, ...


def test_sampler_set_position_resumes_exactly():
    s = BucketBatchSampler(SIZES, 60000, seed=4, num_replicas=2, rank=1)
    full = _epoch(s, 2)
    resumed = BucketBatchSampler(SIZES, 60000, seed=4, num_replicas=2, rank=1)
    resumed.set_position(2, 5)
    assert _indices(resumed) == full[5:]
    assert _indices(resumed) == full[5:]  # every iteration of that position (DataLoader workers iterate twice)
    resumed.set_epoch(3)  # moving on starts the next epoch from its first batch
    assert _indices(resumed) == _epoch(s, 3)
    with pytest.raises(ValueError, match="batches_done"):
        resumed.set_position(0, len(s) + 1)


# --- collate -----------------------------------------------------------------------------------


def _item(i, n, epoch=0):
    return {"index": i, "epoch": epoch, "wav": torch.arange(n, dtype=torch.float32) + 10000 * i, "error": None}


def test_crop_collate_crops_to_shortest_and_records_skips():
    bad = {"index": 9, "epoch": 0, "wav": None, "error": "missing: /x/9.wav: cannot read audio (file not found)"}
    items = [_item(4, 1000), bad, _item(2, 700), _item(7, 1500)]
    out = CropCollate(seed=0)(items)
    assert out["indices"] == [2, 4, 7] and out["skipped"] == [(9, bad["error"])]
    assert out["wav"].shape == (3, 700) and out["wav"].dtype == torch.float32
    for row, i in zip(out["wav"], out["indices"]):  # each row is one contiguous slice of its source
        start = row[0] - 10000 * i
        assert torch.equal(row, torch.arange(700, dtype=torch.float32) + 10000 * i + start)
    capped = CropCollate(max_samples=500, seed=0)(items)
    assert capped["wav"].shape == (3, 500)
    assert torch.equal(CropCollate(500, seed=0)(items[::-1])["wav"], capped["wav"])  # item order does not matter
    offsets = {tuple(CropCollate(500, seed=s)(items)["wav"][:, 0].tolist()) for s in range(5)}
    assert len(offsets) > 1
    later = [{**it, "epoch": 1} for it in items]
    assert not torch.equal(CropCollate(500, seed=0)(later)["wav"], capped["wav"])  # another epoch, other crops
    all_bad = CropCollate(seed=0)([bad])
    assert all_bad["wav"] is None and all_bad["indices"] == [] and all_bad["skipped"] == [(9, bad["error"])]


def test_dataloader_workers_give_identical_batches(tmp_path):
    root = tmp_path / "audio"
    entries = []
    for i in range(16):
        n = 1600 + 137 * i
        _write(root / f"{i}.wav", n / 16000, seed=i)
        entries.append((f"{i}.wav", n))
    entries[3] = ("missing.wav", entries[3][1])
    ds = AudioDataset(_tsv(tmp_path / "t.tsv", root, entries))

    def batches(workers):
        sampler = BucketBatchSampler(ds.sizes, 12000, seed=0)
        sampler.set_epoch(1)
        loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=CropCollate(2000, seed=5), num_workers=workers)
        return list(loader)

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) > 1
    for a, b in zip(serial, parallel):
        assert a["indices"] == b["indices"] and a["skipped"] == b["skipped"] and torch.equal(a["wav"], b["wav"])
    assert [i for b in serial for i, _ in b["skipped"]] == [3]


def _long_utterances(tmp_path, count=24):
    """A dataset of utterances all longer than the 2,000-sample crop, so every row has offsets to draw."""
    root = tmp_path / "audio"
    entries = []
    for i in range(count):
        n = 4000 + 211 * i
        _write(root / f"{i}.wav", n / 16000, seed=i)
        entries.append((f"{i}.wav", n))
    return AudioDataset(_tsv(tmp_path / "t.tsv", root, entries))


def _loader(ds, sampler, workers=0):
    return torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=CropCollate(2000, seed=5), num_workers=workers)


def test_crops_are_redrawn_each_epoch(tmp_path):
    """Batches are formed once, so only the epoch can move a batch's crops; fairseq redraws them."""
    ds = _long_utterances(tmp_path)
    sampler = BucketBatchSampler(ds.sizes, 12000, seed=0)
    crops = {}  # batch (its indices) -> its crops in epochs 0, 1, 2
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for b in _loader(ds, sampler):
            crops.setdefault(tuple(b["indices"]), []).append(b["wav"])
    assert len(crops) == len(sampler) > 3 and all(len(c) == 3 for c in crops.values())
    same = sum(torch.equal(c[e], c[f]) for c in crops.values() for e, f in ((0, 1), (0, 2), (1, 2)))
    assert same == 0, f"{same} of {3 * len(crops)} epoch pairs show a batch with the same crops"
    assert all(c.shape == (len(k), 2000) for k, cs in crops.items() for c in cs)


def test_resume_mid_epoch_gives_identical_batches_with_workers(tmp_path):
    """The trainer resumes with `set_position` and 2 workers by default: the crops of the
    rest of that epoch and of the next one match an uninterrupted run bit for bit."""
    ds = _long_utterances(tmp_path)
    sampler = BucketBatchSampler(ds.sizes, 12000, seed=0)
    full = []
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        full += list(_loader(ds, sampler))
    done = 3
    resumed = BucketBatchSampler(ds.sizes, 12000, seed=0)
    resumed.set_position(1, done)
    rest = list(_loader(ds, resumed, workers=2))
    resumed.set_epoch(2)
    rest += list(_loader(ds, resumed, workers=2))
    assert len(rest) == len(full) - done
    for a, b in zip(full[done:], rest):
        assert a["indices"] == b["indices"] and torch.equal(a["wav"], b["wav"])


def test_validation_crops_are_fixed(tmp_path):
    """Validation losses are compared across evaluations: the same crops every time."""
    ds = _long_utterances(tmp_path, count=12)
    first, again = (list(validation_batches(ds, 12000, 2000, seed=3)) for _ in range(2))
    assert len(first) == len(again) > 1
    for (k, a), (j, b) in zip(first, again):
        assert k == j and a.indices == b.indices and torch.equal(a.wav, b.wav)
    assert any(a.wav.shape[1] < ds.sizes[a.indices[0]] for _, a in first)  # crops, not whole utterances


def test_fsdd_manifest_and_dataset(tmp_path):
    files = sorted(require_shared(FSDD).glob("*_jackson_1*.wav"))[:6]
    audio = tmp_path / "fsdd"
    audio.mkdir()
    for f in files:
        (audio / f.name).symlink_to(f)
    train, _ = write_manifest(audio, tmp_path / "m", valid_percent=0.0)
    m = read_manifest(train)
    assert [n for _, n in m.entries] == [2 * sf.info(f).frames for f in files]  # 8 kHz files, counted at 16 kHz
    ds = AudioDataset(train)
    assert [ds[i]["wav"].numel() for i in range(len(ds))] == ds.sizes  # the count is the loaded length


def test_bench_data_runs_on_a_few_files(capsys):
    """`benchmarks/bench_data.py` on 3 files per set, one round: it must not rot."""
    corpus = require_shared(LIBRISPEECH)
    spec = importlib.util.spec_from_file_location("bench_data", Path(__file__).parents[1] / "benchmarks" / "bench_data.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up while it loads
    spec.loader.exec_module(bench)
    assert bench.main(["--corpus", str(corpus), "--files", "3", "--repeats", "1"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line[:5] in ("flac ", "ogg  ")}
    assert set(rows) == {"flac", "ogg"}
    for row in rows.values():  # files, audio s, bare x rt, pipeline x rt, overhead, ..., workers/GPU
        assert row[1] == "3" and min(float(row[2]), float(row[3]), float(row[4])) > 0 and int(row[-1]) >= 1
    with pytest.raises(SystemExit):
        bench.main(["--files", "0"])


def test_cli_manifest(tmp_path, capsys):
    for i in range(3):
        _write(tmp_path / "audio" / f"s{i}" / f"{i}.flac", 0.05, seed=i)
    code = main(["manifest", str(tmp_path / "audio"), "--out", str(tmp_path / "m"), "--valid-percent", "0", "--ext", "FLAC"])
    out = capsys.readouterr().out
    assert code == 0 and f"{tmp_path / 'm' / 'train.tsv'} (3 files)" in out and "(0 files)" in out
    assert len(read_manifest(tmp_path / "m" / "train.tsv").entries) == 3
    assert main(["manifest", str(tmp_path / "audio"), "--out", str(tmp_path / "m"), "--ext", "mp3"]) == 2
    assert "no files with extension .mp3" in capsys.readouterr().err
