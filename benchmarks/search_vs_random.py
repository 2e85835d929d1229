"""Evolution against random search: same supernet, teacher, budget and number of evaluations.

    python benchmarks/search_vs_random.py DEMO_OUT [--fraction 0.3333] [--seeds 1 2 3]
                                          [--population 8] [--generations 4]

DEMO_OUT is a finished `lighthubert demo` folder (its stage-2 supernet, teacher and
validation split and its demo settings). For each seed both algorithms evaluate
`population x generations` subnets under a parameter budget of `fraction` of the max
subnet; prints the best validation loss of each, per seed and on average, and how many
seeds evolution won. Evaluated losses are cached under DEMO_OUT/search-vs-random.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import yaml

from lighthubert import checkpoint, demo, search
from lighthubert.space import count_params, format_table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("demo_out", type=Path)
    p.add_argument("--fraction", type=float, default=1 / 3)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--generations", type=int, default=4)
    args = p.parse_args()
    out = args.demo_out
    cfg = demo.DemoConfig(**yaml.safe_load((out / "demo.yaml").read_text()))
    teacher = checkpoint.load_model(next((out / "teacher").glob("step-*.pt")))
    supernet = checkpoint.load_model(next((out / "stage2").glob("step-*.pt")))
    valid = out / ("corpus" if cfg.data is None else "data") / "valid.tsv"
    budget = int(args.fraction * count_params(supernet.space.model_config(supernet.space.max())))
    rows, wins = [], 0
    for seed in args.seeds:
        best = {}
        for algorithm in ("evolution", "random"):
            settings = search.SearchConfig(algorithm=algorithm, population=args.population, generations=args.generations,
                                           seed=seed, max_params=budget, **demo.search_settings(cfg))
            result = search.search(supernet, teacher, valid, out / "search-vs-random" / f"{algorithm}-{seed}", settings,
                                   resume=True, progress=False)
            best[algorithm] = (result.best_loss, result.best.describe(), result.evaluations)
        wins += best["evolution"][0] < best["random"][0]
        rows.append([str(seed)] + [f"{best[a][0]:.5f} ({best[a][2]} evals) {best[a][1]}" for a in ("evolution", "random")])
    means = [statistics.mean(float(r[i].split()[0]) for r in rows) for i in (1, 2)]
    rows.append(["mean", f"{means[0]:.5f}", f"{means[1]:.5f}"])
    print(f"budget: {budget:,} parameters ({args.fraction:.3f} of the max subnet); "
          f"{args.population} x {args.generations} evaluations per search")
    print(format_table(["seed", "evolution: best loss", "random: best loss"], rows))
    print(f"evolution lower on {wins} of {len(args.seeds)} seeds")


if __name__ == "__main__":
    main()
