"""Speed and memory of one stage-2 distillation step at base size on CPU: the supernet's step
against its exported dense model's, and the trainer's overhead.

Part 1 (`--only dense`): a stage-2 step of the supernet at a subnet against the same step of
the dense model that subnet exports (`LightHuBERT.export`), at the base space's default,
min and max subnets and one seeded random subnet with block-wise FFNs (embed dim < 768 and
mixed FFN ratios). Both train the student alone on the same batch (`--batch` x `--seconds`
of speech-like audio), masks and target (seeded noise of the teacher's width; the teacher's
forward is the same for both and left out): forward + masked L1, backward, clip_grad_norm_,
AdamW (fused, the trainer's settings) and zero_grad, each part timed. The supernet's AdamW
holds all its 95M parameters, as `Trainer` builds it: a sliced weight's gradient is full
size (zero outside the slice, as in the official training), so AdamW steps the whole tensor,
and that cost is part of stage 2; the table gives AdamW's share of each step. Rounds
alternate supernet / dense / dense / supernet...; one more step per model, under
torch.profiler's memory events, gives the peak of the tensors the step allocates.

    ratio = median supernet step / median dense step     (target: <= 1.15 at every subnet)

Part 2 (`--only trainer`): the trainer's own overhead, below.

Builds what a user's stage-2 run has, with random weights (speed does not depend on them):

- a HuBERT-Base-shaped teacher (`HuBERT(ModelConfig(extractor_mode="default", pred_dim=0,
  normalize=False))`, 94.4M parameters, seeded), written with `export.save_compact`;
- a stage-1 student checkpoint for `--init`: `formats.official.checkpoint(LightHuBERT(space))`
  with the `base` space (prediction head as wide as the teacher, as `LightHuBERTRecipe` makes it);
- `--batch x (warm-up + steps)` utterances of `--seconds` of speech-like audio
  (`audio.synthetic_speech`), as 16 kHz WAVs with a fairseq manifest (`manifest.write_manifest`),
  so that every batch holds exactly `--batch` utterances of `--seconds` and no epoch ends
  inside the measured steps;

then `Trainer(DistillConfig(stage=2, space="base", ...), teacher, train.tsv, None, out,
init=stage1.pt)` and times `trainer.train_step()` (data loading, `--num-workers` 0 by default; LR,
subnet sampling, teacher, student, loss, backward, clipping, AdamW step, zero_grad): the
median over `--steps` steps after `--warmup` untimed ones.

Right after each step, on the same batch (recorded from `trainer.next_batch`), the same
subnet(s) (`trainer.recipe.subnets(step)`), the same masks (a generator seeded as
`train_step` seeds it), the same threads and with the gradients freed as `train_step` leaves
them, the parts are timed alone:

    teacher fwd:   trainer.recipe.targets(teacher, wav)            (no_grad, incl. the layer-average target)
    student fwd:   student(normalize(wav), mask) + masked_l1       (set_subnet and span_mask untimed)
    backward:      loss.backward()
    clip:          clip_grad_norm_ over the parameters with a gradient
    optimizer:     optimizer.step()                                (then zero_grad, untimed)

Step and parts alternate round by round, so a burst of load on a shared machine hits both.

    overhead = median step / (median teacher fwd + median student fwd + median backward)

Target (the issue's definition, which leaves the optimiser out): overhead <= 1.10. The
optimizer step is legitimately part of a training step, so the table also gives the ratio
with `optimizer.step()` (and with clipping too) in the denominator, and the per-step
(paired) ratios, since uniform sampling gives each step a differently sized subnet.

Throughput is the batch's audio seconds / median step time. Memory: the process's peak
resident set (`ru_maxrss`, setup included) and the peak during `train_step` alone (Linux:
VmHWM reset through /proc/self/clear_refs before each step) with its rise over the RSS at
the start of the step.

    python benchmarks/bench_train.py                           # both parts, 2 x 2 s, torch's threads, 5 steps
    python benchmarks/bench_train.py --threads 1 --only dense --steps 9
    python benchmarks/bench_train.py --batch 4 --seconds 3 --profile

`--profile` adds where `train_step`'s time goes (its parts timed inside it by wrapping the
trainer's methods, the rest as residual), a torch.profiler table, and what-ifs that
`train_step` does not do (AdamW `fused=True`, foreach clipping). CPU timings are noisy on a
shared machine: run more than once and prefer `--threads 1` there.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import soundfile as sf
import torch

from lighthubert import atomic, formats
from lighthubert.audio import SAMPLE_RATE, normalize, synthetic_speech
from lighthubert.manifest import write_manifest
from lighthubert.export import save_compact
from lighthubert.losses import masked_l1, span_mask
from lighthubert.model import HuBERT, ModelConfig
from lighthubert.space import SearchSpace, SubnetConfig, count_subnet_params
from lighthubert.supernet import LightHuBERT
from lighthubert.trainer import DistillConfig, Trainer

TARGET = 1.10
STEP_TARGET = 1.15  # supernet step / exported dense model's step, at each compared subnet
MIB = 1024 * 1024


# -- memory ----------------------------------------------------------------------------------
class Memory:
    """Resident set size of this process, from /proc/self/status (Linux) and `getrusage`.

    `reset_peak()` sets the kernel's peak (VmHWM, also what `ru_maxrss` reports) back to the
    current RSS by writing 5 to /proc/self/clear_refs, so the peak of one region can be read;
    the peak of the whole process is kept here across resets.
    """

    def __init__(self) -> None:
        self.process_peak = self._ru_maxrss()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.can_reset = True
        except OSError:
            self.can_reset = False

    @staticmethod
    def _ru_maxrss() -> int:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return kib if sys.platform == "darwin" else kib * 1024

    @staticmethod
    def _status(key: str) -> int | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    def rss(self) -> int | None:
        return self._status("VmRSS")

    def peak(self) -> int:
        now = self._status("VmHWM") or self._ru_maxrss()
        self.process_peak = max(self.process_peak, now, self._ru_maxrss())
        return now

    def reset_peak(self) -> None:
        self.peak()  # keep the process peak before the kernel forgets it
        if self.can_reset:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")


# -- set-up ------------------------------------------------------------------------------------
def build_run(root: Path, args: argparse.Namespace) -> tuple[Trainer, int]:
    """Teacher, stage-1 checkpoint, audio, manifest and the Trainer; returns it and the utterance samples."""
    torch.manual_seed(args.seed)
    teacher_cfg = ModelConfig(extractor_mode="default", pred_dim=0, normalize=False)
    teacher = HuBERT(teacher_cfg).eval()
    save_compact(teacher, teacher_cfg, root / "teacher")
    del teacher

    base = SearchSpace.base()  # what LightHuBERTRecipe builds: the head predicts the teacher's width
    space = dataclasses.replace(base, model=dataclasses.replace(base.model, pred_dim=teacher_cfg.embed_dim))
    atomic.save_file(formats.official.checkpoint(LightHuBERT(space)), root / "stage1.pt")

    samples = int(args.seconds * SAMPLE_RATE)
    utterances = args.batch * (args.warmup + args.steps + (args.profile_steps + 2 if args.profile else 0))
    (root / "audio").mkdir()
    for i in range(utterances):
        wav = synthetic_speech(args.seconds, f0=100.0 + 7.0 * (i % 17), seed=i % 5)
        sf.write(root / "audio" / f"utt{i:04d}.wav", wav.numpy(), SAMPLE_RATE)
    train_tsv, _ = write_manifest(root / "audio", root, valid_percent=0.0)

    cfg = DistillConfig(stage=2, space="base", sampling=args.sampling, max_batch_samples=args.batch * samples,
                        max_sample_size=samples, min_sample_size=samples, num_workers=args.num_workers, seed=args.seed,
                        device="cpu")
    trainer = Trainer(cfg, str(root / "teacher"), str(train_tsv), None, str(root / "run"), init=str(root / "stage1.pt"))
    return trainer, samples


# -- timing --------------------------------------------------------------------------------------
def elapsed_ms(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return (time.perf_counter() - start) * 1e3, out


def time_parts(trainer: Trainer, step: int, wav: torch.Tensor) -> dict[str, float]:
    """The parts of step `step` alone, on its batch, subnets and masks (accum = 1, rank 0).

    Leaves the gradients freed (None), as `train_step` does, so the next step starts alike.
    """
    cfg, recipe, student = trainer.cfg, trainer.recipe, trainer.student
    subnets = recipe.subnets(step)
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + step * 131 + trainer.ctx.rank)  # train_step's, micro 0
    ms = {"teacher": 0.0, "student": 0.0, "backward": 0.0}
    ms["teacher"], target = elapsed_ms(lambda: recipe.targets(trainer.teacher, wav))
    for sub in subnets:
        student.set_subnet(sub)
        mask = span_mask(wav.size(0), target.size(1), cfg.mask_prob, cfg.mask_length, gen)

        def forward(mask: torch.Tensor = mask) -> torch.Tensor:
            x = normalize(wav) if student.cfg.normalize else wav
            out = trainer.model(x, mask=mask if cfg.mask_prob > 0 else None)
            return masked_l1(out.prediction, target, mask if cfg.loss_on == "masked" else None)

        t, loss = elapsed_ms(forward)
        ms["student"] += t
        ms["backward"] += elapsed_ms(lambda loss=loss: (loss / len(subnets)).backward())[0]
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    ms["clip"] = elapsed_ms(lambda: torch.nn.utils.clip_grad_norm_(
        [p for p in student.parameters() if p.grad is not None], max_norm))[0]
    ms["optimizer"] = elapsed_ms(trainer.optimizer.step)[0]
    trainer.optimizer.zero_grad(set_to_none=True)
    return ms


def measure(trainer: Trainer, args: argparse.Namespace, mem: Memory) -> list[dict]:
    """`warmup + steps` rounds of (train_step, its parts alone); returns the timed rounds."""
    rounds = []
    with recording(trainer) as recorded:
        for r in range(args.warmup + args.steps):
            rounds += _round(trainer, args, mem, recorded, timed=r >= args.warmup)
    return rounds


def _round(trainer: Trainer, args: argparse.Namespace, mem: Memory, recorded: list, timed: bool) -> list[dict]:
    """One train_step (its time, batch and peak RSS), then its parts alone; [] when not `timed`."""
    step = trainer.step
    recorded.clear()
    mem.reset_peak()
    rss_before = mem.rss()
    ms, stats = elapsed_ms(trainer.train_step)
    peak = mem.peak()
    if len(recorded) != 1 or recorded[0] is None:
        raise RuntimeError(f"step {step} read {len(recorded)} batch(es); expected one good batch")
    wav = recorded[0]
    parts = time_parts(trainer, step, wav)
    print(f"  {'step' if timed else 'warm-up'} {step}: {ms:8.0f} ms  (parts alone: "
          f"{parts['teacher'] + parts['student'] + parts['backward']:.0f} ms + optimizer {parts['optimizer']:.0f} ms)",
          flush=True)
    if not timed:
        return []
    return [{"step": step, "ms": ms, "parts": parts, "audio_seconds": stats["audio_seconds"], "batch": tuple(wav.shape),
             "subnets": trainer.recipe.subnets(step), "peak": peak, "rss_before": rss_before}]


@contextlib.contextmanager
def recording(trainer: Trainer):
    """Yields a list that holds the batches `train_step` reads while inside (an instance
    attribute wraps `next_batch`; nothing else changes)."""
    recorded: list[torch.Tensor | None] = []
    inner = trainer.next_batch

    def next_batch() -> torch.Tensor | None:
        wav = inner()
        recorded.append(wav)
        return wav

    trainer.next_batch = next_batch
    try:
        yield recorded
    finally:
        del trainer.next_batch


# -- profile ---------------------------------------------------------------------------------------
class Timers:
    """Wraps callables so that each call adds its milliseconds to `ms[name]`."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: object, attr: str, name: str) -> None:
        had_own = isinstance(owner, type) or attr in vars(owner)
        original = getattr(owner, attr)
        raw = vars(owner)[attr] if isinstance(owner, type) else original

        def timed(*a, **kw):
            start = time.perf_counter()
            try:
                return raw(*a, **kw)
            finally:
                self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1e3

        setattr(owner, attr, timed)
        if had_own:
            self._undo.append(lambda: setattr(owner, attr, raw))
        else:
            self._undo.append(lambda: delattr(owner, attr))

    def undo(self) -> None:
        for fn in reversed(self._undo):
            fn()
        self._undo.clear()


def profile(trainer: Trainer, args: argparse.Namespace) -> None:
    """Where train_step's time goes, a torch.profiler table, and what-ifs."""
    import lighthubert.trainer as trainer_module

    med = statistics.median
    print(f"\nInside train_step: its parts timed by wrapping the trainer's calls, median of {args.profile_steps} "
          "steps (rest = step - parts)")
    timers = Timers()
    timers.wrap(trainer, "next_batch", f"data (next_batch, num_workers={trainer.cfg.num_workers})")
    timers.wrap(trainer.recipe, "targets", "teacher fwd + targets")
    timers.wrap(trainer.student, "set_subnet", "set_subnet")
    timers.wrap(trainer_module, "span_mask", "span_mask")
    timers.wrap(trainer.recipe, "loss", "student fwd + loss (incl. set_subnet, span_mask)")
    timers.wrap(torch.Tensor, "backward", "backward")
    timers.wrap(torch.nn.utils, "clip_grad_norm_", "clip_grad_norm_")
    timers.wrap(trainer.optimizer, "step", "optimizer.step")
    timers.wrap(trainer.optimizer, "zero_grad", "zero_grad")
    rows: dict[str, list[float]] = {}
    try:
        for _ in range(args.profile_steps):
            timers.ms.clear()
            total, _ = elapsed_ms(trainer.train_step)
            timers.ms["train_step"] = total
            for k, v in timers.ms.items():
                rows.setdefault(k, []).append(v)
    finally:
        timers.undo()
    totals = rows.pop("train_step")
    nested = ("set_subnet", "span_mask")  # inside "student fwd + loss"
    step = med(totals)
    head = f"{'part':<50} {'ms':>9} {'share':>7}"
    print(head)
    print("-" * len(head))
    for name, vals in rows.items():
        indent = "  of which " if name in nested else ""
        print(f"{indent + name:<50} {med(vals):>9.1f} {med(vals) / step:>7.1%}")
    rest = [t - sum(v[i] for k, v in rows.items() if k not in nested) for i, t in enumerate(totals)]
    print(f"{'rest (LR, subnets, loss.item, grad list, ...)':<50} {med(rest):>9.1f} {med(rest) / step:>7.1%}")
    print(f"{'train_step':<50} {step:>9.1f} {1:>7.0%}")

    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.train_step()
    print("\ntorch.profiler, one train_step, operators by self CPU time (ms are totals over the step):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))

    # What-ifs: the parts that are not model compute, done differently on the same gradients.
    with recording(trainer) as recorded:
        trainer.train_step()
    wav, step_index = recorded[-1], trainer.step - 1
    params = list(trainer.student.parameters())
    cfg = trainer.cfg
    alt = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay, fused=True)
    res: dict[str, list[float]] = {}
    for _ in range(3):
        with _keep_grads(trainer):
            time_parts(trainer, step_index, wav)
        with_grad = [p for p in params if p.grad is not None]
        for name, fn in (
            ("clip_grad_norm_ (as train_step: foreach default)", lambda g=with_grad: torch.nn.utils.clip_grad_norm_(g, cfg.grad_clip)),
            ("clip_grad_norm_(foreach=True)", lambda g=with_grad: torch.nn.utils.clip_grad_norm_(g, cfg.grad_clip, foreach=True)),
            ("AdamW.step (as train_step: default impl.)", trainer.optimizer.step),
            ("AdamW(fused=True).step", alt.step),
            ("zero_grad(set_to_none=True)", lambda: trainer.optimizer.zero_grad(set_to_none=True)),
        ):
            res.setdefault(name, []).append(elapsed_ms(fn)[0])
    print("\nWhat-ifs on the same gradients (median of 3; the fused AdamW has its own state, first call included):")
    for name, vals in res.items():
        print(f"  {name:<52} {med(vals):>8.1f} ms")
    print(f"  parameters: {sum(p.numel() for p in params) / 1e6:.1f}M in {len(params)} tensors; "
          f"with a gradient after a step: {sum(p.numel() for p in with_grad) / 1e6:.1f}M")


@contextlib.contextmanager
def _keep_grads(trainer: Trainer):
    """Runs `time_parts` without its final optimizer step and zero_grad, keeping the gradients."""
    opt = trainer.optimizer
    opt.step = lambda *a, **k: None
    opt.zero_grad = lambda *a, **k: None
    try:
        yield
    finally:
        del opt.step, opt.zero_grad


# -- the supernet's step against the exported dense model's ----------------------------------------
def subnets_to_compare(space: SearchSpace, seed: int) -> dict[str, SubnetConfig]:
    """default, min, max and one seeded random subnet whose FFNs are block-wise (embed dim < max)."""
    rng = random.Random(seed)
    sub = space.sample(rng)
    while sub.embed_dim == space.model.embed_dim or len(set(sub.ffn_dim)) < 2:
        sub = space.sample(rng)
    return {"default": space.default, "min": space.min(), "max": space.max(), "random": sub}


def student_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, wav: torch.Tensor, target: torch.Tensor,
                 mask: torch.Tensor, clip: float) -> dict[str, float]:
    """One student step as `train_step` runs it, each part timed: forward + masked L1, backward,
    clip_grad_norm_ over the parameters with a gradient, AdamW step, zero_grad(set_to_none)."""
    ms = {}
    start = time.perf_counter()
    out = model(normalize(wav) if model.cfg.normalize else wav, mask=mask)
    loss = masked_l1(out.prediction, target, mask)
    ms["forward"] = time.perf_counter()
    loss.backward()
    ms["backward"] = time.perf_counter()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], clip)
    ms["clip"] = time.perf_counter()
    optimizer.step()
    ms["optimizer"] = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    ms["zero_grad"] = time.perf_counter()
    last, out_ms = start, {}
    for k, t in ms.items():
        out_ms[k], last = (t - last) * 1e3, t
    out_ms["step"] = (last - start) * 1e3
    return out_ms


def step_memory(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *batch) -> int:
    """Peak bytes of the tensors a `student_step` allocates (gradients, activations, the
    optimizer's temporaries) over what is alive at its start, from torch.profiler's memory
    events: exact and independent of how the C allocator keeps or returns freed memory."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        student_step(model, optimizer, *batch)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def compare_dense(args: argparse.Namespace) -> None:
    """Supernet step at a subnet vs the step of that subnet's exported dense model, side by side.

    Both train the student alone (the teacher's forward is the same for both, so it is left
    out): same batch, same masks, same target (seeded noise of the teacher's width), the
    trainer's AdamW (fused, its default hyper-parameters) and clipping. The supernet's AdamW
    holds every supernet parameter (as `Trainer` builds it) and steps each one with a gradient;
    the dense model's holds the subnet's. Rounds run supernet, dense, dense, supernet, ... so
    that neither always goes first; one more round per model measures memory.
    """
    cfg = DistillConfig(stage=2)
    base = SearchSpace.base()
    space = dataclasses.replace(base, model=dataclasses.replace(base.model, pred_dim=768))
    torch.manual_seed(args.seed)
    supernet = LightHuBERT(space).train()
    params = sum(p.numel() for p in supernet.parameters())

    def adamw(model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                 weight_decay=cfg.weight_decay, fused=True)

    super_opt = adamw(supernet)
    samples = int(args.seconds * SAMPLE_RATE)
    wav = torch.stack([synthetic_speech(args.seconds, f0=100.0 + 7.0 * i, seed=i)[:samples] for i in range(args.batch)])
    frames = int(supernet.frame_lengths(torch.tensor([samples]))[0])
    gen = torch.Generator().manual_seed(args.seed)
    target = torch.randn(args.batch, frames, 768, generator=gen)
    mask = span_mask(args.batch, frames, cfg.mask_prob, cfg.mask_length, gen)
    batch = (wav, target, mask, cfg.grad_clip)
    print(f"\nSupernet step vs the exported dense model's step (student only: forward + loss, backward, clip, "
          f"AdamW fused, zero_grad); {args.batch} x {args.seconds:g} s, warm-up {args.warmup}, {args.steps} timed rounds; "
          f"the supernet's AdamW holds all {params / 1e6:.1f}M parameters", flush=True)
    rows = []
    for name, sub in subnets_to_compare(space, args.seed).items():
        supernet.set_subnet(sub)
        dense, _ = supernet.export(sub)
        dense.train()
        models = {"supernet": (supernet, super_opt), "dense": (dense, adamw(dense))}
        runs: dict[str, list[dict]] = {"supernet": [], "dense": []}
        for r in range(args.warmup + args.steps):
            for who in ("supernet", "dense") if r % 2 == 0 else ("dense", "supernet"):
                ms = student_step(*models[who], *batch)
                if r >= args.warmup:
                    runs[who].append(ms)
        memory = {who: step_memory(*models[who], *batch) for who in models}
        rows.append((name, sub, runs, memory, sum(p.numel() for p in dense.parameters())))
        del dense, models
        s, d = (statistics.median(m["step"] for m in runs[w]) for w in ("supernet", "dense"))
        print(f"  {name}: supernet {s:.0f} ms, dense {d:.0f} ms, ratio {s / d:.3f}", flush=True)
    report_dense(rows, params)


def report_dense(rows: list, supernet_params: int) -> None:
    med = statistics.median
    print(f"\nStage-2 step of a subnet vs its exported dense model, median ms (target: supernet / dense <= {STEP_TARGET:.2f}x)")
    head = (f"{'subnet':<8} {'model':<9} {'params':>7} {'step':>7} {'fwd':>6} {'bwd':>6} {'clip':>5} {'optim':>6} "
            f"{'optim%':>6} {'step MiB':>8} {'ratio':>7}  {'target':<14} {'of minima':>9}  per-round (median)")
    print(head)
    print("-" * len(head))
    for name, sub, runs, memory, dense_params in rows:
        steps = {w: med(m["step"] for m in runs[w]) for w in runs}
        ratio = steps["supernet"] / steps["dense"]
        fastest = min(m["step"] for m in runs["supernet"]) / min(m["step"] for m in runs["dense"])
        paired = [a["step"] / b["step"] for a, b in zip(runs["supernet"], runs["dense"])]
        for who, n in (("supernet", supernet_params), ("dense", dense_params)):
            part = {k: med(x[k] for x in runs[who]) for k in ("forward", "backward", "clip", "optimizer")}
            line = (f"{name if who == 'supernet' else '':<8} {who:<9} {n / 1e6:>6.1f}M {steps[who]:>7.0f} "
                    f"{part['forward']:>6.0f} {part['backward']:>6.0f} {part['clip']:>5.0f} {part['optimizer']:>6.0f} "
                    f"{part['optimizer'] / steps[who]:>6.1%} {memory[who] / MIB:>8.0f}")
            if who == "supernet":
                verdict = f"<= {STEP_TARGET:.2f}x " + ("met" if ratio <= STEP_TARGET else "MISSED")
                line += (f" {ratio:>6.3f}x  {verdict:<14} {fastest:>8.3f}x  {min(paired):.2f}-{max(paired):.2f} "
                         f"({med(paired):.3f})")
            print(line)
    for name, sub, *_ in rows:
        print(f"{name}: {sub.describe()}")
    print("params: what the model's AdamW steps (the supernet's: all of them); optim%: AdamW's share of the step; "
          "step MiB: peak of the tensors the step allocates (torch.profiler memory events); of minima: the same "
          "ratio of the fastest rounds (less sensitive to other load on the machine)")


# -- report ----------------------------------------------------------------------------------------
def describe(space: SearchSpace, subnets: list) -> str:
    """`e640 x12 65.0M` (embed dim, depth, official parameter count); `e768x12+e512x12+... 264.6M` for several."""
    params = sum(count_subnet_params(space, s) for s in subnets) / 1e6
    if len(subnets) == 1:
        return f"e{subnets[0].embed_dim} x{subnets[0].depth} {params:.1f}M"
    return "+".join(f"e{s.embed_dim}x{s.depth}" for s in subnets) + f" {params:.1f}M"


def report(rounds: list[dict], trainer: Trainer, mem: Memory, args: argparse.Namespace) -> None:
    med = statistics.median
    space = trainer.recipe.space
    print("\nPer step, ms (parts timed alone right after the step, same batch, subnet and masks)")
    head = (f"{'step':>4}  {'subnet (embed, depth, params)':<30} {'step':>8} {'teacher':>8} {'student':>8} "
            f"{'backward':>8} {'sum':>8} {'clip':>6} {'optim':>7} {'ratio':>6} {'w/ optim':>8}")
    print(head)
    print("-" * len(head))
    paired, paired_opt, paired_all, unexplained = [], [], [], []
    for r in rounds:
        p = r["parts"]
        core = p["teacher"] + p["student"] + p["backward"]
        paired.append(r["ms"] / core)
        paired_opt.append(r["ms"] / (core + p["optimizer"]))
        paired_all.append(r["ms"] / (core + p["clip"] + p["optimizer"]))
        unexplained.append(r["ms"] - core - p["clip"] - p["optimizer"])
        print(f"{r['step']:>4}  {describe(space, r['subnets']):<30} {r['ms']:>8.0f} {p['teacher']:>8.0f} "
              f"{p['student']:>8.0f} {p['backward']:>8.0f} {core:>8.0f} {p['clip']:>6.0f} {p['optimizer']:>7.0f} "
              f"{paired[-1]:>5.2f}x {paired_opt[-1]:>7.2f}x")

    step = med(r["ms"] for r in rounds)
    part = {k: med(r["parts"][k] for r in rounds) for k in ("teacher", "student", "backward", "clip", "optimizer")}
    core = part["teacher"] + part["student"] + part["backward"]
    audio = med(r["audio_seconds"] for r in rounds)
    overhead = step / core
    verdict = "met" if overhead <= TARGET else "MISSED"

    def row(name: str, value: str, note: str = "") -> None:
        print(f"{name:<52} {value:>12}  {note}")

    print(f"\nSummary, medians over {len(rounds)} steps (target: overhead <= {TARGET:.2f})")
    print("-" * 80)
    row("train_step, ms", f"{step:.1f}")
    row("teacher forward (no_grad, incl. targets), ms", f"{part['teacher']:.1f}")
    row("student forward + loss, ms", f"{part['student']:.1f}")
    row("backward, ms", f"{part['backward']:.1f}")
    row("sum: teacher + student + backward, ms", f"{core:.1f}")
    row("OVERHEAD = step / sum", f"{overhead:.3f}x", f"<= {TARGET:.2f} {verdict}; per step "
        f"{min(paired):.2f}-{max(paired):.2f}, median {med(paired):.3f}")
    row("clip_grad_norm_, ms", f"{part['clip']:.1f}")
    row("optimizer.step (AdamW), ms", f"{part['optimizer']:.1f}")
    row("step / (sum + optimizer.step)", f"{step / (core + part['optimizer']):.3f}x",
        f"per step median {med(paired_opt):.3f}")
    row("step / (sum + clip + optimizer.step)", f"{step / (core + part['clip'] + part['optimizer']):.3f}x",
        f"per step median {med(paired_all):.3f}")
    row("unexplained: step - (sum + clip + optimizer.step), ms", f"{step - core - part['clip'] - part['optimizer']:.1f}",
        f"per step median {med(unexplained):.1f}")
    row("audio seconds per second (batch audio / step)", f"{audio / (step / 1e3):.2f}", f"{audio:g} s of audio per step")
    peak_step = max(r["peak"] for r in rounds)
    rises = [r["peak"] - r["rss_before"] for r in rounds if r["rss_before"] is not None]
    rise = max(rises) if rises else None
    row("peak RSS of the process (ru_maxrss, set-up incl.), MiB", f"{mem.process_peak / MIB:.0f}")
    if mem.can_reset:
        row("peak RSS during train_step, MiB", f"{peak_step / MIB:.0f}",
            f"rise over the step's starting RSS: {rise / MIB:.0f} MiB" if rise is not None else "")
    else:
        row("peak RSS during train_step", "n/a", "/proc/self/clear_refs not writable: only the process peak")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=2, help="utterances per batch (default 2)")
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds per utterance (default 2.0)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps; medians are reported (default 5)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--sampling", choices=("uniform", "sandwich"), default="uniform",
                    help="stage-2 subnet sampling (default uniform: one subnet per step, the official sampler)")
    ap.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default 0: loading inside the step)")
    ap.add_argument("--seed", type=int, default=1, help="seeds the weights, subnets, masks and crops")
    ap.add_argument("--profile", action="store_true", help="also break train_step down and print a torch.profiler table")
    ap.add_argument("--profile-steps", type=int, default=3, help="steps for the --profile breakdown (default 3)")
    ap.add_argument("--only", choices=("trainer", "dense"),
                    help="run one part: the trainer's overhead, or the supernet step vs the dense model's (default both)")
    args = ap.parse_args()
    if args.batch < 1 or args.steps < 1 or args.warmup < 0 or args.seconds < 0.5 or args.num_workers < 0 \
            or args.profile_steps < 1 or (args.threads is not None and args.threads < 1):
        ap.error("--batch, --steps, --threads and --profile-steps must be >= 1, --warmup and --num-workers >= 0, "
                 "--seconds >= 0.5")

    if args.threads:
        torch.set_num_threads(args.threads)
    mem = Memory()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, stage 2, base space, {args.sampling} sampling, "
          f"batch {args.batch} x {args.seconds:g} s = {args.batch * args.seconds:g} s of audio, "
          f"warm-up {args.warmup}, median of {args.steps}")
    if args.only != "trainer":
        compare_dense(args)
    if args.only == "dense":
        return
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        start = time.perf_counter()
        trainer, samples = build_run(Path(tmp), args)
        print(f"set-up (teacher, stage-1 checkpoint, audio, Trainer): {time.perf_counter() - start:.1f} s", flush=True)
        rounds = measure(trainer, args, mem)
        expected = (args.batch, samples)
        if any(r["batch"] != expected for r in rounds):
            raise RuntimeError(f"batches {[r['batch'] for r in rounds]} are not {expected}")
        report(rounds, trainer, mem, args)
        if args.profile:
            profile(trainer, args)


if __name__ == "__main__":
    main()
