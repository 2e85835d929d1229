"""Exported compact model vs the supernet's sliced forward vs transformers' HubertModel.

    python benchmarks/bench_export.py [--threads N] [--repeats R] [--seconds S]

For each official default subnet (base e640 h10 f2560 x12, small e384 h6 f1536 x12), times
one forward over S seconds (default 10) of audio, batch 1, under `torch.inference_mode`:

- `sliced`: `LightHuBERT` at the subnet (weights sliced on every call),
- `compact`: the dense `HuBERT` from `export()` (what `lighthubert export --format compact` reloads),
- `transformers`: `HubertModel` loaded from `export --format hf` (same weights and config).

Prints medians and the ratios against the targets: compact / transformers <= 1.0 and
sliced / compact <= 1.15. Random weights: speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from lighthubert.export import export_subnet
from lighthubert.space import SearchSpace
from lighthubert.supernet import LightHuBERT


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    wav = torch.randn(1, int(args.seconds * 16000))
    rows = []
    torch.manual_seed(0)
    for space in (SearchSpace.base(), SearchSpace.small()):
        model = LightHuBERT(space).eval()
        dense, _ = model.export("default")
        with tempfile.TemporaryDirectory() as tmp:
            export_subnet(model, Path(tmp) / "hf", "hf", "default")
            hf = transformers.HubertModel.from_pretrained(Path(tmp) / "hf", attn_implementation="sdpa").eval()
        with torch.inference_mode():
            ref = hf(wav, output_hidden_states=True).hidden_states[-1]
            assert (dense(wav).hidden_states[-1] - ref).abs().max() < 1e-3, "exported model disagrees with transformers"
            t_sliced = median_ms(lambda m=model: m(wav), args.repeats)
            t_compact = median_ms(lambda m=dense: m(wav), args.repeats)
            t_hf = median_ms(lambda m=hf: m(wav, output_hidden_states=True), args.repeats)
        rows.append((space.name, model.subnet.describe(), t_sliced, t_compact, t_hf))
    print(f"{args.seconds:g} s of audio, batch 1, {args.threads} threads, median of {args.repeats}")
    print(f"{'space':6} {'subnet':20} {'sliced ms':>10} {'compact ms':>11} {'hf ms':>8} {'compact/hf':>11} {'sliced/compact':>15}")
    for name, sub, s, c, h in rows:
        print(f"{name:6} {sub:20} {s:10.1f} {c:11.1f} {h:8.1f} {c / h:11.2f} {s / c:15.2f}")
    print("targets: compact/hf <= 1.00, sliced/compact <= 1.15")


if __name__ == "__main__":
    main()
