"""benchmarks/compare_recipes.py and compare_finetune.py on a tiny demo of the built-in corpus,
so the scripts behind docs/demo.md's seed tables cannot rot between their real runs."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

import lighthubert
from lighthubert import cli

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = ["--set", "speakers=2", "--set", "takes=5", "--set", "teacher_steps=4", "--set", "stage1_steps=2",
        "--set", "stage2_steps=2", "--set", "population=2", "--set", "generations=1", "--set", "probe_epochs=2",
        "--set", "batch_seconds=3", "--set", "probe_seeds=2", "--set", "phoneme_epochs=2"]


def _run(script: str, monkeypatch, *argv: str) -> None:
    spec = importlib.util.spec_from_file_location(script, BENCHMARKS / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [script, *argv])
    module.main()


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compare") / "demo"
    assert cli.main(["demo", "--out", str(out), *TINY]) == 0
    return out


def _weights(path: Path) -> dict:
    return lighthubert.load(path).state_dict()


@pytest.mark.slow
def test_compare_recipes_pools_training_and_probe_seeds(tiny_demo, tmp_path, monkeypatch, capsys):
    stamps = {p: p.stat().st_mtime_ns for p in tiny_demo.rglob("step-*.pt")}
    out = tmp_path / "cmp"
    _run("compare_recipes", monkeypatch, "--demo", str(tiny_demo), "--out", str(out), "--seeds", "2", "--elastic-steps", "2")
    assert {p: p.stat().st_mtime_ns for p in tiny_demo.rglob("step-*.pt")} == stamps  # seed 0 is the demo's own runs
    report = json.loads((out / "compare.json").read_text())
    kinds = ["DistilHuBERT (2 layers)", "LightHuBERT subnet, DistilHuBERT's params", "LightHuBERT subnet, 1/3 of max params",
             "LightHuBERT elastic-front-end subnet, 1/4 of the teacher's MACs"]
    metrics = ["word acc", "speaker acc", "PER"]
    for kind in kinds:
        runs = [r for r in report["runs"] if r["name"] == kind]
        assert sorted(r["training_seed"] for r in runs) == [0, 1] and all(r["probe_seeds"] == [0, 1] for r in runs)
        for m in metrics:  # one figure over the 2 training x 2 probe seeds, computed here independently
            values = [v for r in runs for v in r["per_seed"][m]]
            mean = sum(values) / 4
            sd = (sum((v - mean) ** 2 for v in values) / 3) ** 0.5
            assert report["figures"][kind][m]["values"] == values
            assert report["figures"][kind][m]["mean"] == pytest.approx(mean)
            assert report["figures"][kind][m]["sd"] == pytest.approx(sd)
    elastic = [r for r in report["runs"] if r["name"] == kinds[3]]
    teacher_macs = next(r for r in json.loads((tiny_demo / "report.json").read_text())["rows"]
                        if r["name"].startswith("teacher"))["macs"]
    assert all(r["macs"] <= teacher_macs / 4 for r in elastic)  # the MAC budget held
    # training seed 1 is another run: its DistilHuBERT starts from other weights and sees other batches
    a = _weights(tiny_demo / "distilhubert" / "step-4.pt")
    b = _weights(out / "seed-1" / "distilhubert" / "step-4.pt")
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert len(report["comparisons"]) == len(metrics) * (1 + len(kinds))  # head-to-head + each kind vs the teacher
    md = (out / "compare.md").read_text()
    assert all(c in md for c in report["comparisons"]) and "2 x 2" in md


@pytest.mark.slow
def test_compare_finetune_scores_every_init_at_every_seed(tiny_demo, tmp_path, monkeypatch):
    out = tmp_path / "ft"
    _run("compare_finetune", monkeypatch, "--demo", str(tiny_demo), "--out", str(out), "--seeds", "2", "--steps", "10")
    report = json.loads((out / "finetune.json").read_text())
    for init, label in (("teacher", "teacher"), ("stage1", "stage 1"), ("random", "random")):
        runs = report["runs"][init]
        assert len(runs) == 2 and all(0 <= r["CER"] <= 1.5 and r["valid_loss"] > 0 for r in runs)
        assert report["figures"][f"fine-tuned from {label}"]["CER"]["values"] == [r["CER"] for r in runs]
    teacher = _weights(tiny_demo / "teacher" / "step-4.pt")
    key = "encoder.layers.0.fc1.weight"
    random0 = _weights(out / "random-seed0" / "step-10.pt")[key]
    random1 = _weights(out / "random-seed1" / "step-10.pt")[key]
    tuned = _weights(out / "teacher-seed0" / "step-10.pt")[key]
    assert not torch.equal(random0, random1)  # each seed its own draw
    assert (tuned - teacher[key]).norm() < (random0 - teacher[key]).norm()  # the pre-trained run starts from the teacher
    assert len(report["figures"]["MFCC probe, all training audio"]["CER"]["values"]) == 2
    # teacher and stage 1 vs random, the better vs the MFCC and the frozen-teacher probes, those two: CER and WER each
    assert len(report["comparisons"]) == 10
