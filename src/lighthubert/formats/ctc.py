"""A fine-tuned CTC model's `.pt` (`{"format": "lighthubert-ctc", "config", "vocab",
"state_dict"}`), which the `ctc` recipe writes: its `ModelConfig`, vocabulary and weights."""

from __future__ import annotations

from typing import Any, Union

from .. import settings
from ..model import HuBERTCTC, ModelConfig
from ..safeload import CheckpointError, load_state

NAME = "ctc"
FORMAT = "lighthubert-ctc"  # the checkpoint's "format" value


def detect(obj: Union[dict[str, Any], Any]) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def checkpoint(model: HuBERTCTC) -> dict[str, Any]:
    """A fine-tuned CTC model as a `.pt` dict: its `ModelConfig`, vocabulary and weights."""
    return {"format": FORMAT, "version": 1, "config": model.cfg.asdict(), "vocab": list(model.vocab),
            "final_dropout": model.final_dropout.p,
            "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}


def load(ckpt: dict[str, Any], source: str) -> tuple[HuBERTCTC, list[str]]:
    try:
        cfg, vocab = settings.from_dict(ModelConfig, ckpt["config"], "model"), ckpt["vocab"]
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: not a readable {FORMAT} checkpoint ({e})") from None
    model = HuBERTCTC(cfg, vocab, float(ckpt.get("final_dropout", 0.0)))
    load_state(model, ckpt["state_dict"], source)
    return model, []
