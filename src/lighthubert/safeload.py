"""Reading weights safely and fitting them strictly: the ground every format file stands on.

`load_file` is `torch.load(weights_only=True)` (no pickled code runs) with one-line errors that
name what a refused file is; `read_safetensors` the same for safetensors files; `load_state`
fits a state dict to a model strictly, naming the first key or shape that does not fit.
Nothing here knows any checkpoint format (see `formats/`).
"""

from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as safetensors_load_file
from torch import Tensor

from . import settings
from .model import HuBERT


class CheckpointError(ValueError):
    """A file that is not a checkpoint we can read, or one whose contents do not fit."""


class FairseqDictionary:
    """Inert stand-in for `fairseq.data.dictionary.Dictionary` inside fairseq checkpoints.

    The only non-builtin class in `hubert_base_ls960.pt`; its state (symbols, counts) is kept
    as plain attributes, no fairseq code is imported or run.
    """

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


# The allow-list for `weights_only` loading beyond tensors and builtin containers.
_SAFE_GLOBALS = [(FairseqDictionary, "fairseq.data.dictionary.Dictionary"), argparse.Namespace]


def load_file(path: Union[str, Path]) -> dict[str, Any]:
    """`torch.load` with `weights_only=True`: tensors and plain containers only, no pickled code.

    fairseq's `Dictionary` and `argparse.Namespace` (old fairseq `args`) are allowed as inert
    stand-ins; anything else that names a class is refused.

    Raises:
        CheckpointError: missing, truncated, not a PyTorch file, or referring to a class
            that is not allowed; one line saying which.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch < 2.13: "Unsupported global: GLOBAL x.y"; 2.13: "unsupported GLOBAL x.y whose module x is blocked"
        found = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", str(e), re.IGNORECASE)
        if found:
            raise CheckpointError(
                f"{path}: the checkpoint refers to the Python class {found.group(1)}, which safe loading "
                "(weights_only=True) does not run; re-save it as plain tensors and dicts"
            ) from None
        raise CheckpointError(f"{path}: {other_file(path) or f'not a PyTorch checkpoint ({settings.first_line(e)})'}") from None
    except Exception as e:  # torch.load on arbitrary bytes raises many types (IndexError, EOFError, ...)
        other = other_file(path) or f"not a readable PyTorch checkpoint, maybe truncated ({settings.first_line(e)})"
        raise CheckpointError(f"{path}: {other}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(obj).__name__}")
    return obj


def other_file(path: Path) -> Optional[str]:
    """What a file that `torch.load` refused is, when its first bytes tell: so that the user
    reads "an ONNX model" rather than torch's advice to load it with weights_only=False."""
    with open(path, "rb") as f:
        head = f.read(512)
    if path.suffix.lower() == ".onnx" or (head[:1] == b"\x08" and b"pytorch" in head[:32]):
        return ("an ONNX model (an export, for onnxruntime), not a checkpoint; give the checkpoint it was exported "
                "from, or run it with onnxruntime")
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "a safetensors weight file, not a checkpoint; give the folder that holds it and its config.json"
    if head.startswith(b"\x93NUMPY"):
        return "a NumPy array (such as extract's output), not a checkpoint"
    if head.startswith((b"RIFF", b"fLaC", b"OggS", b"ID3")):
        return "an audio file, not a checkpoint; audio files go after the options, the checkpoint after --checkpoint"
    if head and _is_text(head):
        return "a text file, not a PyTorch checkpoint"
    return None


def _is_text(head: bytes) -> bool:
    """UTF-8 without control characters other than tab and newlines (a cut last character allowed)."""
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:
            return False
    return not any(b < 32 and b not in b"\t\r\n" for b in head)


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """A safetensors file's tensors; CheckpointError naming the file when it is damaged."""
    try:
        return safetensors_load_file(path)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file, maybe truncated ({settings.first_line(e)})") from None


def load_state(model: torch.nn.Module, state: dict[str, Tensor], source: str) -> None:
    """`load_state_dict(strict=True)` with one-line errors naming the missing, extra or misshapen key."""
    own = model.state_dict()
    odd = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if odd:
        raise CheckpointError(f"{source}: {odd[0]} is a {type(state[odd[0]]).__name__}, not a tensor; the weights are damaged")
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    if missing or extra:
        raise CheckpointError(
            f"{source}: does not fit the model: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {extra[:3]}{'...' if len(extra) > 3 else ''}"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"{source}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
    model.load_state_dict(state, strict=True)


def load_dense(model: HuBERT, state: dict[str, Tensor], source: str) -> HuBERT:
    """`load_state` into a dense model whose format may lack `mask_emb` (transformers drops it,
    s3prl's DistilHuBERT has none): a zero one is used, as it plays no part at inference."""
    if "mask_emb" not in state:
        state["mask_emb"] = torch.zeros(model.cfg.embed_dim)
    load_state(model, state, source)
    return model
