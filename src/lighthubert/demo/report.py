"""The demo's report: the results table (terminal and Markdown), the comparisons it states,
and the figure.

Probe columns are `report["metrics"]`: `NAME acc` (accuracy, higher is better) and the error
rates `PER`, `CER`, `WER` (lower is better), each the mean ± sd over the probe-head seeds
(`row["per_seed"]` holds every seed's figure). Each comparison (every model against the
teacher and against MFCCs, the subnet at DistilHuBERT's count against DistilHuBERT) says in
words whether the difference of the means exceeds `probes.SPREAD_FACTOR` times the combined
sd, `sqrt(sd1^2 + sd2^2)`, or lies within it (the rule: `probes/spread.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from .. import search
from ..probes import SPREAD_FACTOR, Spread, compare
from ..space import format_count, format_table

ERROR_RATES = ("PER", "CER", "WER")
TEACHER, MFCC_ROW, DISTILHUBERT, SUBNET_AT_DISTILHUBERT = ("teacher", "MFCC", "DistilHuBERT",
                                                           "LightHuBERT subnet, DistilHuBERT's params")  # row names (prefixes)


def spread(row: dict[str, Any], metric: str) -> Spread:
    """A row's figure over the probe-head seeds; a row without `per_seed` (a report written
    before probes had seeds) is its one figure."""
    return Spread.of(row["per_seed"][metric]) if "per_seed" in row else Spread.of([row[metric]])


def cell(metric: str, s: Spread) -> str:
    """`48.6 ± 1.2%` for an error rate, `0.893 ± 0.012` for an accuracy (the mean alone for one seed)."""
    return s.format(100, 1, "%") if metric in ERROR_RATES else s.format()


def _table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(columns, cells) of the results table: each probe's mean ± sd over the head seeds."""
    rows, metrics = report["rows"], report["metrics"]
    cols = ["model", "shape", "params", "MACs / 1 s", "CPU ms / 1 s", "valid loss"] + list(metrics)
    cells = []
    for r in rows:
        line = [r["name"], r.get("shape", "-"), f"{r['params']:,}" if "params" in r else "-",
                format_count(r["macs"]) if "macs" in r else "-",
                f"{r['latency_ms']:.1f}" if "latency_ms" in r else "-",
                f"{r['valid_loss']:.4f}" if r.get("valid_loss") is not None else "-"]
        line += [cell(m, spread(r, m)) for m in metrics]
        cells.append(line)
    return cols, cells


def report_text(report: dict[str, Any]) -> str:
    """What the terminal shows: the table as aligned plain text (the rest is in report.md)."""
    return format_table(*_table(report))


def _corpus(cfg: dict[str, Any]) -> str:
    if cfg.get("librispeech"):
        return (f"LibriSpeech layout at {cfg['librispeech']}: trained on {cfg['train_split']} "
                f"({100 * cfg['valid_fraction']:.0f}% of it held out), scored on {cfg['test_split']}")
    return cfg["data"] or "the built-in generated corpus"


def _find(rows: list[dict[str, Any]], prefix: str) -> Optional[dict[str, Any]]:
    return next((r for r in rows if r["name"].startswith(prefix)), None)


def comparisons(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every comparison the report states, judged by the seed spread: each learned model against
    the teacher, every model against MFCCs, and the subnet at DistilHuBERT's parameter count
    against DistilHuBERT (the paper's head-to-head), on every probe column.

    Returns:
        One dict per comparison and metric: `model`, `reference`, `metric`, both figures
        (`mean`, `sd`, `values`), `difference` (model minus reference, in the metric's unit),
        `margin` (`SPREAD_FACTOR` x combined sd; None for one seed), `beyond_spread` (True,
        False or None) and `verdict`, the sentence the report prints.
    """
    rows, metrics = report["rows"], report["metrics"]
    teacher, mfcc, distil = _find(rows, TEACHER), _find(rows, MFCC_ROW), _find(rows, DISTILHUBERT)
    pairs = [(r, teacher) for r in rows if teacher and r is not teacher and r is not mfcc]
    pairs += [(r, mfcc) for r in rows if mfcc and r is not mfcc]
    subnet = _find(rows, SUBNET_AT_DISTILHUBERT)
    pairs += [(subnet, distil)] if subnet and distil else []
    out = []
    for model, reference in pairs:
        for m in metrics:
            a, b = spread(model, m), spread(reference, m)
            c = compare(a, b)
            out.append({"model": model["name"], "reference": reference["name"], "metric": m, "model_figure": a.to_dict(),
                        "reference_figure": b.to_dict(), "difference": c.difference, "margin": c.margin,
                        "beyond_spread": c.beyond_spread, "verdict": verdict(m, model["name"], a, reference["name"], b)})
    return out


def verdict(metric: str, model: str, a: Spread, reference: str, b: Spread) -> str:
    """One comparison in words: the judgment first, then both figures, the difference and the
    margin it was held against; e.g. `PER, stage 1 vs MFCC: within the seed spread, no ranking:
    48.6 ± 1.2% vs 49.8 ± 0.9% (3 / 3 seeds; ratio 97.6%), difference 1.2 points <= 2 x
    combined sd = 3.0 points`."""
    rate = metric in ERROR_RATES
    scale, digits, unit = (100, 1, " points") if rate else (1, 3, "")
    c = compare(a, b)
    ratio = f"; ratio {100 * a.mean / b.mean:.1f}%" if b.mean else ""
    figures = f"{cell(metric, a)} vs {cell(metric, b)} ({len(a.values)} / {len(b.values)} seeds{ratio})"
    diff = f"difference {scale * abs(c.difference):.{digits}f}{unit}"
    if c.margin is None:
        judgment, why = "not judged, one seed: no spread measured", diff
    elif c.beyond_spread:
        better = model if (c.difference < 0) == rate else reference
        judgment = f"{better} better, beyond the seed spread"
        why = f"{diff} > {SPREAD_FACTOR:g} x combined sd = {scale * c.margin:.{digits}f}{unit}"
    else:
        judgment = "within the seed spread, no ranking"
        why = f"{diff} <= {SPREAD_FACTOR:g} x combined sd = {scale * c.margin:.{digits}f}{unit}"
    return f"{metric}, {model} vs {reference}: {judgment}: {figures}, {why}"


def report_markdown(report: dict[str, Any]) -> str:
    """The Markdown report: the table, the comparisons judged by the seed spread, the figure, the settings."""
    cfg = report["config"]
    cols, cells = _table(report)
    labels = ", ".join(f"{t} (`{spec}`)" for t, spec in cfg["labels"].items())
    md = ["# lighthubert demo report", "", f"Data: {_corpus(cfg)}." + (f" Label probes: {labels}." if labels else ""), "",
          "| " + " | ".join(cols) + " |", "|" + "|".join("---" if i < 2 else "--:" for i in range(len(cols))) + "|"]
    md += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in cells]
    md += ["",
           "- params: the official count (`calc_sampled_param_num`, as `lighthubert info` and `teacher-info` count: "
           "conv front end, projections, positional conv, layers, mask_emb at the supernet's width; no prediction head).",
           "- MACs: one 1-second utterance; CPU ms: median of 5 forward passes over 1 s of audio on this machine "
           "(measured, not predicted).",
           "- valid loss: each model's own training objective on the validation split, so compare within a kind: "
           "teacher = unit cross entropy (every frame, masked or not); LightHuBERT = L1 to the mean of the teacher's "
           "last layers on masked frames (stage 1 at the max subnet, the subnets as the search scored them); "
           "DistilHuBERT = L1 + cosine of its heads.",
           "- Probes on frozen features (learned softmax weights over all hidden states, SUPERB's featurizer): "
           "accuracy of an MLP head on mean-pooled features (higher is better); PER, CER and WER of a CTC head with "
           "greedy decoding, no language model (lower is better)."
           + (f" Probe heads learn from {cfg['probe_train_hours']} h of the training audio." if cfg.get("probe_train_hours")
              else "")
           + f" Each figure is the mean ± sample sd over {cfg.get('probe_seeds', 1)} probe-head seed(s) (`probe_seeds`: the "
             "heads' init and batch order vary; the features and any training subset are shared); `report.json` holds "
             "every seed's figure.",
           "", "## Comparisons", "",
           f"A difference of means counts only beyond {SPREAD_FACTOR:g} x the combined seed sd, sqrt(sd1^2 + sd2^2): "
           "under normal noise one seed of each model would then rank the two the same way at least 97.7% of the time. "
           "Within it, the two are not ranked. The spread is the probe heads' only: each model was trained once. "
           "`ratio`: the model's mean over the reference's (for error rates, above 100% is worse).", ""]
    stated = comparisons(report)
    for title, prefix in (("Against the teacher", TEACHER), ("Against MFCCs", MFCC_ROW),
                          ("The subnet at DistilHuBERT's parameter count against DistilHuBERT", DISTILHUBERT)):
        said = [c["verdict"] for c in stated if c["reference"].startswith(prefix)]
        md += [f"{title}:", "", *[f"- {v}" for v in said], ""] if said else []
    md += ["![results](report.png)", "",
           "Searches (evolution, " + f"{cfg['population']} x {cfg['generations']} evaluations each):", ""]
    md += [f"- {s['budget']} (at most {s['max_params']:,} parameters): {s['best']}" for s in report["searches"]]
    md += ["", "Time per step in this run (s; 0 for a step reused from an earlier run): "
           + ", ".join(f"{k} {v}" for k, v in report["timings_s"].items()), ""]
    return "\n".join(md)


def plot(report: dict[str, Any], searches: list[dict], path: Path) -> None:
    """Left: every evaluated subnet (params vs validation loss), the Pareto fronts and the budgets.
    Then accuracy against parameters, and error rates against parameters (each when a probe of
    that kind ran), every model a point with its seed sd as an error bar, MFCC a line with its
    sd as a band."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows, metrics, max_params = report["rows"], report["metrics"], report["max_params"]
    panels = [[m for m in metrics if m not in ERROR_RATES], [m for m in metrics if m in ERROR_RATES]]
    panels = [p for p in panels if p]
    fig, axes = plt.subplots(1, 1 + len(panels), figsize=(6 * (1 + len(panels)), 4.6), dpi=110)
    left = axes[0]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for s, colour in zip(searches, colours):
        recs = s["history"]
        left.scatter([r["params"] / 1e6 for r in recs], [r["loss"] for r in recs], s=10, color=colour, alpha=0.35)
        front = search.pareto_front(recs)
        left.plot([r["params"] / 1e6 for r in front], [r["loss"] for r in front], "-", color=colour, linewidth=1)
        best = min(recs, key=lambda r: (r["loss"], r["params"]))
        left.scatter([best["params"] / 1e6], [best["loss"]], s=120, marker="*", color=colour, edgecolor="k", zorder=3,
                     label=f"best at {s['budget']}: {best['describe']}")
        left.axvline(s["max_params"] / 1e6, color=colour, linestyle="--", linewidth=1)
    left.set_xlabel("parameters (M)")
    left.set_ylabel("distillation validation loss")
    left.set_title("subnet search (dashed: parameter budgets)")
    left.grid(alpha=0.3)
    if searches:
        left.legend(fontsize=7)
    models = [r for r in rows if "params" in r]
    mfcc = next(r for r in rows if "params" not in r)
    for ax, panel in zip(axes[1:], panels):
        errors = panel[0] in ERROR_RATES
        scale = 100 if errors else 1
        points = []  # (params M, value, label), labelled together below
        for m, marker in zip(panel, ["o", "s", "^", "D"]):
            ax.errorbar([r["params"] / 1e6 for r in models], [scale * r[m] for r in models], fmt=marker, markersize=6,
                        yerr=[scale * (spread(r, m).sd or 0.0) for r in models], capsize=3, label=m)
            points += [(r["params"] / 1e6, scale * r[m], r["name"].replace("LightHuBERT subnet, ", "")
                        .replace(" of max params", "")) for r in models]
            ax.axhline(scale * mfcc[m], linestyle=":", color="0.4", linewidth=1)
            band = scale * (spread(mfcc, m).sd or 0.0)
            ax.axhspan(scale * mfcc[m] - band, scale * mfcc[m] + band, color="0.5", alpha=0.12, linewidth=0)
            ax.annotate(f"MFCC {m}", (0, scale * mfcc[m]), xycoords=("axes fraction", "data"), fontsize=7, color="0.3",
                        xytext=(3, -9), textcoords="offset points")
        values = [y for _, y, _ in points] + [scale * mfcc[m] for m in panel]
        near_x, near_y = 0.12 * max_params / 1e6, 0.03 * (max(values) - min(values) or 1)
        for i, (x, y, label) in enumerate(points):  # a label that would overprint an earlier one goes below it
            below = sum(abs(x - px) < near_x and abs(y - py) < near_y for px, py, _ in points[:i])
            ax.annotate(label, (x, y), fontsize=6, xytext=(3, 3 - 8 * below), textcoords="offset points")
        ax.axvline(max_params / 1e6, color="0.6", linewidth=0.8)
        ax.set_xlabel("parameters (M)")
        ax.set_ylabel("error rate, % (test; lower is better)" if errors else "probe accuracy (test)")
        ax.set_title("content probes (CTC)" if errors else "classification probes")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
