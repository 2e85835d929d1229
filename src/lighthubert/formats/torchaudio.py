"""torchaudio `Wav2Vec2Model` / `HuBERTPretrainModel` state dicts (a plain dict of tensors):
transformers' names (`transformers.py`) under other prefixes, as its `import_huggingface_model`
shows, and no config: the shape is read off the weights."""

from __future__ import annotations

import re
from typing import Any, Union

from torch import Tensor

from ..model import HuBERT, ModelConfig
from ..safeload import CheckpointError, load_dense
from . import transformers

NAME = "torchaudio"

_PREFIXES = [("encoder.feature_projection.", "feature_projection."), ("encoder.transformer.", "encoder.")]
_DROPPED = re.compile(r"^(aux\.|logit_generator\.)")


def detect(obj: Union[dict[str, Any], Any]) -> bool:
    return (isinstance(obj, dict) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())
            and any(".transformer.layers." in k for k in obj))


def to_ours(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Maps a torchaudio `Wav2Vec2Model` / `HuBERTPretrainModel` state dict to ours."""
    hf, dropped = {}, []
    for key, value in state.items():
        key = key.removeprefix("wav2vec2.")
        if _DROPPED.match(key):
            dropped.append(key)
            continue
        if key == "mask_generator.mask_embedding":
            key = "masked_spec_embed"
        for ta, hf_prefix in _PREFIXES:
            if key.startswith(ta):
                key = hf_prefix + key[len(ta):]
                break
        hf[key] = value
    out, more = transformers.to_ours(hf)
    return out, dropped + more


def read_config(ours: dict[str, Tensor], source: str) -> ModelConfig:
    """The shape of a state dict in our keys. Heads assume 64-dim heads (all torchaudio HuBERT /
    wav2vec 2.0 factories), strides the standard 5,2,2,...; a layer-norm front end implies
    pre-LN layers and normalised input, as in torchaudio's large factories."""
    conv, i = [], 0
    while f"feature_extractor.conv_layers.{i}.conv.weight" in ours:
        w = ours[f"feature_extractor.conv_layers.{i}.conv.weight"]
        conv.append([w.shape[0], w.shape[2], 5 if i == 0 else 2])
        i += 1
    layers = len({k.split(".")[2] for k in ours if k.startswith("encoder.layers.")})
    if not conv or not layers:
        raise CheckpointError(f"{source}: no conv front end or Transformer layers found")
    embed = ours["post_extract_proj.weight"].shape[0]
    layer_norm = "feature_extractor.conv_layers.1.norm.weight" in ours
    return ModelConfig(
        conv_layers=conv, extractor_mode="layer_norm" if layer_norm else "default",
        conv_bias="feature_extractor.conv_layers.0.conv.bias" in ours, embed_dim=embed,
        heads=[embed // 64] * layers, ffn_dim=[ours["encoder.layers.0.fc1.weight"].shape[0]] * layers,
        conv_pos=ours["encoder.pos_conv.0.weight_v"].shape[2], conv_pos_groups=embed // ours["encoder.pos_conv.0.weight_v"].shape[1],
        layer_norm_first=layer_norm, pred_dim=0, normalize=layer_norm,
    )


def load(state: dict[str, Tensor], source: str) -> tuple[HuBERT, list[str]]:
    ours, dropped = to_ours(state)
    return load_dense(HuBERT(read_config(ours, source)), ours, source), dropped
