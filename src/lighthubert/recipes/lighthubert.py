"""LightHuBERT's two-stage distillation (the `lighthubert` method).

L1 between the student's prediction head and the mean of the teacher's last K FFN outputs
(reference notes §10.1), on masked frames by default. Stage 1 trains the space's max subnet
(optionally initialised from the teacher); stage 2 starts from the stage-1 student and
samples subnets of the space every step, uniformly (the official sampler) or sandwich-style.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

import torch
from torch import Tensor, nn

from .. import checkpoint, safeload
from ..formats import official
from ..audio import normalize
from ..channel_order import sort_conv_channels
from ..data import AudioDataset, Batch
from ..inherit import init_from_teacher
from ..losses import layer_average_target, masked_l1, span_mask
from ..model import HuBERT
from ..space import SearchSpace, SubnetConfig
from ..supernet import LightHuBERT
from .frozen import freeze_untrained

log = logging.getLogger(__name__)


@dataclass
class LightHuBERTDistillConfig:
    """Settings of LightHuBERT distillation, stage 1 or 2."""

    stage: int = 1  # 1 trains the full-size student, 2 the once-for-all supernet (from a stage-1 --init)
    space: str = "base"  # search space: base | small | a YAML file (stage 1 trains its max subnet)
    init_from_teacher: bool = True  # stage 1: start from the teacher's tensors of the same meaning (`model.matching_state`)
    sampling: str = "uniform"  # stage 2: uniform (the official sampler) | sandwich (max + min + random ones)
    sandwich_random: int = 2  # random subnets per step besides max and min with `sandwich`
    target_layers: int = 8  # targets: mean of the teacher's last K FFN outputs (issue #6 of the official repo)
    instance_norm: bool = True  # instance-normalise each teacher layer before averaging (data2vec)
    loss_on: str = "masked"  # masked: L1 on masked frames only | all: every frame
    mask_prob: float = 0.65  # span-mask start probability (official default)
    mask_length: int = 10  # span length in frames (official default)
    layerdrop: Optional[float] = None  # the student's layerdrop; None: the space's own (0 for base / small; the official trainer used 0.05)
    sort_conv_channels: bool = False  # stage 2 with an elastic front end: order the --init's conv channels by importance first (`channel_order`)

    def __post_init__(self) -> None:
        choices = {"stage": (1, 2), "sampling": ("uniform", "sandwich"), "loss_on": ("masked", "all")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        for name in ("target_layers", "mask_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.sandwich_random < 0:
            raise ValueError(f"sandwich_random must be >= 0, got {self.sandwich_random}")
        if not 0 <= self.mask_prob <= 1:
            raise ValueError(f"mask_prob must be in [0, 1], got {self.mask_prob}")
        if self.loss_on == "masked" and self.mask_prob == 0:
            raise ValueError("loss_on masked needs masks: raise mask_prob above 0 or use loss_on=all")
        if self.layerdrop is not None and not 0 <= self.layerdrop < 1:
            raise ValueError(f"layerdrop must be in [0, 1), got {self.layerdrop}")


class LightHuBERTRecipe:
    """Stage 1 / stage 2 as a `Trainer` recipe; also the fitness of `search` (`targets`, `loss`).

    Args:
        settings: the recipe's settings.
        teacher: a checkpoint path (any model `lighthubert.load` reads; a supernet teaches at
            its active subnet) or an already loaded dense teacher.
        init: initial student weights (stage 2: the stage-1 checkpoint).
        seed: seeds the subnets: the RNG of step s is seeded by (seed, s), the same on every rank.
    """

    name: ClassVar[str] = "lighthubert"
    labels: ClassVar[Optional[str]] = None
    batching: ClassVar[str] = "crop"
    trainer_defaults: ClassVar[dict] = {}
    Settings: ClassVar[type] = LightHuBERTDistillConfig

    def __init__(self, settings: LightHuBERTDistillConfig, teacher: Union[str, Path, HuBERT, None] = None,
                 init: Optional[str] = None, seed: int = 1) -> None:
        if teacher is None:
            raise ValueError("method lighthubert distils a teacher: pass its checkpoint (--teacher)")
        self.settings, self.init, self.seed = settings, init, seed
        self.teacher = checkpoint.load_teacher(teacher) if isinstance(teacher, (str, Path)) else teacher
        depth = self.teacher.cfg.depth
        if settings.target_layers > depth:
            raise ValueError(f"target_layers {settings.target_layers} exceeds the teacher's {depth} layers")
        space = SearchSpace.named(settings.space)
        model = dataclasses.replace(space.model, pred_dim=self.teacher.cfg.embed_dim)  # the head predicts the teacher's width
        if settings.layerdrop is not None:
            model = dataclasses.replace(model, layerdrop=settings.layerdrop)
        self.space = dataclasses.replace(space, model=model)
        if settings.sort_conv_channels and (settings.stage != 2 or not self.space.conv_dims):
            raise ValueError("sort_conv_channels orders channels for an elastic front end: it needs stage 2 and a space "
                             f"with conv_dim choices (space {self.space.name!r} at stage {settings.stage})")

    @property
    def description(self) -> str:
        return f"stage {self.settings.stage}"

    def build(self, train_set: AudioDataset, device: torch.device, progress: bool) -> LightHuBERT:
        if self.settings.stage == 2 and not self.init:
            raise ValueError("stage 2 starts from a stage-1 checkpoint: pass --init CKPT")
        self.teacher.to(device)
        student = LightHuBERT(self.space)
        if self.init:
            source = checkpoint.load_model(self.init)
            safeload.load_state(student, source.state_dict(), self.init)
            log.info("student initialised from %s", self.init)
            if self.settings.sort_conv_channels:
                sort_conv_channels(student)
                log.info("conv channels sorted by importance (once-for-all channel sorting)")
        elif self.settings.stage == 1 and self.settings.init_from_teacher:
            log.info("%s", init_from_teacher(self.teacher, student))
        freeze_untrained(student, masked=self.settings.mask_prob > 0)
        student.set_subnet("max")
        return student

    @property
    def find_unused_parameters(self) -> bool:
        """Depth below the maximum (stage 2) and layerdrop leave whole layers out of a step."""
        elastic_depth = self.settings.stage == 2 and min(self.space.depths) < self.space.model.depth
        return elastic_depth or self.space.model.layerdrop > 0

    def subnets(self, step: int) -> list[SubnetConfig]:
        """The step's subnets, from an RNG seeded by (seed, step): the same on every rank."""
        if self.settings.stage == 1:
            return [self.space.max()]
        rng = random.Random(self.seed * 1_000_003 + step)
        if self.settings.sampling == "uniform":
            return [self.space.sample(rng)]
        return [self.space.max(), self.space.min()] + [self.space.sample(rng) for _ in range(self.settings.sandwich_random)]

    def valid_subnets(self) -> dict[str, SubnetConfig]:
        if self.settings.stage == 1:
            return {"max": self.space.max()}
        return {"default": self.space.default, "max": self.space.max(), "min": self.space.min()}

    def targets(self, batch: Batch) -> Tensor:
        t = self.teacher(normalize(batch.wav) if self.teacher.cfg.normalize else batch.wav)
        return layer_average_target(t.layer_results, self.settings.target_layers, self.settings.instance_norm)

    def loss(self, model: nn.Module, student: LightHuBERT, sub: SubnetConfig, batch: Batch, target: Tensor,
             generator: torch.Generator) -> Tensor:
        """L1 of the student's prediction for `sub`; masks drawn from `generator`."""
        s = self.settings
        student.set_subnet(sub)
        wav = batch.wav
        mask = span_mask(wav.size(0), target.size(1), s.mask_prob, s.mask_length, generator).to(wav.device)
        out = model(normalize(wav) if student.cfg.normalize else wav, mask=mask if s.mask_prob > 0 else None)
        return masked_l1(out.prediction, target, mask if s.loss_on == "masked" else None)

    def save(self, student: LightHuBERT) -> dict[str, Any]:
        student.set_subnet(self.space.max() if self.settings.stage == 1 else self.space.default)
        return official.checkpoint(student, stage1=self.settings.stage == 1)

    def restore(self, student: nn.Module, ckpt: dict[str, Any], source: str) -> None:
        checkpoint.restore_weights(student, ckpt, source)

