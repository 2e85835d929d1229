"""The MFCC baseline: HTK/Kaldi MFCCs with deltas, on HuBERT's 50 Hz frame grid.

It is the `"mfcc"` upstream of every probe and the feature HuBERT iteration 1 clusters.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from scipy.fft import dct, rfft
from torch import Tensor

from ..audio import SAMPLE_RATE

MFCC = "mfcc"  # the `source` that selects the MFCC baseline instead of a model
MFCC_WINDOW_SECONDS = 0.025  # 400 samples at 16 kHz: HuBERT's receptive field per frame
MFCC_HOP_SECONDS = 0.020  # 320 samples: HuBERT's 50 Hz frame rate (speech front ends use 10 ms)
MFCC_BANDS = 40  # mel filters
MFCC_COEFFS = 13  # cepstra kept, c0 included; deltas and delta-deltas triple this to 39
_LOW_HZ = 20.0  # lowest filter edge, Kaldi's default (`--low-freq`); the highest is Nyquist
_PREEMPHASIS = 0.97
_LOG_FLOOR = 1e-10  # mel energies below this are clamped before the log (digital silence)
_DELTA_REACH = 2  # frames each side in the delta regression (HTK DELTAWINDOW, Kaldi --delta-window)


def mfcc(wav: Tensor, sample_rate: int = SAMPLE_RATE) -> Tensor:
    """MFCCs with deltas and delta-deltas, on HuBERT's frame grid.

    The recipe is HTK's and Kaldi's: per 25 ms frame, remove the DC offset, pre-emphasise
    (0.97, the first sample against itself as in Kaldi), apply a Hamming window, take the power
    spectrum (FFT size the next power of two), sum it through 40 triangular filters spaced
    evenly on the HTK mel scale `2595 log10(1 + f / 700)` from 20 Hz to Nyquist, take the log
    (floored at 1e-10) and an orthonormal DCT-II, and keep c0..c12. Deltas use HTK's regression
    over ±2 frames with the edge frames repeated; delta-deltas are the deltas of the deltas.

    Deliberate differences from those defaults, each for a reason:
      - 20 ms hop instead of 10 ms, and no padding at the edges, so frame t covers samples
        [320 t, 320 t + 400): the same frames, one for one, as HuBERT's convolutional front
        end (`1 + (N - 400) // 320` of them), so MFCC features line up with hidden states
        and with pre-training targets.
      - No dither, so the features are deterministic.
      - No liftering: with an orthonormal DCT, Euclidean distances between cepstra are those
        between the smoothed log-mel spectra, which is what k-means on MFCCs should compare.

    Args:
        wav: (N,) mono waveform, float, at `sample_rate`.
        sample_rate: Hz; window and hop are 25 ms and 20 ms at any rate.

    Returns:
        (T, 39) float32: 13 cepstra, 13 deltas, 13 delta-deltas; T = 1 + (N - 400) // 320 at 16 kHz.

    Raises:
        ValueError: not a 1-D waveform, or shorter than one window.
    """
    if wav.dim() != 1:
        raise ValueError(f"mfcc expects a 1-D (N,) waveform, got shape {tuple(wav.shape)}; down-mix or index the batch first")
    window = round(MFCC_WINDOW_SECONDS * sample_rate)
    hop = round(MFCC_HOP_SECONDS * sample_rate)
    if wav.numel() < window:
        raise ValueError(f"mfcc needs at least {window} samples (25 ms at {sample_rate} Hz), got {wav.numel()}")
    # NumPy, float64: for arrays this small it is several times faster than torch (no thread pool).
    x = wav.detach().cpu().numpy().astype(np.float64)
    frames = np.lib.stride_tricks.sliding_window_view(x, window)[::hop]  # (T, window)
    frames = frames - frames.mean(axis=1, keepdims=True)
    frames = np.concatenate([frames[:, :1] * (1 - _PREEMPHASIS), frames[:, 1:] - _PREEMPHASIS * frames[:, :-1]], axis=1)
    frames = frames * np.hamming(window)
    n_fft = 1 << (window - 1).bit_length()
    power = np.abs(rfft(frames, n=n_fft, axis=1)) ** 2  # (T, n_fft // 2 + 1)
    log_mel = np.log(np.maximum(power @ _mel_filterbank(n_fft, sample_rate).T, _LOG_FLOOR))  # (T, 40)
    cepstra = dct(log_mel, type=2, norm="ortho", axis=1)[:, :MFCC_COEFFS]
    deltas = _deltas(cepstra)
    return torch.from_numpy(np.concatenate([cepstra, deltas, _deltas(deltas)], axis=1).astype(np.float32))


@lru_cache(maxsize=8)
def _mel_filterbank(n_fft: int, sample_rate: int) -> np.ndarray:
    """(40, n_fft // 2 + 1) float64 triangles, linear in mel between neighbouring centres (Kaldi's `MelBanks`)."""
    def to_mel(hz: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    edges = np.linspace(to_mel(np.array(_LOW_HZ)), to_mel(np.array(sample_rate / 2)), MFCC_BANDS + 2)
    bins = to_mel(np.arange(n_fft // 2 + 1) * sample_rate / n_fft)
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    weights = np.clip(np.minimum((bins - left) / (centre - left), (right - bins) / (right - centre)), 0.0, None)
    weights.flags.writeable = False  # shared by every call through the cache
    return weights


def _deltas(x: np.ndarray) -> np.ndarray:
    """HTK's regression `d_t = sum_n n (x_{t+n} - x_{t-n}) / (2 sum_n n^2)`, n = 1..2, edges repeated: (T, C) -> (T, C)."""
    r, t = _DELTA_REACH, x.shape[0]
    padded = np.pad(x, ((r, r), (0, 0)), mode="edge")
    numerator = sum(n * (padded[r + n : r + n + t] - padded[r - n : r - n + t]) for n in range(1, r + 1))
    return numerator / (2 * sum(n * n for n in range(1, r + 1)))
