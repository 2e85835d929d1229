"""Distillation training: schedule, config, both stages end to end on FSDD, resume after
SIGKILL, torchrun with two CPU processes, and bad files in the manifest."""

from __future__ import annotations

import json
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

from lighthubert import checkpoint
from lighthubert.cli import main
from lighthubert.losses import layer_average_target, masked_l1, span_mask
from lighthubert.trainer import DistillConfig, learning_rate

from conftest import FSDD, SPACE


def run_cli(*argv: str) -> int:
    return main([str(a) for a in argv])


def test_learning_rate_schedules():
    cfg = DistillConfig(max_steps=100, lr=1.0, warmup=0.1, hold=0.4, final_lr_scale=0.01)
    lrs = [learning_rate(cfg, s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(lr == 1.0 for lr in lrs[10:50]) and lrs[99] == pytest.approx(0.01, rel=0.1)
    assert all(a >= b for a, b in zip(lrs[50:], lrs[51:]))
    lin = DistillConfig(max_steps=100, lr=1.0, warmup=0.1, schedule="linear")
    assert learning_rate(lin, 55) == pytest.approx(0.5) and learning_rate(lin, 99) == pytest.approx(1 / 90)


def test_config_errors_and_overrides(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['lrr'\]"):
        DistillConfig.from_yaml(None, ("lrr=1",))
    with pytest.raises(ValueError, match="precision must be one of"):
        DistillConfig(precision="fp8")
    (tmp_path / "c.yaml").write_text("lr: 0.1\nbetas: [0.8, 0.9]\n")
    cfg = DistillConfig.from_yaml(str(tmp_path / "c.yaml"), ("max_steps=7", "sampling=sandwich"))
    assert (cfg.lr, cfg.betas, cfg.max_steps, cfg.sampling) == (0.1, [0.8, 0.9], 7, "sandwich")
    assert DistillConfig.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg


def test_print_config(capsys):
    assert run_cli("distill", "--print-config", "--stage", "2", "--set", "lr=0.01") == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["stage"] == 2 and printed["lr"] == 0.01 and printed["target_layers"] == 8


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


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_stage1_then_stage2_on_fsdd(train_setup, capsys):
    s1, s2 = train_setup / "s1", train_setup / "s2"
    common = ["--teacher", train_setup / "teacher", "--train", train_setup / "train.tsv", "--valid", train_setup / "valid.tsv",
              "--config", train_setup / "distill.yaml"]
    assert run_cli("distill", "--stage", "1", *common, "--out", s1, "--set", "max_steps=40", "--set", "valid_every=20") == 0
    valid = [r["loss"]["max"] for r in _log(s1) if r["type"] == "valid"]
    assert len(valid) == 2 and valid[1] < valid[0]  # the validation loss falls
    stage1 = s1 / "step-40.pt"
    assert checkpoint.load_file(stage1)["cfg"]["model"]["_name"] == "student_hubert"

    assert run_cli("distill", "--stage", "2", *common, "--out", s2, "--init", stage1, "--set", "max_steps=20",
                   "--set", "valid_every=20", "--set", "sampling=sandwich", "--set", "sandwich_random=1") == 0
    last = [r for r in _log(s2) if r["type"] == "valid"][-1]["loss"]
    assert set(last) == {"default", "max", "min"}
    assert all(np.isfinite(v) for v in last.values()) and len(set(last.values())) == 3
    trained = [r for r in _log(s2) if r["type"] == "train"]
    assert len(trained) == 20 and all(len(r["subnets"]) == 3 for r in trained)  # max + min + 1 random
    model = checkpoint.load_model(s2 / "step-20.pt")
    assert model.subnet == model.space.default  # a supernet checkpoint opens at its default subnet
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 20 and summary["non_finite_steps"] == 0


def _distill_cmd(train_setup, out, *extra):
    return [sys.executable, "-m", "lighthubert", "distill", "--stage", "1", "--teacher", str(train_setup / "teacher"),
            "--train", str(train_setup / "train.tsv"), "--config", str(train_setup / "distill.yaml"), "--out", str(out),
            "--set", "max_steps=12", "--set", "valid_every=100", "--set", "save_every=1", "--set", "keep_last=2",
            *extra]


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(train_setup, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_distill_cmd(train_setup, tmp_path / "full"), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(_distill_cmd(train_setup, tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (tmp_path / "killed" / "step-5.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(int(p.stem.split("-")[1]) for p in (tmp_path / "killed").glob("step-*.pt"))
    assert done and done[-1] < 12, "the run was not killed in the middle"
    subprocess.run(_distill_cmd(train_setup, tmp_path / "killed", "--resume"), check=True, env=env, capture_output=True)
    a = checkpoint.load_file(tmp_path / "full" / "step-12.pt")["model"]
    b = checkpoint.load_file(tmp_path / "killed" / "step-12.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


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


@pytest.mark.slow
def test_torchrun_two_cpu_processes(train_setup, tmp_path):
    """Both stages under torchrun (gloo); ranks stay identical (checked every step inside the
    run), and 3 steps match one process with the same global batch."""
    files = sorted(FSDD.glob("*_george_*.wav"))[:40]
    cut = [f for f in files if sf.info(f).frames >= 4000][:4]
    for i, f in enumerate(cut):  # four equal-length utterances: every crop is the whole file
        sf.write(tmp_path / f"u{i}.wav", sf.read(f, dtype="float32")[0][:4000], 8000)
    (tmp_path / "eq.tsv").write_text("\n".join([str(tmp_path)] + [f"u{i}.wav\t8000" for i in range(4)]) + "\n")
    space = dict(SPACE, supernet=dict(SPACE["supernet"], dropout=0.0))  # no dropout: RNG streams differ per rank
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    base = ["--teacher", str(train_setup / "teacher"), "--train", str(tmp_path / "eq.tsv"), "--config", str(train_setup / "distill.yaml"),
            "--set", f"space={tmp_path / 'space.yaml'}", "--set", "max_steps=3", "--set", "mask_prob=0",
            "--set", "loss_on=all", "--set", "check_sync_every=1", "--set", "min_sample_size=1000",
            # Adam turns float-noise gradients of shift-invariant parameters (k_proj.bias: true gradient 0)
            # into steps of about +-lr whichever way the noise falls, so a 1e-4 match over 3 steps needs lr < 1.6e-5.
            "--set", "lr=5e-6"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lighthubert"]
    done = subprocess.run(torchrun + ["distill", "--stage", "1", *base, "--out", str(tmp_path / "ddp"),
                          "--set", "max_batch_samples=16000"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "lighthubert", "distill", "--stage", "1", *base, "--out",
                             str(tmp_path / "one"), "--set", "max_batch_samples=32000"], env=env, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-3000:]
    a = checkpoint.load_file(tmp_path / "ddp" / "step-3.pt")["model"]
    b = checkpoint.load_file(tmp_path / "one" / "step-3.pt")["model"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-4

    done = subprocess.run(torchrun + ["distill", "--stage", "2", *base, "--out", str(tmp_path / "ddp2"),
                          "--init", str(tmp_path / "ddp" / "step-3.pt"), "--set", "max_batch_samples=16000"],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "ddp2" / "step-3.pt").exists() and not list((tmp_path / "ddp2").glob("*.tmp"))


def test_non_finite_losses_stop_the_run_with_good_weights(train_setup, tmp_path, capsys):
    teacher = checkpoint.load_model(train_setup / "teacher")
    with torch.no_grad():
        teacher.encoder.pos_conv[0].bias[0] = float("nan")  # every target becomes NaN
    from lighthubert.export import save_compact

    save_compact(teacher, teacher.cfg, tmp_path / "nan_teacher")
    code = run_cli("distill", "--stage", "1", "--teacher", tmp_path / "nan_teacher", "--train", train_setup / "train.tsv",
                   "--config", train_setup / "distill.yaml", "--out", tmp_path / "run", "--set", "max_steps=50",
                   "--set", "max_bad_steps=3", "--set", "init_from_teacher=false")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "3 non-finite steps in a row at step 3" in err[-1] and "--resume" in err[-1]
    saved = checkpoint.load_file(tmp_path / "run" / "step-3.pt")
    assert all(torch.isfinite(v).all() for v in saved["model"].values())  # skipped steps never touched the weights
    assert saved["trainer"]["bad_steps"] == 3
