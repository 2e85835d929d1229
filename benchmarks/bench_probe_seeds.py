"""What probe-head seeds cost: one model's demo probes at 1 seed and at N, the features computed once.

    python benchmarks/bench_probe_seeds.py demo [--seeds 3]
    python benchmarks/bench_probe_seeds.py librispeech --data ../shared/data/librispeech-mini [--seeds 3]

A randomly initialised model of the demo teacher's shape (speed does not depend on the
weights) is probed as the demo probes each of its 7 models (`demo.probe_tasks`,
`demo.pipeline.probe_settings`): on the built-in corpus word, speaker and phoneme; on the demo's
LibriSpeech split of `--data` (`demo.LIBRISPEECH` settings: heads on 1.5 h of train-clean-5)
phoneme, asr and speaker-id. For 1 seed and for `--seeds`, prints the seconds spent in the
upstream's forward pass (`FrozenFeatures.compute`, timed by wrapping it), in the heads (the
rest) and in all, then the ratios. Prints the load average, since the machine is shared.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from lighthubert import demo, probes
from lighthubert.demo.config import TEACHER
from lighthubert.demo.pipeline import probe_settings
from lighthubert.model import HuBERT, ModelConfig


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("demo", "librispeech"))
    p.add_argument("--data", help="librispeech: a folder in the LibriSpeech layout")
    p.add_argument("--out", default="bench-probe-seeds", help="where the corpus or manifests go")
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    if args.mode == "librispeech" and not args.data:
        p.error("librispeech needs --data")
    settings = {"librispeech": args.data, **demo.LIBRISPEECH} if args.mode == "librispeech" else {}
    cfg = demo.DemoConfig(out=args.out, **settings)
    data = demo.prepare_data(cfg, Path(args.out))
    tasks = demo.probe_tasks(cfg, data)
    torch.manual_seed(0)
    model = HuBERT(ModelConfig(**TEACHER)).eval()

    spent = []
    real = probes.FrozenFeatures.compute.__func__

    def timed(cls, *a, **kw):
        start = time.perf_counter()
        try:
            return real(cls, *a, **kw)
        finally:
            spent.append(time.perf_counter() - start)

    probes.FrozenFeatures.compute = classmethod(timed)
    totals = {}
    for seeds in (1, args.seeds):
        spent.clear()
        start = time.perf_counter()
        results = probes.probe_tasks(model, data["train"], data["test"], tasks,
                                     dataclasses.replace(probe_settings(cfg), seeds=seeds))
        total, features = time.perf_counter() - start, sum(spent)
        totals[seeds] = (total, features)
        print(f"{seeds} seed(s), {' + '.join(tasks)}: features {features:.1f} s, heads {total - features:.1f} s, "
              f"total {total:.1f} s (load {_load()}); "
              + ", ".join(f"{k} {m} {s.format()}" for k, r in results.items() for m, s in r.metrics.items()), flush=True)
    (t1, f1), (tn, fn) = totals[1], totals[args.seeds]
    print(f"{args.seeds} seeds / 1 seed: total {tn / t1:.2f}x, features {fn / f1:.2f}x, heads "
          f"{(tn - fn) / (t1 - f1):.2f}x; features are {100 * f1 / t1:.0f}% of a 1-seed probe, {100 * fn / tn:.0f}% "
          f"of a {args.seeds}-seed one")


if __name__ == "__main__":
    main()
