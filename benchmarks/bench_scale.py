"""Scale rehearsal: the time and memory of every per-utterance stage before or between training
steps, on LibriSpeech-layout trees of 1 k to 281 k utterances.

    python benchmarks/bench_scale.py                    # N = 1k, 10k, 100k
    python benchmarks/bench_scale.py --full             # and 281k (LibriSpeech 960 h's utterances)
    python benchmarks/bench_scale.py --sizes 200 --stages manifest

The tree: a pool of `--pool` real utterances (with their transcripts) of librispeech-mini's
test-clean-subset, LibriSpeech's own FLAC (`--pool-from .../train-clean-5` for its Ogg Vorbis,
whose headers cost 7x more to read), is copied once, then hard-linked under N names in
LibriSpeech's layout, `train-960/SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac`, 50 utterances a chapter and 2 chapters a
speaker (LibriSpeech 960 h: 51 and 2.3), one `SPEAKER-CHAPTER.trans.txt` per chapter. Books
bring names a lexicon lacks, so every fifth utterance also gets its chapter's own made-up name:
the distinct out-of-lexicon words grow with N, as in the real corpus.

Each stage runs in a fresh child process (so one stage's heap does not hide the next one's),
on the files the `manifest` stage wrote:

- manifest      `lighthubert manifest TREE --out DIR` (cli.main): train.tsv, valid.tsv (1%) and their .ltr/.wrd/.phn
- dataset       `AudioDataset(train.tsv, 32000, labels="ltr")` and `BucketBatchSampler` with the trainer's defaults
- epoch         one epoch of that sampler, one process
- epoch-ddp8    one epoch of rank 3 of 8
- resume        `set_position(epoch, half)` and the first batch after it
- probe-labels  `probes.check_tasks`: phoneme, asr and speaker-id labels, test on librispeech-mini's test split
- demo-split    `demo.prepare_data` on the tree as `--data` (the folder split; `--librispeech` is `manifest`)
- kmeans        `recipes.hubert.fit_units` with the recipe's defaults (100 units, 250 k frames): it samples files
- search-valid  `search.Fitness` set-up and its first evaluation on valid.tsv (a tiny teacher and supernet)

Seconds are wall time of the stage alone (its inputs built before the clock starts). MB is
the peak resident memory the stage adds: the child resets its high-water mark
(`/proc/self/clear_refs`), runs the stage, and reports VmHWM minus the RSS before it. Both
include everything (Python, numpy, torch, libsndfile), unlike tracemalloc. The growth exponent
is log(t[10 N] / t[N]) / log(10) for the two largest sizes a decade apart; 1 is
linear. Stages under 0.1 s are marked, their exponents are noise. The machine may be shared:
the load average is printed with each size.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from lighthubert import cli, demo, manifest, probes, transcripts
from lighthubert.data import AudioDataset, BucketBatchSampler
from lighthubert.model import HuBERT, ModelConfig
from lighthubert.recipes.hubert import HuBERTPretrainConfig, fit_units
from lighthubert.search import Fitness, SearchConfig
from lighthubert.space import SearchSpace
from lighthubert.supernet import LightHuBERT

SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "librispeech-mini"
SPLIT = "train-960"  # the tree's one split
PER_CHAPTER, CHAPTERS_PER_SPEAKER, NAMED_EVERY = 50, 2, 5
STAGES = ("manifest", "dataset", "epoch", "epoch-ddp8", "resume", "probe-labels", "demo-split", "kmeans", "search-valid")
MIN_SAMPLES, MAX_BATCH_SAMPLES, MAX_CROP, SEED = 32_000, 1_400_000, 320_000, 1  # trainer.RunConfig's defaults
EXPONENT_TARGET, MANIFEST_TARGET_S = 1.15, 120.0


# ---------------------------------------------------------------------------------------------
# The tree


def _name(k: int) -> str:
    """A made-up word for chapter k (`QX` + base-26 letters): in no lexicon, one per book."""
    letters = ""
    while True:
        k, r = divmod(k, 26)
        letters += chr(65 + r)
        if k == 0:
            return "QX" + letters


def build_tree(root: Path, n: int, pool: int = 260, pool_from: Path = SOURCE / "test-clean-subset") -> Path:
    """Writes `root/train-960` with `n` utterances hard-linked to `pool` real ones of the
    LibriSpeech-layout folder `pool_from`; returns it.

    Raises:
        ValueError: no transcribed audio in `pool_from`, or `n` or `pool` below 1.
    """
    if n < 1 or pool < 1:
        raise ValueError(f"n and pool must be positive, got n {n}, pool {pool}")
    texts = transcripts.read_transcripts(pool_from) if pool_from.is_dir() else {}
    audio = sorted(p for p in pool_from.rglob("*") if p.suffix in (".flac", ".ogg") and p.stem in texts)
    if not audio:
        raise ValueError(f"{pool_from}: no transcribed .flac or .ogg files; pass --pool-from, a LibriSpeech-layout split")
    chosen = audio[:: max(1, len(audio) // pool)][:pool]  # spread over speakers and lengths
    pool_dir, split = root / "pool", root / SPLIT
    shutil.rmtree(root, ignore_errors=True)
    pool_dir.mkdir(parents=True)
    for p in chosen:
        shutil.copyfile(p, pool_dir / p.name)
    for c in range(-(-n // PER_CHAPTER)):
        speaker, chapter = 100 + c // CHAPTERS_PER_SPEAKER, 10_000 + c
        folder = split / str(speaker) / str(chapter)
        folder.mkdir(parents=True)
        lines = []
        for u in range(min(PER_CHAPTER, n - c * PER_CHAPTER)):
            src = chosen[(c * PER_CHAPTER + u) % len(chosen)]
            uid = f"{speaker}-{chapter}-{u:04d}"
            os.link(pool_dir / src.name, folder / f"{uid}{src.suffix}")
            extra = f" {_name(c)}" if u % NAMED_EVERY == 0 else ""
            lines.append(f"{uid} {texts[src.stem].text}{extra}\n")
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("".join(lines))
    return split


# ---------------------------------------------------------------------------------------------
# Stages (run in a child process: `--child STAGE`)


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _sampler(tsv: Path, replicas: int = 1, rank: int = 0) -> tuple[AudioDataset, BucketBatchSampler]:
    ds = AudioDataset(tsv, MIN_SAMPLES, labels="ltr")
    return ds, BucketBatchSampler(ds.sizes, MAX_BATCH_SAMPLES, SEED, replicas, rank, max_crop=MAX_CROP)


def _epoch(sampler: BucketBatchSampler) -> str:
    sampler.set_epoch(1)
    return f"{sum(1 for _ in sampler)} batches"


def _search_models() -> tuple[LightHuBERT, HuBERT, SearchSpace]:
    """A tiny teacher (64 wide, 2 layers, 32-channel front end at HuBERT's 320 hop) and a supernet distilled from it."""
    conv = [[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2
    shape = dict(conv_layers=conv, embed_dim=64, heads=[2, 2], ffn_dim=[128, 128], head_dim=32, conv_pos=16,
                 conv_pos_groups=4)
    torch.manual_seed(0)
    teacher = HuBERT(ModelConfig(**shape, pred_dim=0)).eval()
    space = SearchSpace(name="bench", model=ModelConfig(**shape, pred_dim=64), embed_dims=(64,), heads=(2,),
                        ffn_ratios=(2.0,), depths=(2,))
    return LightHuBERT(space).eval(), teacher, space


def _setup(stage: str, out: Path, split: Path, source: Path) -> Callable[[], str]:
    """What `stage` needs, built before the clock starts; returns the timed part (-> a note)."""
    train, valid = out / "manifest" / "train.tsv", out / "manifest" / "valid.tsv"
    if stage == "manifest":
        return lambda: f"exit {cli.main(['manifest', str(split), '--out', str(out / 'manifest'), '--valid-percent', '0.01'])}"
    if stage == "dataset":
        return lambda: f"{len(_sampler(train)[1])} batches"
    if stage in ("epoch", "epoch-ddp8"):
        sampler = _sampler(train, *((8, 3) if stage == "epoch-ddp8" else (1, 0)))[1]
        return lambda: _epoch(sampler)
    if stage == "resume":
        sampler = _sampler(train)[1]

        def resume() -> str:
            sampler.set_position(2, len(sampler) // 2)
            return f"first batch of {len(next(iter(sampler)))} after {len(sampler) // 2} done"
        return resume
    if stage == "probe-labels":
        test = manifest.write_manifest(source / "test-clean-subset", out / "manifest", 0.0, name="test")[0]
        tasks = {"phoneme": probes.ProbeTask("phoneme"), "asr": probes.ProbeTask("asr"),
                 "speaker": probes.ProbeTask("speaker-id", test=valid)}
        return lambda: f"{len(probes.check_tasks(train, test, tasks)['asr'].train_labels)} train labels per task"
    if stage == "demo-split":
        cfg = demo.DemoConfig(data=str(split), labels={"speaker": probes.LIBRISPEECH_SPEAKER})
        return lambda: ", ".join(f"{k} {len(p.read_text().splitlines()) - 1}"
                                 for k, p in demo.prepare_data(cfg, out / "demo").items())
    if stage == "kmeans":
        class Counting(AudioDataset):
            """Counts the files k-means reads."""

            reads = 0

            def __getitem__(self, i: int) -> dict:
                self.reads += 1
                return super().__getitem__(i)

        ds, s = Counting(train, MIN_SAMPLES), HuBERTPretrainConfig()

        def kmeans() -> str:
            units = fit_units(ds, s.clusters, s.kmeans_frames, SEED)
            return f"{ds.reads} of {len(ds)} files read for {s.kmeans_frames} frames, {len(units.centroids)} units"
        return kmeans
    if stage == "search-valid":
        model, teacher, space = _search_models()

        def search_valid() -> str:
            fitness = Fitness(model, teacher, valid, SearchConfig(target_layers=2, device="cpu"))
            fitness(space.max())
            held = sum(b.wav.numel() + t.numel() for _, b, t in fitness.batches) * 4 / 2**20
            audio = sum(b.wav.numel() for _, b, _ in fitness.batches) / 16_000
            return f"holds {len(fitness.batches)} batches: {audio / 3600:.2f} h audio + targets, {held:.0f} MB"
        return search_valid
    raise ValueError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")


def run_child(stage: str, out: Path, split: Path, source: Path) -> None:
    """Runs one stage and prints `{"seconds", "mb", "note"}` as the last line."""
    logging.basicConfig(level=logging.ERROR)
    timed = _setup(stage, out, split, source)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = _rss_kb("VmRSS")
    start = time.perf_counter()
    note = timed()
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "mb": (_rss_kb("VmHWM") - before) / 1024, "note": note}))


# ---------------------------------------------------------------------------------------------
# The driver


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def measure(stage: str, out: Path, split: Path, source: Path, timeout: float) -> dict:
    """One stage in a child process; `{"seconds": None, "note": why}` when it failed or timed out."""
    cmd = [sys.executable, __file__, "--child", stage, "--out", str(out), "--split", str(split), "--source", str(source)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"seconds": None, "mb": None, "note": f"over the {timeout:.0f} s timeout"}
    if done.returncode != 0:
        return {"seconds": None, "mb": None, "note": "failed: " + (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def exponent(results: dict[int, dict[str, dict]], stage: str) -> tuple[Optional[float], str]:
    """Growth exponent between the two largest measured sizes a decade apart, and their label."""
    sizes = sorted(n for n in results if results[n].get(stage, {}).get("seconds") is not None)
    pairs = [(a, b) for a in sizes for b in sizes if b == 10 * a]
    if not pairs:
        return None, ""
    a, b = pairs[-1]
    ta, tb = results[a][stage]["seconds"], results[b][stage]["seconds"]
    return math.log(tb / ta) / math.log(10), f"{a}->{b}"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,10000,100000", help="comma-separated utterance counts")
    p.add_argument("--full", action="store_true", help="also 281241 utterances (LibriSpeech 960 h)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    p.add_argument("--work", default="/tmp/bench-scale", help="where the trees go (removed after each size)")
    p.add_argument("--source", default=str(SOURCE), help="librispeech-mini (train-clean-5/ and test-clean-subset/)")
    p.add_argument("--pool", type=int, default=260, help="real utterances the tree links to")
    p.add_argument("--pool-from", help="LibriSpeech-layout split they come from (default SOURCE/test-clean-subset)")
    p.add_argument("--timeout", type=float, default=300, help="seconds per stage before it is stopped")
    p.add_argument("--probe-max", type=int, default=0,
                   help="skip probe-labels above this N; 0: never (its label check was quadratic before issue 21)")
    p.add_argument("--keep", action="store_true", help="keep the trees")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--split", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        run_child(args.child, Path(args.out), Path(args.split), Path(args.source))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")] + ([281_241] if args.full else [])
    stages = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown or (stages and stages[0] != "manifest"):
        p.error(f"--stages: {', '.join(unknown) or 'the first stage must be manifest (the others read its files)'}")
    results: dict[int, dict[str, dict]] = {}
    print(f"{'N':>7} {'stage':<13} {'seconds':>9} {'MB':>8}  note", flush=True)
    for n in sizes:
        root = Path(args.work) / f"n{n}"
        start = time.perf_counter()
        split = build_tree(root, n, args.pool, Path(args.pool_from or Path(args.source) / "test-clean-subset"))
        print(f"{n:>7} {'(tree)':<13} {time.perf_counter() - start:>9.2f} {'':>8}  load {_load()}", flush=True)
        results[n] = {}
        for stage in stages:
            if stage == "probe-labels" and 0 < args.probe_max < n:
                r = {"seconds": None, "mb": None, "note": f"skipped above --probe-max {args.probe_max}"}
            else:
                r = measure(stage, root / "out", split, Path(args.source), args.timeout)
            results[n][stage] = r
            sec = "-" if r["seconds"] is None else f"{r['seconds']:.3f}"
            mb = "-" if r["mb"] is None else f"{r['mb']:.1f}"
            print(f"{n:>7} {stage:<13} {sec:>9} {mb:>8}  {r['note']}", flush=True)
        if not args.keep:
            shutil.rmtree(root)
    print(f"\ngrowth exponents (target <= {EXPONENT_TARGET}):")
    for stage in stages:
        e, between = exponent(results, stage)
        if e is None:
            print(f"  {stage:<13} -  (no two sizes a decade apart)")
            continue
        top = results[max(n for n in results if results[n][stage]["seconds"] is not None)][stage]["seconds"]
        verdict = "met" if e <= EXPONENT_TARGET else "NOT met"
        print(f"  {stage:<13} {e:5.2f}  {between}  {verdict}{'  (under 0.1 s: noise)' if top < 0.1 else ''}")
    t = results.get(100_000, {}).get("manifest", {}).get("seconds")
    if t is not None:
        print(f"manifest at 100000: {t:.1f} s (target {MANIFEST_TARGET_S:.0f} s: {'met' if t <= MANIFEST_TARGET_S else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
