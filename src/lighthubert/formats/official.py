"""The official LightHuBERT `.pt` format (`{'cfg': {'model': ...}, 'model': state_dict}`, a
`hubert_pruner` supernet or a `student_hubert` stage-1 model), which we also write: a fairseq
dict with fairseq's keys (`fairseq.to_ours` / `from_ours`), plus our search space and active
subnet under `cfg['lighthubert']`, which the official code and s3prl ignore.
"""

from __future__ import annotations

from typing import Any, Union

from ..model import ModelConfig
from ..safeload import CheckpointError, load_state
from ..space import SearchSpace, SubnetConfig
from ..supernet import LightHuBERT
from . import fairseq
from .fairseq import from_ours, to_ours  # the official keys are fairseq's

NAME = "lighthubert"
KINDS = ("hubert_pruner", "student_hubert")  # cfg['model']['_name'] of a supernet, of a stage-1 model

__all__ = ["NAME", "KINDS", "detect", "read_config", "config_dict", "to_ours", "from_ours", "load", "checkpoint"]


def detect(obj: Union[dict[str, Any], Any]) -> bool:
    return isinstance(obj, dict) and fairseq.model_name(obj) in KINDS


def read_config(cfg: dict[str, Any]) -> SearchSpace:
    """The search space of a checkpoint's `cfg`: the one we record under `cfg['lighthubert']`,
    else s3prl's rule (the `pruner_supernet` suffix names the space) around the supernet shape
    of `cfg['model']`."""
    ours = cfg.get("lighthubert")
    if isinstance(ours, dict) and "space" in ours:
        return SearchSpace.from_dict(ours["space"])
    mcfg = cfg["model"]
    task = cfg.get("task") if isinstance(cfg.get("task"), dict) else {}
    model_cfg = fairseq.read_config(mcfg, task.get("normalize"), lighthubert=True)
    base = SearchSpace.base()
    if mcfg.get("_name") == "hubert_pruner" and str(mcfg.get("pruner_supernet", "base.yaml")).lower().endswith("small.yaml"):
        base = SearchSpace.small()
    return SearchSpace(base.name, model_cfg, base.embed_dims, base.heads, base.ffn_ratios, base.depths, base.default)


def config_dict(m: ModelConfig, space_name: str, stage1: bool = False) -> dict[str, Any]:
    """The official `cfg['model']` dict of a 768-wide supernet (`hubert_pruner`) or stage-1 model."""
    official = {key: getattr(m, field) for key, (field, _) in fairseq.CONFIG_FIELDS.items()}
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


def load(ckpt: dict[str, Any], source: str) -> tuple[LightHuBERT, list[str]]:
    """Builds a `LightHuBERT` from an official-format checkpoint dict (already loaded safely).

    `hubert_pruner` (a supernet) starts at its space's default subnet; `student_hubert`
    (stage 1) at `max`, as s3prl's `lighthubert_local` chooses. A checkpoint that we wrote
    carries its own space in `cfg['lighthubert']`.

    Returns:
        (model, dropped keys).
    """
    cfg = ckpt.get("cfg")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{source}: not a LightHuBERT checkpoint (expected {{'cfg': {{'model': ...}}, 'model': state_dict}})")
    name = cfg["model"].get("_name")
    if name not in KINDS:
        raise CheckpointError(f"{source}: model type {name!r} is not a LightHuBERT checkpoint ('hubert_pruner' or 'student_hubert')")
    space = read_config(cfg)
    state, dropped = to_ours(ckpt["model"])
    model = LightHuBERT(space)
    load_state(model, state, source)
    ours = cfg.get("lighthubert")
    subnet = ours.get("subnet") if isinstance(ours, dict) else None
    model.set_subnet(SubnetConfig.from_official(subnet, space.model.head_dim) if subnet else ("max" if name == "student_hubert" else "default"))
    return model.eval(), dropped


def checkpoint(model: LightHuBERT, stage1: bool = False) -> dict[str, Any]:
    """The official `{'cfg', 'model'}` dict for a `LightHuBERT`, loadable by the official code
    and s3prl's `lighthubert_local` (for the 768-wide, 12-layer spaces), plus our space and
    active subnet under `cfg['lighthubert']`, which they ignore."""
    m, space = model.cfg, model.space
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {
        "cfg": {
            "model": config_dict(m, space.name, stage1),
            "task": {"normalize": m.normalize, "sample_rate": 16000},
            "lighthubert": {"space": space.to_dict(), "subnet": model.subnet.to_official(m.head_dim)},
        },
        "model": from_ours(state, m.extractor_mode),
    }
