"""Checkpoint formats <-> ours: safe loading, key tables, official LightHuBERT `.pt` files.

Every conversion is a pure function over state dicts, driven by an explicit key table. An
unknown key raises an error naming it; the keys we expect to drop are listed by name. The
two weight-norm spellings are handled here and nowhere else.
"""

from __future__ import annotations

import ast
import logging
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Union

import torch
from torch import Tensor

from .model import ModelConfig
from .space import SearchSpace, SubnetConfig

log = logging.getLogger(__name__)

# Keys that official checkpoints carry for the unreleased trainer's HuBERT head; dropped on load.
OFFICIAL_DROPPED = ("final_proj.weight", "final_proj.bias", "label_embs_concat")


class CheckpointError(ValueError):
    """A file that is not a checkpoint we can read, or one whose contents do not fit."""


def load_file(path: Union[str, Path]) -> dict[str, Any]:
    """`torch.load` with `weights_only=True`: tensors and plain containers only, no pickled code.

    Raises:
        CheckpointError: missing, truncated, not a PyTorch file, or referring to a class
            that is not allowed; one line saying which.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if found:
            raise CheckpointError(
                f"{path}: the checkpoint refers to the Python class {found.group(1)}, which safe loading "
                "(weights_only=True) does not run; re-save it as plain tensors and dicts"
            ) from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({_first_line(e)})") from None
    except Exception as e:  # torch.load on arbitrary bytes raises many types (IndexError, EOFError, ...)
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint, maybe truncated ({_first_line(e)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(obj).__name__}")
    return obj


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def save_file(obj: dict[str, Any], path: Union[str, Path]) -> None:
    """`torch.save` to a temporary file in the same folder, then rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# -- state-dict key tables -------------------------------------------------------------------
# fairseq / official conv front end <-> ours (`ConvBlock.conv`, `ConvBlock.norm`).
_CONV_TO_OURS = [
    (r"^feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)$", r"feature_extractor.conv_layers.\1.conv.\2"),
    (r"^feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)$", r"feature_extractor.conv_layers.\1.norm.\2"),  # layer_norm mode
    (r"^feature_extractor\.conv_layers\.0\.2\.(weight|bias)$", r"feature_extractor.conv_layers.0.norm.\1"),  # default mode
]
# The new weight-norm spelling (torch.nn.utils.parametrizations) -> the old one we keep.
_WEIGHT_NORM = [
    (r"^(.*)\.parametrizations\.weight\.original0$", r"\1.weight_g"),
    (r"^(.*)\.parametrizations\.weight\.original1$", r"\1.weight_v"),
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


def _map_key(key: str, table: list[tuple[str, str]]) -> str | None:
    for pattern, repl in table:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def official_to_ours(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Maps an official / fairseq-layout LightHuBERT state dict to our keys.

    Returns:
        Our state dict and the expected extra keys that were dropped (`OFFICIAL_DROPPED`).

    Raises:
        CheckpointError: naming the first key that is neither mapped nor expected.
    """
    out, dropped = {}, []
    for key, value in state.items():
        if key in OFFICIAL_DROPPED:
            dropped.append(key)
            continue
        key = _map_key(key, _WEIGHT_NORM) or key
        new = _map_key(key, _CONV_TO_OURS) or (key if any(re.match(p, key) for p in _SAME) else None)
        if new is None:
            raise CheckpointError(f"unexpected key {key!r} in a LightHuBERT state dict")
        out[new] = value
    return out, dropped


def ours_to_official(state: dict[str, Tensor], extractor_mode: str) -> dict[str, Tensor]:
    """Inverse of `official_to_ours`: fairseq conv keys (by extractor mode), old weight-norm names."""
    norm = r"\1.2.1.\2" if extractor_mode == "layer_norm" else r"\1.2.\2"
    table = [
        (r"^(feature_extractor\.conv_layers\.\d+)\.conv\.(weight|bias)$", r"\1.0.\2"),
        (r"^(feature_extractor\.conv_layers\.\d+)\.norm\.(weight|bias)$", norm),
    ]
    return {_map_key(k, table) or k: v for k, v in state.items()}


def load_state(model: torch.nn.Module, state: dict[str, Tensor], source: str) -> None:
    """`load_state_dict(strict=True)` with one-line errors naming the missing, extra or misshapen key."""
    own = model.state_dict()
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


# -- official LightHuBERT config --------------------------------------------------------------
# official cfg['model'] key -> (ModelConfig field, converter)
_OFFICIAL_CFG: dict[str, tuple[str, Callable[[Any], Any]]] = {
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
    "required_seq_len_multiple": ("required_seq_len_multiple", int),
}


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


def official_model_config(cfg: dict[str, Any], normalize: bool | None = None) -> ModelConfig:
    """ModelConfig of the full supernet / stage-1 model from an official `cfg['model']` dict."""
    kw: dict[str, Any] = {field: conv(cfg[key]) for key, (field, conv) in _OFFICIAL_CFG.items() if key in cfg}
    if "conv_feature_layers" in cfg:
        kw["conv_layers"] = parse_conv_layers(cfg["conv_feature_layers"])
    layers = int(cfg.get("encoder_layers", 12))
    kw["heads"] = [int(cfg.get("encoder_attention_heads", 12))] * layers
    kw["ffn_dim"] = [int(cfg.get("encoder_ffn_embed_dim", 3072))] * layers
    if int(cfg.get("pos_conv_depth", 1)) != 1:
        raise CheckpointError(f"pos_conv_depth {cfg['pos_conv_depth']} is not supported (only the default 1)")
    pred = cfg.get("layer_pred_num", ",".join(["0"] * (layers - 1) + ["1"]))
    if [int(n) for n in str(pred).split(",")] != [0] * (layers - 1) + [1]:
        raise CheckpointError(f"layer_pred_num {pred!r} is not supported (only one head on the last layer)")
    kw["normalize"] = (kw.get("extractor_mode", "layer_norm") == "layer_norm") if normalize is None else bool(normalize)
    return ModelConfig(**kw)


def official_space(cfg: dict[str, Any]) -> SearchSpace:
    """The search space an official checkpoint was trained in (s3prl's rule: `pruner_supernet` suffix)."""
    if cfg.get("_name") == "hubert_pruner":
        name = str(cfg.get("pruner_supernet", "base.yaml")).lower()
        return SearchSpace.small() if name.endswith("small.yaml") else SearchSpace.base()
    return SearchSpace.base()


def load_official(ckpt: dict[str, Any], source: str):
    """Builds a `LightHuBERT` from an official-format checkpoint dict (already loaded safely).

    `hubert_pruner` (a supernet) starts at its space's default subnet; `student_hubert`
    (stage 1) at `max`, as s3prl's `lighthubert_local` chooses. A checkpoint that we wrote
    carries its own space in `cfg['lighthubert']`.

    Returns:
        (model, dropped keys).
    """
    from .supernet import LightHuBERT

    cfg = ckpt.get("cfg")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{source}: not a LightHuBERT checkpoint (expected {{'cfg': {{'model': ...}}, 'model': state_dict}})")
    mcfg = cfg["model"]
    name = mcfg.get("_name")
    if name not in ("hubert_pruner", "student_hubert"):
        raise CheckpointError(f"{source}: model type {name!r} is not a LightHuBERT checkpoint ('hubert_pruner' or 'student_hubert')")
    ours = cfg.get("lighthubert")
    if isinstance(ours, dict) and "space" in ours:
        space = SearchSpace.from_dict(ours["space"])
    else:
        task = cfg.get("task") if isinstance(cfg.get("task"), dict) else {}
        model_cfg = official_model_config(mcfg, task.get("normalize"))
        base = official_space(mcfg)
        space = SearchSpace(base.name, model_cfg, base.embed_dims, base.heads, base.ffn_ratios, base.depths, base.default)
    state, dropped = official_to_ours(ckpt["model"])
    model = LightHuBERT(space)
    load_state(model, state, source)
    subnet = ours.get("subnet") if isinstance(ours, dict) else None
    model.set_subnet(SubnetConfig.from_official(subnet, space.model.head_dim) if subnet else ("max" if name == "student_hubert" else "default"))
    return model.eval(), dropped


def official_checkpoint(model, stage1: bool = False) -> dict[str, Any]:
    """The official `{'cfg', 'model'}` dict for a `LightHuBERT`, loadable by the official code
    and s3prl's `lighthubert_local` (for the 768-wide, 12-layer spaces), plus our space and
    active subnet under `cfg['lighthubert']`."""
    m, space = model.cfg, model.space
    official = {key: getattr(m, field) for key, (field, _) in _OFFICIAL_CFG.items()}
    official.update(
        _name="student_hubert" if stage1 else "hubert_pruner",
        pruner_supernet=f"{space.name}.yaml",
        supernet_type=space.name if space.name in ("base", "small") else "base",
        conv_feature_layers=repr([tuple(c) for c in m.conv_layers]),
        encoder_layers=m.depth,
        encoder_attention_heads=m.heads[0],
        encoder_ffn_embed_dim=m.ffn_dim[0],
        layer_pred_num=",".join(["0"] * (m.depth - 1) + ["1"]),
        attention_dropout=0.0,
    )
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {
        "cfg": {
            "model": official,
            "task": {"normalize": m.normalize, "sample_rate": 16000},
            "lighthubert": {"space": space.to_dict(), "subnet": model.subnet.to_official(m.head_dim)},
        },
        "model": ours_to_official(state, m.extractor_mode),
    }


def load_model(path: Union[str, Path], subnet: Union[str, SubnetConfig, dict, None] = None):
    """Loads any checkpoint this package reads, safely; the entry point behind `lighthubert.load`.

    Args:
        path: an official-format LightHuBERT checkpoint (`hubert_pruner` / `student_hubert`),
            ours included.
        subnet: `default` / `max` / `min` / JSON / a `SubnetConfig`; None keeps the
            checkpoint's own choice (s3prl's: `max` for stage 1, the space default otherwise).

    Returns:
        The model in eval mode.

    Raises:
        CheckpointError: unreadable or unsupported files, keys or shapes that do not fit.
    """
    ckpt = load_file(path)
    model, dropped = load_official(ckpt, str(path))
    if dropped:
        log.info("%s: dropped the trainer-only keys %s", path, dropped)
    if subnet is not None:
        model.set_subnet(subnet)
    return model
