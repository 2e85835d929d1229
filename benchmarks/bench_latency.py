"""CPU latency of chosen models against a reference, as a deployment would run them.

Each `--model NAME=CHECKPOINT[@SUBNET_JSON]` is loaded with `lighthubert.load` (a supernet at
the subnet a search wrote, e.g. `search/best.json`, is exported to its dense model first:
that is what `lighthubert export` writes and what a user deploys) and timed with
`search.time_forward`: the median of `--repeats` forward passes over a fixed input of each
`--seconds` length, batch 1, at each `--threads` count. Models are timed in turn within each
round of one setting, so a burst of load on a shared machine hits all of them. The first
model is the reference of the `x` ratios (its latency over the model's, and its MACs over
the model's). Short inputs are dominated by per-call overhead, long ones by the convolutions
and products, so report both.

    python benchmarks/bench_latency.py --model teacher=ls-demo/teacher/step-1500.pt \\
        --model elastic-1/4=stage2/step-400.pt@search-elastic-1_4/best.json --seconds 1 10
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

import lighthubert
from lighthubert import search
from lighthubert.model import HuBERT
from lighthubert.space import SubnetConfig, count_macs, count_params
from lighthubert.supernet import LightHuBERT


def load_dense(spec: str) -> tuple[str, HuBERT]:
    """`NAME=CHECKPOINT[@SUBNET_JSON]` -> (name, the dense model a user would deploy)."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise SystemExit(f"error: --model takes NAME=CHECKPOINT[@SUBNET_JSON], got {spec!r}")
    path, _, subnet = rest.partition("@")
    model = lighthubert.load(path, subnet or None)
    if isinstance(model, LightHuBERT):
        model = model.export()[0]
    return name, model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", required=True, help="NAME=CHECKPOINT[@SUBNET_JSON]; first is the reference")
    ap.add_argument("--seconds", type=float, nargs="+", default=[1.0, 10.0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5, help="rounds; each takes the median of 4 passes per model")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    models = [load_dense(m) for m in args.model]
    rows = [{"name": n, "shape": SubnetConfig.of(m.cfg).describe(), "params": count_params(m.cfg),
             "macs_per_s": count_macs(m.cfg)} for n, m in models]
    for seconds in args.seconds:
        for threads in args.threads:
            torch.set_num_threads(threads)
            times: list[list[float]] = [[] for _ in models]
            for _ in range(args.repeats):
                for t, (_, m) in zip(times, models):
                    t.append(search.time_forward(m, runs=4, seconds=seconds))
            for row, t in zip(rows, times):
                row[f"ms {seconds:g}s {threads}t"] = round(statistics.median(t), 2)
    keys = [k for k in rows[0] if k.startswith("ms ")]
    ref = rows[0]
    print(f"{'model':<16} {'shape':<42} {'params':>10} {'MACs/1s':>9} {'MACs x':>6}  "
          + "  ".join(f"{k[3:]:>14}" for k in keys))
    for row in rows:
        cells = [f"{row[k]:>7.2f} {ref[k] / row[k]:>5.2f}x" for k in keys]
        print(f"{row['name']:<16} {row['shape']:<42} {row['params']:>10,} {row['macs_per_s'] / 1e6:>8.2f}M "
              f"{ref['macs_per_s'] / row['macs_per_s']:>5.2f}x  " + "  ".join(cells))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
