"""Feature-extraction speed of our LightHuBERT against the official implementation (CPU).

Times one forward pass that returns every hidden state, on 10 s of 16 kHz audio (batch 1,
a random waveform normalised to zero mean and unit variance), at the default subnet of the
`base` (e640 h10 f2560 x12) and `small` (e384 h6 f1536 x12) spaces, under
`torch.inference_mode()`: `warmup` untimed runs, then the median of `repeats` timed runs.

    exported:  LightHuBERT(SearchSpace.base()).eval().export("default")[0]: the dense model
               that `lighthubert export` writes and `lighthubert.load` reads; m(wav)
    sliced:    the supernet itself at its default subnet (what training and search run)
    official:  LightHuBERT(LightHuBERTConfig() with supernet_type); m.set_sample_config(
               m.supernet.subnet); m.extract_features(wav, ret_hs=True)

Targets: the exported model takes at most 0.6x the official time at each subnet, and the
sliced supernet at most 0.8x.

Compute efficiency: each model's achieved GFLOP/s (2 x `space.count_macs` of the subnet
over the median time) against this machine's matmul peak, measured here: a 2048 x 2048
fp32 matrix product at the same thread count, timed in the same rounds as the models. The
Transformer layers alone (`for layer in m.encoder.layers: x = layer(x)[0]` on the encoder's
input for this audio; their MACs: the q/k/v/out and FFN products and the attention scores
and weighted sums) have a target of at least 70% of that peak.

The official code (github.com/mechanicalsea/lighthubert) is also imported as `lighthubert`,
so it runs in a child process: this script again, with the hidden `--_official-worker`
flag and PYTHONPATH set to the checkout. The child builds the official models, then runs one
official pass per request and answers with its time as a JSON line, so that ours and the
official alternate run by run (never at the same time) and a burst of load on a shared
machine hits both. Both processes use the same thread count and the same seed, so the same
waveform. The weights are random (the speed does not depend on them).

    python benchmarks/bench_extract.py                          # official from /tmp/official if present
    python benchmarks/bench_extract.py --official ~/lighthubert --threads 1 --repeats 9
    python benchmarks/bench_extract.py --no-official --profile  # ours only, with a profile

It also prints where our time goes: the conv front end (`model.feature_extractor(wav)`,
timed on its own, for the official model too) against the rest (full time minus front end);
`--compile` adds `torch.compile(exported, dynamic=True)` (minutes of compiling on CPU).
CPU timings are noisy on a shared machine: run it more than once, and prefer `--threads 1`
there (with every core busy, a competing process stalls the multi-threaded runs unevenly;
the "per-repeat ratios" column shows how much the repeats disagree).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

SAMPLE_RATE = 16000
TARGET_RATIO = 0.6  # exported / official
SLICED_RATIO = 0.8  # sliced supernet / official
PEAK_TARGET = 0.70  # Transformer layers' GFLOP/s / matmul peak
PEAK_N = 2048  # size of the square fp32 product that measures the peak
DEFAULT_OFFICIAL = Path("/tmp/official")
SPACES = ("base", "small")


def make_wave(seconds: float, seed: int) -> torch.Tensor:
    """(1, N) random waveform, normalised as the official task does (`F.layer_norm` over N)."""
    gen = torch.Generator().manual_seed(seed)
    wav = torch.randn(1, int(seconds * SAMPLE_RATE), generator=gen)
    return torch.nn.functional.layer_norm(wav, wav.shape[1:])


Timer = Callable[[], float]  # runs one pass, returns its milliseconds


def timer(fn: Callable[[], object]) -> Timer:
    def run() -> float:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    return run


def sample_ms(timers: dict[str, Timer], warmup: int, repeats: int) -> dict[str, list[float]]:
    """Times of each timer over `repeats` rounds, after `warmup` untimed ones. The timers run
    one after another in every round, so a burst of load on the machine (ours is shared) hits
    all of them instead of whichever happened to run then."""
    for _ in range(warmup):
        for run in timers.values():
            run()
    samples: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(repeats):
        for name, run in timers.items():
            samples[name].append(run())
    return samples


def set_threads(threads: int | None) -> int:
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


# -- ours ----------------------------------------------------------------------------------
def build_ours(space_name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The supernet at its default subnet and the dense model it exports."""
    from lighthubert.space import SearchSpace
    from lighthubert.supernet import LightHuBERT

    model = LightHuBERT(SearchSpace.named(space_name)).eval()
    model.set_subnet("default")
    return model, model.export()[0].eval()


def flops(model: torch.nn.Module, seconds: float) -> dict[str, float]:
    """FLOPs (2 x MACs, as `space.count_macs` counts them) on `seconds` of audio: the whole
    model, its conv front end and its Transformer layers."""
    from lighthubert.space import count_macs

    cfg = model.cfg
    n = int(seconds * SAMPLE_RATE)
    conv, c_in = 0, 1
    for c, k, s in cfg.conv_layers:
        n = (n - k) // s + 1
        conv += n * c * c_in * k
        c_in = c
    e, t = cfg.embed_dim, n
    layers = sum(t * 4 * e * h * cfg.head_dim + 2 * t * t * h * cfg.head_dim + 2 * t * e * f
                 for h, f in zip(cfg.heads, cfg.ffn_dim))
    return {"total": 2.0 * count_macs(cfg, seconds), "conv": 2.0 * conv, "layers": 2.0 * layers}


def layers_input(model: torch.nn.Module, wav: torch.Tensor) -> torch.Tensor:
    """What the model's first Transformer layer reads for `wav`: (1, T, E)."""
    x = model.post_extract_proj(model.layer_norm(model.feature_extractor(wav)))
    x = x + model.encoder.pos_conv(x)
    return model.encoder.layer_norm(x)


def run_layers(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    for layer in model.encoder.layers:
        x = layer(x, None)[0]
    return x


def peak_timer() -> Timer:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(PEAK_N, PEAK_N, generator=gen), torch.randn(PEAK_N, PEAK_N, generator=gen)
    return timer(lambda: torch.mm(a, b))


def profile_ours(args: argparse.Namespace, wav: torch.Tensor) -> None:
    """Operators by self CPU time over `repeats` forward passes of each space."""
    from torch.profiler import ProfilerActivity, profile

    for space in args.spaces:
        _, model = build_ours(space)
        with torch.inference_mode():
            for _ in range(args.warmup):
                model(wav)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(args.repeats):
                    model(wav)
        print(f"\nProfile of ours (exported), {space} default subnet ({args.repeats} passes; times are totals):")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


# -- official (child process) -----------------------------------------------------------------
def official_worker(args: argparse.Namespace) -> None:
    """The child process, with the official checkout first on PYTHONPATH.

    Builds the official model of every space, prints `{"threads": n}`, then answers each
    request line `{"space": ..., "stage": "total" | "conv"}` by running that pass once and
    printing `{"ms": ...}`. One JSON object per line; anything else goes to stderr.
    """
    out, sys.stdout = sys.stdout, sys.stderr  # keep stray prints off the protocol
    warnings.filterwarnings("ignore")  # torch.nn.utils.weight_norm deprecation, at construction
    set_threads(args.threads)
    import lighthubert
    from lighthubert import LightHuBERT, LightHuBERTConfig

    official_dir = Path(os.environ["PYTHONPATH"].split(os.pathsep)[0]).resolve()
    if official_dir not in Path(lighthubert.__file__).resolve().parents:
        sys.exit(f"imported {lighthubert.__file__}, not the official code under {official_dir}")
    wav = make_wave(args.seconds, args.seed)
    timers = {}
    for space in args.spaces:
        cfg = LightHuBERTConfig()
        cfg.supernet_type = space
        model = LightHuBERT(cfg).eval()
        model.set_sample_config(model.supernet.subnet)
        timers[space, "total"] = timer(lambda m=model: m.extract_features(wav, ret_hs=True))
        timers[space, "conv"] = timer(lambda m=model: m.feature_extractor(wav))
    print(json.dumps({"threads": torch.get_num_threads()}), file=out, flush=True)
    with torch.inference_mode():
        for line in sys.stdin:
            req = json.loads(line)
            print(json.dumps({"ms": timers[req["space"], req["stage"]]()}), file=out, flush=True)


class OfficialWorker:
    """The parent's end of `official_worker`: `time(space, stage)` runs one official pass."""

    def __init__(self, args: argparse.Namespace, official: Path) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_official-worker",
               "--seconds", str(args.seconds), "--seed", str(args.seed), "--spaces", *args.spaces]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        path = os.pathsep.join(p for p in (str(official), os.environ.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(cmd, env=dict(os.environ, PYTHONPATH=path),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.threads = self._read()["threads"]

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the official worker exited (code {self.proc.wait()}); its error is above")
        return json.loads(line)

    def time(self, space: str, stage: str) -> float:
        self.proc.stdin.write(json.dumps({"space": space, "stage": stage}) + "\n")
        self.proc.stdin.flush()
        return self._read()["ms"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def bench_space(space: str, args: argparse.Namespace, wav: torch.Tensor, official: OfficialWorker | None) -> dict:
    """The subnet, FLOPs and the samples (ms) of every timer, run in interleaved rounds: ours
    (exported and sliced) and the official model, whole pass and conv front end, our
    Transformer layers alone, and the matmul that measures the peak."""
    sliced, dense = build_ours(space)
    with torch.inference_mode():
        x = layers_input(dense, wav)
    timers = {"exported total": timer(lambda: dense(wav)), "sliced total": timer(lambda: sliced(wav))}
    if official:
        timers["official total"] = lambda: official.time(space, "total")
    timers["exported conv"] = timer(lambda: dense.feature_extractor(wav))
    if official:
        timers["official conv"] = lambda: official.time(space, "conv")
    timers["exported layers"] = timer(lambda: run_layers(dense, x))
    if args.compile:  # torch.compile(dynamic=True) of the exported model; its compile time is printed
        compiled = torch.compile(dense, dynamic=True)
        with torch.inference_mode():
            print(f"  {space}: torch.compile(dynamic=True), first call {timer(lambda: compiled(wav))() / 1e3:.0f} s", flush=True)
        timers["compiled total"] = timer(lambda: compiled(wav))
    timers["peak"] = peak_timer()
    with torch.inference_mode():
        return {"subnet": sliced.subnet.describe(), "flops": flops(dense, args.seconds),
                **sample_ms(timers, args.warmup, args.repeats)}


# -- report --------------------------------------------------------------------------------
def report(results: dict[str, dict], official_note: str) -> None:
    med = statistics.median
    compared = all("official total" in r for r in results.values())
    print(f"\nExtraction time, median ms (targets: exported/official <= {TARGET_RATIO:.2f}x, "
          f"sliced/official <= {SLICED_RATIO:.2f}x)")
    head = (f"{'model':<6} {'subnet':<18} {'exported':>9} {'sliced':>8} {'official':>9} {'exp/off':>8}  {'target':<15} "
            f"{'per-repeat':<10} {'sliced/off':>10}  {'target':<15}")
    print(head)
    print("-" * len(head))
    for space, r in results.items():
        ours, sliced = med(r["exported total"]), med(r["sliced total"])
        if not compared:
            print(f"{space:<6} {r['subnet']:<18} {ours:>9.1f} {sliced:>8.1f} {'n/a':>9} {'n/a':>8}  unchecked")
            continue
        off = med(r["official total"])
        paired = [a / b for a, b in zip(r["exported total"], r["official total"])]
        cells = []
        for ratio, target in ((ours / off, TARGET_RATIO), (sliced / off, SLICED_RATIO)):
            cells.append(f"<= {target:.2f}x " + ("met" if ratio <= target else "MISSED"))
        print(f"{space:<6} {r['subnet']:<18} {ours:>9.1f} {sliced:>8.1f} {off:>9.1f} {ours / off:>7.3f}x  {cells[0]:<15} "
              f"{min(paired):.2f}-{max(paired):.2f}  {sliced / off:>9.3f}x  {cells[1]:<15}")
    if not compared:
        print(official_note)
    for space, r in results.items():
        if "compiled total" in r:
            ms = med(r["compiled total"])
            vs = f", {ms / med(r['official total']):.3f}x official" if compared else ""
            print(f"{space:<6} torch.compile(dynamic=True) of the exported model: {ms:.1f} ms, "
                  f"{ms / med(r['exported total']):.3f}x eager{vs}")

    print(f"\nCompute efficiency: GFLOP/s (2 x MACs / median time) against the matmul peak "
          f"({PEAK_N}^3 fp32, same threads, same rounds); target: Transformer layers >= {PEAK_TARGET:.0%} of peak")
    head = f"{'model':<6} {'part':<30} {'GFLOP':>7} {'ms':>8} {'GFLOP/s':>8} {'of peak':>8}  target"
    print(head)
    print("-" * len(head))
    for space, r in results.items():
        peak = 2 * PEAK_N**3 / med(r["peak"]) / 1e6
        fl = r["flops"]
        rows = [("matmul peak", 2 * PEAK_N**3, med(r["peak"])), ("exported, whole pass", fl["total"], med(r["exported total"]))]
        if compared:
            rows.append(("official, whole pass", fl["total"], med(r["official total"])))
        rows += [("exported, conv front end", fl["conv"], med(r["exported conv"])),
                 ("exported, Transformer layers", fl["layers"], med(r["exported layers"]))]
        for name, count, ms in rows:
            rate = count / ms / 1e6
            note = ""
            if name.endswith("layers"):
                note = f">= {PEAK_TARGET:.0%} " + ("met" if rate / peak >= PEAK_TARGET else "MISSED")
            print(f"{space:<6} {name:<30} {count / 1e9:>7.2f} {ms:>8.1f} {rate:>8.1f} {rate / peak:>8.1%}  {note}")

    print("\nWhere the time goes, median ms (rest = median total - median conv front end)")
    head = f"{'model':<6} {'stage':<16} {'ours ms':>9} {'share':>6} {'official ms':>12} {'share':>6}"
    print(head)
    print("-" * len(head))
    for space, r in results.items():
        rows = {who: (med(r[f"{key} total"]), med(r[f"{key} conv"]))
                for who, key in (("ours", "exported"), ("official", "official")) if f"{key} total" in r}
        for stage in ("conv front end", "rest"):
            cells = []
            for who in ("ours", "official"):
                if who in rows:
                    total, conv = rows[who]
                    ms = conv if stage == "conv front end" else total - conv
                    cells.append(f"{ms:>{9 if who == 'ours' else 12}.1f} {ms / total:>6.0%}")
                else:
                    cells.append(f"{'n/a':>12} {'':>6}")
            print(f"{space:<6} {stage:<16} {' '.join(cells)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", type=Path, default=None,
                    help=f"official LightHuBERT checkout (default: {DEFAULT_OFFICIAL} if it exists)")
    ap.add_argument("--no-official", action="store_true", help="time ours only")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in both processes (default: torch's)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported (default 5)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    ap.add_argument("--seconds", type=float, default=10.0, help="audio length (default 10)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the waveform")
    ap.add_argument("--spaces", nargs="+", choices=SPACES, default=list(SPACES), help="default subnets to time")
    ap.add_argument("--profile", action="store_true", help="also print a torch.profiler table for ours")
    ap.add_argument("--compile", action="store_true",
                    help="also time torch.compile(exported model, dynamic=True) (compiling takes minutes on CPU)")
    ap.add_argument("--_official-worker", dest="official_worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.repeats < 1 or args.warmup < 0 or (args.threads is not None and args.threads < 1):
        ap.error("--repeats and --threads must be >= 1, --warmup >= 0")

    if args.official_worker:
        official_worker(args)
        return

    threads = set_threads(args.threads)
    official_path = None if args.no_official else (args.official or DEFAULT_OFFICIAL)
    note = ""
    if official_path is None:
        note = "Official implementation not run (--no-official): ratios unchecked."
    elif not (official_path / "lighthubert" / "__init__.py").is_file():
        if args.official:
            ap.error(f"--official {official_path}: no lighthubert/__init__.py there")
        note = f"Official implementation NOT FOUND (no {DEFAULT_OFFICIAL}); pass --official PATH to compare."
        official_path = None

    print(f"torch {torch.__version__}, {threads} threads, {args.seconds:g} s of audio, "
          f"batch 1, warm-up {args.warmup}, median of {args.repeats}")
    official = None
    if note:
        print(note)
    if official_path is not None:
        print(f"official: {official_path} (child process, runs interleaved with ours)")
        official = OfficialWorker(args, official_path)
        if official.threads != threads:
            official.close()
            sys.exit(f"thread counts differ: ours {threads}, official {official.threads}")
    try:
        wav = make_wave(args.seconds, args.seed)
        results = {space: bench_space(space, args, wav, official) for space in args.spaces}
    finally:
        if official:
            official.close()
    report(results, note)
    if args.profile:
        profile_ours(args, make_wave(args.seconds, args.seed))


if __name__ == "__main__":
    main()
