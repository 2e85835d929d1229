"""Audio in: soundfile loading, mono down-mix, resampling to 16 kHz, normalisation, padding."""

from __future__ import annotations

from math import gcd
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from scipy.signal import resample_poly
from torch import Tensor

SAMPLE_RATE = 16000


class AudioError(ValueError):
    """An audio file that cannot be used: unreadable, empty, non-finite or too short."""


def load_audio(path: Union[str, Path], sample_rate: int = SAMPLE_RATE) -> Tensor:
    """Reads any soundfile format as mono float32 at `sample_rate`.

    Channels are averaged; other rates are resampled with a polyphase filter
    (`scipy.signal.resample_poly`, Kaiser window).

    Returns:
        (N,) float32 waveform.

    Raises:
        AudioError: unreadable, empty or non-finite audio; one line naming the file.
    """
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError) as e:
        raise AudioError(f"{path}: cannot read audio ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: empty audio (0 samples)")
    x = data.mean(axis=1)
    if sr != sample_rate:
        g = gcd(int(sr), sample_rate)
        x = resample_poly(x, sample_rate // g, int(sr) // g).astype(np.float32)
    if not np.isfinite(x).all():
        raise AudioError(f"{path}: audio contains NaN or infinite samples")
    return torch.from_numpy(np.ascontiguousarray(x))


def normalize(wav: Tensor) -> Tensor:
    """Zero mean, unit variance per utterance: s3prl's `F.layer_norm(wav, wav.shape)`."""
    return F.layer_norm(wav, wav.shape)


def collate(wavs: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Pads (N_i,) waveforms at the end into (B, N_max); returns them and their lengths (B,)."""
    lengths = torch.tensor([w.numel() for w in wavs])
    batch = wavs[0].new_zeros(len(wavs), int(lengths.max()))
    for i, w in enumerate(wavs):
        batch[i, : w.numel()] = w
    return batch, lengths


def synthetic_speech(seconds: float, f0: float, seed: int = 0, sample_rate: int = SAMPLE_RATE) -> Tensor:
    """Deterministic speech-like audio: a glottal pulse train with vibrato through three
    formant resonators, alternating with noise bursts; for demos and tests, never training.

    Returns:
        (N,) float32 waveform with peak 0.9.
    """
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * sample_rate)
    t = torch.arange(n) / sample_rate
    pitch = f0 * (1 + 0.05 * torch.sin(2 * torch.pi * 4.0 * t))
    phase = torch.cumsum(pitch / sample_rate, 0)
    voiced = sum(torch.sin(2 * torch.pi * k * phase) / k for k in range(1, 16))
    formants = torch.zeros(n)
    for fc in (500.0 + 100 * seed, 1500.0, 2500.0):
        formants += torch.sin(2 * torch.pi * fc * t) * torch.exp(-((phase % 1.0) * 8))
    syllable = (torch.sin(2 * torch.pi * 3.0 * t) > -0.3).float()
    noise = torch.randn(n, generator=g)
    x = syllable * (0.6 * voiced + 0.4 * formants * voiced.abs()) + (1 - syllable) * 0.3 * noise
    return (0.9 * x / x.abs().max()).float()
