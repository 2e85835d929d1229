"""Loading any model this package reads: `load_model` (behind `lighthubert.load`), teachers,
the dense encoder behind a model, and a run's own weights on resume.

Which formats exist and how each is read is `formats/`; nothing here unpickles code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import torch

from .formats import load_with_format, model_from_dict
from .model import HuBERT, ModelConfig
from .safeload import CheckpointError, load_state
from .space import SubnetConfig
from .supernet import LightHuBERT


def load_model(path: Union[str, Path], subnet: Union[str, SubnetConfig, dict, None] = None):
    """Loads any model this package reads, safely; the entry point behind `lighthubert.load`.

    Args:
        path: an official-format LightHuBERT checkpoint (ours included), a fairseq HuBERT /
            wav2vec 2.0 `.pt`, a torchaudio state dict, a transformers folder, or a compact export.
        subnet: for a supernet, `default` / `max` / `min` / JSON / a `SubnetConfig`; None keeps
            the checkpoint's own choice (s3prl's: `max` for stage 1, the space default otherwise).

    Returns:
        A `LightHuBERT` (supernets) or `HuBERT` (everything else), in eval mode.

    Raises:
        CheckpointError: unreadable or unsupported files, keys or shapes that do not fit.
    """
    kind, model = load_with_format(path)
    refuse_non_finite(model, path)
    if subnet is not None:
        if not isinstance(model, LightHuBERT):
            raise CheckpointError(f"{path} is a fixed-shape {kind} model; a subnet can only be chosen for a supernet")
        model.set_subnet(subnet)
    return model


def refuse_non_finite(model: torch.nn.Module, source: Union[str, Path]) -> None:
    """Raises CheckpointError when a weight is NaN or infinite: such a model turns every output
    (features, exports, teacher targets) into NaN without another error."""
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{source}: non-finite weights ({len(bad)} tensors, e.g. {bad[0]}); "
                              "use an earlier checkpoint of the run")


def dense_model(model: HuBERT, subnet: Union[str, SubnetConfig, dict, None] = None) -> tuple[HuBERT, ModelConfig]:
    """The plain dense encoder behind any loaded model: a supernet's subnet (default: its active
    one) exported, a DistilHuBERT student or CTC model without its heads, or `model` itself."""
    if isinstance(model, LightHuBERT):
        return model.export(subnet)
    if subnet is not None:
        raise ValueError("a subnet can only be chosen for a supernet checkpoint; this model has a fixed shape")
    if type(model) is not HuBERT:  # DistilHuBERT's prediction heads, a CTC head, ...: not the encoder's
        return model.without_heads(), model.cfg
    return model, model.cfg


def load_teacher(path: Union[str, Path]) -> HuBERT:
    """Any model this package loads, as a frozen dense teacher: a supernet at its active subnet
    (exported, so its widths are the subnet's), a DistilHuBERT without heads; eval mode, no
    layerdrop, no gradients.

    Raises:
        CheckpointError: unreadable, or with non-finite weights (a teacher that would turn every
            target into NaN).
    """
    teacher, _ = dense_model(load_model(path))
    teacher.encoder.layerdrop = 0.0
    return teacher.eval().requires_grad_(False)


def restore_weights(model: torch.nn.Module, ckpt: dict[str, Any], source: str) -> None:
    """Loads the weights of an already read checkpoint dict (any format `load` reads) into
    `model` strictly, e.g. a training run's own checkpoint on --resume."""
    _, loaded, _ = model_from_dict(ckpt, source)
    load_state(model, loaded.state_dict(), source)
