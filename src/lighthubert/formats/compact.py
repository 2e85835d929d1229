"""Compact exports (`export --format compact`, written by `export.save_compact`): a folder of
`model.safetensors` and a `config.json` holding our `ModelConfig` (and a CTC model's vocabulary)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

from .. import settings
from ..model import HuBERT, HuBERTCTC, ModelConfig
from ..safeload import CheckpointError, load_dense, load_state, read_safetensors

NAME = "compact"
FORMAT = "lighthubert-compact"  # config.json "format"


def detect(obj: Union[dict[str, Any], Path]) -> bool:
    return (isinstance(obj, Path) and (obj / "config.json").is_file()
            and settings.read_json(obj / "config.json").get("format") == FORMAT)


def load(path: Path, source: str) -> tuple[HuBERT, list[str]]:
    meta = settings.read_json(path / "config.json")
    if not isinstance(meta.get("model"), dict):
        raise CheckpointError(f"{path / 'config.json'}: a compact export's config.json needs its 'model' config (an object)")
    cfg = settings.from_dict(ModelConfig, meta["model"], "model")
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{path}: compact export without model.safetensors")
    state = {k: v.float() for k, v in read_safetensors(weights).items()}
    if "vocab" in meta:  # a fine-tuned CTC model with its head
        try:
            model = HuBERTCTC(cfg, meta["vocab"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path / 'config.json'}: unreadable CTC vocabulary ({e})") from None
        load_state(model, state, source)
        return model, []
    return load_dense(HuBERT(cfg), state, source), []
