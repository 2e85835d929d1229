"""int8 vs float32 ONNX exports on this CPU: speed, file size, hidden-state error, probe accuracy.

For the default subnet of each space (`base` e640 h10 f2560 x12, `small` e384 h6 f1536 x12;
random seeded weights, no trained checkpoint is needed for speed and error), writes

    float:  export_subnet(supernet, "m.onnx", "onnx", "default")
    int8:   export_subnet(supernet, "q.onnx", "onnx", "default", quantize="int8")
            (= lighthubert export --format onnx --quantize int8)

and runs both with ONNX Runtime on the CPU execution provider (`intra_op_num_threads` =
`--threads`, sequential execution), next to the eager PyTorch exported model:

- speed: one pass over `--seconds` of audio (batch 1), median of `--repeats` rounds that
  run every model in turn (so a burst of load on a shared machine hits all of them);
- size: the two files;
- hidden-state error of int8 against float, per layer (index 0: `post_extract_proj`),
  on the same audio: max |int8 - float| and that over max |float|;
- probe: `lighthubert.probes` utterance classification (the digit of FSDD recordings,
  takes 0-4 of each speaker and digit for test, 5-14 for training) on the features of each
  ONNX model; accuracies side by side (`--probe-space`, default base; `--no-probe` skips).
  With random weights the absolute accuracy says little; the difference is the point.

`--torch-int8` also times `torch.ao.quantization.quantize_dynamic` on the compact model's
nn.Linear layers (deprecated in torch 2.x: it warns that it will be removed).

    python benchmarks/bench_int8.py --threads 1
    python benchmarks/bench_int8.py --threads 1 --repeats 9 --no-probe
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lighthubert.audio import SAMPLE_RATE, load_audio, normalize
from lighthubert.export import export_subnet
from lighthubert.probes import FrozenFeatures, ProbeConfig, fit_classifier, predict
from lighthubert.space import SearchSpace
from lighthubert.supernet import LightHuBERT

FSDD = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fsdd" / "recordings"
MIB = 1024 * 1024


def session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_onnx(sess, wav: torch.Tensor) -> np.ndarray:
    """(L + 1, T, E) hidden states of one normalised waveform (1, N)."""
    return sess.run(None, {"waveform": wav.numpy(), "lengths": np.array([wav.size(1)])})[0][:, 0]


def timed(fn: Callable[[], object]) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    return run


def torch_int8(dense: torch.nn.Module) -> torch.nn.Module:
    """The compact model with torch's (deprecated) dynamic int8 nn.Linear, conv front end float."""
    import copy

    from torch.ao.quantization import quantize_dynamic

    model = copy.deepcopy(dense)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        model.encoder = quantize_dynamic(model.encoder, {torch.nn.Linear}, dtype=torch.qint8)
        model.post_extract_proj = quantize_dynamic(torch.nn.Sequential(model.post_extract_proj), {torch.nn.Linear},
                                                   dtype=torch.qint8)[0]
    return model


def bench_space(name: str, args: argparse.Namespace, root: Path, wav: torch.Tensor) -> dict:
    torch.manual_seed(args.seed)
    supernet = LightHuBERT(SearchSpace.named(name)).eval()
    supernet.set_subnet("default")
    dense = supernet.export()[0].eval()
    paths = {"float": root / f"{name}.onnx", "int8": root / f"{name}.int8.onnx"}
    export_subnet(supernet, paths["float"], "onnx", "default")
    export_subnet(supernet, paths["int8"], "onnx", "default", quantize="int8")
    sessions = {k: session(p, args.threads) for k, p in paths.items()}
    timers = {"onnx float": timed(lambda: run_onnx(sessions["float"], wav)),
              "onnx int8": timed(lambda: run_onnx(sessions["int8"], wav)),
              "torch float": timed(lambda: dense(wav))}
    if args.torch_int8:
        quantized = torch_int8(dense)
        timers["torch int8 (ao)"] = timed(lambda: quantized(wav))
    with torch.inference_mode():
        for _ in range(args.warmup):
            for run in timers.values():
                run()
        samples: dict[str, list[float]] = {k: [] for k in timers}
        for _ in range(args.repeats):
            for k, run in timers.items():
                samples[k].append(run())
        ref = run_onnx(sessions["float"], wav)
        errors = {"onnx int8": np.abs(run_onnx(sessions["int8"], wav) - ref)}
        if args.torch_int8:
            errors["torch int8 (ao)"] = np.abs(torch.stack(quantized(wav).hidden_states)[:, 0].numpy() - ref)
    scale = np.abs(ref).reshape(ref.shape[0], -1).max(1)
    return {"subnet": supernet.subnet.describe(), "ms": samples, "sizes": {k: p.stat().st_size for k, p in paths.items()},
            "errors": {k: (e.reshape(e.shape[0], -1).max(1), e.reshape(e.shape[0], -1).max(1) / scale)
                       for k, e in errors.items()},
            "sessions": sessions}


def fsdd_split(recordings: Path) -> tuple[list[Path], list[Path]]:
    """Takes 0-4 of every speaker and digit for test, 5-14 for training."""
    train, test = [], []
    for p in sorted(recordings.glob("*.wav")):
        take = int(re.match(r"^\d_\w+?_(\d+)$", p.stem).group(1))
        (test if take < 5 else train if take < 15 else []).append(p)
    return train, test


def probe_accuracy(sess, train: list[Path], test: list[Path]) -> float:
    def features(paths: list[Path]) -> FrozenFeatures:
        hidden = [torch.from_numpy(run_onnx(sess, normalize(load_audio(p))[None])).half() for p in paths]
        return FrozenFeatures(list(paths), hidden)

    digit = [int(p.stem[0]) for p in train]
    clf, _ = fit_classifier(features(train), torch.tensor(digit), 10, ProbeConfig())
    predicted = predict(clf, features(test))
    return float((predicted == torch.tensor([int(p.stem[0]) for p in test])).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime intra-op threads (default 1)")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds; medians are reported (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    ap.add_argument("--seconds", type=float, default=10.0, help="audio length for speed and error (default 10)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the weights and the waveform")
    ap.add_argument("--spaces", nargs="+", choices=("base", "small"), default=["base", "small"])
    ap.add_argument("--probe-space", choices=("base", "small"), default="base", help="space whose exports are probed")
    ap.add_argument("--no-probe", action="store_true", help="skip the FSDD probe")
    ap.add_argument("--fsdd", type=Path, default=FSDD, help=f"FSDD recordings folder (default {FSDD})")
    ap.add_argument("--torch-int8", action="store_true", help="also torch.ao.quantization.quantize_dynamic (deprecated)")
    args = ap.parse_args()
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        ap.error("--repeats and --threads must be >= 1, --warmup >= 0")
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    wav = normalize(torch.randn(1, int(args.seconds * SAMPLE_RATE), generator=gen))
    med = statistics.median
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.seconds:g} s of audio, batch 1, "
          f"warm-up {args.warmup}, median of {args.repeats}")
    with tempfile.TemporaryDirectory(prefix="bench_int8_") as tmp:
        results = {name: bench_space(name, args, Path(tmp), wav) for name in args.spaces}
        print("\nSpeed, median ms (int8 / float < 1 means int8 is faster)")
        names = list(next(iter(results.values()))["ms"])
        head = f"{'space':<6} {'subnet':<18} " + " ".join(f"{n:>15}" for n in names) + \
            f" {'int8/float':>10} {'per-round':>10} {'float MiB':>9} {'int8 MiB':>8}"
        print(head)
        print("-" * len(head))
        for name, r in results.items():
            ms = {k: med(v) for k, v in r["ms"].items()}
            paired = [a / b for a, b in zip(r["ms"]["onnx int8"], r["ms"]["onnx float"])]
            print(f"{name:<6} {r['subnet']:<18} " + " ".join(f"{ms[n]:>15.1f}" for n in names) +
                  f" {ms['onnx int8'] / ms['onnx float']:>9.3f}x {min(paired):.2f}-{max(paired):.2f}"
                  f" {r['sizes']['float'] / MIB:>9.1f} {r['sizes']['int8'] / MIB:>8.1f}")
        for name, r in results.items():
            for who, (abs_err, rel_err) in r["errors"].items():
                print(f"\n{name}: {who} vs onnx float, per hidden state (0 = post_extract_proj): max abs error, relative")
                print("  " + "  ".join(f"{i}: {a:.3f} ({b:.1%})" for i, (a, b) in enumerate(zip(abs_err, rel_err))))
        if not args.no_probe:
            if not args.fsdd.is_dir():
                print(f"\nprobe skipped: no FSDD recordings at {args.fsdd} (pass --fsdd)")
                return
            train, test = fsdd_split(args.fsdd)
            r = results[args.probe_space] if args.probe_space in results else None
            if r is None:
                print(f"\nprobe skipped: --probe-space {args.probe_space} is not among --spaces")
                return
            acc = {k: probe_accuracy(r["sessions"][k], train, test) for k in ("float", "int8")}
            print(f"\nFSDD digit probe on the {args.probe_space} exports ({len(train)} train, {len(test)} test "
                  f"utterances; random weights): float {acc['float']:.3f}, int8 {acc['int8']:.3f}, "
                  f"difference {acc['int8'] - acc['float']:+.3f}")


if __name__ == "__main__":
    main()
