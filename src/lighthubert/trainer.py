"""Training: one loop for one process or many (torchrun / DDP), whatever the recipe.

`Trainer.train_step` reads like nanoGPT's loop: set the learning rate, pick the step's
subnets, targets under `no_grad`, student, loss, backward, clip, step, log. A *recipe*
(`recipes/`: LightHuBERT's stages, DistilHuBERT, HuBERT pre-training, CTC fine-tuning) says
what the student is, what it learns from and how the loss is computed, through the small
`Recipe` protocol below; the trainer owns everything else (data, schedule, precision,
checkpoints, resume, logging, DDP) and its own settings, `TrainConfig`. The trainer never
imports a recipe: a new recipe is one new file in `recipes/`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Protocol

import torch
from torch import Tensor, nn

from . import atomic, distributed, safeload, settings
from .progress import Progress, progress_bar
from .runfolder import Inputs, RunFolder, checkpoint_name, content_digest, input_changes, input_record, manifest_digest
from .data import AudioDataset, Batch, BucketBatchSampler, SkipCounter, batch_collate, validation_batches

log = logging.getLogger(__name__)

# Settings that may differ on --resume: they change how long the run goes and how often it
# reports, not what it computes. Raising max_steps recomputes the schedule for the new length.
RESUMABLE = ("max_steps", "log_every", "valid_every", "save_every", "keep_last", "max_bad_steps", "check_sync_every",
             "num_workers", "device")


@dataclass
class TrainConfig:
    """The trainer's settings, shared by every recipe: optimisation, precision, data, files.

    Recipes change some defaults (`Recipe.trainer_defaults`, e.g. DistilHuBERT's lr 2e-4).
    """

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
    precision: str = "fp32"  # fp32 | bf16 | fp16: autocast dtype of the forward passes (fp16 with a gradient scaler)
    cpu_autocast: bool = False  # allow bf16 / fp16 autocast on the CPU (slow on most CPUs; for tests and bf16 CPUs)
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
        choices = {"schedule": ("tri_stage", "linear"), "precision": ("fp32", "bf16", "fp16")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        for name in ("max_steps", "accum", "max_batch_samples", "max_sample_size", "keep_last", "max_bad_steps",
                     "log_every", "valid_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("min_sample_size", "num_workers", "seed", "check_sync_every", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {value}")
        if not (math.isfinite(self.lr) and self.lr > 0) or not (math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"lr and eps must be positive and finite, got lr {self.lr}, eps {self.eps}")
        if len(self.betas) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
                                           for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not 0 <= self.warmup <= 1 or not 0 <= self.hold <= 1 or self.warmup + self.hold > 1:
            raise ValueError(f"warmup ({self.warmup}) and hold ({self.hold}) are fractions of max_steps summing to at most 1")
        if not 0 < self.final_lr_scale <= 1:
            raise ValueError(f"final_lr_scale must be in (0, 1], got {self.final_lr_scale}")


class Recipe(Protocol):
    """What a training method gives the `Trainer` (one file per recipe in `recipes/`).

    The trainer calls `build` once, then per step: `subnets`, and per micro-batch `targets`
    (under `no_grad`, autocast) and `loss` per subnet; `valid_subnets` names what validation
    scores; `save` / `restore` write and read the recipe's checkpoint format (the trainer adds
    its own state under `"trainer"`).

    A recipe built from files (`RunConfig.build`) also has `inputs`, `{"teacher": path, "init":
    path}` (None where not given): their contents are part of the run's identity on `--resume`.
    """

    name: ClassVar[str]  # the `method` setting that selects it
    trainer_defaults: ClassVar[dict]  # TrainConfig values this recipe changes
    labels: ClassVar[Optional[str]]  # the label file the recipe learns from (`ltr`, ...), or None
    batching: ClassVar[str]  # crop: crop each batch to its shortest (pre-training) | pad: whole utterances, padded
    settings: Any  # the recipe's own settings (a dataclass), saved in every checkpoint
    description: str  # what the progress bar calls the run, e.g. "stage 2"

    def build(self, train_set: AudioDataset, device: torch.device, progress: bool) -> nn.Module:
        """The student, initialised (teacher weights, --init, or random); teachers onto `device`."""

    def check_labels(self, dataset: AudioDataset) -> None:
        """Recipes with `labels` only, called after `build` for the train and valid sets: refuses
        labels the student cannot learn, naming the label file and line (a ValueError)."""

    @property
    def find_unused_parameters(self) -> bool:
        """Whether a step can leave trainable parameters out (elastic depth, layerdrop): DDP must know."""

    def subnets(self, step: int) -> list:
        """The step's subnets (None for a fixed-shape student); the same on every rank. Called
        once at the start of every step, so a recipe may set step-dependent state here too."""

    def valid_subnets(self) -> dict[str, Any]:
        """Name -> subnet scored at each validation."""

    def targets(self, batch: Batch) -> Any:
        """What the student learns from this batch (teacher features, units, ...)."""

    def loss(self, model: nn.Module, student: nn.Module, sub: Any, batch: Batch, targets: Any,
             generator: torch.Generator) -> Tensor:
        """The scalar loss of `sub` on `batch`; `model` is `student`, wrapped for DDP when distributed."""

    def save(self, student: nn.Module) -> dict[str, Any]:
        """The checkpoint dict in the recipe's own format."""

    def restore(self, student: nn.Module, ckpt: dict[str, Any], source: str) -> None:
        """Loads what `save` wrote (for --resume)."""


def learning_rate(cfg: TrainConfig, step: int) -> float:
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


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. many non-finite steps in a row); the message says what to do."""


class Interrupted(TrainingError):
    """Ctrl-C (SIGINT) during a run; the message says where `--resume` continues from."""


def changed_settings(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`"key: saved -> now"` for each setting that differs between two run configs, except
    `RESUMABLE` ones. Both are `{"method", "trainer": {...}, "recipe": {...}}`; a saved config
    of the older flat layout is compared key by key where both have the key."""
    def flat(d: dict[str, Any]) -> dict[str, Any]:
        if isinstance(d.get("trainer"), dict) or isinstance(d.get("recipe"), dict):
            return {"method": d.get("method"), **(d.get("trainer") or {}), **(d.get("recipe") or {})}
        return dict(d)

    old, new = flat(saved), flat(current)
    return [f"{k}: {old[k]!r} -> {new[k]!r}" for k in new if k in old and k not in RESUMABLE and old[k] != new[k]]


class Trainer:
    """Runs a recipe: data, optimiser, schedule, precision, checkpoints, resume, logs."""

    def __init__(self, recipe: Recipe, cfg: TrainConfig, train: str, valid: Optional[str], out: str,
                 ctx: Optional[distributed.Context] = None) -> None:
        self.recipe, self.cfg, self.out = recipe, cfg, Path(out)
        self.ctx = ctx or distributed.init(cfg.device)
        dev = self.ctx.device
        self.folder = RunFolder(self.out)
        if self.ctx.is_main:  # before anything is read or written there
            self.folder.lock()
            self.folder.remove_temporary()
        self.written: list[str] = []  # checkpoint names this run wrote, oldest first: the only ones it prunes
        if cfg.precision != "fp32" and dev.type == "cpu" and not cfg.cpu_autocast:
            raise ValueError(f"precision {cfg.precision} on the CPU needs cpu_autocast: true (--set cpu_autocast=true); "
                             "it is slow on most CPUs, so use fp32 there")
        # Padded batches keep whole utterances: longer ones are left out instead of cropped.
        longest = cfg.max_sample_size if recipe.batching == "pad" else None
        self.train_set = AudioDataset(train, cfg.min_sample_size, longest, recipe.labels)
        self.valid_set = AudioDataset(valid, cfg.min_sample_size, longest, recipe.labels) if valid else None
        self.inputs = self._inputs()
        torch.manual_seed(cfg.seed)
        self.student = recipe.build(self.train_set, dev, self.ctx.is_main).to(dev).train()
        if recipe.labels:  # a label the model cannot learn stops the run now, not when its batch comes
            for dataset in (self.train_set, self.valid_set):
                if dataset is not None:
                    recipe.check_labels(dataset)
        # Two frames at least (GroupNorm over one frame fails in training), whatever min_sample_size
        # allows: a crop to the shortest utterance of a batch can never go below it.
        need = self.student.feature_extractor.min_samples(2)
        self.skipped = SkipCounter()
        for dataset in (self.train_set, self.valid_set):
            for reason in dataset.keep_at_least(need) if dataset is not None else []:
                self.skipped.add(reason)
        if len(self.skipped):
            log.info("%s shorter than the model's %d samples (2 frames)", self.skipped.summary(), need)
        if len(self.train_set) == 0:
            raise ValueError(f"{train}: no utterance of at least {max(need, cfg.min_sample_size)} samples to train on")
        self.model = distributed.wrap(self.student, self.ctx, recipe.find_unused_parameters)
        trainable = [p for p in self.student.parameters() if p.requires_grad]
        # fused: one kernel over all 95M supernet parameters, ~3x faster than the per-tensor loop on CPU
        self.optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                           weight_decay=cfg.weight_decay, fused=True)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
        self.scaler = torch.amp.GradScaler(dev.type, enabled=cfg.precision == "fp16")
        self.sampler = BucketBatchSampler(self.train_set.sizes, cfg.max_batch_samples, cfg.seed, self.ctx.world_size,
                                          self.ctx.rank, max_crop=longest or cfg.max_sample_size)
        self.step, self.epoch, self.batches_done = 0, 0, 0
        self.bad_steps = self.bad_in_a_row = self.overflow_steps = 0
        self._batches = None

    def _inputs(self) -> Inputs:
        """What the run is made of besides its settings, by content: its identity on `--resume`.
        Rank 0 reads and hashes the files (a teacher `.pt` is hundreds of MB) and every rank gets
        its digests, so all ranks judge a resume alike."""
        found: Optional[Inputs] = None
        if self.ctx.is_main:
            found = {role: None if path is None else input_record(path, content_digest(path))
                     for role, path in getattr(self.recipe, "inputs", {}).items()}  # built by hand: none
            for role, data in (("train", self.train_set), ("valid", self.valid_set)):
                found[role] = None if data is None else input_record(data.manifest, manifest_digest(data.manifest,
                                                                                                    data.label_file))
        return distributed.broadcast_object(found, self.ctx)  # type: ignore[return-value]

    def run_config(self) -> dict[str, Any]:
        """Every setting of this run: what `config.yaml` holds and `--resume` compares."""
        return {"method": self.recipe.name, "trainer": dataclasses.asdict(self.cfg),
                "recipe": dataclasses.asdict(self.recipe.settings)}

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.ctx.device.type, self.amp_dtype, enabled=self.amp_dtype is not None)

    # -- data ---------------------------------------------------------------------------------
    def _loader(self):
        self.sampler.set_position(self.epoch, self.batches_done)
        return iter(torch.utils.data.DataLoader(
            self.train_set, batch_sampler=self.sampler,
            collate_fn=batch_collate(self.recipe.batching, self.cfg.max_sample_size, self.cfg.seed),
            num_workers=self.cfg.num_workers, persistent_workers=False,
            generator=torch.Generator().manual_seed(self.cfg.seed)))  # keeps the global RNG (dropout) untouched

    def next_batch(self) -> Optional[Batch]:
        """The next cropped batch of this rank, on its device; None when every file in it was bad."""
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
        if batch["wav"] is None:
            return None
        return Batch.from_collated(batch).to(self.ctx.device)

    def usable_batch(self) -> Batch:
        """The next batch such that every rank has audio (a rank whose batch held only bad files
        takes the next one, and so do the others, to stay in step)."""
        for _ in range(len(self.sampler) + 1):
            batch = self.next_batch()
            if distributed.mean(float(batch is not None), self.ctx) == 1.0:
                return batch
        raise TrainingError(f"a whole epoch of batches held no readable audio; {self.skipped.summary()}")

    # -- one optimiser step -------------------------------------------------------------------
    def train_step(self) -> dict[str, Any]:
        cfg = self.cfg
        lr = learning_rate(cfg, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        subnets = self.recipe.subnets(self.step)
        total = torch.zeros((), dtype=torch.float64, device=self.ctx.device)  # on the device: one sync per step
        seconds = 0.0
        for micro in range(cfg.accum):
            batch = self.usable_batch()
            seconds += batch.seconds
            gen = torch.Generator().manual_seed(cfg.seed * 7919 + self.step * 131 + micro * 17 + self.ctx.rank)
            with torch.no_grad(), self.autocast():
                target = self.recipe.targets(batch)
            for i, sub in enumerate(subnets):
                last = micro == cfg.accum - 1 and i == len(subnets) - 1
                with distributed.no_sync(self.model, not last):
                    with self.autocast():
                        loss = self.recipe.loss(self.model, self.student, sub, batch, target, gen)
                    self.scaler.scale(loss / (cfg.accum * len(subnets))).backward()
                total += loss.detach().double() / len(subnets)
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.student.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        # the mean over ranks: every rank sees the same loss, so all of them step or skip together
        mean_loss = distributed.mean_tensor(total / cfg.accum, self.ctx).item()
        finite = math.isfinite(mean_loss) and bool(torch.isfinite(norm))
        overflow = False
        if finite:
            self.scaler.step(self.optimizer)
            self.bad_in_a_row = 0
        elif math.isfinite(mean_loss) and self.scaler.is_enabled() and self.scaler.get_scale() > 1.0:
            # fp16 gradients overflowed at this loss scale: the scaler lowers it and the step is
            # skipped, as it is meant to be; only at a scale of 1 or less is it a real blow-up
            overflow = True
            self.overflow_steps += 1
        else:
            self.bad_steps += 1
            self.bad_in_a_row += 1
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"loss": mean_loss, "lr": lr, "grad_norm": float(norm), "audio_seconds": seconds, "finite": finite,
                "scaler_overflow": overflow, "subnets": [s.describe() for s in subnets if s is not None]}

    # -- validation ---------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Loss per named subnet on the validation set, each utterance counted once over all ranks,
        with masks fixed by the batch index."""
        if self.valid_set is None:
            return {}
        self.student.eval()
        names = list(self.recipe.valid_subnets())
        sums = torch.zeros(len(names) + 1, dtype=torch.float64, device=self.ctx.device)  # per subnet, then the count
        for b, batch in validation_batches(self.valid_set, self.cfg.max_batch_samples, self.cfg.max_sample_size,
                                           self.cfg.seed, self.ctx.world_size, self.ctx.rank, self.recipe.batching):
            batch = batch.to(self.ctx.device)
            with self.autocast():
                target = self.recipe.targets(batch)
                for j, sub in enumerate(self.recipe.valid_subnets().values()):
                    gen = torch.Generator().manual_seed(self.cfg.seed + b)
                    loss = self.recipe.loss(self.student, self.student, sub, batch, target, gen)
                    sums[j] += loss.double() * batch.wav.size(0)
            sums[-1] += batch.wav.size(0)
        self.student.train()
        sums = distributed.mean_tensor(sums, self.ctx) * self.ctx.world_size
        if sums[-1] == 0:
            return {}
        return {name: float(sums[j] / sums[-1]) for j, name in enumerate(names)}

    # -- checkpoints --------------------------------------------------------------------------
    def _rng_state(self) -> dict[str, Any]:
        dev = self.ctx.device
        return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
                "device": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None}

    def save(self) -> Optional[Path]:
        """Rank 0 writes `step-N.pt` atomically (the recipe's format + training state, with every
        rank's RNG state); keeps the last `keep_last` this run wrote. Every rank must call it
        (the RNG states are gathered).

        Raises:
            TrainingError: the weights are not finite (never saved as a run's result), or the
                file could not be written (a full disk); says where `--resume` continues.
        """
        rng = distributed.gather_object(self._rng_state(), self.ctx)
        if not self.ctx.is_main:
            return None
        bad = [n for n, p in self.student.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise TrainingError(f"the weights are not finite at step {self.step} ({len(bad)} tensors, e.g. {bad[0]}); "
                                f"not saved. Lower lr, raise warmup or use fp32; {self.resume_hint()}")
        path = self.out / checkpoint_name(self.step)
        written = [name for name in self.written if name != path.name] + [path.name]
        ckpt = self.recipe.save(self.student)
        ckpt["trainer"] = {
            "config": self.run_config(), "inputs": self.inputs,
            "step": self.step, "epoch": self.epoch, "batches_done": self.batches_done,
            "world_size": self.ctx.world_size,
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": rng, "skipped": self.skipped.state(), "bad_steps": self.bad_steps,
            "overflow_steps": self.overflow_steps, "written": written,
        }
        try:
            atomic.save_file(ckpt, path)
        except atomic.WriteError as e:
            raise TrainingError(f"{e}; {self.resume_hint()}") from None
        self.written = self.folder.prune(written, self.cfg.keep_last)
        return path

    def resume_hint(self) -> str:
        """Where `--resume` continues from: the newest checkpoint this run wrote (all finite)."""
        return f"--resume continues from {self.out / self.written[-1]}" if self.written else "no checkpoint written yet"

    def resume(self) -> bool:
        """Loads the newest readable `step-N.pt` in the run folder (a damaged newer one is reported
        and passed over); False when there is none.

        Raises:
            ValueError: the checkpoint was written with other settings or from other inputs
                (teacher, --init, manifests: by content; names them).
        """
        found = self.folder.newest_readable(safeload.load_file)
        if found is None:
            return False
        path, ckpt = found
        state = ckpt.get("trainer")
        if not isinstance(state, dict):
            raise ValueError(f"{path}: no training state to resume from")
        changed = changed_settings(state["config"], self.run_config())
        if changed:
            raise ValueError(f"{path} was written with other settings ({'; '.join(changed)}); resume with the same "
                             f"settings (only {', '.join(RESUMABLE)} may change) or choose another --out")
        if "inputs" not in state:
            if self.ctx.is_main:
                log.warning("%s was written before runs recorded their inputs: its teacher, --init and manifests "
                            "cannot be checked against these; resuming with the ones given", path)
        elif changed := input_changes(state["inputs"], self.inputs):
            raise ValueError(f"{path} was written from other inputs ({'; '.join(changed)}); resume with the same files "
                             "(moved copies are fine) or start a new run with another --out")
        self.recipe.restore(self.student, ckpt, str(path))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batches_done = state["step"], state["epoch"], state["batches_done"]
        self.skipped.load(state["skipped"])
        self.bad_steps = state["bad_steps"]
        self.overflow_steps = state.get("overflow_steps", 0)
        self.written = list(state.get("written", [path.name]))
        rng = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]  # older checkpoints: rank 0's only
        if len(rng) == self.ctx.world_size:
            mine = rng[self.ctx.rank]
            torch.set_rng_state(mine["torch"])
            random.setstate((3, tuple(mine["python"]), None))
            if mine.get("device") is not None and self.ctx.device.type == "cuda":
                torch.cuda.set_rng_state(mine["device"], self.ctx.device)
        else:  # another number of processes shards the data differently: start the next epoch afresh
            log.warning("%s was written by %d process(es), resumed by %d: the data order and random streams restart "
                        "at the next epoch, so the run will not match an uninterrupted one", path, len(rng),
                        self.ctx.world_size)
            self.epoch, self.batches_done = self.epoch + 1, 0
            torch.manual_seed(self.cfg.seed * 1_000_003 + self.step * 31 + self.ctx.rank)
        if self.ctx.is_main:
            self.folder.trim_log(self.step)  # the steps after the checkpoint run again: log them once
        self._batches = None
        log.info("resumed from %s at step %d", path, self.step)
        return True

    # -- the run ------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Trains to `max_steps`; returns the last validation losses and the skip summary."""
        cfg, main = self.cfg, self.ctx.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(settings.dump(self.run_config()))
        logf = open(self.out / "log.jsonl", "a") if main else None
        # a terminal gets a tqdm bar; a log file (stderr not a terminal) a plain line per log_every steps
        bar = progress_bar(total=cfg.max_steps, initial=self.step, disable=not main, unit="step",
                           desc=self.recipe.description, every=cfg.log_every)
        try:
            return self._run(logf, bar)
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted at step {self.step}; {self.resume_hint()}") from None
        finally:
            bar.close()
            if logf:
                logf.close()
            if main:
                self.folder.unlock()

    def _run(self, logf: Optional[Any], bar: Progress) -> dict[str, Any]:
        """`fit`'s loop: steps, logs, validations and checkpoints until `max_steps`."""
        cfg, main = self.cfg, self.ctx.is_main
        valid: dict[str, float] = {}
        started, audio = time.perf_counter(), 0.0
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
                   "non_finite_steps": self.bad_steps, "scaler_overflow_steps": self.overflow_steps}
        if main:
            logf.write(json.dumps(summary) + "\n")
            log.info("done at step %d; %s; %d non-finite steps skipped; %d fp16 overflow steps skipped by the "
                     "gradient scaler", self.step, self.skipped.summary(), self.bad_steps, self.overflow_steps)
        distributed.barrier(self.ctx)  # leave together: gloo aborts a rank torn down while another still writes
        return summary


