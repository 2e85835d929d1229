"""The demo's pipeline: teacher, stage 1, stage 2, DistilHuBERT, search, probes, report.

Each step leaves its result in the output folder and is skipped when that result is already
there, so running the same command again resumes an interrupted demo.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from .. import checkpoint, probes, search
from ..model import HuBERT
from ..recipes import RunConfig
from ..space import SubnetConfig, count_macs, count_params
from ..supernet import LightHuBERT
from ..trainer import Trainer
from .config import DISTIL, MIN_SAMPLES, TEACHER, DemoConfig, budget_fraction, shape_of, space_of
from .corpora import Tasks, prepare_data, probe_tasks
from .report import comparisons, plot, report_markdown

log = logging.getLogger(__name__)


def train_run(run: Path, teacher: Optional[Path], data: dict[str, Path], settings: dict[str, Any],
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


def finished(folder: Union[str, Path]) -> DemoConfig:
    """The settings of a finished demo run in `folder` (demo.yaml, report.json), for work that
    builds on its runs (benchmarks/compare_*.py); its own teacher, not a user's.

    Raises:
        ValueError: not a finished demo folder, or a demo of a user's teacher.
    """
    folder = Path(folder)
    if not (folder / "demo.yaml").is_file() or not (folder / "report.json").is_file():
        raise ValueError(f"{folder}: not a finished demo folder (no demo.yaml / report.json); run `lighthubert demo` first")
    cfg = DemoConfig(**{**yaml.safe_load((folder / "demo.yaml").read_text()), "out": str(folder)})
    if cfg.teacher:
        raise ValueError(f"{folder}: a demo of a user's teacher; this needs a demo that trained its own")
    return cfg


def trained(cfg: DemoConfig) -> dict[str, Path]:
    """The last checkpoints of a finished demo run's teacher and stage-1 student (`teacher`, `stage1`)."""
    out = Path(cfg.out)
    return {"teacher": out / "teacher" / f"step-{cfg.teacher_steps}.pt",
            "stage1": out / "stage1" / f"step-{cfg.stage1_steps}.pt"}


def stage2_settings(cfg: DemoConfig, space_file: Path) -> dict[str, Any]:
    """LightHuBERT stage 2: sandwich sampling (the max, the min and one random subnet a step)
    over the space in `space_file`, from the stage-1 student."""
    return {**_common(cfg, cfg.stage2_steps), **DISTIL, "stage": 2, "space": str(space_file),
            "sampling": "sandwich", "sandwich_random": 1}


def distilhubert_settings(cfg: DemoConfig, depth: int) -> dict[str, Any]:
    """DistilHuBERT with 2 layers and heads for the teacher's middle, second-last and last
    layers (`depth` of them), trained as many steps as stages 1 and 2 together."""
    return {**_common(cfg, cfg.stage1_steps + cfg.stage2_steps), "method": "distilhubert",
            "distil_layers": 2, "distil_targets": [depth // 2, depth - 1, depth]}


def search_settings(cfg: DemoConfig) -> dict[str, Any]:
    """`SearchConfig` fields that make the search's fitness the demo's stage-2 validation loss."""
    common = _common(cfg, 1)
    return {**DISTIL, **{k: common[k] for k in ("max_batch_samples", "max_sample_size", "min_sample_size", "device")}}


def probe_settings(cfg: DemoConfig) -> probes.ProbeConfig:
    """The probes' settings. Sequence heads: for LibriSpeech the probes' own defaults (a BiLSTM
    CTC head, docs/probes.md); for the built-in corpus's phoneme probe a linear CTC head
    (SUPERB PR's) at 50 Hz, lr 2e-2, batches of 10 s: seconds per model there."""
    common = {"epochs": cfg.probe_epochs, "seed": cfg.seed, "seeds": cfg.probe_seeds, "train_hours": cfg.probe_train_hours}
    if cfg.corpus == "librispeech":
        return probes.ProbeConfig(**common)
    return probes.ProbeConfig(**common, ctc_epochs=cfg.phoneme_epochs, lstm_layers=cfg.phoneme_lstm_layers,
                              lstm_dim=128, downsample=1, ctc_lr=2e-2, ctc_batch_seconds=10.0)


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
    tasks = probe_tasks(cfg, data)
    probes.check_tasks(data["train"], data["test"], tasks)  # bad labels fail here, before any training
    lap("data")

    if cfg.teacher:  # the user's: distilled as it is, never trained here
        teacher_ckpt, teacher_valid, teacher_name = Path(cfg.teacher), {}, f"teacher ({Path(cfg.teacher).name})"
        shape = shape_of(checkpoint.load_teacher(teacher_ckpt).cfg)
    else:
        teacher_ckpt, teacher_valid = train_run(out / "teacher", None, data, {
            **_common(cfg, cfg.teacher_steps), "method": "hubert", "model": TEACHER, "clusters": cfg.teacher_clusters,
            "mask_prob": 0.65, "mask_length": 5, "loss_on": "all"})  # unmasked frames too: keeps speaker detail
        teacher_name, shape = "teacher (HuBERT it. 1)", TEACHER
    lap("teacher")
    space_file = out / "space.yaml"
    space_file.write_text(yaml.safe_dump(space_of(shape), sort_keys=False))
    depth = len(shape["heads"])
    stage1, stage1_valid = train_run(out / "stage1", teacher_ckpt, data, {
        **_common(cfg, cfg.stage1_steps), **DISTIL, "stage": 1, "space": str(space_file)})
    lap("stage 1")
    stage2, stage2_valid = train_run(out / "stage2", teacher_ckpt, data, stage2_settings(cfg, space_file), init=stage1)
    lap("stage 2")
    distilled, distil_valid = train_run(out / "distilhubert", teacher_ckpt, data, distilhubert_settings(cfg, depth))
    lap("distilhubert")

    teacher = checkpoint.load_model(teacher_ckpt)
    supernet = checkpoint.load_model(stage2)
    student = checkpoint.load_model(distilled).without_heads()
    max_params = count_params(supernet.space.model_config(supernet.space.max()))
    rows: list[dict[str, Any]] = [
        {"name": "MFCC (39-dim)", "model": probes.MFCC, "valid_loss": None},
        {"name": teacher_name, "model": teacher, "valid_loss": teacher_valid.get("teacher")},
        {"name": "LightHuBERT stage 1", "model": checkpoint.load_model(stage1).export()[0],
         "valid_loss": stage1_valid.get("max")},
        {"name": "DistilHuBERT (2 layers)", "model": student, "valid_loss": distil_valid.get("student")},
    ]
    searches = []
    for budget in cfg.budgets:
        found, row = search_subnet(supernet, teacher, budget, count_params(student.cfg), cfg, data, out)
        searches.append(found)
        rows.append(row)
    lap("search")

    for row in rows:
        row.update(measure(row.pop("model"), row["name"], cfg, data, tasks, out))
    lap("probes")
    report = {"rows": rows, "metrics": metric_columns(tasks),
              "searches": [{k: v for k, v in s.items() if k != "history"} for s in searches],
              "max_params": max_params, "timings_s": timings, "config": dataclasses.asdict(cfg)}
    report["comparisons"] = comparisons(report)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, searches, out / "report.png")
    (out / "report.md").write_text(report_markdown(report))
    return report


def search_subnet(supernet: LightHuBERT, teacher: HuBERT, budget: Any, student_params: int, cfg: DemoConfig,
                  data: dict[str, Path], out: Path, reference_macs: Optional[int] = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The best subnet of `supernet` within `budget`, searched into out/search/ (resumed when
    there) with `cfg.seed`: (the search's summary, the report row holding the exported subnet
    as `model`). `budget` is a fraction of the max subnet's parameters, or `distilhubert`
    (`student_params`); with `reference_macs`, a fraction of those MACs per second of audio
    instead (the budget an elastic front end serves)."""
    fraction = budget_fraction(budget)
    name = str(budget).replace("/", "_of_")
    if reference_macs is not None:
        if fraction is None:
            raise ValueError("a MAC budget is a fraction of the reference's MACs, not distilhubert")
        limits, label, name = {"max_macs": int(fraction * reference_macs)}, f"{budget} of the teacher's MACs", f"{name}_macs"
    else:
        max_params = count_params(supernet.space.model_config(supernet.space.max()))
        limits = {"max_params": student_params if fraction is None else int(fraction * max_params)}
        label = "DistilHuBERT's params" if fraction is None else f"{budget} of max params"
    result = search.search(supernet, teacher, data["valid"], out / "search" / name,
                           search.SearchConfig(population=cfg.population, generations=cfg.generations, seed=cfg.seed,
                                               **limits, **search_settings(cfg)),
                           resume=True, progress=True)
    supernet.set_subnet(result.best)
    found = {"budget": label, **limits, "history": result.history, "best": result.best.describe()}
    return found, {"name": f"LightHuBERT subnet, {label}", "model": supernet.export()[0], "valid_loss": result.best_loss,
                   "subnet": result.best.describe()}


def metric_columns(tasks: Tasks) -> list[str]:
    """The report's probe columns, in order: each classification probe's `NAME acc`, then the
    error rates (`PER`, `CER`, `WER`) of the sequence probes that ran."""
    kinds = {name: t.kind if isinstance(t, probes.ProbeTask) else "utterance-classification" for name, t in tasks.items()}
    cols = [f"{name} acc" for name, kind in kinds.items() if kind in ("utterance-classification", "speaker-id")]
    cols += ["PER"] if "phoneme" in kinds.values() else []
    return cols + (["CER", "WER"] if "asr" in kinds.values() else [])


def counts(model: HuBERT) -> dict[str, Any]:
    """Shape, parameters (the official rule, as `info` and `teacher-info` count) and MACs of a row."""
    return {"shape": SubnetConfig.of(model.cfg).describe(), "params": count_params(model.cfg), "macs": count_macs(model.cfg)}


def measure(model: Union[HuBERT, str], name: str, cfg: DemoConfig, data: dict[str, Path], tasks: Tasks,
             out: Path) -> dict[str, Any]:
    """Shape, params and MACs (counted, every run) and CPU latency and probe results (measured,
    cached in out/probes/) of one row. Each probe column holds the mean over the head seeds;
    `sd` its sample sd (None for one seed) and `per_seed` every seed's figure, in `probe_seeds` order."""
    row = counts(model) if isinstance(model, HuBERT) else {}
    cache = out / "probes" / (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + ".json")
    if cache.is_file():
        measured = json.loads(cache.read_text())
        return {**row, **{k: v for k, v in measured.items() if k not in row}}
    started = time.perf_counter()
    results = probes.probe_tasks(model, data["train"], data["test"], tasks, probe_settings(cfg), progress=True)
    measured: dict[str, Any] = {"probe_seconds": round(time.perf_counter() - started, 1),
                                "probe_seeds": next(iter(results.values())).seeds, "sd": {}, "per_seed": {}}
    for task, result in results.items():
        for metric, spread in result.metrics.items():
            column = f"{task} acc" if metric == "accuracy" else metric.upper()
            measured[column] = spread.mean
            measured["sd"][column] = spread.sd
            measured["per_seed"][column] = list(spread.values)
    if isinstance(model, HuBERT):
        measured["latency_ms"] = search.measure_latency(model.eval(), runs=5, seconds=1.0)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(measured))
    return {**row, **measured}
