"""Feature extraction API: batching equals one-at-a-time, shapes, files, per-file errors."""

import random

import numpy as np
import pytest
import soundfile as sf
import torch

from lighthubert import AudioError, LightHuBERT, extract, extract_files
from lighthubert.audio import synthetic_speech
from lighthubert.extract import min_samples


@pytest.fixture
def model(tiny_space):
    torch.manual_seed(0)
    m = LightHuBERT(tiny_space).eval()
    m.set_subnet(tiny_space.sample(random.Random(3)))
    return m


def test_batched_equals_one_at_a_time(model):
    wavs = [synthetic_speech(s, 140.0 + 30 * i, seed=i) for i, s in enumerate((0.31, 0.5, 0.77, 0.2))]
    alone = [extract(model, [w])[0] for w in wavs]
    together = extract(model, wavs, max_batch_samples=10**9)
    for a, b in zip(alone, together):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)  # only summation order differs


def test_shapes_follow_subnet_and_frames(model):
    wav = synthetic_speech(0.5, 150.0)
    (h,) = extract(model, [wav])
    frames = int(model.frame_lengths(torch.tensor([wav.numel()])))
    assert h.shape == (model.subnet.depth + 1, frames, model.subnet.embed_dim)


def test_normalisation_makes_gain_irrelevant(model):
    wav = synthetic_speech(0.4, 150.0)
    torch.testing.assert_close(extract(model, [wav])[0], extract(model, [wav * 7.0 + 0.1])[0], atol=1e-4, rtol=0)


def test_too_short_input_is_rejected(model):
    n = min_samples(model)
    assert extract(model, [torch.randn(n)])[0].shape[1] == 1
    with pytest.raises(AudioError, match="too short"):
        extract(model, [torch.randn(n - 1)])


def test_extract_files_writes_npy_and_reports_bad_files(model, tmp_path):
    good = []
    for i, sec in enumerate((0.3, 0.6)):
        p = tmp_path / "in" / f"utt{i}.wav"
        p.parent.mkdir(exist_ok=True)
        sf.write(p, synthetic_speech(sec, 120.0, seed=i).numpy(), 16000)
        good.append(p)
    empty = tmp_path / "in" / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    short = tmp_path / "in" / "short.wav"
    sf.write(short, np.zeros(5, np.float32), 16000)
    report = extract_files(model, [good[0], empty, short, good[1]], tmp_path / "out", progress=False)
    assert sorted(p.name for p in report.written) == ["utt0.npy", "utt1.npy"]
    assert {p for p, _ in report.failed} == {str(empty), str(short)}
    assert any("empty" in r for _, r in report.failed) and any("too short" in r for _, r in report.failed)
    arr = np.load(tmp_path / "out" / "utt1.npy")
    assert arr.dtype == np.float32 and arr.shape[0] == model.subnet.depth + 1
    np.testing.assert_allclose(arr, extract(model, [torch.from_numpy(sf.read(good[1], dtype="float32")[0])])[0].numpy(), atol=1e-5)

    one = extract_files(model, [good[1]], tmp_path / "layer", layer=model.subnet.depth, progress=False)
    np.testing.assert_array_equal(np.load(one.written[0]), arr[-1])


def test_extract_files_argument_errors(model, tmp_path):
    with pytest.raises(ValueError, match="--layer must be in 0.."):
        extract_files(model, [], tmp_path, layer=99, progress=False)
    with pytest.raises(ValueError, match="would both write a.npy"):
        extract_files(model, [tmp_path / "x" / "a.wav", tmp_path / "y" / "a.flac"], tmp_path, progress=False)
