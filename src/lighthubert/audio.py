"""Audio in: soundfile loading, mono down-mix, resampling to 16 kHz, normalisation, padding,
and the one error every reader of audio raises (`AudioError`)."""

from __future__ import annotations

from math import gcd
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from scipy.signal import resample_poly
from torch import Tensor

from . import settings

SAMPLE_RATE = 16000
AUDIO_EXTENSIONS = ("flac", "wav", "ogg")  # what manifests look for by default
SKIP_KINDS = ("missing", "unreadable", "empty", "non-finite", "silent", "too short")
READ_ERRORS = (sf.LibsndfileError, RuntimeError, OSError, TypeError)  # what soundfile raises on a bad file


class AudioError(ValueError):
    """An audio file that cannot be used: unreadable, empty, non-finite or too short.

    `kind` (one of `SKIP_KINDS`, or "unusable" when the raiser did not say) lets the training
    data pipeline count skipped files by cause; the message is one line naming the file.
    """

    def __init__(self, message: str, kind: str = "unusable") -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def reason(self) -> str:
        """`"<kind>: <message>"`, the form `AudioDataset` reports and `SkipCounter` parses."""
        return f"{self.kind}: {self}"


MIN_SAMPLE_RATE = 4000  # Hz: below it no speech band survives (telephone speech is 8 kHz)


def load_audio(path: Union[str, Path], sample_rate: int = SAMPLE_RATE, min_samples: int = 0) -> Tensor:
    """Reads any soundfile format as mono float32 at `sample_rate`.

    Channels are averaged; other rates are resampled with a polyphase filter
    (`scipy.signal.resample_poly`, Kaiser window). A 16 kHz mono file is returned as decoded,
    with no copy: the training pipeline should cost little more than decoding
    (`benchmarks/bench_data.py`).

    Args:
        min_samples: fewer samples (after resampling) is an error, e.g. shorter than a frame.

    Returns:
        (N,) float32 waveform.

    Raises:
        AudioError: missing, unreadable, empty, non-finite or too short audio, or a sample rate
            below `MIN_SAMPLE_RATE`; one line naming the file.
    """
    try:
        data, sr = sf.read(str(path), dtype="float32")  # (N,) for mono, (N, C) otherwise
    except READ_ERRORS as e:
        # libsndfile says "System error." for a missing file and "Format not recognised." for a
        # 0-byte one; name those causes so a skipped-files summary can count them.
        if not Path(path).exists():
            raise AudioError(f"{path}: cannot read audio (file not found)", "missing") from None
        if Path(path).is_file() and Path(path).stat().st_size == 0:
            raise AudioError(f"{path}: empty file (0 bytes)", "empty") from None
        raise AudioError(f"{path}: cannot read audio ({settings.first_line(e)})", "unreadable") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: empty audio (0 samples)", "empty")
    if sr < MIN_SAMPLE_RATE:  # a 1 Hz header would be "resampled" into seconds of nothing
        raise AudioError(f"{path}: sample rate {sr} Hz is below {MIN_SAMPLE_RATE} Hz, too low for speech; "
                         "the file's header is likely wrong", "sample rate too low")
    x = data if data.ndim == 1 else data.mean(axis=1)
    if sr != sample_rate:
        g = gcd(int(sr), sample_rate)
        x = resample_poly(x, sample_rate // g, int(sr) // g).astype(np.float32)
    if not (np.isfinite(x.min()) and np.isfinite(x.max())):  # NaN and inf reach the extremes: no array of flags
        raise AudioError(f"{path}: audio contains NaN or infinite samples", "non-finite")
    if x.shape[0] < min_samples:
        raise AudioError(f"{path}: {x.shape[0]} samples at {sample_rate} Hz is too short; at least {min_samples} needed", "too short")
    return torch.from_numpy(np.ascontiguousarray(x))


def normalize(wav: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
    """Zero mean, unit variance per utterance: s3prl's `F.layer_norm(wav, wav.shape)` on each
    (N,) waveform, and on each row of a (B, N) batch.

    Over the last axis only: `F.layer_norm(batch, batch.shape)` would normalise a whole batch
    at once, so an utterance's input would depend on the others in its batch. With `lengths`
    (B,), each row's statistics are those of its valid samples and the padding stays zero, so
    a padded row equals its utterance normalised alone.
    """
    if lengths is None:
        return F.layer_norm(wav, wav.shape[-1:])
    valid = torch.arange(wav.size(-1), device=wav.device)[None, :] < lengths.to(wav.device)[:, None]
    count = lengths.to(wav.device, wav.dtype)[:, None]
    mean = (wav * valid).sum(-1, keepdim=True) / count
    var = ((wav - mean).square() * valid).sum(-1, keepdim=True) / count
    return torch.where(valid, (wav - mean) * torch.rsqrt(var + 1e-5), wav.new_zeros(()))


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
