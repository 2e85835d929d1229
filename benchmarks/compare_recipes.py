"""LightHuBERT against DistilHuBERT with training noise: several training seeds of each recipe.

    python benchmarks/compare_recipes.py --demo ls-4500 --out compare [--seeds 3]

The paper's central claim is that a LightHuBERT subnet beats DistilHuBERT at the same size.
One training run of each cannot say so: a model's probe figure moves with the probe-head seed
(the demo measures that) and with the seed it was trained with (this script measures both).
From a finished `lighthubert demo` folder (`--demo`: its teacher, stage-1 student, data and
settings), for each training seed s (the demo's own seed and the next ones, `--seeds` in
all) it trains stage 2 and DistilHuBERT exactly as the demo does (same steps, audio,
schedule; seed s for weights, crops, masks and batch order), searches the supernet (seed s)
for the subnet at DistilHuBERT's parameter count and at 1/3 of the max subnet's, and probes
every model at the demo's probe-head seeds. The demo's own seed is the demo's folder itself,
so its runs, searches and probes are reused; the others go to OUT/seed-S/ in the same layout,
and a run resumes from what is there. With `--elastic-steps N` (default 1,200) each seed
also trains stage 2 over the demo's space with an elastic conv front end (16-64 channels,
layers grouped by kernel, channels sorted first; docs/model.md) from the same stage-1
student, into OUT/seed-S/stage2-elastic, and searches it for the subnet at 1/4 of the
teacher's MACs.

Each model kind is then one figure over every (training seed, probe seed) pair, 9 for 3 x 3,
mean ± sample sd, and the comparisons use the demo's rule (`probes/spread.py`: a difference
counts beyond 2 x the combined sd): the subnet at DistilHuBERT's count against DistilHuBERT,
and every student (the 1/3-of-max and the 1/4-MACs subnets too) against the teacher (trained once, so its sd is the probe heads' only).
Writes OUT/compare.md and OUT/compare.json and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import yaml

from lighthubert import checkpoint, demo, probes
from lighthubert.demo.pipeline import (distilhubert_settings, finished, measure, metric_columns, search_subnet,
                                       stage2_settings, train_run, trained)
from lighthubert.demo.report import cell, verdict
from lighthubert.model import HuBERT
from lighthubert.space import count_macs, count_params, format_count, format_table

KINDS = ("DistilHuBERT (2 layers)", "LightHuBERT subnet, DistilHuBERT's params", "LightHuBERT subnet, 1/3 of max params",
         "LightHuBERT elastic-front-end subnet, 1/4 of the teacher's MACs")
BUDGETS = ("distilhubert", "1/3")
# The elastic front end of docs/model.md: 16-64 channels, layers grouped by kernel, channels sorted before stage 2.
ELASTIC = {"conv_dim": [16, 32, 48, 64], "conv_groups": [[0], [1, 2, 3, 4], [5, 6]]}


def _probed(rows: list[dict[str, Any]], cfg: demo.DemoConfig, folder: Path, seed: int, data: dict[str, Path],
            tasks: Any) -> list[dict[str, Any]]:
    """Each row's model probed at the demo's head seeds (cfg, not the training seed's: only the training seed differs)."""
    for row in rows:
        row.update(measure(row.pop("model"), row["name"], cfg, data, tasks, folder))
        row["training_seed"] = seed
    return rows


def seed_rows(cfg: demo.DemoConfig, teacher: HuBERT, folder: Path, seed: int, data: dict[str, Path],
              tasks: Any) -> list[dict[str, Any]]:
    """Stage 2 and DistilHuBERT trained with `seed` into `folder`, the two subnets searched with
    it, and the three models probed: one report row per kind."""
    run, ckpt = dataclasses.replace(cfg, seed=seed), trained(cfg)
    stage2, _ = train_run(folder / "stage2", ckpt["teacher"], data, stage2_settings(run, Path(cfg.out) / "space.yaml"),
                          init=ckpt["stage1"])
    distilled, distil_valid = train_run(folder / "distilhubert", ckpt["teacher"], data,
                                        distilhubert_settings(run, teacher.cfg.depth))
    supernet, student = checkpoint.load_model(stage2), checkpoint.load_model(distilled).without_heads()
    rows = [{"name": KINDS[0], "model": student, "valid_loss": distil_valid.get("student")}]
    rows += [search_subnet(supernet, teacher, budget, count_params(student.cfg), run, data, folder)[1]
             for budget in BUDGETS]
    return _probed(rows, cfg, folder, seed, data, tasks)


def elastic_rows(cfg: demo.DemoConfig, teacher: HuBERT, folder: Path, seed: int, data: dict[str, Path], tasks: Any,
                 steps: int, space_file: Path) -> list[dict[str, Any]]:
    """Stage 2 over the elastic-front-end space (`steps` sandwich steps, sorted channels) from the
    same stage-1 student, with `seed`; the subnet at 1/4 of the teacher's MACs, searched and probed."""
    run, ckpt = dataclasses.replace(cfg, seed=seed), trained(cfg)
    settings = {**stage2_settings(run, space_file), "max_steps": steps, "valid_every": steps, "save_every": steps,
                "sort_conv_channels": True}
    stage2, _ = train_run(folder / "stage2-elastic", ckpt["teacher"], data, settings, init=ckpt["stage1"])
    _, row = search_subnet(checkpoint.load_model(stage2), teacher, "1/4", 0, run, data, folder,
                           reference_macs=count_macs(teacher.cfg))
    return _probed([{**row, "name": KINDS[3]}], cfg, folder, seed, data, tasks)


def pooled(rows: list[dict[str, Any]], metric: str) -> probes.Spread:
    """One figure over every training seed's every probe seed."""
    return probes.Spread.of([v for r in rows for v in r["per_seed"][metric]])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", required=True, help="a finished `lighthubert demo` folder (its teacher, stage 1 and data)")
    p.add_argument("--out", required=True, help="where the other training seeds' runs and the comparison go")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per recipe, the demo's own first (default 3)")
    p.add_argument("--elastic-steps", type=int, default=1200,
                   help="stage-2 steps of the elastic-front-end supernet (default 1200; 0 leaves it out)")
    p.add_argument("--part", choices=("all", "fixed", "elastic"), default="all",
                   help="run one part only (two processes at once); run again with all, which reuses both, for the table")
    args = p.parse_args()
    src = Path(args.demo)
    if args.seeds < 1:
        raise SystemExit(f"--seeds must be at least 1, got {args.seeds}")
    try:
        cfg = finished(src)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = demo.prepare_data(cfg, src)  # the demo's manifests, already there
    tasks = demo.probe_tasks(cfg, data)
    metrics = metric_columns(tasks)
    report = json.loads((src / "report.json").read_text())
    fixed = {r["name"]: r for r in report["rows"]}
    teacher = next(r for name, r in fixed.items() if name.startswith("teacher"))

    space_file = out / "space-elastic.yaml"
    space = yaml.safe_load((src / "space.yaml").read_text())
    space_file.write_text(yaml.safe_dump({**space, "search_space": {**space["search_space"], **ELASTIC}}, sort_keys=False))
    teacher_model = checkpoint.load_model(trained(cfg)["teacher"])
    started, runs = time.perf_counter(), []
    for seed in range(cfg.seed, cfg.seed + args.seeds):
        folder = src if seed == cfg.seed else out / f"seed-{seed}"
        if args.part in ("all", "fixed"):
            runs += seed_rows(cfg, teacher_model, folder, seed, data, tasks)
        if args.part in ("all", "elastic") and args.elastic_steps:
            runs += elastic_rows(cfg, teacher_model, out / f"seed-{seed}", seed, data, tasks, args.elastic_steps,
                                 space_file)
    by_kind = {kind: [r for r in runs if r["name"] == kind] for kind in KINDS}
    by_kind = {kind: rows for kind, rows in by_kind.items() if rows}
    figures = {kind: {m: pooled(rows, m) for m in metrics} for kind, rows in by_kind.items()}
    figures[teacher["name"]] = {m: probes.Spread.of(teacher["per_seed"][m]) for m in metrics}
    mfcc = fixed.get("MFCC (39-dim)")
    if mfcc:
        figures[mfcc["name"]] = {m: probes.Spread.of(mfcc["per_seed"][m]) for m in metrics}
    pairs = [(KINDS[1], KINDS[0])] if KINDS[0] in by_kind else []
    pairs += [(kind, teacher["name"]) for kind in by_kind]
    said = [verdict(m, a, figures[a][m], b, figures[b][m]) for a, b in pairs for m in metrics]

    cols = ["model", "training seeds x probe seeds"] + metrics
    cells = [[name, f"{len(by_kind.get(name, [None]))} x {cfg.probe_seeds}"] + [cell(m, f[m]) for m in metrics]
             for name, f in figures.items()]
    per_run = [[r["name"], str(r["training_seed"]), r["shape"], f"{r['params']:,}", format_count(r["macs"])]
               + [cell(m, probes.Spread.of(r["per_seed"][m])) for m in metrics] for r in runs]
    md = ["# LightHuBERT vs DistilHuBERT over training seeds", "",
          f"From `{src}` (teacher {cfg.teacher_steps} steps, stage 1 {cfg.stage1_steps}, stage 2 {cfg.stage2_steps}, "
          f"DistilHuBERT {cfg.stage1_steps + cfg.stage2_steps}, elastic stage 2 {args.elastic_steps}); training seeds {cfg.seed}..{cfg.seed + args.seeds - 1}, "
          f"probe-head seeds {cfg.seed}..{cfg.seed + cfg.probe_seeds - 1}. Mean ± sample sd over every pair.", "",
          "| " + " | ".join(cols) + " |", "|" + "|".join("---" if i < 2 else "--:" for i in range(len(cols))) + "|",
          *["| " + " | ".join(c) + " |" for c in cells], "", "Comparisons (a difference counts beyond 2 x the combined sd):",
          "", *[f"- {v}" for v in said], "", "Every run (mean ± sd over the probe seeds):", "",
          "| model | training seed | shape | params | MACs / 1 s | " + " | ".join(metrics) + " |",
          "|---|--:|---|--:|--:|" + "--:|" * len(metrics),
          *["| " + " | ".join(c) + " |" for c in per_run], "",
          f"Time: {time.perf_counter() - started:.0f} s (runs already there are reused).", ""]
    (out / "compare.md").write_text("\n".join(md))
    (out / "compare.json").write_text(json.dumps({
        "runs": runs, "figures": {k: {m: s.to_dict() for m, s in f.items()} for k, f in figures.items()},
        "comparisons": said, "config": dataclasses.asdict(cfg), "seeds": args.seeds}, indent=2) + "\n")
    print(format_table(cols, cells))
    print("\n".join(said))


if __name__ == "__main__":
    main()
