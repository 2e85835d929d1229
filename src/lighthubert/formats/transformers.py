"""transformers folders (`config.json` + `model.safetensors`, sharded or `pytorch_model.bin`):
`HubertModel` / `Wav2Vec2Model` and their task models (the encoder kept), and our own
remote-code export (`model_type: lighthubert`). `export.save_hf` writes them with
`from_ours` and `config_dict`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional, Union

from torch import Tensor

from .. import settings
from ..model import HuBERT, ModelConfig
from ..safeload import CheckpointError, load_dense, load_file, read_safetensors
from .keys import WEIGHT_NORM, map_key

NAME = "transformers"

# transformers HubertModel / Wav2Vec2Model <-> ours; `{i}` is a layer index, `{p}` weight|bias.
_NAMES = [
    ("masked_spec_embed", "mask_emb"),
    ("feature_extractor.conv_layers.{i}.conv.{p}", "feature_extractor.conv_layers.{i}.conv.{p}"),
    ("feature_extractor.conv_layers.{i}.layer_norm.{p}", "feature_extractor.conv_layers.{i}.norm.{p}"),
    ("feature_projection.layer_norm.{p}", "layer_norm.{p}"),
    ("feature_projection.projection.{p}", "post_extract_proj.{p}"),
    ("encoder.pos_conv_embed.conv.weight_g", "encoder.pos_conv.0.weight_g"),
    ("encoder.pos_conv_embed.conv.weight_v", "encoder.pos_conv.0.weight_v"),
    ("encoder.pos_conv_embed.conv.bias", "encoder.pos_conv.0.bias"),
    ("encoder.layer_norm.{p}", "encoder.layer_norm.{p}"),
    ("encoder.layers.{i}.attention.q_proj.{p}", "encoder.layers.{i}.self_attn.q_proj.{p}"),
    ("encoder.layers.{i}.attention.k_proj.{p}", "encoder.layers.{i}.self_attn.k_proj.{p}"),
    ("encoder.layers.{i}.attention.v_proj.{p}", "encoder.layers.{i}.self_attn.v_proj.{p}"),
    ("encoder.layers.{i}.attention.out_proj.{p}", "encoder.layers.{i}.self_attn.out_proj.{p}"),
    ("encoder.layers.{i}.layer_norm.{p}", "encoder.layers.{i}.self_attn_layer_norm.{p}"),
    ("encoder.layers.{i}.feed_forward.intermediate_dense.{p}", "encoder.layers.{i}.fc1.{p}"),
    ("encoder.layers.{i}.feed_forward.output_dense.{p}", "encoder.layers.{i}.fc2.{p}"),
    ("encoder.layers.{i}.final_layer_norm.{p}", "encoder.layers.{i}.final_layer_norm.{p}"),
]
# Heads of transformers' task models and pre-training extras that a teacher does not use.
_DROPPED = re.compile(r"^(lm_head\.|projector\.|classifier\.|layer_weights$|quantizer\.|project_q\.|project_hid\.)")
# An extra config.json key (transformers keeps unknown keys as attributes): the supernet width
# of an exported subnet, so that its parameter count stays the subnet's (`space.count_params`).
SUPERNET_KEY = "lighthubert_supernet_embed_dim"


def _template(t: str) -> str:
    return "^" + re.escape(t).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)") + "$"


def _rename(key: str, reverse: bool = False) -> Optional[str]:
    """transformers name -> ours (or ours -> transformers with `reverse`), None if not in the table."""
    for hf, ours in _NAMES:
        src, dst = (ours, hf) if reverse else (hf, ours)
        m = re.match(_template(src), key)
        if m:
            return dst.format(**m.groupdict())
    return None


def to_ours(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Maps a transformers `HubertModel` / `Wav2Vec2Model` (or `*ForCTC`, ...) state dict to ours.

    Returns:
        Our state dict and the dropped head keys.

    Raises:
        CheckpointError: naming the first unknown key.
    """
    out, dropped = {}, []
    for key, value in state.items():
        if _DROPPED.match(key):
            dropped.append(key)
            continue
        key = re.sub(r"^(hubert|wav2vec2)\.", "", key)
        key = map_key(key, WEIGHT_NORM) or key
        new = _rename(key)
        if new is None:
            raise CheckpointError(f"unexpected key {key!r} in a transformers HuBERT / wav2vec 2.0 state dict")
        out[new] = value
    return out, dropped


def from_ours(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our dense state dict -> transformers `HubertModel` keys (legacy weight_g / weight_v names)."""
    out = {}
    for key, value in state.items():
        if key.startswith("layer_pred_heads."):
            continue
        new = _rename(key, reverse=True)
        if new is None:
            raise CheckpointError(f"no transformers name for {key!r}")
        out[new] = value
    return out


def read_config(c: dict[str, Any], normalize: Optional[bool] = None) -> ModelConfig:
    """ModelConfig from a transformers `HubertConfig` / `Wav2Vec2Config` dict (`config.json`).

    `normalize` is the processor's `do_normalize`; when unknown, layer-norm front ends (HuBERT
    Large, wav2vec 2.0 LV-60k) are taken to be normalised and group-norm ones (Base) not.
    """
    kind = c.get("model_type")
    if kind not in ("hubert", "wav2vec2"):
        raise CheckpointError(f"model_type {kind!r} is not supported; this package reads hubert, wav2vec2, wavlm, "
                              "data2vec-audio and its own export (lighthubert)")
    unsupported = [(k, c[k]) for k, ok in (("conv_pos_batch_norm", False), ("hidden_act", "gelu"),
                   ("feat_extract_activation", "gelu"), ("layer_norm_eps", 1e-5)) if k in c and c[k] != ok]
    if unsupported:
        raise CheckpointError(f"unsupported transformers config values {unsupported}")
    hidden, heads, layers = int(c.get("hidden_size", 768)), int(c.get("num_attention_heads", 12)), int(c.get("num_hidden_layers", 12))
    if hidden % heads:
        raise CheckpointError(f"hidden_size {hidden} is not divisible by num_attention_heads {heads}")
    conv = [[int(d), int(k), int(st)] for d, k, st in zip(c.get("conv_dim", [512] * 7), c.get("conv_kernel", [10, 3, 3, 3, 3, 2, 2]),
                                                          c.get("conv_stride", [5, 2, 2, 2, 2, 2, 2]))]
    mode = "layer_norm" if c.get("feat_extract_norm", "group") == "layer" else "default"
    return ModelConfig(
        conv_layers=conv, extractor_mode=mode, conv_bias=bool(c.get("conv_bias", False)), embed_dim=hidden,
        heads=[heads] * layers, ffn_dim=[int(c.get("intermediate_size", 3072))] * layers, head_dim=hidden // heads,
        feature_layer_norm=bool(c.get("feat_proj_layer_norm", True)) if kind == "hubert" else True,
        conv_pos=int(c.get("num_conv_pos_embeddings", 128)), conv_pos_groups=int(c.get("num_conv_pos_embedding_groups", 16)),
        layer_norm_first=bool(c.get("do_stable_layer_norm", False)), pred_dim=0,
        normalize=(mode == "layer_norm") if normalize is None else bool(normalize),
        dropout=float(c.get("hidden_dropout", 0.1)), activation_dropout=float(c.get("activation_dropout", 0.0)),
        dropout_input=float(c.get("feat_proj_dropout", 0.0)),
        supernet_embed_dim=int(c.get(SUPERNET_KEY, 0)),
    )


def config_dict(cfg: ModelConfig) -> dict[str, Any]:
    """A transformers `HubertConfig` dict for a uniform dense model (`read_config`'s inverse)."""
    return {
        "model_type": "hubert",
        "architectures": ["HubertModel"],
        "hidden_size": cfg.embed_dim,
        "num_hidden_layers": cfg.depth,
        "num_attention_heads": cfg.embed_dim // cfg.head_dim,
        "intermediate_size": cfg.ffn_dim[0],
        "hidden_act": "gelu",
        "conv_dim": [c[0] for c in cfg.conv_layers],
        "conv_kernel": [c[1] for c in cfg.conv_layers],
        "conv_stride": [c[2] for c in cfg.conv_layers],
        "num_feat_extract_layers": len(cfg.conv_layers),
        "conv_bias": cfg.conv_bias,
        "feat_extract_norm": "layer" if cfg.extractor_mode == "layer_norm" else "group",
        "feat_extract_activation": "gelu",
        "feat_proj_layer_norm": cfg.feature_layer_norm,
        "num_conv_pos_embeddings": cfg.conv_pos,
        "num_conv_pos_embedding_groups": cfg.conv_pos_groups,
        "do_stable_layer_norm": cfg.layer_norm_first,
        "layer_norm_eps": 1e-5,
        "hidden_dropout": cfg.dropout,
        "activation_dropout": cfg.activation_dropout,
        "attention_dropout": 0.0,
        "feat_proj_dropout": cfg.dropout_input,
        "layerdrop": 0.0,
        "apply_spec_augment": True,  # keeps `masked_spec_embed` (our mask_emb) in the model
        "mask_time_prob": 0.05,
        **({SUPERNET_KEY: cfg.supernet_embed_dim} if cfg.supernet_embed_dim else {}),
    }


def read_weights(path: Path) -> dict[str, Tensor]:
    """transformers weights: model.safetensors, a sharded index, or pytorch_model.bin (safely)."""
    if (path / "model.safetensors").is_file():
        return read_safetensors(path / "model.safetensors")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = settings.read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: expected a 'weight_map' object of tensor name -> shard file name")
        shards = sorted(set(weight_map.values()))
        inside = path.resolve()
        outside = [s for s in shards if Path(s).is_absolute() or inside not in (inside / s).resolve().parents]
        if outside:  # a shard is a file of this folder; an index must not make us read elsewhere
            raise CheckpointError(f"{index}: shard {outside[0]!r} is outside the model folder; shards are file names in {path}")
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise CheckpointError(f"{path}: missing weight shard(s) {missing}")
        return {k: v for s in shards for k, v in read_safetensors(path / s).items()}
    if (path / "pytorch_model.bin").is_file():
        return load_file(path / "pytorch_model.bin")
    raise CheckpointError(f"{path}: no weight file (model.safetensors or pytorch_model.bin) next to config.json")


def processor_normalize(path: Path) -> Optional[bool]:
    """The folder's feature extractor's `do_normalize` (`preprocessor_config.json`): whether the
    model expects normalised input; None when the folder has none (the config decides)."""
    pre = path / "preprocessor_config.json"
    return settings.read_json(pre).get("do_normalize") if pre.is_file() else None


def detect(obj: Union[dict[str, Any], Path]) -> bool:
    """Any folder with a config.json: so it comes after every other folder format."""
    return isinstance(obj, Path) and (obj / "config.json").is_file()


def load(path: Path, source: str) -> tuple[HuBERT, list[str]]:
    """The encoder of a transformers folder as a dense `HuBERT`. Returns (model, dropped head keys)."""
    cfg = settings.read_json(path / "config.json")
    if cfg.get("model_type") == "lighthubert":  # our remote-code export (export.save_hf): our keys under `hubert.`
        if not isinstance(cfg.get("lighthubert"), dict):
            raise CheckpointError(f"{path / 'config.json'}: model_type lighthubert without its 'lighthubert' model config")
        state = {k.removeprefix("hubert."): v for k, v in read_weights(path).items()}
        return load_dense(HuBERT(settings.from_dict(ModelConfig, cfg["lighthubert"], "model")), state, source), []
    model_cfg = read_config(cfg, processor_normalize(path))  # first: an unknown model_type is named before its keys
    state, dropped = to_ours(read_weights(path))
    return load_dense(HuBERT(model_cfg), state, source), dropped
