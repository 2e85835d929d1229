"""The demo's report: the results table (terminal and Markdown) and the figure.

Probe columns are `report["metrics"]`: `NAME acc` (accuracy, higher is better) and the error
rates `PER`, `CER`, `WER` (lower is better), each also shown relative to the teacher.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import search
from ..space import format_count, format_table

ERROR_RATES = ("PER", "CER", "WER")


def _cell(metric: str, value: float) -> str:
    return f"{100 * value:.1f}%" if metric in ERROR_RATES else f"{value:.3f}"


def _table(report: dict[str, Any], retention: bool) -> tuple[list[str], list[list[str]]]:
    """(columns, cells) of the results table; `retention`: add each probe relative to the teacher."""
    rows, metrics = report["rows"], report["metrics"]
    teacher = next(r for r in rows if r["name"].startswith("teacher"))
    cols = ["model", "shape", "params", "MACs / 1 s", "CPU ms / 1 s", "valid loss"] + list(metrics)
    cols += [f"{m} vs teacher" for m in metrics] if retention else []
    cells = []
    for r in rows:
        line = [r["name"], r.get("shape", "-"), f"{r['params']:,}" if "params" in r else "-",
                format_count(r["macs"]) if "macs" in r else "-",
                f"{r['latency_ms']:.1f}" if "latency_ms" in r else "-",
                f"{r['valid_loss']:.4f}" if r.get("valid_loss") is not None else "-"]
        line += [_cell(m, r[m]) for m in metrics]
        if retention:
            line += [f"{100 * r[m] / teacher[m]:.1f}%" if teacher[m] else "-" for m in metrics]
        cells.append(line)
    return cols, cells


def report_text(report: dict[str, Any]) -> str:
    """What the terminal shows: the table as aligned plain text (the rest is in report.md)."""
    return format_table(*_table(report, retention=False))


def _corpus(cfg: dict[str, Any]) -> str:
    if cfg.get("librispeech"):
        return (f"LibriSpeech layout at {cfg['librispeech']}: trained on {cfg['train_split']} "
                f"({100 * cfg['valid_fraction']:.0f}% of it held out), scored on {cfg['test_split']}")
    return cfg["data"] or "the built-in generated corpus"


def report_markdown(report: dict[str, Any]) -> str:
    """The Markdown report: the table, each probe relative to the teacher, the figure, the settings."""
    cfg = report["config"]
    cols, cells = _table(report, retention=True)
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
           "greedy decoding, no language model (lower is better). `vs teacher`: the model's figure over the "
           "teacher's (for error rates, above 100% is worse)."
           + (f" Probe heads learn from {cfg['probe_train_hours']} h of the training audio." if cfg.get("probe_train_hours")
              else ""),
           "", "![results](report.png)", "",
           "Searches (evolution, " + f"{cfg['population']} x {cfg['generations']} evaluations each):", ""]
    md += [f"- {s['budget']} (at most {s['max_params']:,} parameters): {s['best']}" for s in report["searches"]]
    md += ["", "Time per step in this run (s; 0 for a step reused from an earlier run): "
           + ", ".join(f"{k} {v}" for k, v in report["timings_s"].items()), ""]
    return "\n".join(md)


def plot(report: dict[str, Any], searches: list[dict], path: Path) -> None:
    """Left: every evaluated subnet (params vs validation loss), the Pareto fronts and the budgets.
    Then accuracy against parameters, and error rates against parameters (each when a probe of
    that kind ran), every model a point and MFCC a line."""
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
    left.legend(fontsize=7)
    models = [r for r in rows if "params" in r]
    mfcc = next(r for r in rows if "params" not in r)
    for ax, panel in zip(axes[1:], panels):
        errors = panel[0] in ERROR_RATES
        scale = 100 if errors else 1
        points = []  # (params M, value, label), labelled together below
        for m, marker in zip(panel, ["o", "s", "^", "D"]):
            ax.scatter([r["params"] / 1e6 for r in models], [scale * r[m] for r in models], marker=marker, s=40, label=m)
            points += [(r["params"] / 1e6, scale * r[m], r["name"].replace("LightHuBERT subnet, ", "")
                        .replace(" of max params", "")) for r in models]
            ax.axhline(scale * mfcc[m], linestyle=":", color="0.4", linewidth=1)
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
