"""Audio loading: formats, down-mix, resampling, bad files; on generated audio and FSDD."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.signal import resample_poly

from lighthubert.data import AudioError, collate, load_audio, normalize, synthetic_speech

FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd" / "recordings"


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
    files = sorted(FSDD.glob("*.wav"))[:1] if FSDD.is_dir() else []
    if not files:
        pytest.skip(f"FSDD recordings not found at {FSDD}")
    info = sf.info(files[0])
    wav = load_audio(files[0])
    assert wav.numel() == pytest.approx(info.frames * 16000 / info.samplerate, abs=2)
    assert torch.isfinite(wav).all() and wav.abs().max() > 0
