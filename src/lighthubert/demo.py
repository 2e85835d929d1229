"""`lighthubert demo`: the whole pipeline on one CPU machine, from audio to a report.

Data -> pre-train a small teacher (HuBERT iteration 1) -> LightHuBERT stage 1 -> stage 2 ->
subnet search at three parameter budgets -> DistilHuBERT with the same steps and audio ->
word and speaker probes of every model, the teacher and MFCCs -> `report.md`, `report.json`,
`report.png`. Each step leaves its result in the output folder and is skipped when that
result is already there, so running the same command again resumes an interrupted demo.

With no data the corpus is generated (`corpus.py`). With `--data`, any folder of audio whose
file names carry the labels (regular expressions on the stem, or CSV files) works, e.g. the
Free Spoken Digit Dataset with `--labels word='^(\\d)_' --labels speaker='^\\d_(\\w+)_'`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from . import checkpoint, corpus, probes, search, transcripts
from .data import manifest_line
from .model import HuBERT
from .recipes import RunConfig
from .space import SubnetConfig, count_macs, count_params, format_count, format_table
from .trainer import Trainer

log = logging.getLogger(__name__)

# A 4-layer, 192-wide teacher on HuBERT's front end with 64 channels: about 1.9 M parameters.
# 64 channels train 1.7x faster than 128 and probed as well on FSDD (docs/demo.md).
CONV = [[64, 10, 5]] + [[64, 3, 2]] * 4 + [[64, 2, 2]] * 2
TEACHER = {"conv_layers": CONV, "embed_dim": 192, "heads": [3] * 4, "ffn_dim": [768] * 4, "conv_pos": 32,
           "layerdrop": 0.0, "dropout_input": 0.0, "feature_grad_mult": 1.0}
# The supernet has the teacher's shape (stage 1 starts from the teacher's weights); 3 x 3^4 x 3^4 x 3 subnets.
SPACE = {
    "supernet": {**{k: v for k, v in TEACHER.items() if k not in ("layerdrop", "dropout_input")},
                 "extractor_mode": "default", "normalize": False},
    "search_space": {"embed_dim": [96, 144, 192], "heads": [1, 2, 3], "ffn_ratio": [2.0, 3.0, 4.0], "depth": [2, 3, 4]},
    "default": {"embed_dim": 144, "heads": [2] * 4, "ffn_dim": [432] * 4},
}
AUDIO_EXTENSIONS = ("wav", "flac", "ogg")  # what --data folders are searched for
PHONEME = "phoneme"  # the phoneme probe's key in report rows: its PER on the test split
MIN_SAMPLES = 4000  # 0.25 s: shorter utterances give too few frames for span masks
# LightHuBERT distillation in the demo: the mean of the teacher's last 3 layers, spans of 5 frames.
DISTIL = {"mask_prob": 0.65, "mask_length": 5, "target_layers": len(TEACHER["heads"]) - 1}
BUILT_IN_LABELS = {"word": r"^([a-z]+)_", "speaker": r"^[a-z]+_([a-z]+)_"}


@dataclass
class DemoConfig:
    """Settings of the demo; the defaults finish within 10 minutes on 2 CPU cores."""

    out: str = "lighthubert-demo"  # output folder
    data: Optional[str] = None  # audio folder (searched recursively); None: the built-in corpus
    speakers: int = 6  # built-in corpus: speakers (10 words each)
    takes: int = 20  # built-in corpus: takes of each word by each speaker (a fifth test, a tenth valid)
    labels: dict = field(default_factory=lambda: dict(BUILT_IN_LABELS))  # probe name -> regex on the stem or CSV file
    test_regex: Optional[str] = None  # --data: stems matching it are the test set (default: a seeded 20%)
    valid_fraction: float = 0.1  # --data: share of the non-test files held out for validation and search
    teacher_steps: int = 800  # HuBERT iteration-1 pre-training steps
    stage1_steps: int = 150  # LightHuBERT stage 1 (the DistilHuBERT student gets stage 1 + stage 2)
    stage2_steps: int = 150  # LightHuBERT stage 2 (sandwich: the max, the min and one random subnet each step)
    lr: float = 1e-3  # peak learning rate of every training run
    batch_seconds: float = 10.0  # audio per training batch
    crop_seconds: float = 2.0  # longest crop of one utterance
    budgets: list = field(default_factory=lambda: ["1/3", "distilhubert", "2/3"])  # parameter budgets: fractions of the max subnet, or distilhubert (its student's count)
    population: int = 8  # search: candidates per generation
    generations: int = 4  # search: generations
    probe_epochs: int = 30  # probe head epochs
    phoneme_epochs: int = 10  # phoneme probe (CTC) epochs; it runs when the manifests have .phn label files
    phoneme_lstm_layers: int = 0  # phoneme probe: BiLSTM layers of 128; 0 = a linear CTC head (SUPERB's PR)
    seed: int = 0  # corpus, splits, training, search and probes

    def __post_init__(self) -> None:
        if not self.labels:
            raise ValueError("labels: give at least one probe, name=regex or name=CSV file")
        for name in ("teacher_steps", "stage1_steps", "stage2_steps", "population", "generations", "probe_epochs",
                     "phoneme_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.valid_fraction < 1:
            raise ValueError(f"valid_fraction must be in (0, 1), got {self.valid_fraction}")
        for b in self.budgets:
            _budget_fraction(b)


def _budget_fraction(budget: Any) -> Optional[float]:
    """A budget as a fraction of the max subnet's parameters; None for `distilhubert`."""
    if budget == "distilhubert":
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*(?:/\s*(\d+))?\s*", str(budget))
    value = float(m.group(1)) / float(m.group(2) or 1) if m and float(m.group(2) or 1) else None
    if value is None or not 0 < value <= 1:
        raise ValueError(f"budget {budget!r}: give a fraction of the max subnet's parameters in (0, 1] "
                         "such as 1/3 or 0.5, or distilhubert")
    return value


# -- data ----------------------------------------------------------------------------------------
def prepare_data(cfg: DemoConfig, out: Path) -> dict[str, Path]:
    """train / valid / test manifests: the built-in corpus, or a split of `cfg.data`."""
    if cfg.data is None:
        c = corpus.write_corpus(out / "corpus", cfg.speakers, cfg.takes, seed=cfg.seed, progress=True)
        return {"train": c.train, "valid": c.valid, "test": c.test}
    root = Path(cfg.data).resolve()
    if not root.is_dir():
        raise ValueError(f"--data {cfg.data}: not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower().lstrip(".") in AUDIO_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(f"--data {cfg.data}: no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    rng = random.Random(cfg.seed)
    if cfg.test_regex:
        test = [p for p in files if re.search(cfg.test_regex, p.stem)]
        if not test or len(test) == len(files):
            raise ValueError(f"--test-regex {cfg.test_regex!r} matches {len(test)} of {len(files)} files; it must "
                             "select some files but not all")
    else:
        test = rng.sample(files, max(1, len(files) // 5))
    rest = [p for p in files if p not in set(test)]
    valid = rng.sample(rest, max(1, round(len(rest) * cfg.valid_fraction)))
    splits = {"train": [p for p in rest if p not in set(valid)], "valid": sorted(valid), "test": sorted(test)}
    paths = {}
    for name, chosen in splits.items():
        paths[name] = out / "data" / f"{name}.tsv"
        paths[name].parent.mkdir(parents=True, exist_ok=True)
        lines = [str(root)] + [line for p in chosen if (line := manifest_line(root, p.relative_to(root).as_posix()))]
        paths[name].write_text("\n".join(lines) + "\n")
    log.info("data: %s", ", ".join(f"{k} {len(v)} files" for k, v in splits.items()))
    return paths


# -- training ------------------------------------------------------------------------------------
def _train(run: Path, teacher: Optional[Path], data: dict[str, Path], settings: dict[str, Any],
           init: Optional[Path] = None) -> tuple[Path, dict[str, float]]:
    """One Trainer run into `run`, or its finished result: (last checkpoint, validation losses)."""
    cfg = RunConfig.from_dict(settings)
    done = run / f"step-{cfg.train.max_steps}.pt"
    summary = run / "summary.json"
    if done.is_file() and summary.is_file():
        log.info("%s: done already", run)
        return done, json.loads(summary.read_text())["valid"]
    recipe = cfg.build(teacher=str(teacher) if teacher else None, init=str(init) if init else None)
    trainer = Trainer(recipe, cfg.train, str(data["train"]), str(data["valid"]), str(run))
    trainer.resume()
    result = trainer.fit()
    summary.write_text(json.dumps(result))
    return done, result["valid"]


def _common(cfg: DemoConfig, steps: int) -> dict[str, Any]:
    """Training settings shared by every run of the demo."""
    return {"max_steps": steps, "lr": cfg.lr, "warmup": 0.1, "schedule": "linear", "hold": 0.0, "seed": cfg.seed,
            "max_batch_samples": int(cfg.batch_seconds * 16000), "max_sample_size": int(cfg.crop_seconds * 16000),
            "min_sample_size": MIN_SAMPLES, "num_workers": 0, "log_every": 10, "valid_every": steps,
            "save_every": steps, "keep_last": 1, "device": "cpu"}


def search_settings(cfg: DemoConfig) -> dict[str, Any]:
    """`SearchConfig` fields that make the search's fitness the demo's stage-2 validation loss."""
    common = _common(cfg, 1)
    return {**DISTIL, **{k: common[k] for k in ("max_batch_samples", "max_sample_size", "min_sample_size", "device")}}


# -- the demo ------------------------------------------------------------------------------------
def run(cfg: DemoConfig) -> dict[str, Any]:
    """Runs (or resumes) the demo; returns the report as a dict and writes report.md / .json / .png."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = dataclasses.asdict(cfg)
    saved = out / "demo.yaml"
    if saved.is_file():  # resuming: every cached step must come from these settings
        before = yaml.safe_load(saved.read_text()) or {}
        changed = sorted(k for k in settings if k != "out" and before.get(k) != settings[k])
        if changed:
            raise ValueError(f"{out} holds a demo run with other settings ({', '.join(changed)}); "
                             "use another --out, or delete the folder to start again")
    saved.write_text(yaml.safe_dump(settings, sort_keys=False))
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 1)
        clock = now

    data = prepare_data(cfg, out)
    probes.check_tasks(data["train"], data["test"], probe_tasks(cfg, data))  # bad labels fail here, before any training
    lap("data")

    teacher_ckpt, teacher_valid = _train(out / "teacher", None, data, {
        **_common(cfg, cfg.teacher_steps), "method": "hubert", "model": TEACHER, "clusters": 50,
        "mask_prob": 0.65, "mask_length": 5, "loss_on": "all"})  # unmasked frames too: keeps speaker detail
    lap("teacher")
    space_file = out / "space.yaml"
    space_file.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    depth = len(TEACHER["heads"])
    stage1, stage1_valid = _train(out / "stage1", teacher_ckpt, data, {
        **_common(cfg, cfg.stage1_steps), **DISTIL, "stage": 1, "space": str(space_file)})
    lap("stage 1")
    stage2, stage2_valid = _train(out / "stage2", teacher_ckpt, data, {
        **_common(cfg, cfg.stage2_steps), **DISTIL, "stage": 2, "space": str(space_file),
        "sampling": "sandwich", "sandwich_random": 1}, init=stage1)
    lap("stage 2")
    distilled, distil_valid = _train(out / "distilhubert", teacher_ckpt, data, {
        **_common(cfg, cfg.stage1_steps + cfg.stage2_steps), "method": "distilhubert",
        "distil_layers": 2, "distil_targets": [depth // 2, depth - 1, depth]})
    lap("distilhubert")

    teacher = checkpoint.load_model(teacher_ckpt)
    supernet = checkpoint.load_model(stage2)
    student = checkpoint.load_model(distilled).without_heads()
    max_params = count_params(supernet.space.model_config(supernet.space.max()))
    rows: list[dict[str, Any]] = [
        {"name": "MFCC (39-dim)", "model": probes.MFCC, "valid_loss": None},
        {"name": "teacher (HuBERT it. 1)", "model": teacher, "valid_loss": teacher_valid.get("teacher")},
        {"name": "LightHuBERT stage 1", "model": checkpoint.load_model(stage1).export()[0],
         "valid_loss": stage1_valid.get("max")},
        {"name": "DistilHuBERT (2 layers)", "model": student, "valid_loss": distil_valid.get("student")},
    ]
    searches = []
    for budget in cfg.budgets:
        fraction = _budget_fraction(budget)
        limit = count_params(student.cfg) if fraction is None else int(fraction * max_params)
        label = "DistilHuBERT's params" if fraction is None else f"{budget} of max params"
        result = search.search(supernet, teacher, data["valid"], out / "search" / str(budget).replace("/", "_of_"),
                               search.SearchConfig(population=cfg.population, generations=cfg.generations, seed=cfg.seed,
                                                   max_params=limit, **search_settings(cfg)),
                               resume=True, progress=True)
        supernet.set_subnet(result.best)
        searches.append({"budget": label, "max_params": limit, "history": result.history, "best": result.best.describe()})
        rows.append({"name": f"LightHuBERT subnet, {label}", "model": supernet.export()[0], "valid_loss": result.best_loss,
                     "subnet": result.best.describe()})
    lap("search")

    for row in rows:
        row.update(_measure(row.pop("model"), row["name"], cfg, data, out))
    lap("probes")
    report = {"rows": rows, "searches": [{k: v for k, v in s.items() if k != "history"} for s in searches],
              "max_params": max_params, "timings_s": timings, "config": dataclasses.asdict(cfg)}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot(rows, searches, max_params, list(cfg.labels), out / "report.png")
    (out / "report.md").write_text(report_markdown(report))
    return report


def counts(model: HuBERT) -> dict[str, Any]:
    """Shape, parameters (the official rule, as `info` and `teacher-info` count) and MACs of a row."""
    return {"shape": SubnetConfig.of(model.cfg).describe(), "params": count_params(model.cfg), "macs": count_macs(model.cfg)}


def _measure(model: Union[HuBERT, str], name: str, cfg: DemoConfig, data: dict[str, Path], out: Path) -> dict[str, Any]:
    """Shape, params and MACs (counted, every run) and CPU latency and probe accuracies
    (measured, cached in out/probes/) of one row."""
    row = counts(model) if isinstance(model, HuBERT) else {}
    cache = out / "probes" / (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + ".json")
    if cache.is_file():
        measured = json.loads(cache.read_text())
        return {**row, **{k: v for k, v in measured.items() if k not in row}}
    results = probes.probe_tasks(model, data["train"], data["test"], probe_tasks(cfg, data), probe_settings(cfg),
                                 progress=True)
    measured: dict[str, Any] = {name_: r.metrics["accuracy" if name_ != PHONEME else "per"] for name_, r in results.items()}
    if isinstance(model, HuBERT):
        measured["latency_ms"] = search.measure_latency(model.eval(), runs=5, seconds=1.0)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(measured))
    return {**row, **measured}


def probe_settings(cfg: DemoConfig) -> probes.ProbeConfig:
    """The demo's probe settings: the classification defaults, and for the phoneme probe a
    linear CTC head (SUPERB PR's) at 50 Hz, lr 2e-2, batches of 10 s: seconds per model here."""
    return probes.ProbeConfig(epochs=cfg.probe_epochs, seed=cfg.seed, ctc_epochs=cfg.phoneme_epochs,
                              lstm_layers=cfg.phoneme_lstm_layers, lstm_dim=128, downsample=1, ctc_lr=2e-2,
                              ctc_batch_seconds=10.0)


def probe_tasks(cfg: DemoConfig, data: dict[str, Path]) -> dict[str, Union[str, probes.ProbeTask]]:
    """The demo's probes: one per label set, and the phoneme probe where the train and test
    manifests have `.phn` label files (the built-in corpus writes them)."""
    tasks: dict[str, Union[str, probes.ProbeTask]] = dict(cfg.labels)
    if all(transcripts.label_path(data[split], "phn").is_file() for split in ("train", "test")):
        tasks[PHONEME] = probes.ProbeTask("phoneme")
    return tasks


# -- the report ----------------------------------------------------------------------------------
def _table(report: dict[str, Any], retention: bool) -> tuple[list[str], list[list[str]]]:
    """(columns, cells) of the results table; `retention`: add each probe relative to the teacher."""
    rows, tasks = report["rows"], list(report["config"]["labels"])
    teacher = next(r for r in rows if r["name"].startswith("teacher"))
    per = PHONEME in teacher
    cols = ["model", "shape", "params", "MACs / 1 s", "CPU ms / 1 s", "valid loss"] + [f"{t} acc" for t in tasks]
    cols += ["PER"] if per else []
    cols += ([f"{t} vs teacher" for t in tasks] + (["PER vs teacher"] if per else [])) if retention else []
    cells = []
    for r in rows:
        line = [r["name"], r.get("shape", "-"), f"{r['params']:,}" if "params" in r else "-",
                format_count(r["macs"]) if "macs" in r else "-",
                f"{r['latency_ms']:.1f}" if "latency_ms" in r else "-",
                f"{r['valid_loss']:.4f}" if r.get("valid_loss") is not None else "-"]
        line += [f"{r[t]:.3f}" for t in tasks] + ([f"{100 * r[PHONEME]:.1f}%"] if per else [])
        if retention:
            line += [f"{100 * r[t] / teacher[t]:.1f}%" if teacher[t] else "-" for t in tasks]
            line += [f"{100 * r[PHONEME] / teacher[PHONEME]:.1f}%" if teacher[PHONEME] else "-"] if per else []
        cells.append(line)
    return cols, cells


def report_text(report: dict[str, Any]) -> str:
    """What the terminal shows: the table as aligned plain text (the rest is in report.md)."""
    return format_table(*_table(report, retention=False))


def report_markdown(report: dict[str, Any]) -> str:
    """The Markdown report: the table, retention against the teacher, the plot, the settings."""
    cfg = report["config"]
    tasks = list(cfg["labels"])
    cols, cells = _table(report, retention=True)
    per = any(PHONEME in r for r in report["rows"])
    md = ["# lighthubert demo report", "",
          f"Data: {cfg['data'] or 'the built-in generated corpus'}; probes: "
          + ", ".join(f"{t} (`{cfg['labels'][t]}`)" for t in tasks) + ".", "",
          "| " + " | ".join(cols) + " |", "|" + "|".join("---" if i < 2 else "--:" for i in range(len(cols))) + "|"]
    md += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in cells]
    md += ["",
           "- params: the official count (`calc_sampled_param_num`, as `lighthubert info` and `teacher-info` count: "
           "conv front end, projections, positional conv, layers, mask_emb at the supernet's width; no prediction head).",
           "- MACs: one 1-second utterance; CPU ms: median of 5 forward passes over 1 s of audio on this machine "
           "(measured, not predicted).",
           "- valid loss: each model's own training objective on the validation split, so compare within a kind: "
           "teacher = unit cross entropy (every frame, masked or not); LightHuBERT = L1 to the mean of the teacher's last layers on masked "
           "frames (stage 1 at the max subnet, the subnets as the search scored them); DistilHuBERT = L1 + cosine "
           "of its heads.",
           "- accuracy: SUPERB-style probe on frozen features (learned layer weights, mean pooling, MLP head), test split.",
           *(["- PER: phoneme error rate of a CTC probe on frozen features (learned layer weights, "
              + (f"{cfg['phoneme_lstm_layers']} BiLSTM layer(s) of 128" if cfg["phoneme_lstm_layers"] else "a linear head")
              + f", {cfg['phoneme_epochs']} epochs, greedy decoding), test split; lower is better. PER vs teacher: "
              "the model's PER over the teacher's (above 100% is worse)."] if per else []),
           "", "![results](report.png)", "",
           "Searches (evolution, " + f"{cfg['population']} x {cfg['generations']} evaluations each):", ""]
    md += [f"- {s['budget']} (at most {s['max_params']:,} parameters): {s['best']}" for s in report["searches"]]
    md += ["", "Time per step in this run (s; 0 for a step reused from an earlier run): "
           + ", ".join(f"{k} {v}" for k, v in report["timings_s"].items()), ""]
    return "\n".join(md)


def _plot(rows: list[dict], searches: list[dict], max_params: int, tasks: list[str], path: Path) -> None:
    """Left: every evaluated subnet (params vs validation loss), the Pareto fronts and the budgets.
    Middle: probe accuracy against parameters for every model, MFCC as a line. Right, when the
    phoneme probe ran: PER against parameters, MFCC as a line."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    per = all(PHONEME in r for r in rows)
    fig, axes = plt.subplots(1, 3 if per else 2, figsize=(17.5 if per else 12, 4.6), dpi=110)
    left, right = axes[0], axes[1]
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
    markers = ["o", "s", "^", "D"]
    models = [r for r in rows if "params" in r]
    mfcc = next(r for r in rows if "params" not in r)
    points = []  # (params M, accuracy, label) of every model and task, labelled together below
    for t, marker in zip(tasks, markers):
        right.scatter([r["params"] / 1e6 for r in models], [r[t] for r in models], marker=marker, s=40, label=t)
        points += [(r["params"] / 1e6, r[t], r["name"].replace("LightHuBERT subnet, ", "").replace(" of max params", ""))
                   for r in models]
        right.axhline(mfcc[t], linestyle=":", color="0.4", linewidth=1)
        right.annotate(f"MFCC {t}", (0, mfcc[t]), xycoords=("axes fraction", "data"), fontsize=7, color="0.3",
                       xytext=(3, -9), textcoords="offset points")
    accuracies = [y for _, y, _ in points] + [mfcc[t] for t in tasks]
    near_x, near_y = 0.12 * max_params / 1e6, 0.03 * (max(accuracies) - min(accuracies) or 1)
    for i, (x, y, label) in enumerate(points):  # a label that would overprint an earlier one goes below it
        below = sum(abs(x - px) < near_x and abs(y - py) < near_y for px, py, _ in points[:i])
        right.annotate(label, (x, y), fontsize=6, xytext=(3, 3 - 8 * below), textcoords="offset points")
    right.axvline(max_params / 1e6, color="0.6", linewidth=0.8)
    right.set_xlabel("parameters (M)")
    right.set_ylabel("probe accuracy (test)")
    right.set_title("frozen-feature probes")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    if per:
        ax = axes[2]
        ax.scatter([r["params"] / 1e6 for r in models], [100 * r[PHONEME] for r in models], marker="o", s=40, color="C3")
        for r in models:
            label = r["name"].replace("LightHuBERT subnet, ", "").replace(" of max params", "")
            ax.annotate(label, (r["params"] / 1e6, 100 * r[PHONEME]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.axhline(100 * mfcc[PHONEME], linestyle=":", color="0.4", linewidth=1)
        ax.annotate("MFCC", (0, 100 * mfcc[PHONEME]), xycoords=("axes fraction", "data"), fontsize=7, color="0.3",
                    xytext=(3, 3), textcoords="offset points")
        ax.axvline(max_params / 1e6, color="0.6", linewidth=0.8)
        ax.set_xlabel("parameters (M)")
        ax.set_ylabel("phoneme error rate, % (test; lower is better)")
        ax.set_title("phoneme probe (CTC)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
