"""s3prl's DistilHuBERT checkpoints (`states-*.ckpt`: `{"Distiller": state_dict, "Config":
{"distiller": ...}}`), which `distill --method distilhubert` writes too: fairseq's encoder keys
and config names (`fairseq.py`), with the prediction heads under `output_layer.`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Union

from torch import Tensor

from ..model import DistilHuBERT, ModelConfig
from ..safeload import CheckpointError, load_dense
from . import fairseq

NAME = "distilhubert"


def detect(obj: Union[dict[str, Any], Any]) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("Distiller"), dict) and isinstance(obj.get("Config"), dict)


def read_config(cfg: dict[str, Any]) -> tuple[ModelConfig, list[int]]:
    """ModelConfig of an s3prl `DistillerModel` and its head's target layers (`pred_layer_id`).

    DistilHuBERT has no LayerNorm before `post_extract_proj` (transformers:
    `feat_proj_layer_norm=False`) and takes raw waveforms.
    """
    renamed = {("conv_feature_layers" if k == "extractor_conv_feature_layers" else k): v for k, v in cfg.items()}
    model = fairseq.read_config(renamed, normalize=False)
    targets = [int(i) for i in cfg.get("pred_layer_id", [4, 8, 12])]
    if int(cfg.get("n_tasks", len(targets))) != len(targets):
        raise CheckpointError(f"distiller config: n_tasks {cfg['n_tasks']} differs from pred_layer_id {targets}")
    return dataclasses.replace(model, feature_layer_norm=False), targets


def to_ours(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """s3prl `Distiller` state dict -> ours (a `DistilHuBERT`, heads under `output_layer.`),
    and the dropped keys (`fairseq.to_ours`'s)."""
    heads = {k: v for k, v in state.items() if k.startswith("output_layer.")}
    ours, dropped = fairseq.to_ours({k: v for k, v in state.items() if not k.startswith("output_layer.")})
    if "output_layer.2.layer.weight" in heads:  # one head: s3prl keeps a plain Linear
        heads["output_layer.2.weight"] = heads.pop("output_layer.2.layer.weight").t().unsqueeze(0)
        heads["output_layer.2.bias"] = heads.pop("output_layer.2.layer.bias").view(1, 1, 1, -1)
    return {**ours, **heads}, dropped


def from_ours(state: dict[str, Tensor], extractor_mode: str) -> dict[str, Tensor]:
    """Inverse of `to_ours` (without `mask_emb`, which DistilHuBERT does not have)."""
    return {k: v for k, v in fairseq.from_ours(state, extractor_mode).items() if k != "mask_emb"}


def config_dict(cfg: ModelConfig, targets: list[int], target_dim: int = 768) -> dict[str, Any]:
    """The s3prl `Config["distiller"]` dict of a DistilHuBERT student (`read_config`'s inverse).

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


def checkpoint(student: DistilHuBERT) -> dict[str, Any]:
    """s3prl's `states-*.ckpt` layout of a student, so that its `distiller_local` upstream reads it."""
    return {"Distiller": from_ours(student.state_dict(), student.cfg.extractor_mode),
            "Config": {"distiller": config_dict(student.cfg, student.targets, student.output_layer[2].weight.shape[-1])}}


def load(ckpt: dict[str, Any], source: str) -> tuple[DistilHuBERT, list[str]]:
    """An s3prl DistilHuBERT checkpoint (ours are written in the same layout) as a
    `DistilHuBERT`, heads included. Returns (model, dropped keys)."""
    cfg = ckpt["Config"].get("distiller")
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{source}: s3prl checkpoint without Config['distiller']")
    model_cfg, targets = read_config(cfg)
    state, dropped = to_ours(ckpt["Distiller"])
    heads = state.get("output_layer.2.weight")
    if heads is None or heads.shape[0] != len(targets):
        found = "no heads" if heads is None else f"{heads.shape[0]} heads"
        raise CheckpointError(f"{source}: {found} in the weights, but its config predicts layers {targets}")
    model = DistilHuBERT(model_cfg, targets, heads.shape[-1])
    return load_dense(model, state, source), dropped
