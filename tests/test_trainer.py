"""The trainer and its recipes: settings, schedule, precision, DDP, resume, teachers.

Every test trains on the package's generated corpus (`train_setup`) except the one marked as
real data (FSDD recordings from ../shared). Runs that need separate processes (SIGKILL,
torchrun) are marked slow.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from lighthubert import atomic, checkpoint, formats, safeload
from lighthubert.cli import main
from lighthubert.audio import normalize
from lighthubert.data import AudioDataset, validation_batches
from lighthubert.manifest import read_manifest
from lighthubert.export import save_compact
from lighthubert.losses import layer_average_target, masked_l1, span_mask
from lighthubert.model import HuBERT, ModelConfig, matching_state
from lighthubert.recipes import RunConfig
from lighthubert.space import SearchSpace
from lighthubert.supernet import LightHuBERT
from lighthubert.trainer import TrainConfig, Trainer, learning_rate

from conftest import CONV, SPACE, TRAIN

TRAINER = {k: v for k, v in TRAIN.items() if k != "target_layers"}  # TRAIN's settings of the trainer itself
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lighthubert"]
PRETRAIN = {"model": {"conv_layers": CONV, "embed_dim": 64, "heads": [2, 2], "ffn_dim": [128, 128], "head_dim": 32,
                      "conv_pos": 16, "conv_pos_groups": 4},
            "clusters": 8, "kmeans_frames": 3000, "final_dim": 16, "mask_length": 4}


def run_cli(*argv: object) -> int:
    return main([str(a) for a in argv])


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in _log(run) if r["type"] == "train"]


def fit(setup: Path, out: Path, settings: dict, teacher: bool = True, init: Path | None = None) -> dict:
    """One in-process run through the Python API (RunConfig -> recipe -> Trainer); its summary."""
    cfg = RunConfig.from_dict({**TRAIN, "space": str(setup / "space.yaml"), **settings})
    recipe = cfg.build(teacher=str(setup / "teacher") if teacher else None, init=str(init) if init else None)
    return Trainer(recipe, cfg.train, str(setup / "train.tsv"), str(setup / "valid.tsv"), str(out)).fit()


# -- settings and schedule --------------------------------------------------------------------------
def test_learning_rate_schedules():
    cfg = TrainConfig(max_steps=100, lr=1.0, warmup=0.1, hold=0.4, final_lr_scale=0.01)
    lrs = [learning_rate(cfg, s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(lr == 1.0 for lr in lrs[10:50]) and lrs[99] == pytest.approx(0.01, rel=0.1)
    assert all(a >= b for a, b in zip(lrs[50:], lrs[51:]))
    lin = TrainConfig(max_steps=100, lr=1.0, warmup=0.1, schedule="linear")
    assert learning_rate(lin, 55) == pytest.approx(0.5) and learning_rate(lin, 99) == pytest.approx(1 / 90)


def test_settings_flat_or_sectioned_and_their_errors(tmp_path):
    (tmp_path / "flat.yaml").write_text("lr: 0.1\nbetas: [0.8, 0.9]\nstage: 2\n")
    flat = RunConfig.from_yaml(tmp_path / "flat.yaml", ("max_steps=7", "sampling=sandwich"))
    assert (flat.train.lr, flat.train.betas, flat.train.max_steps, flat.recipe.stage, flat.recipe.sampling) == \
        (0.1, [0.8, 0.9], 7, 2, "sandwich")
    (tmp_path / "sectioned.yaml").write_text(flat.to_yaml())
    assert RunConfig.from_yaml(tmp_path / "sectioned.yaml") == flat  # what config.yaml holds reads back the same
    assert RunConfig.from_yaml(tmp_path / "sectioned.yaml", ("lr=0.5",)).train.lr == 0.5  # overrides find the section
    # each recipe owns its settings and changes the trainer defaults it needs
    distil = RunConfig.from_dict({"method": "distilhubert"})
    assert (distil.train.lr, distil.train.schedule, distil.recipe.distil_targets) == (2e-4, "linear", [4, 8, 12])
    bad = {("lrr=1",): "unknown setting 'lrr' for method lighthubert", ("max_steps=true",): "max_steps must be an int",
           ("lr=",): "setting lr must be a float, got null", ("betas=[0.9]",): "betas must be two numbers",
           ("final_lr_scale=-2",): "final_lr_scale must be in (0, 1]", ("precision=fp8",): "precision must be one of",
           ("method=tinybert",): "method must be one of", ("distil_layers=2",): "unknown setting 'distil_layers'",
           ("loss_on=masked", "mask_prob=0"): "loss_on masked needs masks"}
    for overrides, message in bad.items():
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            RunConfig.from_yaml(None, overrides)
    with pytest.raises(ValueError, match="'lr' is given twice"):
        RunConfig.from_dict({"lr": 0.1, "trainer": {"lr": 0.2}})
    with pytest.raises(ValueError, match="distil_targets must be a non-empty list of teacher layers"):
        RunConfig.from_dict({"method": "distilhubert", "distil_targets": [1.5]})


def test_print_config(capsys):
    assert run_cli("distill", "--print-config", "--stage", "2", "--set", "lr=0.01") == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["method"] == "lighthubert" and printed["recipe"]["stage"] == 2 and printed["trainer"]["lr"] == 0.01
    assert printed["recipe"]["target_layers"] == 8 and "distil_layers" not in printed["recipe"]


def test_targets_masks_and_l1():
    g = torch.Generator().manual_seed(0)
    layers = [torch.randn(2, 50, 8, generator=g) for _ in range(4)]
    target = layer_average_target(layers, top_k=2, instance_norm=False)
    torch.testing.assert_close(target, (layers[2] + layers[3]) / 2)
    normed = layer_average_target(layers, top_k=1, instance_norm=True)
    assert normed.mean(1).abs().max() < 1e-5
    with pytest.raises(ValueError, match="target_layers must be in 1..4"):
        layer_average_target(layers, top_k=5)
    m1 = span_mask(4, 200, 0.65, 10, torch.Generator().manual_seed(3))
    m2 = span_mask(4, 200, 0.65, 10, torch.Generator().manual_seed(3))
    assert torch.equal(m1, m2) and 0.3 < m1.float().mean() < 0.7  # fairseq: ~50% masked at p=0.65
    pred, tgt = torch.zeros(1, 3, 2), torch.tensor([[[1.0, 1.0], [2.0, 2.0], [4.0, 4.0]]])
    assert masked_l1(pred, tgt, torch.tensor([[True, False, True]])).item() == pytest.approx(2.5)
    assert masked_l1(pred, tgt, None).item() == pytest.approx(7 / 3)
    with pytest.raises(ValueError, match="selects no frame"):
        masked_l1(pred, tgt, torch.zeros(1, 3, dtype=torch.bool))


def test_training_batches_are_normalised_per_utterance():
    """Each row of a batch as its own waveform (s3prl's per-utterance layer norm), whatever else
    is in the batch; the training recipes used to normalise whole batches at once."""
    g = torch.Generator().manual_seed(0)
    batch = torch.randn(3, 800, generator=g) * torch.tensor([[0.1], [1.0], [30.0]]) + 2.0
    rows = torch.stack([normalize(row) for row in batch])
    torch.testing.assert_close(normalize(batch), rows)
    torch.testing.assert_close(rows[2], normalize(batch[1:])[1])  # the same row in another batch


def test_validation_counts_each_utterance_once(train_setup):
    """Under DDP every validation utterance is scored by exactly one rank (the training sampler
    repeats batches to even the ranks out; validation must not)."""
    data = AudioDataset(train_setup / "valid.tsv", min_samples=4000)
    for ranks in (1, 2, 3):
        seen = [i for r in range(ranks) for _, b in validation_batches(data, 20000, 16000, 0, ranks, r) for i in b.indices]
        assert sorted(seen) == list(range(len(data))), ranks


# -- teachers -----------------------------------------------------------------------------------
def test_init_from_teacher_copies_only_tensors_of_the_same_meaning():
    base = dict(conv_layers=CONV, embed_dim=64, heads=[2, 2], ffn_dim=[128, 128], head_dim=32, conv_pos=16, conv_pos_groups=4)
    hubert_base_like = HuBERT(ModelConfig(**base, extractor_mode="default", normalize=False))
    student = HuBERT(ModelConfig(**base, extractor_mode="layer_norm", normalize=True))
    copied = matching_state(hubert_base_like, student)
    # block 0's GroupNorm affine shares its key and shape with the LayerNorm: not copied, nor any front-end tensor
    assert student.state_dict()["feature_extractor.conv_layers.0.norm.weight"].shape == \
        hubert_base_like.state_dict()["feature_extractor.conv_layers.0.norm.weight"].shape
    assert not any(k.startswith(("feature_extractor.", "layer_norm.", "post_extract_proj.")) for k in copied)
    assert "encoder.layers.1.fc2.weight" in copied and "encoder.pos_conv.0.weight_v" in copied
    same = HuBERT(ModelConfig(**base, extractor_mode="default", normalize=False))
    heads = {k for k in same.state_dict() if k.startswith("layer_pred_heads.")}
    assert heads and set(matching_state(hubert_base_like, same)) == set(same.state_dict()) - heads  # all but the heads
    raw_input = HuBERT(ModelConfig(**base, extractor_mode="layer_norm", normalize=False))
    assert not any(k.startswith("feature_extractor.") for k in matching_state(raw_input, student))  # other input scale


def test_a_supernet_at_its_subnet_is_a_teacher(train_setup, tmp_path):
    """A stage-2 checkpoint teaches at its active subnet: the student's head predicts that width."""
    space = SearchSpace.from_yaml(train_setup / "space.yaml")
    torch.manual_seed(0)
    supernet = LightHuBERT(space)
    supernet.set_subnet(space.min())  # e32, narrower than the supernet's 64
    atomic.save_file(formats.official.checkpoint(supernet), tmp_path / "supernet.pt")
    cfg = RunConfig.from_dict({**TRAIN, "space": str(train_setup / "space.yaml"), "max_steps": 2, "target_layers": 2})
    recipe = cfg.build(teacher=str(tmp_path / "supernet.pt"))
    assert recipe.teacher.cfg.embed_dim == 32 and recipe.teacher.cfg.depth == 2
    summary = Trainer(recipe, cfg.train, str(train_setup / "train.tsv"), str(train_setup / "valid.tsv"), str(tmp_path / "r")).fit()
    assert summary["step"] == 2 and math.isfinite(summary["valid"]["max"])


def test_a_teacher_with_non_finite_weights_is_refused(train_setup, tmp_path, capsys):
    teacher = checkpoint.load_model(train_setup / "teacher")
    with torch.no_grad():
        teacher.encoder.layers[0].fc1.weight[0, 0] = float("nan")
    save_compact(teacher, teacher.cfg, tmp_path / "nan")
    code = run_cli("distill", "--stage", "1", "--teacher", tmp_path / "nan", "--train", train_setup / "train.tsv",
                   "--out", tmp_path / "run")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "non-finite weights (1 tensors" in err[0]


# -- precision ----------------------------------------------------------------------------------
RECIPE_RUNS = {
    "stage 1": {"stage": 1},
    "stage 2 uniform": {"stage": 2},
    "stage 2 sandwich": {"stage": 2, "sampling": "sandwich", "sandwich_random": 1},
    "distilhubert": {"method": "distilhubert", "distil_layers": 2, "distil_targets": [1, 2, 3]},
    "hubert": {"method": "hubert", **PRETRAIN},
}
# Step 1 scores the same weights in every precision, so its loss against fp32's measures the
# forward pass alone: measured at most 6.1e-4 relative (bf16, fp16 alike; stage 2 sandwich),
# bound 2e-3. What the steps do is judged by the weight change over 3 steps (final minus initial
# trainable parameters, one flat vector) against fp32's over the same steps; an fp16 step the
# scaler skipped (an overflow at its initial scale, as GradScaler intends) is left out of the
# fp32 reference too. Measured (5 recipes x bf16 / fp16): cosine 0.978-0.9998, size 0.997-1.003
# x fp32's, fp16 skipped 0 steps (hubert: 1). Controls, against plain fp32: no update (lr 1e-12)
# cosine 0.02-0.09 and size 1e-11; fp32 with seed 2 cosine -0.01-0.52; fp32 without its first
# step cosine 0.16-0.74, size 0.43-0.71. Bounds: cosine >= 0.9, size within 10%, 1 skipped step.
FIRST_STEP, COSINE, SIZE, FP16_SKIPPED = 2e-3, 0.9, 0.1, 1


@pytest.fixture(scope="module")
def stage1_ckpt(train_setup, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stage1")
    fit(train_setup, out, {"stage": 1, "max_steps": 2})
    return out / "step-2.pt"


def _recipe_update(setup: Path, out: Path, name: str, stage1: Path, skip: frozenset[int] = frozenset(),
                   **trainer) -> torch.Tensor:
    """A 3-step run's weight change: final minus initial trainable parameters, flat, float64. The
    optimiser steps at the 0-based indices in `skip` are left out, as fp16's scaler leaves out a
    step whose gradients overflowed, so that fp32 can be compared over the same updates."""
    settings = dict(RECIPE_RUNS[name])
    method = settings.get("method", "lighthubert")
    if method == "lighthubert":
        settings.update(space=str(setup / "space.yaml"), target_layers=2)
    cfg = RunConfig.from_dict({**TRAINER, "max_steps": 3, "valid_every": 100, "save_every": 100, **settings, **trainer})
    teacher = None if method == "hubert" else str(setup / "teacher")
    recipe = cfg.build(teacher=teacher, init=str(stage1) if settings.get("stage") == 2 else None)
    run = Trainer(recipe, cfg.train, str(setup / "train.tsv"), None, str(out))
    params = [p for p in run.student.parameters() if p.requires_grad]
    start = torch.cat([p.detach().flatten().double() for p in params])
    if skip:
        step = run.optimizer.step
        run.optimizer.step = lambda *a, **k: None if run.step in skip else step(*a, **k)
    run.fit()
    return torch.cat([p.detach().flatten().double() for p in params]) - start


@pytest.mark.parametrize("name", list(RECIPE_RUNS))
def test_every_recipe_trains_in_bf16_and_fp16(name, train_setup, stage1_ckpt, tmp_path):
    """bf16 / fp16 autocast train as fp32 does: the same first loss, then updates of the same
    direction and size, with at most one fp16 step skipped by the scaler. A run that does not
    update (lr 1e-12, no optimiser step) passed the former bound on the loss alone."""
    ref = _recipe_update(train_setup, tmp_path / "fp32", name, stage1_ckpt)
    ref_loss = _losses(tmp_path / "fp32")
    assert len(ref_loss) == 3 and all(math.isfinite(x) for x in ref_loss)
    for precision in ("bf16", "fp16"):
        got = _recipe_update(train_setup, tmp_path / precision, name, stage1_ckpt, precision=precision,
                             cpu_autocast=True)
        log = _log(tmp_path / precision)
        train = [r for r in log if r["type"] == "train"]
        skipped = frozenset(r["step"] - 1 for r in train if r["scaler_overflow"])
        assert log[-1]["non_finite_steps"] == 0  # fp16 overflows, if any, are counted apart
        assert log[-1]["scaler_overflow_steps"] == len(skipped) <= FP16_SKIPPED, (precision, sorted(skipped))
        rel = abs(train[0]["loss"] - ref_loss[0]) / abs(ref_loss[0])
        assert 0 < rel < FIRST_STEP, (precision, rel)  # 0 <: autocast did run
        want = ref if not skipped else _recipe_update(train_setup, tmp_path / f"fp32-{precision}", name, stage1_ckpt,
                                                      skip=skipped)
        cosine = float(got @ want) / max(float(got.norm() * want.norm()), 1e-300)
        size = float(got.norm() / want.norm())
        print(f"{name} {precision}: cosine {cosine:.4f}, size {size:.4f} x fp32's, {len(skipped)} skipped")
        assert cosine >= COSINE and abs(size - 1) <= SIZE, (
            f"{precision} update against fp32's: cosine {cosine:.4f} (>= {COSINE}), size {size:.3g} x (1 +- {SIZE})")


def test_reduced_precision_on_the_cpu_is_opt_in(train_setup, tmp_path, capsys):
    code = run_cli("distill", "--stage", "1", "--teacher", train_setup / "teacher", "--train", train_setup / "train.tsv",
                   "--config", train_setup / "distill.yaml", "--out", tmp_path / "r", "--set", "precision=bf16",
                   "--set", "device=cpu")
    assert code == 2 and "precision bf16 on the CPU needs cpu_autocast: true" in capsys.readouterr().err


def test_fp16_scaler_overflows_are_not_bad_steps(train_setup, tmp_path, monkeypatch):
    """A loss scale far too high overflows the fp16 gradients: the scaler skips those steps and
    lowers the scale; the run reports them as overflows, and trains once the scale fits."""
    real = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled: real(device, init_scale=2.0**25, enabled=enabled))
    summary = fit(train_setup, tmp_path / "r", {"stage": 1, "max_steps": 14, "max_bad_steps": 3, "precision": "fp16",
                                                "cpu_autocast": True, "valid_every": 100, "save_every": 100})
    train = [r for r in _log(tmp_path / "r") if r["type"] == "train"]
    overflows = [r["step"] for r in train if r["scaler_overflow"]]
    assert summary["step"] == 14 and summary["non_finite_steps"] == 0
    assert summary["scaler_overflow_steps"] == len(overflows) >= 3  # more than max_bad_steps, yet the run went on
    assert overflows[:3] == [1, 2, 3] and all(r["finite"] for r in train[-5:])  # the first steps, then it trains


# -- single-process training ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def equal_setup(train_setup, tmp_path_factory) -> Path:
    """8 training and 5 validation utterances of exactly 0.5 s (crops are the whole files, so any
    grouping into batches sees the same audio) and a dropout-free space, for parity tests."""
    root = tmp_path_factory.mktemp("equal")
    corpus = read_manifest(train_setup / "train.tsv")
    files = [corpus.root / rel for rel, n in corpus.entries if n >= 8000]
    for i, f in enumerate(files[:13]):
        sf.write(root / f"u{i}.wav", sf.read(f, dtype="float32")[0][:8000], 16000)
    for name, ids in (("train", range(8)), ("valid", range(8, 13))):
        (root / f"{name}.tsv").write_text("\n".join([str(root)] + [f"u{i}.wav\t8000" for i in ids]) + "\n")
    space = {**SPACE, "supernet": {**SPACE["supernet"], "dropout": 0.0}}
    (root / "space.yaml").write_text(yaml.safe_dump(space))
    (root / "teacher").symlink_to(train_setup / "teacher")
    return root


PARITY = {"mask_prob": 0.0, "loss_on": "all", "min_sample_size": 1000, "lr": 2e-3, "warmup": 0.0, "hold": 1.0,
          "max_steps": 3, "valid_every": 3, "save_every": 3}


def _params(path: Path) -> dict[str, torch.Tensor]:
    return {k: v.double() for k, v in safeload.load_file(path)["model"].items()}


def assert_same_update(a: dict, b: dict, start: dict, margin: float = 1e-4) -> float:
    """|a - b| <= margin * |b - start| (norms over every tensor): two runs that should compute the
    same steps agree far below the size of the steps themselves. Measured 5e-7 for DDP against
    one process (lr 2e-3, 3 steps); a batch normalised as a whole instead of per utterance made
    it 0.1. Returns the measured ratio."""
    diff = math.sqrt(sum(float((a[k] - b[k]).square().sum()) for k in b))
    update = math.sqrt(sum(float((b[k] - start[k]).square().sum()) for k in b))
    assert update > 1e-3, f"the run barely moved ({update:.2e}): the comparison would prove nothing"
    assert diff <= margin * update, f"|a - b| = {diff:.3e} vs update {update:.3e}"
    return diff / update


def test_gradient_accumulation_matches_one_bigger_batch(equal_setup, tmp_path):
    """2 micro-batches of 4 utterances per step == 1 batch of 8 (each step covers all 8)."""
    start = _params(_init_checkpoint(equal_setup, tmp_path))
    fit(equal_setup, tmp_path / "accum", {**PARITY, "accum": 2, "max_batch_samples": 32000}, init=tmp_path / "init.pt")
    fit(equal_setup, tmp_path / "one", {**PARITY, "accum": 1, "max_batch_samples": 64000}, init=tmp_path / "init.pt")
    ratio = assert_same_update(_params(tmp_path / "accum" / "step-3.pt"), _params(tmp_path / "one" / "step-3.pt"), start)
    print(f"accumulation vs one batch: |diff| = {ratio:.2e} x |update|")


def _init_checkpoint(setup: Path, tmp: Path) -> Path:
    """A stage-1-format checkpoint of the (dropout-free) supernet at its initial weights: every
    parity run starts from it (`--init`), so `start` is known exactly."""
    path = tmp / "init.pt"
    if not path.exists():
        space = SearchSpace.from_yaml(setup / "space.yaml")
        teacher = checkpoint.load_model(setup / "teacher")
        torch.manual_seed(0)
        model = LightHuBERT(dataclasses.replace(space, model=dataclasses.replace(space.model, pred_dim=teacher.cfg.embed_dim)))
        model.set_subnet("max")
        atomic.save_file(formats.official.checkpoint(model, stage1=True), path)
    return path


def test_resume_refuses_changed_settings(train_setup, tmp_path, capsys):
    other_space = {**SPACE, "search_space": {**SPACE["search_space"], "embed_dim": [48, 64]}}  # same tensors, other choices
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other_space))
    base = ["distill", "--stage", "1", "--teacher", train_setup / "teacher", "--train", train_setup / "train.tsv",
            "--config", train_setup / "distill.yaml", "--out", tmp_path / "r", "--set", "save_every=1"]
    assert run_cli(*base, "--set", "max_steps=2") == 0
    for change, key in ((f"space={tmp_path / 'other.yaml'}", "space"), ("seed=2", "seed"), ("lr=1e-3", "lr"),
                        ("sampling=sandwich", "sampling"), ("mask_length=3", "mask_length")):
        capsys.readouterr()
        assert run_cli(*base, "--set", "max_steps=3", "--set", change, "--resume") == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"written with other settings ({key}: " in err[0], err
    assert run_cli(*base, "--set", "max_steps=3", "--set", "log_every=2", "--resume") == 0  # allowed changes
    assert [r["step"] for r in _log(tmp_path / "r") if r["type"] == "summary"] == [2, 3]


@pytest.mark.slow
def test_stage1_then_stage2_on_fsdd(fsdd_setup, capsys):
    """Real recordings: both stages learn (the validation loss falls) and write the official format."""
    s1, s2 = fsdd_setup / "s1", fsdd_setup / "s2"
    common = ["--teacher", fsdd_setup / "teacher", "--train", fsdd_setup / "train.tsv", "--valid", fsdd_setup / "valid.tsv",
              "--config", fsdd_setup / "distill.yaml"]
    assert run_cli("distill", "--stage", "1", *common, "--out", s1, "--set", "max_steps=40", "--set", "valid_every=20") == 0
    valid = [r["loss"]["max"] for r in _log(s1) if r["type"] == "valid"]
    assert len(valid) == 2 and valid[1] < valid[0]  # the validation loss falls
    stage1 = s1 / "step-40.pt"
    assert safeload.load_file(stage1)["cfg"]["model"]["_name"] == "student_hubert"

    assert run_cli("distill", "--stage", "2", *common, "--out", s2, "--init", stage1, "--set", "max_steps=20",
                   "--set", "valid_every=1", "--set", "sampling=sandwich", "--set", "sandwich_random=1") == 0
    valids = [r["loss"] for r in _log(s2) if r["type"] == "valid"]
    # step 1 is almost the stage-1 weights: the smallest subnet starts ~0.05 worse than after 20 steps,
    # and the steps-10-to-20 plateau moves it by 2e-4 either way, so only the first point is a baseline
    assert set(valids[-1]) == {"default", "max", "min"} and len(valids) == 20
    assert valids[-1]["min"] < valids[0]["min"] - 0.02 and valids[-1]["default"] < valids[0]["default"]
    trained = [r for r in _log(s2) if r["type"] == "train"]
    assert len(trained) == 20 and all(len(r["subnets"]) == 3 for r in trained)  # max + min + 1 random
    model = checkpoint.load_model(s2 / "step-20.pt")
    assert model.subnet == model.space.default  # a supernet checkpoint opens at its default subnet
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 20 and summary["non_finite_steps"] == 0


def _distill_cmd(setup: Path, out: Path, stage: int, init: Path | None, *extra: str) -> list[str]:
    stage2 = ["--init", str(init), "--set", "sampling=sandwich", "--set", "sandwich_random=1"] if stage == 2 else []
    return ["distill", "--stage", str(stage), "--teacher", str(setup / "teacher"), "--train", str(setup / "train.tsv"),
            "--config", str(setup / "distill.yaml"), "--out", str(out), "--set", "max_steps=10", "--set", "valid_every=100",
            "--set", "save_every=1", "--set", "keep_last=2", "--set", "num_workers=2", *stage2, *extra]


def _processes_writing(out: Path) -> list[int]:
    """Pids whose command line names `out` (torchrun's workers run in sessions of their own)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if str(out).encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _kill_at(cmd: list[str], out: Path, step: int) -> None:
    """Starts `cmd` and SIGKILLs it, and every process it started, once step-`step`.pt exists."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (out / f"step-{step}.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in _processes_writing(out):
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    while _processes_writing(out):
        time.sleep(0.05)
    done = sorted(int(p.stem.split("-")[1]) for p in out.glob("step-*.pt"))
    assert done and done[-1] < 10, "the run was not killed in the middle"


def _assert_logged_once(run: Path) -> None:
    steps = [r["step"] for r in _log(run) if r["type"] == "train"]
    assert steps == list(range(1, 11)), steps  # the steps replayed after the kill are logged once


def _assert_identical(a: Path, b: Path) -> None:
    x, y = safeload.load_file(a)["model"], safeload.load_file(b)["model"]
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), [k for k in x if not torch.equal(x[k], y[k])]


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2])
def test_resume_after_sigkill_is_bit_identical(train_setup, stage1_ckpt, stage, tmp_path):
    """With 2 DataLoader workers, killed mid-epoch: the resumed run ends bit-identical."""
    python = [sys.executable, "-m", "lighthubert"]
    subprocess.run(python + _distill_cmd(train_setup, tmp_path / "full", stage, stage1_ckpt), check=True, env=ENV,
                   capture_output=True)
    _kill_at(python + _distill_cmd(train_setup, tmp_path / "killed", stage, stage1_ckpt), tmp_path / "killed", 4)
    subprocess.run(python + _distill_cmd(train_setup, tmp_path / "killed", stage, stage1_ckpt, "--resume"), check=True,
                   env=ENV, capture_output=True)
    _assert_identical(tmp_path / "full" / "step-10.pt", tmp_path / "killed" / "step-10.pt")
    _assert_logged_once(tmp_path / "killed")


@pytest.mark.slow
def test_bad_files_are_skipped_and_reported(train_setup, tmp_path, capsys):
    good = (train_setup / "train.tsv").read_text().splitlines()
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage" * 100)
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    root = good[0]
    lines = [root] + good[1:9] + [f"{tmp_path / 'corrupt.wav'}\t8000", f"{tmp_path / 'empty.wav'}\t8000",
                                  f"{tmp_path / 'missing.wav'}\t8000"]
    (tmp_path / "bad.tsv").write_text("\n".join(lines) + "\n")
    assert run_cli("distill", "--stage", "1", "--teacher", train_setup / "teacher", "--train", tmp_path / "bad.tsv",
                   "--config", train_setup / "distill.yaml", "--out", tmp_path / "run", "--set", "max_steps=8") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 8
    assert "3" in summary["skipped"] and all(w in summary["skipped"] for w in ("missing", "empty", "unreadable"))


def test_distill_argument_errors(train_setup, tmp_path, capsys):
    code = run_cli("distill", "--stage", "2", "--teacher", train_setup / "teacher", "--train", train_setup / "train.tsv",
                   "--config", train_setup / "distill.yaml", "--out", tmp_path / "r")
    assert code == 2 and "stage 2 starts from a stage-1 checkpoint" in capsys.readouterr().err
    code = run_cli("distill", "--stage", "1", "--teacher", train_setup / "teacher", "--train", train_setup / "train.tsv",
                   "--config", train_setup / "distill.yaml", "--out", tmp_path / "r", "--set", "target_layers=9")
    assert code == 2 and "exceeds the teacher's 3 layers" in capsys.readouterr().err
    assert run_cli("distill", "--stage", "1", "--out", tmp_path / "r") == 2
    assert "distill needs --teacher, --train" in capsys.readouterr().err
    assert run_cli("distill", "--set", "method=hubert", "--print-config") == 2
    assert "run `lighthubert pretrain-teacher`" in capsys.readouterr().err


def test_non_finite_losses_stop_the_run_with_good_weights(train_setup, tmp_path, capsys):
    teacher = checkpoint.load_model(train_setup / "teacher")
    with torch.no_grad():
        teacher.encoder.pos_conv[0].bias[0] = 3e38  # finite weights, but every target overflows to inf / NaN
    save_compact(teacher, teacher.cfg, tmp_path / "overflowing_teacher")
    code = run_cli("distill", "--stage", "1", "--teacher", tmp_path / "overflowing_teacher", "--train", train_setup / "train.tsv",
                   "--config", train_setup / "distill.yaml", "--out", tmp_path / "run", "--set", "max_steps=50",
                   "--set", "max_bad_steps=3", "--set", "init_from_teacher=false")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "3 non-finite steps in a row at step 3" in err[-1] and "--resume" in err[-1]
    saved = safeload.load_file(tmp_path / "run" / "step-3.pt")
    assert all(torch.isfinite(v).all() for v in saved["model"].values())  # skipped steps never touched the weights
    assert saved["trainer"]["bad_steps"] == 3


# -- DDP ----------------------------------------------------------------------------------------
def _torchrun(*argv: object) -> subprocess.CompletedProcess:
    done = subprocess.run(TORCHRUN + [str(a) for a in argv], env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2])
def test_ddp_matches_one_process(equal_setup, stage, tmp_path):
    """2 ranks x 2 utterances x accum 2 against 1 process x 4 utterances x accum 2: every step sees
    all 8 utterances either way, so the updates agree up to float noise. Stage 2 adds sandwich
    sampling over elastic depths (DDP's unused-parameter search under no_sync); validation, with
    an odd number of batches over 2 ranks, must score each utterance once."""
    init = _init_checkpoint(equal_setup, tmp_path)
    start = _params(init)
    settings = [f"--set={k}={v}" for k, v in {**PARITY, "accum": 2, "space": equal_setup / "space.yaml",
                                              "target_layers": 2, "num_workers": 0, "check_sync_every": 1}.items()]
    if stage == 2:
        settings += ["--set=sampling=sandwich", "--set=sandwich_random=2"]
    common = ["distill", "--stage", stage, "--teacher", equal_setup / "teacher", "--train", equal_setup / "train.tsv",
              "--valid", equal_setup / "valid.tsv", "--init", init, *settings]
    _torchrun(*common, "--out", tmp_path / "ddp", "--set", "max_batch_samples=16000")
    assert run_cli(*common, "--out", tmp_path / "one", "--set", "max_batch_samples=32000") == 0
    ratio = assert_same_update(_params(tmp_path / "ddp" / "step-3.pt"), _params(tmp_path / "one" / "step-3.pt"), start)
    print(f"stage {stage}: |theta_ddp - theta_one| = {ratio:.2e} x |theta_one - theta_0|")
    valid = [[r["loss"] for r in _log(tmp_path / run) if r["type"] == "valid"][-1] for run in ("ddp", "one")]
    for name in valid[1]:  # 5 utterances in 3 batches of up to 2: rank 0 holds two batches, rank 1 one
        assert valid[0][name] == pytest.approx(valid[1][name], rel=1e-3), name


@pytest.mark.slow
def test_ddp_layerdrop_and_distilhubert(train_setup, tmp_path):
    """Layerdrop leaves layers out of a step on some ranks (DDP needs find_unused_parameters);
    DistilHuBERT uses every trainable tensor, so it runs without it."""
    common = ["--teacher", train_setup / "teacher", "--train", train_setup / "train.tsv", "--set=max_steps=4",
              "--set=check_sync_every=1", "--set=num_workers=0", "--set=min_sample_size=4000",
              "--set=max_batch_samples=32000", "--set=max_sample_size=16000"]
    _torchrun("distill", "--stage", 1, *common, "--config", train_setup / "distill.yaml", "--set=layerdrop=0.5",
              "--out", tmp_path / "layerdrop")
    assert (tmp_path / "layerdrop" / "step-4.pt").exists()
    _torchrun("distill", "--method", "distilhubert", *common, "--set=distil_targets=[1,2,3]", "--out", tmp_path / "distil")
    assert (tmp_path / "distil" / "step-4.pt").exists()


@pytest.mark.slow
def test_ddp_resume_after_sigkill_is_bit_identical(train_setup, tmp_path):
    """2 ranks with dropout and 2 DataLoader workers each: every rank must resume its own RNG
    state (not rank 0's) and its own place in the epoch."""
    full = TORCHRUN + _distill_cmd(train_setup, tmp_path / "full", 1, None, "--set", "max_batch_samples=32000")
    subprocess.run(full, check=True, env=ENV, capture_output=True)
    killed = TORCHRUN + _distill_cmd(train_setup, tmp_path / "killed", 1, None, "--set", "max_batch_samples=32000")
    _kill_at(killed, tmp_path / "killed", 4)
    subprocess.run(killed + ["--resume"], check=True, env=ENV, capture_output=True)
    _assert_identical(tmp_path / "full" / "step-10.pt", tmp_path / "killed" / "step-10.pt")
    _assert_logged_once(tmp_path / "killed")


def test_stage2_with_an_elastic_front_end(train_setup, stage1_ckpt, tmp_path):
    """A YAML space with conv_dim choices: stage 2 starts from a fixed-front-end stage-1
    checkpoint, sandwich sampling trains the widest and narrowest front ends, and the
    checkpoint keeps the full-width official layout with the choice in its space."""
    space = {**SPACE, "search_space": {**SPACE["search_space"], "conv_dim": [16, 32], "conv_groups": [[0], [1, 2, 3, 4], [5, 6]]}}
    (tmp_path / "fe.yaml").write_text(yaml.safe_dump(space))
    assert run_cli("distill", "--stage", "2", "--teacher", train_setup / "teacher", "--train", train_setup / "train.tsv",
                   "--config", train_setup / "distill.yaml", "--out", tmp_path / "r", "--init", stage1_ckpt,
                   "--set", f"space={tmp_path / 'fe.yaml'}", "--set", "max_steps=2", "--set", "valid_every=100",
                   "--set", "sampling=sandwich", "--set", "sandwich_random=1") == 0
    trained = [r for r in _log(tmp_path / "r") if r["type"] == "train"]
    assert len(trained) == 2 and all(math.isfinite(r["loss"]) for r in trained)
    assert trained[0]["subnets"][0].endswith(" c32") and trained[0]["subnets"][1].endswith(" c16")  # max, min
    ckpt = safeload.load_file(tmp_path / "r" / "step-2.pt")
    assert ckpt["model"]["feature_extractor.conv_layers.1.0.weight"].shape == (32, 32, 3)
    assert ckpt["cfg"]["lighthubert"]["space"]["search_space"]["conv_dim"] == [16, 32]
    model = checkpoint.load_model(tmp_path / "r" / "step-2.pt")
    assert model.space.conv_groups == ((0,), (1, 2, 3, 4), (5, 6)) and model.subnet == model.space.default
