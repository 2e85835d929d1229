"""Frozen parts of a student (issue 21, item 5): a front end whose gradient scale is 0 runs
under `no_grad`, so it must not require grad either, in every recipe, before DDP wraps the
model. DDP with `find_unused_parameters=False` waits for a gradient of every parameter that
requires one and fails at the next step ("Expected to have finished reduction")."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lighthubert import checkpoint
from lighthubert.recipes import RunConfig
from lighthubert.trainer import Trainer

from conftest import CONV, SPACE, TRAIN

TRAINER = {k: v for k, v in TRAIN.items() if k != "target_layers"}
HUBERT = {"method": "hubert", "clusters": 8, "kmeans_frames": 3000, "final_dim": 16, "mask_length": 4,
          "model": {"conv_layers": CONV, "embed_dim": 64, "heads": [2, 2], "ffn_dim": [128, 128], "head_dim": 32,
                    "conv_pos": 16, "conv_pos_groups": 4, "layerdrop": 0.0}}


def _frozen_space(root: Path) -> Path:
    """The tiny LightHuBERT space with its conv front end frozen (`feature_grad_mult: 0`)."""
    path = root / "frozen-space.yaml"
    path.write_text(yaml.safe_dump({**SPACE, "supernet": {**SPACE["supernet"], "feature_grad_mult": 0.0}}))
    return path


def _settings(name: str, setup: Path, scale: float) -> dict:
    """Each recipe's settings with its front-end gradient scale at `scale` (0: frozen)."""
    if name == "hubert":
        return {**TRAINER, **HUBERT, "model": {**HUBERT["model"], "feature_grad_mult": scale}}
    if name == "distilhubert":
        return {**TRAINER, "method": "distilhubert", "distil_targets": [1, 2, 3], "distil_conv_grad_scale": scale}
    space = _frozen_space(setup) if scale == 0 else setup / "space.yaml"
    return {**TRAIN, "method": "lighthubert", "stage": 1, "space": str(space)}


def _trainer(name: str, setup: Path, out: Path, scale: float, **trainer) -> Trainer:
    cfg = RunConfig.from_dict({**_settings(name, setup, scale), **trainer})
    recipe = cfg.build(teacher=None if name == "hubert" else str(setup / "teacher"))
    return Trainer(recipe, cfg.train, str(setup / "train.tsv"), None, str(out))


RECIPES = ["hubert", "lighthubert", "distilhubert"]


@pytest.mark.parametrize("name", RECIPES)
@pytest.mark.parametrize("scale", [0.0, 0.1])
def test_every_trainable_parameter_gets_a_gradient(name, scale, train_setup, tmp_path):
    """What DDP without unused-parameter search needs: after one backward every parameter that
    requires grad has one; at scale 0 exactly the front end is frozen, and the optimiser holds
    only what trains."""
    t = _trainer(name, train_setup, tmp_path, scale)
    batch = t.usable_batch()
    with torch.no_grad():
        target = t.recipe.targets(batch)
    (sub,) = t.recipe.subnets(0)
    t.recipe.loss(t.model, t.student, sub, batch, target, torch.Generator().manual_seed(0)).backward()
    front = {n for n, _ in t.student.named_parameters() if n.startswith("feature_extractor.")}
    trainable = {n for n, p in t.student.named_parameters() if p.requires_grad}
    without = sorted(n for n, p in t.student.named_parameters() if p.requires_grad and p.grad is None)
    assert without == [], without
    assert front and (trainable.isdisjoint(front) if scale == 0 else front <= trainable)
    optimised = {id(p) for group in t.optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in t.student.parameters() if p.requires_grad}


@pytest.mark.parametrize("name", ["distilhubert", "hubert"])
def test_a_frozen_front_end_stays_put_and_resumes(name, train_setup, tmp_path):
    """Two steps leave the frozen front end as it was, and a run resumed after step 1 ends
    bit-identical to an uninterrupted one (the optimiser state fits the trainable tensors)."""
    common = {"max_steps": 2, "save_every": 1, "keep_last": 5, "valid_every": 100}
    straight = _trainer(name, train_setup, tmp_path / "straight", 0.0, **common)
    before = {n: p.detach().clone() for n, p in straight.student.named_parameters() if n.startswith("feature_extractor.")}
    straight.fit()
    assert all(torch.equal(p, before[n]) for n, p in straight.student.named_parameters() if n in before)
    (tmp_path / "resumed").mkdir()
    shutil.copy(tmp_path / "straight" / "step-1.pt", tmp_path / "resumed" / "step-1.pt")
    resumed = _trainer(name, train_setup, tmp_path / "resumed", 0.0, **common)
    assert resumed.resume()
    resumed.fit()
    a, b = (checkpoint.load_model(tmp_path / run / "step-2.pt").state_dict() for run in ("straight", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(v, b[k]) for k, v in a.items())


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_ddp_trains_with_a_frozen_front_end(name, train_setup, tmp_path):
    """Two gloo processes, two steps, no unused-parameter search: a front end run under no_grad
    but requiring grad used to leave the ranks' parameters apart after step 1 (the gradient
    buckets holding it are never reduced; `check_sync_every` catches it) and, unchecked, to
    stop step 2 with "Expected to have finished reduction in the prior iteration"."""
    settings = _settings(name, train_setup, 0.0)
    method = settings.pop("method")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({**settings, "max_steps": 2, "check_sync_every": 1,
                                                       "max_batch_samples": 32000}))
    command = {"hubert": ["pretrain-teacher"], "distilhubert": ["distill", "--method", "distilhubert"],
               "lighthubert": ["distill", "--stage", "1"]}[name]
    teacher = [] if name == "hubert" else ["--teacher", str(train_setup / "teacher")]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "lighthubert", *command, *teacher, "--config", str(tmp_path / "run.yaml"),
                           "--train", str(train_setup / "train.tsv"), "--out", str(tmp_path / "out")],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert done.returncode == 0, [line for line in done.stderr.splitlines() if "error" in line.lower()][:4]
    assert (tmp_path / "out" / "step-2.pt").exists()
