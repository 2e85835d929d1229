"""Feature extraction: waveforms or audio files -> every hidden state, batched by length.

A padded batch gives the same valid frames as one utterance at a time (see `HuBERT.forward`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from . import atomic
from .audio import AudioError, collate, load_audio, normalize
from .data import batch_by_size
from .model import HuBERT
from .progress import progress_bar


def min_samples(model: HuBERT) -> int:
    """Shortest waveform that yields one frame (400 samples, 25 ms, for HuBERT's front end)."""
    return model.feature_extractor.min_samples(1)


class ModelBatch(NamedTuple):
    """A padded batch ready for `model(wav, lengths)`, and where its rows go."""

    indices: list[int]  # each row's position in the input list
    wav: Tensor  # (B, N_max) on the model's device and dtype, normalised when the model expects it
    lengths: Optional[Tensor]  # (B,) valid samples; None for a batch of one (nothing padded)
    frames: Tensor  # (B,) valid output frames per row, on the CPU


def model_batches(model: HuBERT, wavs: Sequence[Tensor], max_batch_samples: int) -> Iterator[ModelBatch]:
    """The waveforms as model-ready batches of similar length (`batch_by_size`): one path for
    every inference caller (`extract`, `asr.recognise`), so that their inputs cannot differ.
    Puts `model` in eval mode. Each waveform is normalised alone (s3prl's rule), a batch at a
    time, so no second copy of all inputs is held.

    Raises:
        AudioError: a waveform shorter than one frame's receptive field (before any batch).
    """
    model.eval()
    shortest = min_samples(model)
    for i, w in enumerate(wavs):
        if w.numel() < shortest:
            raise AudioError(f"input {i}: {w.numel()} samples is too short; at least {shortest} ({shortest / 16:.0f} ms) needed")
    device, dtype = model.mask_emb.device, model.mask_emb.dtype
    sizes = [w.numel() for w in wavs]
    for idx in batch_by_size(sizes, max(max_batch_samples, max(sizes, default=0))):  # a long file goes alone
        chosen = [wavs[i].float() for i in idx]
        batch, lengths = collate([normalize(w) for w in chosen] if model.cfg.normalize else chosen)
        yield ModelBatch(idx, batch.to(device, dtype), lengths if len(idx) > 1 else None, model.frame_lengths(lengths))


@torch.inference_mode()
def extract(model: HuBERT, wavs: Sequence[Tensor], max_batch_samples: int = 16000 * 60) -> list[Tensor]:
    """Every hidden state of each waveform.

    Args:
        model: any `HuBERT` (a `LightHuBERT` runs its active subnet); put in eval mode here.
        wavs: (N_i,) 16 kHz mono waveforms, raw; normalised here when `model.cfg.normalize`.
        max_batch_samples: padded samples per forward pass (memory bound).

    Returns:
        One (depth + 1, T_i, E) float tensor per waveform, on the CPU; index 0 is the
        `post_extract_proj` output, index i the output of layer i.

    Raises:
        AudioError: a waveform shorter than one frame's receptive field.
    """
    out: list[Optional[Tensor]] = [None] * len(wavs)
    for b in model_batches(model, wavs, max_batch_samples):
        hidden = torch.stack(model(b.wav, b.lengths).hidden_states, dim=1).float().cpu()  # (B, L+1, T, E)
        for row, i in enumerate(b.indices):
            out[i] = hidden[row, :, : int(b.frames[row])].clone()
    return out  # type: ignore[return-value]


def finite_features(feats: Tensor, wav: Tensor, path: Union[str, Path]) -> Tensor:
    """`feats` of the audio file `path` (waveform `wav`), if every value is finite.

    Finite audio can still overflow the model: a float WAV peaking at 1e30 gives NaN features,
    which would pass as a result (an all-NaN `.npy`, a probe trained on NaN).

    Raises:
        AudioError: a NaN or infinite feature; names the file and its peak amplitude.
    """
    if not torch.isfinite(feats).all():
        raise AudioError(f"{path}: the model's features are not finite (NaN or inf); the audio peaks at "
                         f"{float(wav.abs().max()):.3g}, so check its scale (float audio is expected in [-1, 1])",
                         "non-finite features")
    return feats


@dataclass
class ExtractReport:
    """What `extract_files` wrote and which inputs failed (with the reason)."""

    written: list = field(default_factory=list)  # output paths
    failed: list = field(default_factory=list)  # (input path, one-line reason)


def extract_files(
    model: HuBERT,
    paths: Sequence[Union[str, Path]],
    out_dir: Union[str, Path],
    layer: Optional[int] = None,
    max_batch_samples: int = 16000 * 60,
    files_per_chunk: int = 32,
    progress: bool = True,
) -> ExtractReport:
    """Writes `<out_dir>/<stem>.npy` per audio file: float32 (depth + 1, frames, E), or
    (frames, E) with `layer`. A bad file is skipped and listed in the report's `failed`
    with its reason (not logged, so that a caller prints it once); the others are written.

    Raises:
        ValueError: `layer` out of range, or two inputs that would write the same file.
        OSError: an output file could not be written (a full disk); names it. No `.tmp` file
            is left behind, and the files written before it stay.
        KeyboardInterrupt: Ctrl-C, saying how many files were written.
    """
    depth = len(model.encoder.kept_layers)
    if layer is not None and not 0 <= layer <= depth:
        raise ValueError(f"--layer must be in 0..{depth} (0 = projected CNN features, {depth} = last layer), got {layer}")
    stems: dict[str, Path] = {}
    for p in map(Path, paths):
        if p.stem in stems:
            raise ValueError(f"{stems[p.stem]} and {p} would both write {p.stem}.npy; extract them into different --output folders")
        stems[p.stem] = p
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ExtractReport()
    shortest = min_samples(model)
    items = list(stems.values())
    with progress_bar(total=len(stems), unit="file", disable=not progress, desc="extract") as bar:  # closed on Ctrl-C too
        try:
            for start in range(0, len(items), files_per_chunk):
                loaded: list[tuple[Path, Tensor]] = []
                for p in items[start : start + files_per_chunk]:
                    try:
                        loaded.append((p, load_audio(p, min_samples=shortest)))
                    except AudioError as e:
                        report.failed.append((str(p), str(e)))  # the caller reports it (the CLI: one line per file)
                        bar.update(1)
                for (p, wav), feats in zip(loaded, extract(model, [w for _, w in loaded], max_batch_samples)):
                    bar.update(1)
                    try:
                        finite_features(feats, wav, p)
                    except AudioError as e:
                        report.failed.append((str(p), str(e)))
                        continue
                    target = out_dir / f"{p.stem}.npy"
                    atomic.write_atomic(target, lambda tmp: _save_npy((feats if layer is None else feats[layer]).numpy(), tmp))
                    report.written.append(target)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(f"interrupted after {len(report.written)} of {len(items)} file(s); those in "
                                    f"{out_dir} are complete") from None
    return report


def _save_npy(arr: np.ndarray, path: Path) -> None:
    """`np.save` to exactly `path` (given a name, it would append `.npy` to the temporary one)."""
    with open(path, "wb") as f:
        np.save(f, arr.astype(np.float32, copy=False))
