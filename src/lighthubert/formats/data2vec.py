"""data2vec audio teachers: transformers `Data2VecAudioModel` folders (and `*ForCTC`, heads
dropped) and fairseq `data2vec_audio` `.pt` files (pre-trained, or CTC fine-tuned with the
encoder's config in `w2v_args`).

data2vec audio is wav2vec 2.0's encoder (layer-norm front end, post-LN layers, normalised
input) with a positional encoder of several plain convs with LayerNorm
(`ModelConfig.pos_conv_layers`); our keys for it are fairseq's (`encoder.pos_conv.{j}.0.*`).
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

NAME = "data2vec"
MODEL_TYPE = "data2vec-audio"  # config.json of a transformers folder
FAIRSEQ_NAME = "data2vec_audio"  # cfg['model']['_name'] of a fairseq checkpoint
_POS_CONV = re.compile(r"^encoder\.pos_conv\.\d+\.0\.(weight|bias)$")  # fairseq's = ours
_HF_POS_CONV = (r"^encoder\.pos_conv_embed\.layers\.(\d+)\.conv\.(weight|bias)$", r"encoder.pos_conv.\1.0.\2")
_FAIRSEQ_DROPPED = re.compile(r"^(_ema$|ema\.)")  # the EMA teacher data2vec's trainer keeps beside the model


def _fairseq_model_cfg(obj: dict[str, Any]) -> tuple[Optional[dict[str, Any]], dict[str, Any]]:
    """(cfg['model'], cfg['task']) of a fairseq data2vec checkpoint, the encoder's own for a
    fine-tuned one; (None, {}) when the file is not one."""
    cfg = obj.get("cfg")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        return None, {}
    model, task = cfg["model"], cfg.get("task") or {}
    inner = model.get("w2v_args")
    if isinstance(inner, dict) and isinstance(inner.get("model"), dict):  # fine-tuned (wav2vec_ctc)
        model, task = inner["model"], inner.get("task") or task
    return (model, task) if model.get("_name") == FAIRSEQ_NAME else (None, {})


def detect(obj: Union[dict[str, Any], Path]) -> bool:
    """A transformers folder of `model_type` data2vec-audio or a fairseq `data2vec_audio` dict."""
    if isinstance(obj, Path):
        cfg = obj / "config.json"
        return cfg.is_file() and settings.read_json(cfg).get("model_type") == MODEL_TYPE
    return _fairseq_model_cfg(obj)[0] is not None


def read_config(cfg: dict[str, Any], normalize: Optional[bool] = None, folder: bool = False) -> ModelConfig:
    """ModelConfig of a transformers `Data2VecAudioConfig` dict (`folder`) or a fairseq `cfg['model']`.

    transformers' `num_conv_pos_embeddings` is the number of positional convs and
    `conv_pos_kernel_size` their kernel; fairseq's `pos_conv_depth` the number and `conv_pos`
    the kernel of all of them together (each gets max(3, conv_pos // depth), its rule).
    """
    if folder:
        layers = int(cfg.get("num_conv_pos_embeddings", 5))
        as_w2v = {**cfg, "model_type": "wav2vec2", "feat_extract_norm": "layer", "do_stable_layer_norm": False,
                  "num_conv_pos_embeddings": int(cfg.get("conv_pos_kernel_size", 19))}
        return dataclasses.replace(transformers.read_config(as_w2v, normalize), pos_conv_layers=layers)
    layers = int(cfg.get("pos_conv_depth", 5))
    kernel = max(3, int(cfg.get("conv_pos", 95)) // layers)
    as_w2v = {**cfg, "pos_conv_depth": 1, "conv_pos": kernel}
    as_w2v.setdefault("extractor_mode", "layer_norm")
    base = fairseq.read_config(as_w2v, True if normalize is None else normalize)
    return dataclasses.replace(base, pos_conv_layers=layers) if layers > 1 else base


def to_ours(state: dict[str, Tensor], folder: bool = False) -> tuple[dict[str, Tensor], list[str]]:
    """A transformers Data2VecAudio state dict (`folder`; `data2vec_audio.` prefix and heads
    allowed) or a fairseq one -> ours, and the dropped keys."""
    pos, rest, dropped = {}, {}, []
    for key, value in state.items():
        if folder:
            key = key.removeprefix("data2vec_audio.")
            if re.match(_HF_POS_CONV[0], key):
                pos[re.sub(*_HF_POS_CONV, key)] = value
                continue
        elif _FAIRSEQ_DROPPED.match(key):
            dropped.append(key)
            continue
        elif _POS_CONV.match(key.removeprefix("w2v_encoder.w2v_model.")):
            pos[key.removeprefix("w2v_encoder.w2v_model.")] = value
            continue
        rest[key] = value
    ours, more = (transformers.to_ours if folder else fairseq.to_ours)(rest)
    return {**ours, **pos}, dropped + more


def load(obj: Union[dict[str, Any], Path], source: str) -> tuple[HuBERT, list[str]]:
    """The data2vec audio teacher in a folder or a fairseq checkpoint dict: (model, dropped keys)."""
    if isinstance(obj, Path):
        cfg = read_config(settings.read_json(obj / "config.json"), transformers.processor_normalize(obj), folder=True)
        state, dropped = to_ours(transformers.read_weights(obj), folder=True)
    else:
        mcfg, task = _fairseq_model_cfg(obj)
        if not isinstance(obj.get("model"), dict):
            raise CheckpointError(f"{source}: fairseq data2vec checkpoint without a 'model' state dict")
        cfg = read_config(mcfg, task.get("normalize"))
        state, dropped = to_ours(obj["model"])
    return load_dense(HuBERT(cfg), state, source), dropped
