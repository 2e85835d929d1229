"""Run folders that protect themselves: the lock, pruning by exact name, leftovers, damaged
checkpoints, short files, non-finite weights and Ctrl-C."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from lighthubert import atomic, safeload
from lighthubert.cli import main
from lighthubert.recipes import RunConfig
from lighthubert.runfolder import LOCK, RunFolder
from lighthubert.trainer import Trainer, TrainingError

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def distill(setup: Path, out: Path, *extra: object) -> list[str]:
    return ["distill", "--stage", "1", "--teacher", str(setup / "teacher"), "--train", str(setup / "train.tsv"),
            "--config", str(setup / "distill.yaml"), "--out", str(out), *map(str, extra)]


def run_cli(*argv: object) -> int:
    return main([str(a) for a in argv])


def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(train_setup, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    busy = subprocess.Popen(["sleep", "60"])  # a live process holding the folder
    try:
        (out / LOCK).write_text(json.dumps({"pid": busy.pid, "host": socket.gethostname(), "started": "earlier"}))
        assert main(distill(train_setup, out, "--set=max_steps=1")) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"is being written by another run (pid {busy.pid}" in err[0]
        assert not list(out.glob("step-*.pt")) and not (out / "log.jsonl").exists()
    finally:
        busy.kill()
        busy.wait()
    # the holder is gone (killed): its lock is stale and the next run takes the folder
    assert main(distill(train_setup, out, "--set=max_steps=1")) == 0
    assert (out / "step-1.pt").exists() and not (out / LOCK).exists()  # released at the end


def test_pruning_and_resume_touch_only_the_runs_own_checkpoints(train_setup, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    foreign = ["step-best.pt", "step-5-backup.pt", "step-00100.pt", "notes.txt"]
    for name in foreign:
        (out / name).write_text("not ours")
    atomic.temporary_beside(out / "step-3.pt").write_bytes(b"half a checkpoint")  # left by a save that was killed
    assert main(distill(train_setup, out, "--set=max_steps=3", "--set=save_every=1", "--set=keep_last=1")) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(foreign + ["step-3.pt", "config.yaml", "log.jsonl"])
    # step-00100.pt is no checkpoint of ours: --resume continues from step-3.pt
    assert main(distill(train_setup, out, "--set=max_steps=4", "--set=save_every=1", "--set=keep_last=1", "--resume")) == 0
    assert (out / "step-4.pt").exists() and not (out / "step-3.pt").exists()
    assert all((out / name).read_text() == "not ours" for name in foreign)


def test_resume_falls_back_to_the_newest_readable_checkpoint(train_setup, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "run"
    assert main(distill(train_setup, out, "--set=max_steps=3", "--set=save_every=1")) == 0
    damaged = out / "step-3.pt"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    assert main(distill(train_setup, out, "--set=max_steps=3", "--set=save_every=1", "--resume")) == 0
    assert "step-3.pt: not a readable PyTorch checkpoint" in caplog.text and "trying the checkpoint before it" in caplog.text
    assert f"resumed from {out / 'step-2.pt'} at step 2" in caplog.text
    assert safeload.load_file(out / "step-3.pt")["trainer"]["step"] == 3  # rewritten from step 2


@pytest.mark.parametrize("samples", [399, 401])
def test_files_shorter_than_two_frames_are_skipped_and_counted(train_setup, tmp_path, samples, capsys):
    """DistilHuBERT does not filter by length (min_sample_size 0); a file too short for two
    frames of the model used to shrink the whole batch's crop below the receptive field."""
    good = (train_setup / "train.tsv").read_text().splitlines()
    sf.write(tmp_path / "short.wav", np.random.default_rng(0).normal(0, 0.1, samples).astype(np.float32), 16000)
    (tmp_path / "m.tsv").write_text("\n".join(good + [f"{tmp_path / 'short.wav'}\t{samples}"]) + "\n")
    args = ["distill", "--method", "distilhubert", "--teacher", train_setup / "teacher", "--train", tmp_path / "m.tsv",
            "--out", tmp_path / "run", "--set=distil_targets=[1,2,3]", "--set=max_steps=3", "--set=num_workers=0",
            "--set=max_batch_samples=200000"]
    assert run_cli(*args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 3 and summary["skipped"] == "skipped 1 file: 1 too short"
    assert run_cli(*args[:-2], "--set=max_steps=4", "--set=max_batch_samples=200000", "--resume") == 0


def test_non_finite_weights_are_never_saved(train_setup, tmp_path):
    cfg = RunConfig.from_yaml(train_setup / "distill.yaml", ("max_steps=1",))
    trainer = Trainer(cfg.build(teacher=str(train_setup / "teacher")), cfg.train, str(train_setup / "train.tsv"), None,
                      str(tmp_path / "run"))
    trainer.fit()
    with torch.no_grad():
        trainer.student.encoder.layers[0].fc1.weight[0, 0] = float("nan")
    with pytest.raises(TrainingError, match=r"weights are not finite at step 1 .* --resume continues from .*step-1\.pt"):
        trainer.save()


@pytest.mark.slow
def test_ctrl_c_says_where_to_resume(train_setup, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "lighthubert", *distill(train_setup, out, "--set=max_steps=400", "--set=save_every=2")]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not any(out.glob("step-*.pt")) and time.time() < deadline:  # keep_last may prune step-2.pt early
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 130 and last.startswith("lighthubert: interrupted at step ") and "--resume continues from" in last
    assert "Traceback" not in err and not (out / LOCK).exists()
    assert RunFolder(out).checkpoints()


def test_a_full_disk_at_a_checkpoint_says_where_to_resume(train_setup, tmp_path, capsys, monkeypatch):
    real, saves = torch.save, []

    def save(obj, f, *a, **k):  # the second checkpoint meets a full disk (torch.save: a RuntimeError)
        saves.append(f)
        if len(saves) == 2:
            Path(f).write_bytes(b"PK\x03\x04")
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")
        real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    code = run_cli(*distill(train_setup, tmp_path / "run", "--set=max_steps=3", "--set=save_every=1"))
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lighthubert:")]  # not the bar
    assert code == 2 and len(err) == 1, err
    assert f"{tmp_path / 'run' / 'step-2.pt'}: could not be written" in err[0]
    assert f"--resume continues from {tmp_path / 'run' / 'step-1.pt'}" in err[0]
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.suffix in (".pt", ".tmp")) == ["step-1.pt"]
    assert not (tmp_path / "run" / LOCK).exists()
