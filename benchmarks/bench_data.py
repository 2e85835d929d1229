"""Training input pipeline speed against bare decoding, and the DataLoader workers a GPU needs.

The pipeline is the trainer's own code path for a crop recipe (every pre-training recipe):
`AudioDataset` (soundfile read, down-mix, resampling where the rate is not 16 kHz, the
non-finite and silence checks) under a `BucketBatchSampler` with `batch_collate("crop", ...)`
(random crop to the batch's shortest, capped, and the stacked batch), then `Batch` and
`audio.normalize`, with the batching settings of `configs/paper/stage1.yaml`. It runs in
this one process, as one DataLoader worker runs it (`num_workers=0`, torch at one thread as
in a worker), so its rate is audio seconds per wall second *per worker*. The limit is
soundfile's bare decoding of the same files, `sf.read(path, dtype="float32")`, in the same
order. Each of `--repeats` rounds times bare decoding then the pipeline, so that a burst of
load on a shared machine hits both; the best round of each is reported, and the overhead is
pipeline time / bare time over the same files (target: at most 1.3x). Times are this
process's CPU seconds (`time.process_time`): a worker with a core of its own runs at its CPU
time, while wall time on a shared machine measures the neighbours (the wall-time overhead is
printed beside it).

Sets, from the LibriSpeech-mini corpus beside the checkout (its README): `flac` is
test-clean-subset as distributed (16 kHz FLAC), `ogg` is train-clean-5 as distributed (16 kHz
Ogg Vorbis); the first `--files` utterances of each, sorted by path. Both are 16 kHz, so the
resampling branch is not taken.

Workers per GPU: the audio a GPU consumes per second is the achievable MAC rate over the
MACs per audio second of one stage-1 step. MACs per audio second: `space.count_macs` of the
teacher (HuBERT Base: `ModelConfig(extractor_mode="default")`, 768 x 12) forward, plus the
student (stage 1 trains the base space's max subnet, `SearchSpace.base().model`, 768 x 12)
forward and backward counted as 3 forwards; at a crop of `--crop-seconds` (attention is
quadratic in length; LibriSpeech 960 h averages 12.3 s per utterance, and stage-1 crops are
2-20 s). Achievable MAC rate: `--mfu` (default 40%) of `--peak-tmacs` (an H200's dense
bf16/fp16 peak, 989 TFLOPS = 494.5 TMAC/s). Workers = consumed audio s/s / one worker's
delivered (cropped) audio s/s, rounded up.

    python benchmarks/bench_data.py                       # 200 files per set, 3 rounds
    python benchmarks/bench_data.py --files 400 --repeats 5
    python benchmarks/bench_data.py --profile             # where the pipeline's time goes
"""

from __future__ import annotations

import argparse
import cProfile
import math
import pstats
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import soundfile as sf
import torch
import yaml

from lighthubert.audio import SAMPLE_RATE, normalize
from lighthubert.data import AudioDataset, Batch, BucketBatchSampler, batch_collate
from lighthubert.manifest import manifest_frames
from lighthubert.model import ModelConfig
from lighthubert.space import SearchSpace, count_macs
from lighthubert.trainer import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "librispeech-mini"
STAGE1 = ROOT / "configs" / "paper" / "stage1.yaml"
SETS = {"flac": ("test-clean-subset", "*.flac"), "ogg": ("train-clean-5", "*.ogg")}  # name: (split, pattern)
TARGET_OVERHEAD = 1.3
H200_TMACS = 989 / 2  # dense bf16 TFLOPS / 2 FLOPs per MAC


@dataclass
class Rates:
    """One set's best round: seconds of wall time and of audio."""

    bare_s: float  # CPU seconds to decode the files with soundfile alone
    pipeline_s: float  # CPU seconds for the training pipeline over the same files
    wall_ratio: float  # pipeline / bare in wall seconds (best rounds)
    decoded: float  # audio seconds read (whole utterances)
    delivered: float  # audio seconds in the batches (after cropping)
    capped: float  # audio seconds left after the `max_sample_size` cap alone (what full-scale buckets deliver)
    ratios: list[float]  # pipeline / bare CPU time per round, to show the spread


def write_manifest_of(files: Sequence[Path], root: Path, out: Path) -> Path:
    """A manifest of `files` (under `root`) with their 16 kHz sample counts, as `lighthubert manifest` writes."""
    lines = [str(root)] + [f"{f.relative_to(root)}\t{manifest_frames(f)}" for f in files]
    out.write_text("\n".join(lines) + "\n")
    return out


def bare_pass(paths: Sequence[Path]) -> tuple[float, float]:
    """(CPU, wall) seconds to decode `paths` with soundfile alone: the limit of any reader."""
    cpu, wall = time.process_time(), time.perf_counter()
    for p in paths:
        sf.read(str(p), dtype="float32")
    return time.process_time() - cpu, time.perf_counter() - wall


def pipeline_pass(dataset: AudioDataset, cfg: TrainConfig) -> tuple[float, float, int]:
    """(CPU, wall) seconds for one epoch of the trainer's crop pipeline in this process, and the samples delivered."""
    sampler = BucketBatchSampler(dataset.sizes, cfg.max_batch_samples, cfg.seed, max_crop=cfg.max_sample_size)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=0,
                                         collate_fn=batch_collate("crop", cfg.max_sample_size, cfg.seed))
    delivered = 0
    cpu, wall = time.process_time(), time.perf_counter()
    for out in loader:
        if out["wav"] is not None:
            delivered += normalize(Batch.from_collated(out).wav).numel()
    return time.process_time() - cpu, time.perf_counter() - wall, delivered


def measure(files: Sequence[Path], root: Path, cfg: TrainConfig, repeats: int, tmp: Path) -> Rates:
    """Best-of-`repeats` bare and pipeline times on `files`, interleaved round by round."""
    dataset = AudioDataset(write_manifest_of(files, root, tmp / f"{root.name}.tsv"), cfg.min_sample_size)
    paths = [dataset.root / p for p in dataset.paths]  # the files the pipeline keeps, in the same order
    bare_pass(paths)  # warm the page cache: both sides then read from memory
    bare, pipe, delivered = [], [], 0
    for _ in range(repeats):
        bare.append(bare_pass(paths))
        *seconds, delivered = pipeline_pass(dataset, cfg)
        pipe.append(seconds)
    (bare_cpu, bare_wall), (pipe_cpu, pipe_wall) = (tuple(map(min, zip(*x))) for x in (bare, pipe))
    capped = sum(min(n, cfg.max_sample_size) for n in dataset.sizes)
    return Rates(bare_cpu, pipe_cpu, pipe_wall / bare_wall, sum(dataset.sizes) / SAMPLE_RATE, delivered / SAMPLE_RATE,
                 capped / SAMPLE_RATE, [p[0] / b[0] for b, p in zip(bare, pipe)])


def consumption(crop_seconds: float, mfu: float, peak_tmacs: float) -> tuple[float, float]:
    """(MACs per audio second of a stage-1 step, audio seconds one GPU consumes per second)."""
    teacher = count_macs(ModelConfig(extractor_mode="default"), crop_seconds)
    student = count_macs(SearchSpace.base().model, crop_seconds)
    per_second = (teacher + 3 * student) / crop_seconds
    return per_second, mfu * peak_tmacs * 1e12 / per_second


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=CORPUS, help="LibriSpeech-mini folder")
    ap.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    ap.add_argument("--files", type=int, default=200, help="utterances per set (the first, by path)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds; the best of each side is reported")
    ap.add_argument("--config", type=Path, default=STAGE1, help="run config whose trainer settings batch and crop")
    ap.add_argument("--crop-seconds", type=float, default=12.3, help="crop length the MAC count assumes")
    ap.add_argument("--mfu", type=float, default=0.4, help="fraction of the peak a training step achieves")
    ap.add_argument("--peak-tmacs", type=float, default=H200_TMACS, help="GPU dense bf16 peak in TMAC/s")
    ap.add_argument("--profile", action="store_true", help="also profile one pipeline pass per set")
    args = ap.parse_args(argv)
    if args.files < 1 or args.repeats < 1 or not 0 < args.mfu <= 1:
        ap.error("--files and --repeats must be positive and --mfu in (0, 1]")
    torch.set_num_threads(1)  # as in a DataLoader worker
    cfg = TrainConfig(**yaml.safe_load(args.config.read_text())["trainer"])
    macs, consumed = consumption(args.crop_seconds, args.mfu, args.peak_tmacs)
    print(f"pipeline: AudioDataset + BucketBatchSampler + batch_collate('crop') + normalize, one process, torch 1 thread; "
          f"max_batch_samples {cfg.max_batch_samples}, max_sample_size {cfg.max_sample_size}, "
          f"min_sample_size {cfg.min_sample_size} ({args.config.name}); best of {args.repeats} rounds")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets:
            split, pattern = SETS[name]
            root = args.corpus / split
            files = sorted(root.rglob(pattern))[: args.files]
            if not files:
                print(f"error: no {pattern} files under {root}", file=sys.stderr)
                return 2
            rows.append((name, len(files), measure(files, root, cfg, args.repeats, Path(tmp))))
            if args.profile:
                dataset = AudioDataset(write_manifest_of(files, root, Path(tmp) / "p.tsv"), cfg.min_sample_size)
                prof = cProfile.Profile()
                prof.runcall(pipeline_pass, dataset, cfg)
                print(f"\nprofile, {name}:")
                pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(12)
    print(f"\n{'set':5} {'files':>5} {'audio s':>8} {'bare x rt':>10} {'pipeline x rt':>14} {'overhead':>11} "
          f"{'rounds':>16} {'wall':>6} {'delivered':>10} {'per worker':>11} {'workers/GPU':>12}")
    for name, n, r in rows:
        overhead = r.pipeline_s / r.bare_s
        per_worker = r.capped / r.pipeline_s  # audio s/s a worker feeds once buckets are full-scale (see below)
        print(f"{name:5} {n:5d} {r.decoded:8.0f} {r.decoded / r.bare_s:10.0f} {r.decoded / r.pipeline_s:14.0f} "
              f"{overhead:6.2f}x {'ok' if overhead <= TARGET_OVERHEAD else 'OVER':>4} "
              f"{' '.join(f'{x:.2f}' for x in r.ratios):>16} {r.wall_ratio:5.2f}x {r.delivered / r.decoded:10.0%} "
              f"{per_worker:7.0f} s/s {math.ceil(consumed / per_worker):12d}")
    print(f"\nx rt: audio seconds decoded per CPU second in one process. overhead: pipeline / bare CPU time of the best "
          f"rounds (target <= {TARGET_OVERHEAD}x); rounds: per round; wall: the same in wall time. delivered: share of "
          "the decoded audio in this subset's cropped batches; a few hundred files make loose buckets (each batch is "
          "cropped to its shortest), so per worker counts what full-scale buckets deliver, the audio left after the "
          f"{cfg.max_sample_size}-sample cap alone, per pipeline CPU second.")
    print(f"consumption: teacher forward + student forward and backward (3 forwards) = {macs / 1e9:.1f} GMAC per "
          f"audio second (space.count_macs at a {args.crop_seconds:g} s crop: HuBERT Base teacher, the base space's "
          f"max subnet as student); at {args.mfu:.0%} of {args.peak_tmacs:.1f} TMAC/s one GPU consumes "
          f"{consumed:,.0f} audio s/s; workers/GPU = that / per worker, rounded up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
