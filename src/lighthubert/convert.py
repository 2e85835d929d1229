"""Other formats <-> ours: state-dict key tables and configs of official LightHuBERT, fairseq,
transformers and torchaudio models.

Every conversion is a pure function over state dicts, driven by an explicit key table. An
unknown key raises an error naming it; the keys we expect to drop are listed by name. The
two weight-norm spellings are handled here and nowhere else.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from typing import Any, Callable, Optional

from torch import Tensor

from .model import ModelConfig
from .space import SearchSpace

# Pretext-task and fine-tuning heads of fairseq checkpoints (the official LightHuBERT ones carry
# the unreleased trainer's `final_proj.*` and `label_embs_concat`); dropped on load and reported.
_FAIRSEQ_DROPPED = re.compile(
    r"^(final_proj\.|label_embs_concat$|quantizer\.|project_q\.|project_inp\.|target_glu\.|w2v_encoder\.proj\.)"
)


class CheckpointError(ValueError):
    """A file that is not a checkpoint we can read, or one whose contents do not fit."""


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


def official_config(m: ModelConfig, space_name: str, stage1: bool = False) -> dict[str, Any]:
    """The official `cfg['model']` dict of a 768-wide supernet (`hubert_pruner`) or stage-1 model."""
    official = {key: getattr(m, field) for key, (field, _) in _OFFICIAL_CFG.items()}
    official.update(
        _name="student_hubert" if stage1 else "hubert_pruner",
        pruner_supernet=f"{space_name}.yaml",
        supernet_type=space_name if space_name in ("base", "small") else "base",
        conv_feature_layers=repr([tuple(c) for c in m.conv_layers]),
        encoder_layers=m.depth,
        encoder_attention_heads=m.heads[0],
        encoder_ffn_embed_dim=m.ffn_dim[0],
        layer_pred_num=",".join(["0"] * (m.depth - 1) + ["1"]),
        attention_dropout=0.0,
    )
    return official


def fairseq_config(m: ModelConfig, **extra: Any) -> dict[str, Any]:
    """fairseq's `cfg['model']` dict of a HuBERT (`_name: hubert`) of shape `m`, plus `extra`
    (pre-training settings such as `final_dim`); fairseq HuBERT layers are uniform."""
    if len(set(m.heads)) > 1 or len(set(m.ffn_dim)) > 1 or not m.feature_layer_norm or m.head_dim * m.heads[0] != m.embed_dim:
        raise ValueError("a fairseq HuBERT has uniform layers, a feature LayerNorm and embed_dim = heads x head_dim")
    cfg = {key: getattr(m, field) for key, (field, _) in _OFFICIAL_CFG.items() if field != "pred_dim"}
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


# -- s3prl DistilHuBERT (`states-*.ckpt`: {"Distiller": state_dict, "Config": {"distiller": ...}}) --
def distiller_config(cfg: dict[str, Any]) -> tuple[ModelConfig, list[int]]:
    """ModelConfig of an s3prl `DistillerModel` and its head's target layers (`pred_layer_id`).

    DistilHuBERT has no LayerNorm before `post_extract_proj` (transformers:
    `feat_proj_layer_norm=False`) and takes raw waveforms.
    """
    fairseq = {("conv_feature_layers" if k == "extractor_conv_feature_layers" else k): v for k, v in cfg.items()}
    model = fairseq_model_config(fairseq, normalize=False, lighthubert=False)
    targets = [int(i) for i in cfg.get("pred_layer_id", [4, 8, 12])]
    if int(cfg.get("n_tasks", len(targets))) != len(targets):
        raise CheckpointError(f"distiller config: n_tasks {cfg['n_tasks']} differs from pred_layer_id {targets}")
    return dataclasses.replace(model, feature_layer_norm=False), targets


def distiller_to_ours(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """s3prl `Distiller` state dict -> ours (a `DistilHuBERT`, heads under `output_layer.`)."""
    heads = {k: v for k, v in state.items() if k.startswith("output_layer.")}
    ours, _ = official_to_ours({k: v for k, v in state.items() if not k.startswith("output_layer.")})
    if "output_layer.2.layer.weight" in heads:  # one head: s3prl keeps a plain Linear
        heads["output_layer.2.weight"] = heads.pop("output_layer.2.layer.weight").t().unsqueeze(0)
        heads["output_layer.2.bias"] = heads.pop("output_layer.2.layer.bias").view(1, 1, 1, -1)
    return {**ours, **heads}


def ours_to_distiller(state: dict[str, Tensor], extractor_mode: str) -> dict[str, Tensor]:
    """Inverse of `distiller_to_ours` (without `mask_emb`, which DistilHuBERT does not have)."""
    return {k: v for k, v in ours_to_official(state, extractor_mode).items() if k != "mask_emb"}


def distiller_config_dict(cfg: ModelConfig, targets: list[int], target_dim: int = 768) -> dict[str, Any]:
    """The s3prl `Config["distiller"]` dict of a DistilHuBERT student (`distiller_config`'s inverse).

    `target_dim` is the width its heads predict (the teacher's): s3prl's `DistillerModel`
    builds the heads as Linear(E, inter * N), GELU, SplitLinear(inter, N, final_dim) with
    `out_layer_inter_dim` (default: E) and `final_dim` (default 768); ours use the target
    width for both, so both are written. s3prl drops `post_extract_proj` when the conv
    channels equal the embed dim, so such a student has no s3prl form.
    """
    return {
        "extractor_mode": cfg.extractor_mode,
        "extractor_conv_feature_layers": repr([tuple(c) for c in cfg.conv_layers]),
        "extractor_dropout": 0.0,
        "feature_grad_mult": cfg.feature_grad_mult,
        "conv_bias": cfg.conv_bias,
        "conv_pos": cfg.conv_pos,
        "conv_pos_groups": cfg.conv_pos_groups,
        "encoder_layers": cfg.depth,
        "encoder_embed_dim": cfg.embed_dim,
        "encoder_ffn_embed_dim": cfg.ffn_dim[0],
        "encoder_attention_heads": cfg.heads[0],
        "activation_fn": "gelu",
        "layer_norm_first": cfg.layer_norm_first,
        "dropout": cfg.dropout,
        "attention_dropout": 0.0,
        "activation_dropout": cfg.activation_dropout,
        "encoder_layerdrop": cfg.layerdrop,
        "final_dim": target_dim,
        "out_layer_inter_dim": target_dim,
        "out_layer_type": "expand-last",
        "n_tasks": len(targets),
        "task_emb_type": "expand-last",
        "pred_layer_id": list(targets),
    }


# -- transformers configs -------------------------------------------------------------------
# An extra config.json key (transformers keeps unknown keys as attributes): the supernet width
# of an exported subnet, so that its parameter count stays the subnet's (`space.count_params`).
HF_SUPERNET_KEY = "lighthubert_supernet_embed_dim"


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
        supernet_embed_dim=int(c.get(HF_SUPERNET_KEY, 0)),
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
        **({HF_SUPERNET_KEY: cfg.supernet_embed_dim} if cfg.supernet_embed_dim else {}),
    }


