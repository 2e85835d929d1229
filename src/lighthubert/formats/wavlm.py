"""WavLM teachers: transformers `WavLMModel` folders (and `*ForCTC`, heads dropped) and the
authors' own checkpoints (`{'cfg': WavLMConfig fields, 'model': state_dict}`, as `WavLM.py`
of microsoft/unilm reads them).

WavLM is HuBERT with a gated relative position bias (`ModelConfig.relative_buckets`): our
keys for its weights are the authors' (`self_attn.grep_linear`, `self_attn.grep_a`, the first
layer's `self_attn.relative_attention_bias`), so their checkpoints need only fairseq's conv
renames; transformers' names are mapped here.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Optional, Union

from torch import Tensor

from .. import settings
from ..model import HuBERT, ModelConfig
from ..safeload import CheckpointError, load_dense
from . import fairseq, transformers

NAME = "wavlm"
MODEL_TYPE = "wavlm"  # config.json of a transformers folder
_RELATIVE = re.compile(r"^encoder\.layers\.\d+\.self_attn\.(grep_linear\.(weight|bias)|grep_a|relative_attention_bias\.weight)$")
_HF_RELATIVE = [  # transformers -> ours (the authors' names)
    (r"^encoder\.layers\.(\d+)\.attention\.gru_rel_pos_const$", r"encoder.layers.\1.self_attn.grep_a"),
    (r"^encoder\.layers\.(\d+)\.attention\.gru_rel_pos_linear\.(weight|bias)$", r"encoder.layers.\1.self_attn.grep_linear.\2"),
    (r"^encoder\.layers\.(\d+)\.attention\.rel_attn_embed\.weight$", r"encoder.layers.\1.self_attn.relative_attention_bias.weight"),
]
FIRST_BIAS = "encoder.layers.0.self_attn.relative_attention_bias.weight"


def detect(obj: Union[dict[str, Any], Path]) -> bool:
    """A transformers folder of `model_type` wavlm, or the authors' `{'cfg', 'model'}` dict,
    whose flat `cfg` (no fairseq `cfg['model']`) names WavLM's relative position settings."""
    if isinstance(obj, Path):
        cfg = obj / "config.json"
        return cfg.is_file() and settings.read_json(cfg).get("model_type") == MODEL_TYPE
    cfg = obj.get("cfg")
    return (isinstance(cfg, dict) and isinstance(obj.get("model"), dict) and not isinstance(cfg.get("model"), dict)
            and ("relative_position_embedding" in cfg or "gru_rel_pos" in cfg))


def read_config(cfg: dict[str, Any], normalize: Optional[bool] = None, folder: bool = False) -> ModelConfig:
    """ModelConfig of a transformers `WavLMConfig` dict (`folder`) or of the authors' `cfg`.

    transformers' WavLM config holds wav2vec 2.0's fields plus `num_buckets` and
    `max_bucket_distance`, and always gates the bias. The authors' holds fairseq's names plus
    `relative_position_embedding`, `num_buckets`, `max_distance` and `gru_rel_pos`; its
    `normalize` says whether the input is normalised (True for Large).
    """
    if folder:
        base = transformers.read_config({**cfg, "model_type": "wav2vec2"}, normalize)
        return dataclasses.replace(base, relative_buckets=int(cfg.get("num_buckets", 320)),
                                   relative_max_distance=int(cfg.get("max_bucket_distance", 800)))
    base = fairseq.read_config(cfg, cfg.get("normalize", False) if normalize is None else normalize)
    if not cfg.get("relative_position_embedding", False):
        return base
    if not cfg.get("gru_rel_pos", False):
        raise CheckpointError("a WavLM config with relative_position_embedding but without gru_rel_pos (an ungated bias) "
                              "is not supported; every released WavLM gates it")
    return dataclasses.replace(base, relative_buckets=int(cfg.get("num_buckets", 320)),
                               relative_max_distance=int(cfg.get("max_distance", 1280)))


def to_ours(state: dict[str, Tensor], folder: bool = False) -> tuple[dict[str, Tensor], list[str]]:
    """A transformers WavLM state dict (`folder`; `wavlm.` prefix and heads allowed) or the
    authors' one -> ours, and the dropped head keys."""
    relative, rest = {}, {}
    for key, value in state.items():
        if folder:
            key = key.removeprefix("wavlm.")
            new = next((re.sub(p, r, key) for p, r in _HF_RELATIVE if re.match(p, key)), None)
        else:
            new = key if _RELATIVE.match(key) else None
        (relative if new else rest)[new or key] = value
    ours, dropped = (transformers.to_ours if folder else fairseq.to_ours)(rest)
    return {**ours, **relative}, dropped


def load(obj: Union[dict[str, Any], Path], source: str) -> tuple[HuBERT, list[str]]:
    """The WavLM teacher in a folder or an authors' checkpoint dict: (model, dropped keys)."""
    folder = isinstance(obj, Path)
    if folder:
        cfg = read_config(settings.read_json(obj / "config.json"), transformers.processor_normalize(obj), folder=True)
        state, dropped = to_ours(transformers.read_weights(obj), folder=True)
    else:
        cfg = read_config(obj["cfg"])
        state, dropped = to_ours(obj["model"])
    if "post_extract_proj.weight" not in state:
        raise CheckpointError(f"{source}: no post_extract_proj (the authors' model drops it when the conv width "
                              f"equals the embed dim, {cfg.embed_dim}); such a WavLM is not supported")
    if cfg.relative_buckets and FIRST_BIAS not in state:
        raise CheckpointError(f"{source}: a WavLM checkpoint without its relative-attention weights ({FIRST_BIAS}): "
                              "its config has a relative position bias, its weights do not; the file is cut or "
                              "not WavLM's")
    return load_dense(HuBERT(cfg), state, source), dropped
