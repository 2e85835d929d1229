"""DistilHuBERT (Chang, Yang, Lee, ICASSP 2022), the `distilhubert` method.

A `distil_layers`-layer student initialised from the teacher (conv front end, projection,
positional conv, first layers), no feature LayerNorm, one MLP head per target teacher layer
on its last layer, loss L1 + lambda * (-log sigmoid(cosine)) averaged as the reference code
does (reference notes, peers §1.1-§1.5). The reference repository's shipped config predicts
layers 4 and 12 only; the paper, and our default, 4, 8 and 12.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

import torch
from torch import Tensor, nn

from .. import checkpoint, safeload
from ..formats import s3prl
from ..audio import normalize
from ..data import AudioDataset, Batch
from ..inherit import init_from_teacher
from ..losses import distilhubert_loss
from ..model import DistilHuBERT, HuBERT
from .frozen import freeze_untrained

log = logging.getLogger(__name__)


@dataclass
class DistilHuBERTConfig:
    """Settings of DistilHuBERT distillation."""

    distil_layers: int = 2  # student layers, initialised from the teacher's first ones
    distil_targets: list = field(default_factory=lambda: [4, 8, 12])  # teacher layers the heads predict (1-based)
    cos_weight: float = 1.0  # lambda of the -log sigmoid(cosine) term
    distil_conv_grad_scale: float = 0.1  # gradient scale of the student's conv front end

    def __post_init__(self) -> None:
        if self.distil_layers < 1:
            raise ValueError(f"distil_layers must be at least 1, got {self.distil_layers}")
        if not self.distil_targets or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 1
                                              for t in self.distil_targets):
            raise ValueError(f"distil_targets must be a non-empty list of teacher layers (integers >= 1), got "
                             f"{self.distil_targets}")
        if self.cos_weight < 0 or self.distil_conv_grad_scale < 0:
            raise ValueError(f"cos_weight and distil_conv_grad_scale must be >= 0, got {self.cos_weight}, "
                             f"{self.distil_conv_grad_scale}")


class DistilHuBERTRecipe:
    """DistilHuBERT as a `Trainer` recipe (arguments as `LightHuBERTRecipe`'s)."""

    name: ClassVar[str] = "distilhubert"
    description: ClassVar[str] = "distilhubert"
    Settings: ClassVar[type] = DistilHuBERTConfig
    # The paper's recipe (peers §1.5): lr 2e-4 with 7% warm-up then linear decay, clipping 5,
    # 24 utterances of at most 250,000 samples, 200k steps, no length filter.
    labels: ClassVar[Optional[str]] = None
    batching: ClassVar[str] = "crop"
    trainer_defaults: ClassVar[dict] = {
        "lr": 2e-4, "schedule": "linear", "warmup": 0.07, "hold": 0.0, "grad_clip": 5.0, "weight_decay": 1e-6,
        "max_steps": 200_000, "max_sample_size": 250_000, "max_batch_samples": 24 * 250_000, "min_sample_size": 0}
    # Every trainable tensor is used every step (mask_emb, which DistilHuBERT never uses, is frozen,
    # and so is the front end at distil_conv_grad_scale 0: `frozen.freeze_untrained`).
    find_unused_parameters: ClassVar[bool] = False

    def __init__(self, settings: DistilHuBERTConfig, teacher: Union[str, Path, HuBERT, None] = None,
                 init: Optional[str] = None, seed: int = 1) -> None:
        if teacher is None:
            raise ValueError("method distilhubert distils a teacher: pass its checkpoint (--teacher)")
        self.settings, self.init = settings, init
        self.teacher = checkpoint.load_teacher(teacher) if isinstance(teacher, (str, Path)) else teacher
        depth = self.teacher.cfg.depth
        bad = [t for t in settings.distil_targets if not 1 <= t <= depth]
        if bad:
            raise ValueError(f"distil_targets {settings.distil_targets}: each must be a teacher layer in 1..{depth}")
        if settings.distil_layers > depth:
            raise ValueError(f"distil_layers must be in 1..{depth} (the teacher's depth), got {settings.distil_layers}")

    def build(self, train_set: AudioDataset, device: torch.device, progress: bool) -> DistilHuBERT:
        self.teacher.to(device)
        t, n = self.teacher.cfg, self.settings.distil_layers
        shape = dataclasses.replace(t, heads=t.heads[:n], ffn_dim=t.ffn_dim[:n], feature_layer_norm=False, pred_dim=0,
                                    layerdrop=0.0, feature_grad_mult=self.settings.distil_conv_grad_scale,
                                    supernet_embed_dim=0,  # a student of its own, even of an exported subnet
                                    pos_conv_layers=0, relative_buckets=0)  # HuBERT-shaped, as s3prl's, for a WavLM / data2vec teacher too
        student = DistilHuBERT(shape, self.settings.distil_targets, t.embed_dim)
        if self.init:
            source = checkpoint.load_model(self.init)
            if not isinstance(source, DistilHuBERT) or source.targets != student.targets:
                found = f"heads for layers {source.targets}" if isinstance(source, DistilHuBERT) else "no prediction heads"
                raise ValueError(f"{self.init} has {found}; this run predicts layers {student.targets} (distil_targets)")
            safeload.load_state(student, source.state_dict(), self.init)
        else:  # the teacher's front end, positional conv and first layers (same shape and meaning)
            log.info("%s", init_from_teacher(self.teacher, student))
        freeze_untrained(student, masked=False)  # DistilHuBERT never masks
        return student

    def subnets(self, step: int) -> list[None]:
        return [None]

    def valid_subnets(self) -> dict[str, None]:
        return {"student": None}

    def targets(self, batch: Batch) -> Tensor:
        t = self.teacher(normalize(batch.wav) if self.teacher.cfg.normalize else batch.wav)
        return torch.stack([t.hidden_states[i].float() for i in self.settings.distil_targets], dim=2)  # (B, T, N, D)

    def loss(self, model: nn.Module, student: DistilHuBERT, sub: None, batch: Batch, target: Tensor,
             generator: torch.Generator) -> Tensor:
        out = model(normalize(batch.wav) if student.cfg.normalize else batch.wav)
        return distilhubert_loss(out.prediction.unbind(2), target.unbind(2), self.settings.cos_weight)[0]

    def save(self, student: DistilHuBERT) -> dict[str, Any]:
        """s3prl's `states-*.ckpt` layout, so its `distiller_local` upstream reads our students."""
        return s3prl.checkpoint(student)

    def restore(self, student: nn.Module, ckpt: dict[str, Any], source: str) -> None:
        checkpoint.restore_weights(student, ckpt, source)
