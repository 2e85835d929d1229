"""A run's identity on `--resume` (issue 21, item 4): besides its settings, the contents of
its teacher, `--init` and train / valid manifests (with the label files it reads). A resume
with other inputs is refused in one line naming them; moved identical copies are the same run."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from lighthubert import atomic, checkpoint, safeload
from lighthubert.cli import main
from lighthubert.export import save_compact
from lighthubert.runfolder import content_digest, manifest_digest


def run_cli(*argv: object) -> int:
    return main([str(a) for a in argv])


def _distill(setup: Path, out: Path, steps: int, teacher: Path, train: Path, valid: Path, init: Path, *extra: object) -> int:
    return run_cli("distill", "--stage", 1, "--config", setup / "distill.yaml", "--teacher", teacher, "--train", train,
                   "--valid", valid, "--init", init, "--out", out, "--set", f"max_steps={steps}", "--set", "save_every=1",
                   "--set", "valid_every=100", *extra)


@pytest.fixture(scope="module")
def inits(train_setup, tmp_path_factory) -> tuple[Path, Path]:
    """Two stage-1 checkpoints with different weights (steps 1 and 2 of one short run)."""
    out = tmp_path_factory.mktemp("inits")
    assert run_cli("distill", "--stage", 1, "--config", train_setup / "distill.yaml", "--teacher", train_setup / "teacher",
                   "--train", train_setup / "train.tsv", "--out", out, "--set", "max_steps=2", "--set", "save_every=1") == 0
    return out / "step-1.pt", out / "step-2.pt"


def _other_teacher(setup: Path, out: Path) -> Path:
    """The teacher with one weight nudged: same shape and format, other contents."""
    model = checkpoint.load_model(setup / "teacher")
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    save_compact(model, model.cfg, out)
    return out


def test_resume_refuses_other_inputs_and_accepts_moved_copies(train_setup, inits, tmp_path, capsys):
    teacher, train, valid = train_setup / "teacher", train_setup / "train.tsv", train_setup / "valid.tsv"
    run = tmp_path / "run"
    assert _distill(train_setup, run, 2, teacher, train, valid, inits[0]) == 0
    other = _other_teacher(train_setup, tmp_path / "other-teacher")
    for role, args in (("teacher", (other, train, valid, inits[0])), ("train", (teacher, valid, valid, inits[0])),
                       ("valid", (teacher, train, train, inits[0])), ("init", (teacher, train, valid, inits[1]))):
        capsys.readouterr()
        assert _distill(train_setup, run, 3, *args, "--resume") == 2, role
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"other inputs ({role}: " in err[0] and "--out" in err[0], err
        assert all(f"({r}: " not in err[0] and f"; {r}: " not in err[0] for r in ("teacher", "train", "valid", "init")
                   if r != role), err  # only what changed is named
    # identical copies under new names: the same run
    moved = tmp_path / "moved"
    shutil.copytree(teacher, moved / "teacher-copy")
    shutil.copy(train, moved / "a.tsv")
    shutil.copy(valid, moved / "b.tsv")
    shutil.copy(inits[0], moved / "init-copy.pt")
    assert _distill(train_setup, run, 3, moved / "teacher-copy", moved / "a.tsv", moved / "b.tsv", moved / "init-copy.pt",
                    "--resume") == 0
    assert (run / "step-3.pt").exists()


def test_a_run_folder_from_before_inputs_were_recorded_resumes_with_a_warning(train_setup, inits, tmp_path, caplog):
    teacher, train, valid = train_setup / "teacher", train_setup / "train.tsv", train_setup / "valid.tsv"
    run = tmp_path / "run"
    assert _distill(train_setup, run, 2, teacher, train, valid, inits[0], "--set", "keep_last=1") == 0
    ckpt = safeload.load_file(run / "step-2.pt")
    del ckpt["trainer"]["inputs"]
    atomic.save_file(ckpt, run / "step-2.pt")
    with caplog.at_level(logging.WARNING):
        assert _distill(train_setup, run, 3, teacher, valid, valid, inits[1], "--resume") == 0
    assert "before runs recorded their inputs" in caplog.text
    assert safeload.load_file(run / "step-3.pt")["trainer"]["inputs"]["train"]["path"] == str(valid.resolve())


def test_manifest_digest_is_its_entries_and_labels(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.tsv").write_text("/data/corpus\nu1.flac\t16000\nu2.flac\t32000\n")
    (tmp_path / "a" / "x.ltr").write_text("A B |\nC |\n")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "y.tsv").write_text("/elsewhere/corpus\nu1.flac\t16000\nu2.flac\t32000\n")  # the corpus moved too
    (tmp_path / "b" / "y.ltr").write_text("A B |\nC |\n")
    a = manifest_digest(tmp_path / "a" / "x.tsv", tmp_path / "a" / "x.ltr")
    assert a == manifest_digest(tmp_path / "b" / "y.tsv", tmp_path / "b" / "y.ltr")
    assert a != manifest_digest(tmp_path / "a" / "x.tsv")  # the labels count when the recipe reads them
    (tmp_path / "b" / "y.ltr").write_text("A B |\nD |\n")
    assert a != manifest_digest(tmp_path / "b" / "y.tsv", tmp_path / "b" / "y.ltr")
    (tmp_path / "a" / "x.tsv").write_text("/data/corpus\nu1.flac\t16000\nu2.flac\t32001\n")
    assert a != manifest_digest(tmp_path / "a" / "x.tsv", tmp_path / "a" / "x.ltr")


def test_folder_digest_is_its_files(tmp_path):
    for name in ("one", "two"):
        (tmp_path / name / "sub").mkdir(parents=True)
        (tmp_path / name / "config.json").write_text("{}")
        (tmp_path / name / "sub" / "model.bin").write_bytes(bytes(range(256)) * 10)
    (tmp_path / "two" / ".git").mkdir()
    (tmp_path / "two" / ".git" / "HEAD").write_text("ref")  # hidden entries are not the model
    one = content_digest(tmp_path / "one")
    assert one == content_digest(tmp_path / "two")
    (tmp_path / "two" / "sub" / "model.bin").rename(tmp_path / "two" / "sub" / "other.bin")
    assert one != content_digest(tmp_path / "two")
    assert content_digest(tmp_path / "one" / "config.json") != content_digest(tmp_path / "one" / "sub" / "model.bin")
