"""Training: one loop for one process or many (torchrun / DDP).

`Trainer.train_step` reads like nanoGPT's loop: set the learning rate, pick the step's
subnets, targets under `no_grad`, student, loss, backward, clip, step, log. The recipe
(`LightHuBERT` stage 1 / stage 2, DistilHuBERT, or HuBERT pre-training of a teacher in
`pretrain.py`) decides the student, its targets and its subnets; everything else (data,
schedule, precision, checkpoints, resume, logging) is shared.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import yaml
from torch import Tensor
from tqdm import tqdm

from . import checkpoint, convert, distributed
from .data import AudioDataset, BucketBatchSampler, CropCollate, SkipCounter, normalize
from .losses import distilhubert_loss, layer_average_target, masked_l1, span_mask
from .model import DistilHuBERT, HuBERT
from .pretrain import HuBERTRecipe
from .space import SearchSpace, SubnetConfig
from .supernet import LightHuBERT

log = logging.getLogger(__name__)


@dataclass
class DistillConfig:
    """Every setting of a training run (distillation, or `method: hubert` pre-training);
    written into each checkpoint and `config.yaml`."""

    method: str = "lighthubert"  # lighthubert (two stages, once-for-all) | distilhubert (Chang et al. 2022) | hubert (pretrain-teacher)
    stage: int = 1  # LightHuBERT stage: 1 trains the full-size student, 2 the once-for-all supernet
    space: str = "base"  # search space: base | small | a YAML file (stage 1 trains its max subnet)
    init_from_teacher: bool = True  # stage 1: start from the teacher's weights where names and shapes match
    sampling: str = "uniform"  # stage 2: uniform (the official sampler) | sandwich (max + min + random ones)
    sandwich_random: int = 2  # random subnets per step besides max and min with `sandwich`
    target_layers: int = 8  # targets: mean of the teacher's last K FFN outputs (issue #6 of the official repo)
    instance_norm: bool = True  # instance-normalise each teacher layer before averaging (data2vec)
    loss_on: str = "masked"  # masked: L1 on masked frames only | all: every frame
    mask_prob: float = 0.65  # span-mask start probability (official default)
    mask_length: int = 10  # span length in frames (official default)
    distil_layers: int = 2  # distilhubert: student layers, initialised from the teacher's first ones
    distil_targets: list = field(default_factory=lambda: [4, 8, 12])  # distilhubert: teacher layers the heads predict
    cos_weight: float = 1.0  # distilhubert: lambda of the -log sigmoid(cosine) term
    distil_conv_grad_scale: float = 0.1  # distilhubert: gradient scale of the student's conv front end
    model: dict = field(default_factory=dict)  # hubert: the teacher's ModelConfig fields over HuBERT Base's shape
    clusters: int = 100  # hubert: k-means units of the MFCC frames (HuBERT iteration 1: 100)
    kmeans_frames: int = 250_000  # hubert: MFCC frames (50 per second) clustered, from files drawn at random
    final_dim: int = 256  # hubert: width of final_proj and of the unit embeddings
    logit_temp: float = 0.1  # hubert: temperature of the cosine logits
    lr: float = 5e-4  # peak learning rate
    betas: list = field(default_factory=lambda: [0.9, 0.98])  # Adam betas
    eps: float = 1e-6  # Adam epsilon
    weight_decay: float = 0.01  # decoupled weight decay (AdamW)
    schedule: str = "tri_stage"  # tri_stage (warm-up, hold, decay) | linear (warm-up, linear decay to 0)
    warmup: float = 0.03  # fraction of max_steps spent warming up
    hold: float = 0.9  # tri_stage: fraction of max_steps at the peak
    final_lr_scale: float = 0.05  # tri_stage: final LR as a fraction of the peak
    max_steps: int = 400_000  # optimiser steps
    grad_clip: float = 10.0  # max global gradient norm (0: no clipping)
    accum: int = 1  # micro-batches per optimiser step (gradient accumulation)
    precision: str = "fp32"  # fp32 | bf16 | fp16 (bf16 / fp16 on CUDA only)
    max_batch_samples: int = 1_400_000  # padded samples per micro-batch and process
    max_sample_size: int = 320_000  # crop length cap (20 s)
    min_sample_size: int = 32_000  # shorter utterances are filtered out (2 s)
    num_workers: int = 2  # DataLoader worker processes
    seed: int = 1  # seeds subnets, masks, crops and data order
    log_every: int = 10  # steps between JSONL log lines
    valid_every: int = 1000  # steps between validations (and at the end)
    save_every: int = 1000  # steps between checkpoints (and at the end)
    keep_last: int = 3  # checkpoints kept
    max_bad_steps: int = 20  # consecutive non-finite steps before the run stops
    check_sync_every: int = 0  # DDP check: compare parameters across ranks every N steps (0: never)
    device: Optional[str] = None  # cpu | cuda | cuda:N (default: cuda:LOCAL_RANK if available)

    def __post_init__(self) -> None:
        choices = {"method": ("lighthubert", "distilhubert", "hubert"), "stage": (1, 2), "sampling": ("uniform", "sandwich"),
                   "loss_on": ("masked", "all"), "schedule": ("tri_stage", "linear"), "precision": ("fp32", "bf16", "fp16")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        for name in ("max_steps", "accum", "max_batch_samples", "max_sample_size", "keep_last", "max_bad_steps",
                     "log_every", "valid_every", "save_every", "target_layers", "clusters", "kmeans_frames", "final_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.warmup <= 1 or not 0 <= self.hold <= 1 or self.warmup + self.hold > 1:
            raise ValueError(f"warmup ({self.warmup}) and hold ({self.hold}) are fractions of max_steps summing to at most 1")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DistillConfig":
        """Builds a config, converting and checking each value by its field's type; the
        method's recipe defaults (`METHOD_DEFAULTS`) fill the keys `d` leaves out."""
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; run with --print-config to see them all")
        d = {**METHOD_DEFAULTS.get(d.get("method", "lighthubert"), {}), **d}
        return cls(**{k: _typed(k, v, fields[k]) for k, v in d.items()})

    @classmethod
    def from_yaml(cls, path: Optional[str], overrides: tuple[str, ...] = ()) -> "DistillConfig":
        """A YAML file (or the defaults) with `key=value` overrides, values parsed as YAML."""
        d: dict[str, Any] = {}
        if path:
            with open(path) as f:
                d = yaml.safe_load(f) or {}
            if not isinstance(d, dict):
                raise ValueError(f"{path}: expected a mapping of config keys")
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--set expects key=value, got {item!r}")
            d[key.strip()] = yaml.safe_load(value)
        return cls.from_dict(d)

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)


# DistilHuBERT's paper recipe (reference notes, peers §1.5): no masking, lr 2e-4 with 7% warm-up
# then linear decay, clipping 5, 24 utterances of at most 250,000 samples, 200k steps.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "distilhubert": {"lr": 2e-4, "schedule": "linear", "warmup": 0.07, "hold": 0.0, "grad_clip": 5.0,
                     "weight_decay": 1e-6, "mask_prob": 0.0, "loss_on": "all", "max_steps": 200_000,
                     "max_sample_size": 250_000, "max_batch_samples": 24 * 250_000, "min_sample_size": 0},
    # HuBERT Base (fairseq hubert_base_librispeech.yaml): mask 0.8, 8% warm-up then linear decay, 400k steps.
    "hubert": {"mask_prob": 0.8, "schedule": "linear", "warmup": 0.08, "hold": 0.0, "max_sample_size": 250_000},
}


def _typed(name: str, value: Any, annotation: str) -> Any:
    """`value` as the field's type: YAML reads `1e-5` as a string and `3` where a float is meant."""
    kind = {"float": float, "int": int, "bool": bool, "str": str, "list": list, "dict": dict}.get(annotation)
    if kind is None or value is None:
        return value
    if kind in (float, int) and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is not None and (kind is float or number.is_integer()):
            return kind(number)
    elif isinstance(value, kind):
        return value
    raise ValueError(f"config {name} must be a {annotation}, got {value!r}")


def learning_rate(cfg: DistillConfig, step: int) -> float:
    """The LR at optimiser step `step` (0-based): linear warm-up, then tri-stage or linear decay."""
    warm = int(cfg.warmup * cfg.max_steps)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.schedule == "linear":
        return cfg.lr * max(0.0, (cfg.max_steps - step) / max(1, cfg.max_steps - warm))
    hold_end = warm + int(cfg.hold * cfg.max_steps)
    if step < hold_end:
        return cfg.lr
    decay = max(1, cfg.max_steps - hold_end)  # exponential decay to final_lr_scale, as fairseq's tri_stage
    return cfg.lr * cfg.final_lr_scale ** (min(step - hold_end, decay) / decay)


def validation_batches(dataset: AudioDataset, max_batch_samples: int, max_sample_size: int, seed: int,
                       replicas: int = 1, rank: int = 0) -> Iterator[tuple[int, Tensor]]:
    """Validation batches in a fixed order: (batch index, cropped audio (B, N)); batches whose
    files were all unusable are left out. Masks seeded by the index make losses comparable."""
    sampler = BucketBatchSampler(dataset.sizes, max_batch_samples, seed, replicas, rank, shuffle=False, drop_last=False,
                                 max_crop=max_sample_size)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=CropCollate(max_sample_size, seed),
                                         num_workers=0)
    for b, batch in enumerate(loader):
        if batch["wav"] is not None:
            yield b, batch["wav"]


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. many non-finite steps in a row); the message says what to do."""


class LightHuBERTRecipe:
    """LightHuBERT's two stages: L1 between the student's prediction head and the mean of the
    teacher's last K FFN outputs (reference notes §10.1), on masked frames by default.

    Stage 1 trains the space's max subnet; stage 2 samples subnets of the space every step.
    """

    def __init__(self, cfg: DistillConfig, teacher: HuBERT) -> None:
        self.cfg = cfg
        space = SearchSpace.named(cfg.space)
        # The head predicts the teacher's width.
        self.space = dataclasses.replace(space, model=dataclasses.replace(space.model, pred_dim=teacher.cfg.embed_dim))
        if cfg.target_layers > teacher.cfg.depth:
            raise ValueError(f"target_layers {cfg.target_layers} exceeds the teacher's {teacher.cfg.depth} layers")

    def build_student(self, teacher: HuBERT, init: Optional[str]) -> LightHuBERT:
        student = LightHuBERT(self.space)
        if init:
            source = checkpoint.load_model(init)
            checkpoint.load_state(student, source.state_dict(), init)
            log.info("student initialised from %s", init)
        elif self.cfg.stage == 1 and self.cfg.init_from_teacher:
            own, copied = student.state_dict(), {}
            for k, v in teacher.state_dict().items():
                if k in own and own[k].shape == v.shape:
                    copied[k] = v
            student.load_state_dict(copied, strict=False)
            log.info("student initialised from the teacher: %d of %d tensors copied", len(copied), len(own))
        elif self.cfg.stage == 2:
            raise ValueError("stage 2 starts from a stage-1 checkpoint: pass --init CKPT")
        student.set_subnet("max")
        return student

    @property
    def find_unused_parameters(self) -> bool:
        """Depth below the maximum leaves whole layers out of a step; no masking leaves `mask_emb` out."""
        return (self.cfg.stage == 2 and min(self.space.depths) < self.space.model.depth) or self.cfg.mask_prob <= 0

    def subnets(self, step: int) -> list[SubnetConfig]:
        """The step's subnets, from an RNG seeded by (seed, step): the same on every rank."""
        if self.cfg.stage == 1:
            return [self.space.max()]
        rng = random.Random(self.cfg.seed * 1_000_003 + step)
        if self.cfg.sampling == "uniform":
            return [self.space.sample(rng)]
        return [self.space.max(), self.space.min()] + [self.space.sample(rng) for _ in range(self.cfg.sandwich_random)]

    def valid_subnets(self) -> dict[str, SubnetConfig]:
        if self.cfg.stage == 1:
            return {"max": self.space.max()}
        return {"default": self.space.default, "max": self.space.max(), "min": self.space.min()}

    def targets(self, teacher: HuBERT, wav: Tensor) -> Tensor:
        with torch.no_grad():
            t = teacher(normalize(wav) if teacher.cfg.normalize else wav)
            return layer_average_target(t.layer_results, self.cfg.target_layers, self.cfg.instance_norm)

    def loss(self, model: torch.nn.Module, student: LightHuBERT, sub: SubnetConfig, wav: Tensor, target: Tensor,
             generator: torch.Generator) -> Tensor:
        """L1 of the student's prediction for `sub`; masks drawn from `generator`."""
        student.set_subnet(sub)
        frames = target.size(1)
        mask = span_mask(wav.size(0), frames, self.cfg.mask_prob, self.cfg.mask_length, generator).to(wav.device)
        x = normalize(wav) if student.cfg.normalize else wav
        out = model(x, mask=mask if self.cfg.mask_prob > 0 else None)
        return masked_l1(out.prediction, target, mask if self.cfg.loss_on == "masked" else None)

    def save(self, student: LightHuBERT) -> dict[str, Any]:
        student.set_subnet(self.space.max() if self.cfg.stage == 1 else self.space.default)
        return checkpoint.official_checkpoint(student, stage1=self.cfg.stage == 1)

    @staticmethod
    def restore(student: torch.nn.Module, ckpt: dict[str, Any], source: str) -> None:
        """Loads the weights of a checkpoint that `save` wrote (for --resume)."""
        _, model, _ = checkpoint.model_from_dict(ckpt, source)
        checkpoint.load_state(student, model.state_dict(), source)


class DistilHuBERTRecipe:
    """DistilHuBERT (Chang, Yang, Lee, ICASSP 2022): a `distil_layers`-layer student initialised
    from the teacher (conv front end, projection, positional conv, first layers), no feature
    LayerNorm, one MLP head per target teacher layer on its last layer, loss L1 + lambda *
    (-log sigmoid(cosine)) averaged as the reference code does (peers §1.1-§1.3).

    The reference repository's shipped config predicts layers 4 and 12 only; the paper, and
    our default, 4, 8 and 12.
    """

    def __init__(self, cfg: DistillConfig, teacher: HuBERT) -> None:
        self.cfg = cfg
        depth = teacher.cfg.depth
        bad = [t for t in cfg.distil_targets if not 1 <= t <= depth]
        if bad or not cfg.distil_targets:
            raise ValueError(f"distil_targets {cfg.distil_targets}: each must be a teacher layer in 1..{depth}")
        if not 1 <= cfg.distil_layers <= depth:
            raise ValueError(f"distil_layers must be in 1..{depth} (the teacher's depth), got {cfg.distil_layers}")

    def build_student(self, teacher: HuBERT, init: Optional[str]) -> DistilHuBERT:
        t, n = teacher.cfg, self.cfg.distil_layers
        shape = dataclasses.replace(t, heads=t.heads[:n], ffn_dim=t.ffn_dim[:n], feature_layer_norm=False, pred_dim=0,
                                    layerdrop=0.0, feature_grad_mult=self.cfg.distil_conv_grad_scale)
        student = DistilHuBERT(shape, self.cfg.distil_targets, t.embed_dim)
        if init:
            source = checkpoint.load_model(init)
            if not isinstance(source, DistilHuBERT) or source.targets != student.targets:
                found = f"heads for layers {source.targets}" if isinstance(source, DistilHuBERT) else "no prediction heads"
                raise ValueError(f"{init} has {found}; this run predicts layers {student.targets} (distil_targets)")
            checkpoint.load_state(student, source.state_dict(), init)
        else:  # the teacher's tensors wherever names and shapes match: front end, pos conv, first layers
            own = student.state_dict()
            copied = {k: v for k, v in teacher.state_dict().items() if k in own and own[k].shape == v.shape}
            student.load_state_dict(copied, strict=False)
            log.info("student initialised from the teacher: %d of %d tensors copied", len(copied), len(own))
        return student

    find_unused_parameters = True  # mask_emb: DistilHuBERT never masks

    def subnets(self, step: int) -> list[None]:
        return [None]

    def valid_subnets(self) -> dict[str, None]:
        return {"student": None}

    def targets(self, teacher: HuBERT, wav: Tensor) -> Tensor:
        with torch.no_grad():
            t = teacher(normalize(wav) if teacher.cfg.normalize else wav)
            return torch.stack([t.hidden_states[i].float() for i in self.cfg.distil_targets], dim=2)  # (B, T, N, D)

    def loss(self, model: torch.nn.Module, student: DistilHuBERT, sub: None, wav: Tensor, target: Tensor,
             generator: torch.Generator) -> Tensor:
        out = model(normalize(wav) if student.cfg.normalize else wav)
        return distilhubert_loss(out.prediction.unbind(2), target.unbind(2), self.cfg.cos_weight)[0]

    def save(self, student: DistilHuBERT) -> dict[str, Any]:
        """s3prl's `states-*.ckpt` layout, so its `distiller_local` upstream reads our students."""
        return {"Distiller": convert.ours_to_distiller(student.state_dict(), student.cfg.extractor_mode),
                "Config": {"distiller": convert.distiller_config_dict(student.cfg, student.targets)}}

    restore = staticmethod(LightHuBERTRecipe.restore)


class Trainer:
    """Runs a recipe: data, optimiser, schedule, precision, checkpoints, resume, logs."""

    def __init__(self, cfg: DistillConfig, teacher_path: Optional[str], train: str, valid: Optional[str], out: str,
                 init: Optional[str] = None, ctx: Optional[distributed.Context] = None) -> None:
        self.cfg, self.out = cfg, Path(out)
        self.ctx = ctx or distributed.init(cfg.device)
        dev = self.ctx.device
        if cfg.precision != "fp32" and dev.type != "cuda":
            raise ValueError(f"precision {cfg.precision} needs CUDA; on {dev.type} use fp32")
        # the manifests first: a typo there should not wait for a teacher to load
        self.train_set = AudioDataset(train, min_samples=cfg.min_sample_size)
        self.valid_set = AudioDataset(valid, min_samples=cfg.min_sample_size) if valid else None
        if cfg.method == "hubert":  # pre-training: the targets are MFCC k-means units, no teacher
            if teacher_path:
                raise ValueError("method hubert pre-trains a teacher from MFCC units; it takes no teacher")
            self.teacher = None
            self.recipe = HuBERTRecipe(cfg, self.train_set, progress=self.ctx.is_main)
        else:
            if not teacher_path:
                raise ValueError(f"method {cfg.method} distils a teacher: pass its checkpoint")
            self.teacher = checkpoint.load_model(teacher_path).to(dev).eval().requires_grad_(False)
            self.teacher.encoder.layerdrop = 0.0
            recipe = DistilHuBERTRecipe if cfg.method == "distilhubert" else LightHuBERTRecipe
            self.recipe = recipe(cfg, self.teacher)
        torch.manual_seed(cfg.seed)
        self.student = self.recipe.build_student(self.teacher, init).to(dev).train()
        self.model = distributed.wrap(self.student, self.ctx, self.recipe.find_unused_parameters)
        # fused: one kernel over all 95M supernet parameters, ~3x faster than the per-tensor loop on CPU
        self.optimizer = torch.optim.AdamW(self.student.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                           weight_decay=cfg.weight_decay, fused=True)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16")
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
        self.sampler = BucketBatchSampler(self.train_set.sizes, cfg.max_batch_samples, cfg.seed, self.ctx.world_size,
                                          self.ctx.rank, max_crop=cfg.max_sample_size)
        self.step, self.epoch, self.batches_done = 0, 0, 0
        self.skipped = SkipCounter()
        self.bad_steps = self.bad_in_a_row = 0
        self._batches = None

    # -- data ---------------------------------------------------------------------------------
    def _loader(self):
        self.sampler.set_position(self.epoch, self.batches_done)
        return iter(torch.utils.data.DataLoader(
            self.train_set, batch_sampler=self.sampler, collate_fn=CropCollate(self.cfg.max_sample_size, self.cfg.seed),
            num_workers=self.cfg.num_workers, persistent_workers=False,
            generator=torch.Generator().manual_seed(self.cfg.seed)))  # keeps the global RNG (dropout) untouched

    def next_batch(self) -> Optional[Tensor]:
        """The next cropped batch (B, N) of this rank; None when every file in it was bad."""
        if self._batches is None:
            self._batches = self._loader()
        try:
            batch = next(self._batches)
        except StopIteration:
            self.epoch, self.batches_done = self.epoch + 1, 0
            self._batches = self._loader()
            batch = next(self._batches)
        self.batches_done += 1
        for _, reason in batch["skipped"]:
            seen = len(self.skipped)
            self.skipped.add(reason)
            if len(self.skipped) > seen:  # warn once per file, not once per epoch
                log.warning("skipped %s", reason)
        return None if batch["wav"] is None else batch["wav"].to(self.ctx.device)

    def usable_batch(self) -> Tensor:
        """The next batch such that every rank has audio (a rank whose batch held only bad files
        takes the next one, and so do the others, to stay in step)."""
        for _ in range(len(self.sampler) + 1):
            wav = self.next_batch()
            if distributed.mean(float(wav is not None), self.ctx) == 1.0:
                return wav
        raise TrainingError(f"a whole epoch of batches held no readable audio; {self.skipped.summary()}")

    # -- one optimiser step -------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        lr = learning_rate(cfg, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        subnets = self.recipe.subnets(self.step)
        total, seconds = 0.0, 0.0
        for micro in range(cfg.accum):
            wav = self.usable_batch()
            seconds += wav.numel() / 16000
            gen = torch.Generator().manual_seed(cfg.seed * 7919 + self.step * 131 + micro * 17 + self.ctx.rank)
            with torch.autocast(self.ctx.device.type, self.amp_dtype, enabled=self.amp_dtype is not None):
                target = self.recipe.targets(self.teacher, wav)
            for i, sub in enumerate(subnets):
                last = micro == cfg.accum - 1 and i == len(subnets) - 1
                with distributed.no_sync(self.model, not last):
                    with torch.autocast(self.ctx.device.type, self.amp_dtype, enabled=self.amp_dtype is not None):
                        loss = self.recipe.loss(self.model, self.student, sub, wav, target, gen)
                    self.scaler.scale(loss / (cfg.accum * len(subnets))).backward()
                total += loss.item() / len(subnets)
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.student.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        finite = bool(torch.isfinite(norm)) and math.isfinite(total)
        if finite:
            self.scaler.step(self.optimizer)
            self.bad_in_a_row = 0
        else:
            self.bad_steps += 1
            self.bad_in_a_row += 1
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"loss": total / cfg.accum, "lr": lr, "grad_norm": float(norm), "audio_seconds": seconds, "finite": finite,
                "subnets": [s.describe() for s in subnets if s is not None]}

    # -- validation ---------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Loss per named subnet on the validation set, with masks fixed by the batch index."""
        if self.valid_set is None:
            return {}
        self.student.eval()
        sums = {name: 0.0 for name in self.recipe.valid_subnets()}
        count = 0
        for b, wav in validation_batches(self.valid_set, self.cfg.max_batch_samples, self.cfg.max_sample_size,
                                         self.cfg.seed, self.ctx.world_size, self.ctx.rank):
            wav = wav.to(self.ctx.device)
            target = self.recipe.targets(self.teacher, wav)
            for name, sub in self.recipe.valid_subnets().items():
                gen = torch.Generator().manual_seed(self.cfg.seed + b)
                sums[name] += self.recipe.loss(self.student, self.student, sub, wav, target, gen).item() * wav.size(0)
            count += wav.size(0)
        self.student.train()
        n = distributed.mean(float(count), self.ctx) * self.ctx.world_size
        if n == 0:
            return {}
        return {name: distributed.mean(s, self.ctx) * self.ctx.world_size / n for name, s in sums.items()}

    # -- checkpoints --------------------------------------------------------------------------
    def save(self) -> Optional[Path]:
        """Rank 0 writes `step-N.pt` atomically (official format + training state); keeps the last K."""
        if not self.ctx.is_main:
            return None
        ckpt = self.recipe.save(self.student)
        ckpt["trainer"] = {
            "config": dataclasses.asdict(self.cfg),
            "step": self.step, "epoch": self.epoch, "batches_done": self.batches_done,
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "skipped": self.skipped.state(), "bad_steps": self.bad_steps,
        }
        path = self.out / f"step-{self.step}.pt"
        checkpoint.save_file(ckpt, path)
        for old in sorted(self.out.glob("step-*.pt"), key=_step_of)[: -self.cfg.keep_last]:
            old.unlink()
        return path

    def resume(self) -> bool:
        """Loads the newest `step-N.pt` in the run folder; False when there is none."""
        found = sorted(self.out.glob("step-*.pt"), key=_step_of)
        if not found:
            return False
        ckpt = checkpoint.load_file(found[-1])
        state = ckpt.get("trainer")
        if not isinstance(state, dict):
            raise ValueError(f"{found[-1]}: no training state to resume from")
        self.recipe.restore(self.student, ckpt, str(found[-1]))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batches_done = state["step"], state["epoch"], state["batches_done"]
        self.skipped.load(state["skipped"])
        self.bad_steps = state["bad_steps"]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate((3, tuple(state["rng"]["python"]), None))
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self._batches = None
        log.info("resumed from %s at step %d", found[-1], self.step)
        return True

    # -- the run ------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Trains to `max_steps`; returns the last validation losses and the skip summary."""
        cfg, main = self.cfg, self.ctx.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(cfg.to_yaml())
        logf = open(self.out / "log.jsonl", "a") if main else None
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not main, unit="step",
                   desc=f"stage {cfg.stage}" if cfg.method == "lighthubert" else cfg.method)
        valid: dict[str, float] = {}
        started, audio = time.perf_counter(), 0.0
        try:
            while self.step < cfg.max_steps:
                stats = self.train_step()
                audio += stats["audio_seconds"] * self.ctx.world_size
                speed = audio / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(loss=f"{stats['loss']:.4f}", lr=f"{stats['lr']:.2e}", audio_s_per_s=f"{speed:.1f}")
                bar.update(1)
                if cfg.check_sync_every and self.step % cfg.check_sync_every == 0:
                    if not all(distributed.parameters_equal(self.model, self.ctx)):
                        raise TrainingError(f"ranks hold different parameters at step {self.step}")
                if self.bad_in_a_row >= cfg.max_bad_steps:
                    path = self.save()
                    raise TrainingError(
                        f"{self.bad_in_a_row} non-finite steps in a row at step {self.step}; the weights from before "
                        f"the blow-up are in {path or self.out}. Lower lr, raise warmup or use fp32, then --resume")
                if main and (self.step % cfg.log_every == 0 or self.step == cfg.max_steps):
                    logf.write(json.dumps({"type": "train", "step": self.step, **stats, "audio_seconds_per_second": speed}) + "\n")
                    logf.flush()
                if self.step % cfg.valid_every == 0 or self.step == cfg.max_steps:
                    valid = self.validate()
                    if main and valid:
                        logf.write(json.dumps({"type": "valid", "step": self.step, "loss": valid}) + "\n")
                        logf.flush()
                        log.info("step %d valid loss %s", self.step, {k: round(v, 5) for k, v in valid.items()})
                if self.step % cfg.save_every == 0 or self.step == cfg.max_steps:
                    self.save()
            summary = {"type": "summary", "step": self.step, "valid": valid, "skipped": self.skipped.summary(),
                       "non_finite_steps": self.bad_steps}
            if main:
                logf.write(json.dumps(summary) + "\n")
                log.info("done at step %d; %s; %d non-finite steps skipped", self.step, self.skipped.summary(), self.bad_steps)
            distributed.barrier(self.ctx)  # leave together: gloo aborts a rank torn down while another still writes
            return summary
        finally:
            bar.close()
            if logf:
                logf.close()


def _step_of(path: Path) -> int:
    m = re.match(r"step-(\d+)\.pt$", path.name)
    return int(m.group(1)) if m else -1
