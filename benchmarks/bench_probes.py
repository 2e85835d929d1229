"""What the demo's phoneme probe adds to a model's probes, and what librispeech-mini's three
probes cost.

    python benchmarks/bench_probes.py demo [--out DIR]
    python benchmarks/bench_probes.py librispeech --train ls/train.tsv --test ls/test.tsv --valid ls/valid.tsv

`demo`: on the built-in corpus, a randomly initialised model of the demo teacher's shape
(speed does not depend on the weights) is probed with the demo's settings for word and
speaker, then for word, speaker and phoneme; prints both times and their ratio.
`librispeech`: the same model through `ProbeConfig()`'s phoneme, asr and speaker-id probes
(manifests from `lighthubert manifest`, docs/probes.md); prints the total time. Both print
the load average, since the machine is shared.
"""

from __future__ import annotations

import argparse
import time

import torch

from lighthubert import corpus, demo, probes
from lighthubert.demo.config import TEACHER
from lighthubert.demo.pipeline import probe_settings
from lighthubert.model import HuBERT, ModelConfig


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("demo", "librispeech"))
    p.add_argument("--out", default="bench-probes-corpus", help="demo: where the built-in corpus goes")
    p.add_argument("--train"), p.add_argument("--test"), p.add_argument("--valid")
    args = p.parse_args()
    torch.manual_seed(0)
    model = HuBERT(ModelConfig(**TEACHER)).eval()
    if args.mode == "demo":
        c = corpus.write_corpus(args.out, 6, 20, seed=0)
        cfg = demo.DemoConfig()
        data = {"train": c.train, "valid": c.valid, "test": c.test}
        times = []
        for tasks in (dict(cfg.labels), demo.probe_tasks(cfg, data)):
            start = time.perf_counter()
            probes.probe_tasks(model, c.train, c.test, tasks, probe_settings(cfg))
            times.append(time.perf_counter() - start)
            print(f"{' + '.join(tasks)}: {times[-1]:.1f} s (load {_load()})", flush=True)
        print(f"ratio with / without the phoneme probe: {times[1] / times[0]:.2f}")
        return
    start = time.perf_counter()
    results = probes.probe_tasks(model, args.train, args.test, {
        "phoneme": probes.ProbeTask("phoneme"), "asr": probes.ProbeTask("asr"),
        "speaker": probes.ProbeTask("speaker-id", test=args.valid)}, probes.ProbeConfig())
    print(f"phoneme + asr + speaker-id: {time.perf_counter() - start:.1f} s (load {_load()}); heads: "
          + ", ".join(f"{k} {r.runs[0].train_seconds} s" for k, r in results.items() if hasattr(r.runs[0], "train_seconds")))


if __name__ == "__main__":
    main()
