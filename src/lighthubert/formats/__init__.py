"""Checkpoint formats, one file each, behind one small interface (`Format`); and the dispatch
that detects a file's format and loads it (`detect_format`, `model_from_dict`, `load_with_format`).

- `official`: official LightHuBERT `.pt` (ours included), `formats/official.py`
- `fairseq`: fairseq HuBERT / wav2vec 2.0 `.pt`, pre-trained or fine-tuned (`formats/fairseq.py`)
- `s3prl`: s3prl DistilHuBERT `states-*.ckpt` (`formats/s3prl.py`)
- `ctc`: our fine-tuned CTC `.pt` (`formats/ctc.py`)
- `torchaudio`: torchaudio state dicts (`formats/torchaudio.py`)
- `compact`: our compact export folders (`formats/compact.py`)
- `wavlm`: WavLM, transformers folders and the authors' `.pt` (`formats/wavlm.py`)
- `data2vec`: data2vec audio, transformers folders and fairseq `.pt` (`formats/data2vec.py`)
- `transformers`: transformers HuBERT / wav2vec 2.0 folders and our remote-code export (`formats/transformers.py`)

Each format module has `NAME`, `detect(obj)` (`obj`: the dict a `.pt` holds, loaded safely, or
the `Path` of a folder) and `load(obj, source) -> (model, dropped keys)`; where they apply,
`read_config(...)` (its config -> our `ModelConfig` / `SearchSpace`), `to_ours(state) ->
(state, dropped keys)` and `from_ours(state, ...)` (key maps), and the writers
(`config_dict(...)`, `checkpoint(model)`). A new format is one new file and one entry in
`FORMATS`. Shared ground: `safeload.py` (safe reading, strict fitting, `CheckpointError`) and
`formats/keys.py` (key-table helpers).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol, Union

from torch import nn

from ..safeload import CheckpointError, load_file, other_file
from . import compact, ctc, data2vec, fairseq, official, s3prl, torchaudio, transformers, wavlm

log = logging.getLogger(__name__)


class Format(Protocol):
    """What dispatch needs of a format module (its other functions are the format's own API)."""

    NAME: str

    def detect(self, obj: Union[dict[str, Any], Path]) -> bool: ...

    def load(self, obj: Any, source: str) -> tuple[nn.Module, list[str]]: ...


# Detection order matters: `official`, `wavlm` and `data2vec` before `fairseq` (their dicts
# are fairseq-like too), and `transformers` last of the folders (it takes any folder with a
# config.json, and names the model types it reads).
FORMATS: tuple[Format, ...] = (s3prl, ctc, official, wavlm, data2vec, fairseq, torchaudio, compact, transformers)


def detect(obj: Union[dict[str, Any], Path]) -> Format:
    """The first of `FORMATS` that `obj` (a loaded checkpoint dict, or a folder) is; CheckpointError if none."""
    for fmt in FORMATS:
        if fmt.detect(obj):
            return fmt
    if isinstance(obj, Path):
        raise CheckpointError(f"{obj}: a folder without config.json is neither a transformers model nor a compact export")
    raise CheckpointError(
        "not a checkpoint this package reads: expected an official LightHuBERT / fairseq .pt "
        "({'cfg' or 'args', 'model'}), a torchaudio state dict, a transformers folder or a compact export"
    )


def detect_format(obj: Union[dict[str, Any], Path]) -> str:
    """The `NAME` of `obj`'s format (`detect`)."""
    return detect(obj).NAME


def model_from_dict(ckpt: dict[str, Any], source: str) -> tuple[str, nn.Module, list[str]]:
    """The model in an already loaded checkpoint dict: (format name, model, dropped keys)."""
    try:
        fmt = detect(ckpt)
    except CheckpointError as e:
        other = other_file(Path(source)) if Path(source).is_file() else None  # torch.load reads safetensors files too
        raise CheckpointError(f"{source}: {other or e}") from None
    model, dropped = fmt.load(ckpt, source)
    return fmt.NAME, model, dropped


def load_with_format(path: Union[str, Path]) -> tuple[str, nn.Module]:
    """The model in any file or folder this package reads, and its format's name; no subnet
    choice nor finiteness check (`checkpoint.load_model` adds them; `teacher-info` describes a
    damaged model too).

    Raises:
        CheckpointError: every problem with the file, as one line naming it (a config value of
            the wrong type included).
    """
    path = Path(path)
    try:
        if path.is_dir():
            fmt = detect(path)
            kind = fmt.NAME
            model, dropped = fmt.load(path, str(path))
        else:
            kind, model, dropped = model_from_dict(load_file(path), str(path))
    except CheckpointError:
        raise
    except ValueError as e:  # a config that does not fit ModelConfig, SearchSpace, ...
        text = str(e)
        raise CheckpointError(text if text.startswith(str(path)) else f"{path}: {text}") from None
    if dropped:
        log.info("%s: dropped %d head / pre-training tensors (%s ...)", path, len(dropped), dropped[0])
    return kind, model.eval()
