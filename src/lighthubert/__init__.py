"""LightHuBERT: a once-for-all HuBERT supernet, its distillation, subnet search and export.

Public API::

    model = lighthubert.load("lighthubert_small.pt")          # official or our checkpoints
    model.set_subnet("max")                                    # or a SubnetConfig / JSON
    hidden = lighthubert.extract(model, [wav])[0]              # (layers + 1, frames, embed_dim)
    dense, cfg = model.export()                                # a plain HuBERT of that shape
"""

from .checkpoint import load_model as load
from .safeload import CheckpointError
from .audio import AudioError, load_audio
from .extract import extract, extract_files
from .model import HuBERT, ModelConfig
from .space import SearchSpace, SubnetConfig, count_macs, count_params, count_subnet_params
from .supernet import LightHuBERT

__all__ = [
    "AudioError",
    "CheckpointError",
    "HuBERT",
    "LightHuBERT",
    "ModelConfig",
    "SearchSpace",
    "SubnetConfig",
    "count_macs",
    "count_params",
    "count_subnet_params",
    "extract",
    "extract_files",
    "load",
    "load_audio",
]
