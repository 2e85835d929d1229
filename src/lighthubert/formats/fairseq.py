"""fairseq HuBERT / wav2vec 2.0 `.pt` files (`{'cfg' or 'args', 'model'}`), the teachers' own
format; also the key layout and `cfg['model']` dict that the official LightHuBERT format
(`official.py`) and s3prl's DistilHuBERT (`s3prl.py`) share with it.

An unknown key raises an error naming it; the keys we expect to drop are listed by name.
"""

from __future__ import annotations

import argparse
import ast
import re
from typing import Any, Callable, Optional, Union

from torch import Tensor

from ..model import HuBERT, ModelConfig
from ..safeload import CheckpointError, load_dense
from .keys import WEIGHT_NORM, map_key

NAME = "fairseq"

# Pretext-task and fine-tuning heads of fairseq checkpoints (the official LightHuBERT ones carry
# the unreleased trainer's `final_proj.*` and `label_embs_concat`); dropped on load and reported.
_DROPPED = re.compile(
    r"^(final_proj\.|label_embs_concat$|quantizer\.|project_q\.|project_inp\.|target_glu\.|w2v_encoder\.proj\.)"
)
# fairseq / official conv front end <-> ours (`ConvBlock.conv`, `ConvBlock.norm`).
_CONV_TO_OURS = [
    (r"^feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)$", r"feature_extractor.conv_layers.\1.conv.\2"),
    (r"^feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)$", r"feature_extractor.conv_layers.\1.norm.\2"),  # layer_norm mode
    (r"^feature_extractor\.conv_layers\.0\.2\.(weight|bias)$", r"feature_extractor.conv_layers.0.norm.\1"),  # default mode
]
# Encoder keys that are the same in the official checkpoints and ours.
_SAME = [
    r"^layer_norm\.(weight|bias)$",
    r"^post_extract_proj\.(weight|bias)$",
    r"^mask_emb$",
    r"^encoder\.pos_conv\.0\.(weight_g|weight_v|bias)$",
    r"^encoder\.layer_norm\.(weight|bias)$",
    r"^encoder\.layers\.\d+\.self_attn\.(q|k|v|out)_proj\.(weight|bias)$",
    r"^encoder\.layers\.\d+\.(self_attn_layer_norm|final_layer_norm|fc1|fc2)\.(weight|bias)$",
    r"^layer_pred_heads\.\d+\.weight$",
]


def to_ours(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Maps an official LightHuBERT or fairseq HuBERT / wav2vec 2.0 state dict to our keys.

    A fine-tuned model's `w2v_encoder.w2v_model.` prefix is removed.

    Returns:
        Our state dict and the pre-training / fine-tuning keys that were dropped
        (`final_proj.*`, `label_embs_concat`, wav2vec 2.0's quantizer, a CTC `w2v_encoder.proj`).

    Raises:
        CheckpointError: naming the first key that is neither mapped nor expected.
    """
    out, dropped = {}, []
    for key, value in state.items():
        if _DROPPED.match(key):
            dropped.append(key)
            continue
        key = key.removeprefix("w2v_encoder.w2v_model.")
        key = map_key(key, WEIGHT_NORM) or key
        new = map_key(key, _CONV_TO_OURS) or (key if any(re.match(p, key) for p in _SAME) else None)
        if new is None:
            raise CheckpointError(f"unexpected key {key!r} in a fairseq / LightHuBERT state dict")
        out[new] = value
    return out, dropped


def from_ours(state: dict[str, Tensor], extractor_mode: str) -> dict[str, Tensor]:
    """Inverse of `to_ours`: fairseq conv keys (by extractor mode), old weight-norm names."""
    norm = r"\1.2.1.\2" if extractor_mode == "layer_norm" else r"\1.2.\2"
    table = [
        (r"^(feature_extractor\.conv_layers\.\d+)\.conv\.(weight|bias)$", r"\1.0.\2"),
        (r"^(feature_extractor\.conv_layers\.\d+)\.norm\.(weight|bias)$", norm),
    ]
    return {map_key(k, table) or k: v for k, v in state.items()}


# fairseq / official cfg['model'] key -> (ModelConfig field, converter)
CONFIG_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "extractor_mode": ("extractor_mode", str),
    "conv_bias": ("conv_bias", bool),
    "encoder_embed_dim": ("embed_dim", int),
    "conv_pos": ("conv_pos", int),
    "conv_pos_groups": ("conv_pos_groups", int),
    "layer_norm_first": ("layer_norm_first", bool),
    "teacher_embed_dim": ("pred_dim", int),
    "dropout": ("dropout", float),
    "activation_dropout": ("activation_dropout", float),
    "encoder_layerdrop": ("layerdrop", float),
    "dropout_input": ("dropout_input", float),
    "feature_grad_mult": ("feature_grad_mult", float),
}


def config_dict(m: ModelConfig, **extra: Any) -> dict[str, Any]:
    """fairseq's `cfg['model']` dict of a HuBERT (`_name: hubert`) of shape `m`, plus `extra`
    (pre-training settings such as `final_dim`); fairseq HuBERT layers are uniform."""
    if len(set(m.heads)) > 1 or len(set(m.ffn_dim)) > 1 or not m.feature_layer_norm or m.head_dim * m.heads[0] != m.embed_dim:
        raise ValueError("a fairseq HuBERT has uniform layers, a feature LayerNorm and embed_dim = heads x head_dim")
    cfg = {key: getattr(m, field) for key, (field, _) in CONFIG_FIELDS.items() if field != "pred_dim"}
    cfg.update(_name="hubert", conv_feature_layers=repr([tuple(c) for c in m.conv_layers]), encoder_layers=m.depth,
               encoder_attention_heads=m.heads[0], encoder_ffn_embed_dim=m.ffn_dim[0], activation_fn="gelu", **extra)
    return cfg


def parse_conv_layers(text: str) -> list[list[int]]:
    """Evaluates fairseq's `conv_feature_layers` string ("[(512,10,5)] + [(512,3,2)] * 4") safely.

    Only list/tuple literals of integers, `+` and `*` are accepted: no `eval` of file contents.
    """

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, (ast.List, ast.Tuple)):
            return [ev(e) for e in node.elts]
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = ev(node.left), ev(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"unsupported element {ast.dump(node)[:40]}")

    try:
        layers = ev(ast.parse(text, mode="eval"))
    except (SyntaxError, ValueError, TypeError) as e:
        raise CheckpointError(f"cannot read conv_feature_layers {text!r} ({e})") from None
    return [list(c) for c in layers]


def read_config(cfg: dict[str, Any], normalize: Optional[bool] = None, lighthubert: bool = False) -> ModelConfig:
    """ModelConfig from a fairseq-style `cfg['model']` dict: a fairseq HuBERT / wav2vec 2.0
    teacher, or (`lighthubert=True`) an official LightHuBERT supernet / stage-1 model.

    Missing keys take fairseq's defaults (`extractor_mode` "default" for fairseq, "layer_norm"
    for LightHuBERT). `normalize` comes from the task config; when absent, LightHuBERT
    checkpoints are taken to be normalised and fairseq ones not (its default).
    """
    kw: dict[str, Any] = {field: conv(cfg[key]) for key, (field, conv) in CONFIG_FIELDS.items() if key in cfg}
    kw.setdefault("extractor_mode", "layer_norm" if lighthubert else "default")
    if "conv_feature_layers" in cfg:
        kw["conv_layers"] = parse_conv_layers(cfg["conv_feature_layers"])
    layers = int(cfg.get("encoder_layers", 12))
    kw["heads"] = [int(cfg.get("encoder_attention_heads", 12))] * layers
    kw["ffn_dim"] = [int(cfg.get("encoder_ffn_embed_dim", 3072))] * layers
    embed = kw.get("embed_dim", 768)
    if embed % kw["heads"][0]:
        raise CheckpointError(f"encoder_embed_dim {embed} is not divisible by encoder_attention_heads {kw['heads'][0]}")
    kw["head_dim"] = embed // kw["heads"][0]
    if int(cfg.get("pos_conv_depth", 1)) != 1 or cfg.get("conv_pos_batch_norm"):
        raise CheckpointError("only the single weight-normed positional conv is supported (pos_conv_depth 1, no conv_pos_batch_norm)")
    if cfg.get("activation_fn", "gelu") != "gelu":
        raise CheckpointError(f"activation_fn {cfg['activation_fn']!r} is not supported (only gelu)")
    if lighthubert:
        pred = cfg.get("layer_pred_num", ",".join(["0"] * (layers - 1) + ["1"]))
        if [int(n) for n in str(pred).split(",")] != [0] * (layers - 1) + [1]:
            raise CheckpointError(f"layer_pred_num {pred!r} is not supported (only one head on the last layer)")
    else:
        kw["pred_dim"] = 0
    if normalize is None:
        normalize = lighthubert and kw["extractor_mode"] == "layer_norm"
    kw["normalize"] = bool(normalize)
    return ModelConfig(**kw)


def model_name(obj: dict[str, Any]) -> Optional[str]:
    """`cfg['model']['_name']` of a hydra-era fairseq dict (the official format's too), else None."""
    cfg = obj.get("cfg")
    return cfg["model"].get("_name") if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict) else None


def detect(obj: Union[dict[str, Any], Any]) -> bool:
    """A fairseq dict: a model `_name` or pre-hydra `args` (after `official.detect`, whose
    checkpoints are fairseq dicts too)."""
    return isinstance(obj, dict) and (model_name(obj) is not None or obj.get("args") is not None)


def load(ckpt: dict[str, Any], source: str) -> tuple[HuBERT, list[str]]:
    """A fairseq HuBERT / wav2vec 2.0 (pre-trained, or fine-tuned: its encoder) as a dense `HuBERT`.

    Returns:
        (model, dropped head / pre-training keys).
    """
    cfg = ckpt.get("cfg")
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        mcfg, task = cfg["model"], cfg.get("task") or {}
    elif ckpt.get("args") is not None:  # pre-hydra fairseq: one argparse Namespace
        mcfg = task = vars(ckpt["args"]) if isinstance(ckpt["args"], argparse.Namespace) else dict(ckpt["args"])
    else:
        raise CheckpointError(f"{source}: a fairseq checkpoint without a model config")
    name = mcfg.get("_name", mcfg.get("arch"))
    if name in ("hubert_ctc", "wav2vec_ctc", "hubert_seq2seq"):  # fine-tuned: the encoder's own config is inside
        inner = mcfg.get("w2v_args")
        if not isinstance(inner, dict) or not isinstance(inner.get("model"), dict):
            raise CheckpointError(f"{source}: fine-tuned {name} checkpoint without its pre-training config (w2v_args)")
        mcfg, task = inner["model"], inner.get("task") or task
        name = mcfg.get("_name")
    if name not in ("hubert", "wav2vec2") and not str(name).startswith(("hubert", "wav2vec")):
        raise CheckpointError(f"{source}: fairseq model type {name!r} is not a HuBERT / wav2vec 2.0 encoder")
    if not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{source}: fairseq checkpoint without a 'model' state dict")
    model_cfg = read_config(mcfg, task.get("normalize"))
    state, dropped = to_ours(ckpt["model"])
    return load_dense(HuBERT(model_cfg), state, source), dropped
