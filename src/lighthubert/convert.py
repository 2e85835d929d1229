"""Checkpoint formats <-> ours: safe loading, key tables, official LightHuBERT `.pt` files.

Every conversion is a pure function over state dicts, driven by an explicit key table. An
unknown key raises an error naming it; the keys we expect to drop are listed by name. The
two weight-norm spellings are handled here and nowhere else.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

from .model import ModelConfig
from .space import SearchSpace, SubnetConfig

log = logging.getLogger(__name__)

# Pretext-task and fine-tuning heads of fairseq checkpoints (the official LightHuBERT ones carry
# the unreleased trainer's `final_proj.*` and `label_embs_concat`); dropped on load and reported.
_FAIRSEQ_DROPPED = re.compile(
    r"^(final_proj\.|label_embs_concat$|quantizer\.|project_q\.|project_inp\.|target_glu\.|w2v_encoder\.proj\.)"
)


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
        if _FAIRSEQ_DROPPED.match(key):
            dropped.append(key)
            continue
        key = key.removeprefix("w2v_encoder.w2v_model.")
        key = _map_key(key, _WEIGHT_NORM) or key
        new = _map_key(key, _CONV_TO_OURS) or (key if any(re.match(p, key) for p in _SAME) else None)
        if new is None:
            raise CheckpointError(f"unexpected key {key!r} in a fairseq / LightHuBERT state dict")
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


# transformers HubertModel / Wav2Vec2Model <-> ours; `{i}` is a layer index, `{p}` weight|bias.
_HF_NAMES = [
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
_HF_DROPPED = re.compile(r"^(lm_head\.|projector\.|classifier\.|layer_weights$|quantizer\.|project_q\.|project_hid\.)")
# torchaudio's names are transformers' under other prefixes (its `import_huggingface_model`).
_TORCHAUDIO_PREFIXES = [("encoder.feature_projection.", "feature_projection."), ("encoder.transformer.", "encoder.")]
_TORCHAUDIO_DROPPED = re.compile(r"^(aux\.|logit_generator\.)")


def _template(t: str) -> str:
    return "^" + re.escape(t).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)") + "$"


def _rename(key: str, reverse: bool = False) -> str | None:
    """transformers name -> ours (or ours -> transformers with `reverse`), None if not in the table."""
    for hf, ours in _HF_NAMES:
        src, dst = (ours, hf) if reverse else (hf, ours)
        m = re.match(_template(src), key)
        if m:
            return dst.format(**m.groupdict())
    return None


def hf_to_ours(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Maps a transformers `HubertModel` / `Wav2Vec2Model` (or `*ForCTC`, ...) state dict to ours.

    Returns:
        Our state dict and the dropped head keys.

    Raises:
        CheckpointError: naming the first unknown key.
    """
    out, dropped = {}, []
    for key, value in state.items():
        if _HF_DROPPED.match(key):
            dropped.append(key)
            continue
        key = re.sub(r"^(hubert|wav2vec2)\.", "", key)
        key = _map_key(key, _WEIGHT_NORM) or key
        new = _rename(key)
        if new is None:
            raise CheckpointError(f"unexpected key {key!r} in a transformers HuBERT / wav2vec 2.0 state dict")
        out[new] = value
    return out, dropped


def ours_to_hf(state: dict[str, Tensor]) -> dict[str, Tensor]:
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


def torchaudio_to_ours(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Maps a torchaudio `Wav2Vec2Model` / `HuBERTPretrainModel` state dict to ours."""
    hf, dropped = {}, []
    for key, value in state.items():
        key = key.removeprefix("wav2vec2.")
        if _TORCHAUDIO_DROPPED.match(key):
            dropped.append(key)
            continue
        if key == "mask_generator.mask_embedding":
            key = "masked_spec_embed"
        for ta, hf_prefix in _TORCHAUDIO_PREFIXES:
            if key.startswith(ta):
                key = hf_prefix + key[len(ta):]
                break
        hf[key] = value
    out, more = hf_to_ours(hf)
    return out, dropped + more


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


def fairseq_model_config(cfg: dict[str, Any], normalize: Optional[bool] = None, lighthubert: bool = True) -> ModelConfig:
    """ModelConfig from a fairseq-style `cfg['model']` dict: an official LightHuBERT supernet /
    stage-1 model, or (`lighthubert=False`) a fairseq HuBERT / wav2vec 2.0 teacher.

    Missing keys take fairseq's defaults (`extractor_mode` "default" for fairseq, "layer_norm"
    for LightHuBERT). `normalize` comes from the task config; when absent, LightHuBERT
    checkpoints are taken to be normalised and fairseq ones not (its default).
    """
    kw: dict[str, Any] = {field: conv(cfg[key]) for key, (field, conv) in _OFFICIAL_CFG.items() if key in cfg}
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
        model_cfg = fairseq_model_config(mcfg, task.get("normalize"))
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


# -- transformers configs -------------------------------------------------------------------
def hf_model_config(c: dict[str, Any], normalize: Optional[bool] = None) -> ModelConfig:
    """ModelConfig from a transformers `HubertConfig` / `Wav2Vec2Config` dict (`config.json`).

    `normalize` is the processor's `do_normalize`; when unknown, layer-norm front ends (HuBERT
    Large, wav2vec 2.0 LV-60k) are taken to be normalised and group-norm ones (Base) not.
    """
    kind = c.get("model_type")
    if kind not in ("hubert", "wav2vec2"):
        raise CheckpointError(f"model_type {kind!r} is not supported; expected 'hubert' or 'wav2vec2'")
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
    )


def hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """A transformers `HubertConfig` dict for a uniform dense model (`hf_model_config`'s inverse)."""
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
    }


# -- loading any checkpoint ----------------------------------------------------------------------
FORMATS = ("lighthubert", "fairseq", "transformers", "torchaudio", "compact")


def detect_format(obj: Union[dict[str, Any], Path]) -> str:
    """Which of `FORMATS` a loaded checkpoint dict (or a folder) is; CheckpointError if none."""
    if isinstance(obj, Path):
        cfg_path = obj / "config.json"
        if not cfg_path.is_file():
            raise CheckpointError(f"{obj}: a folder without config.json is neither a transformers model nor a compact export")
        try:
            cfg = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{cfg_path}: invalid JSON ({e})") from None
        return "compact" if isinstance(cfg, dict) and cfg.get("format") == COMPACT_FORMAT else "transformers"
    cfg = obj.get("cfg")
    name = cfg.get("model", {}).get("_name") if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict) else None
    if name in ("hubert_pruner", "student_hubert"):
        return "lighthubert"
    if name is not None or obj.get("args") is not None:
        return "fairseq"
    if obj and all(isinstance(v, Tensor) for v in obj.values()) and any(".transformer.layers." in k for k in obj):
        return "torchaudio"
    raise CheckpointError(
        "not a checkpoint this package reads: expected an official LightHuBERT / fairseq .pt "
        "({'cfg' or 'args', 'model'}), a torchaudio state dict, a transformers folder or a compact export"
    )


COMPACT_FORMAT = "lighthubert-compact"


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
    from .supernet import LightHuBERT

    kind, model = load_with_format(path)
    if subnet is not None:
        if not isinstance(model, LightHuBERT):
            raise CheckpointError(f"{path} is a fixed-shape {kind} model; a subnet can only be chosen for a supernet")
        model.set_subnet(subnet)
    return model


def load_with_format(path: Union[str, Path]):
    """`load_model` without a subnet choice, also returning which of `FORMATS` the file was."""
    path = Path(path)
    if path.is_dir():
        kind = detect_format(path)
        model, dropped = (_load_compact if kind == "compact" else _load_transformers)(path)
    else:
        ckpt = load_file(path)
        kind = detect_format(ckpt)
        loader = {"lighthubert": load_official, "fairseq": _load_fairseq, "torchaudio": _load_torchaudio}[kind]
        model, dropped = loader(ckpt, str(path))
    if dropped:
        log.info("%s: dropped %d head / pre-training tensors (%s ...)", path, len(dropped), dropped[0])
    return kind, model.eval()


def _dense(cfg: ModelConfig, state: dict[str, Tensor], source: str):
    from .model import HuBERT

    model = HuBERT(cfg)
    if "mask_emb" not in state:  # transformers drops it when spec-augment is off; unused at inference
        state["mask_emb"] = torch.zeros(cfg.embed_dim)
    load_state(model, state, source)
    return model


def _load_fairseq(ckpt: dict[str, Any], source: str):
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
    if name not in ("hubert", "wav2vec2", "data2vec_audio") and not str(name).startswith(("hubert", "wav2vec")):
        raise CheckpointError(f"{source}: fairseq model type {name!r} is not a HuBERT / wav2vec 2.0 encoder")
    if not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{source}: fairseq checkpoint without a 'model' state dict")
    model_cfg = fairseq_model_config(mcfg, task.get("normalize"), lighthubert=False)
    state, dropped = official_to_ours(ckpt["model"])
    return _dense(model_cfg, state, source), dropped


def _load_torchaudio(state: dict[str, Tensor], source: str):
    """torchaudio keeps no config: it is read off the shapes. Heads assume 64-dim heads (all
    torchaudio HuBERT / wav2vec 2.0 factories), strides the standard 5,2,2,...; a layer-norm
    front end implies pre-LN layers and normalised input, as in torchaudio's large factories."""
    ours, dropped = torchaudio_to_ours(state)
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
    cfg = ModelConfig(
        conv_layers=conv, extractor_mode="layer_norm" if layer_norm else "default",
        conv_bias="feature_extractor.conv_layers.0.conv.bias" in ours, embed_dim=embed,
        heads=[embed // 64] * layers, ffn_dim=[ours["encoder.layers.0.fc1.weight"].shape[0]] * layers,
        conv_pos=ours["encoder.pos_conv.0.weight_v"].shape[2], conv_pos_groups=embed // ours["encoder.pos_conv.0.weight_v"].shape[1],
        layer_norm_first=layer_norm, pred_dim=0, normalize=layer_norm,
    )
    return _dense(cfg, ours, source), dropped


def _load_transformers(path: Path):
    cfg = json.loads((path / "config.json").read_text())
    normalize = None
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        normalize = json.loads(pre.read_text()).get("do_normalize")
    state, dropped = hf_to_ours(_read_weights(path))
    return _dense(hf_model_config(cfg, normalize), state, str(path)), dropped


def _read_weights(path: Path) -> dict[str, Tensor]:
    """transformers weights: model.safetensors, a sharded index, or pytorch_model.bin (safely)."""
    from safetensors.torch import load_file as load_safetensors

    if (path / "model.safetensors").is_file():
        return load_safetensors(path / "model.safetensors")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise CheckpointError(f"{path}: missing weight shard(s) {missing}")
        return {k: v for s in shards for k, v in load_safetensors(path / s).items()}
    if (path / "pytorch_model.bin").is_file():
        return load_file(path / "pytorch_model.bin")
    raise CheckpointError(f"{path}: no weight file (model.safetensors or pytorch_model.bin) next to config.json")


def _load_compact(path: Path):
    from safetensors.torch import load_file as load_safetensors

    meta = json.loads((path / "config.json").read_text())
    cfg = ModelConfig.from_dict(meta["model"])
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{path}: compact export without model.safetensors")
    state = {k: v.float() for k, v in load_safetensors(weights).items()}
    return _dense(cfg, state, str(path)), []
