"""Progress on a terminal (tqdm) and in a log file (plain lines, no carriage returns)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import types

import pytest
from tqdm import tqdm

from lighthubert import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    """progress's clock, moved by the test: now[0] seconds."""
    now = [0.0]
    monkeypatch.setattr(progress, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    return now


def test_a_terminal_gets_tqdm_and_a_file_plain_lines(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    with progress.progress_bar(total=3, desc="x") as bar:
        assert isinstance(bar, tqdm)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with progress.progress_bar(total=3, desc="x") as bar:
        assert isinstance(bar, progress.LineProgress)
    with progress.progress_bar(total=3, file=Terminal()) as bar:
        assert isinstance(bar, tqdm)


def test_plain_lines_per_steps_with_the_figures(clock):
    """10,000 steps at 0.25 s, a line per 10: 1,000 lines, each with step/total, the postfix,
    the speed, elapsed and ETA; nothing redrawn."""
    out = io.StringIO()
    with progress.progress_bar(total=10_000, desc="stage 1", unit="step", every=10, file=out) as bar:
        for step in range(10_000):
            clock[0] += 0.25
            bar.set_postfix(loss=f"{1 / (step + 1):.4f}", lr=f"{2e-4:.2e}", audio_s_per_s=f"{12.5:.1f}")
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1_000 and "\r" not in out.getvalue()
    assert lines[9] == "stage 1: 100/10000 step (1.0%) [00:25<41:15,  4.00step/s, loss=0.0100, lr=2.00e-04, " \
                       "audio_s_per_s=12.5]"
    assert lines[-1].startswith("stage 1: 10000/10000 step (100.0%) [41:40<00:00,")


def test_plain_lines_per_seconds_and_a_last_line_on_close(clock, monkeypatch):
    out = io.StringIO()
    bar = progress.progress_bar(total=10_000, desc="extract", unit="file", file=out)  # default: a line per 30 s
    for _ in range(10_000):
        clock[0] += 0.1  # 1,000 s in all
        bar.update(1)
    bar.update(0)
    bar.close()
    bar.close()  # a second close writes nothing
    lines = out.getvalue().splitlines()
    assert len(lines) == 1_000 // 30 + 1 and lines[-1].startswith("extract: 10000/10000 file (100.0%) [16:40<00:00")
    monkeypatch.setenv(progress.SECONDS_ENV, "100")
    assert progress.progress_bar(total=1, file=io.StringIO()).seconds == 100.0
    monkeypatch.setenv(progress.SECONDS_ENV, "soon")
    with pytest.raises(ValueError, match="LIGHTHUBERT_PROGRESS_SECONDS='soon': expected a positive number"):
        progress.progress_bar(total=1, file=io.StringIO())


def test_a_resumed_run_counts_its_speed_from_where_it_resumed(clock):
    out = io.StringIO()
    bar = progress.progress_bar(total=200, initial=100, desc="stage 1", unit="step", every=50, file=out)
    for _ in range(50):
        clock[0] += 2.0
        bar.update(1)
    assert out.getvalue() == "stage 1: 150/200 step (75.0%) [01:40<01:40,  2.00s/step]\n"


def test_a_count_past_its_total_still_shows_figures(clock):
    """k-means counts frames up to the end of its last file, past `total`: tqdm's formatter then
    drops the total ("250449/? (0.0%)"); the line shows the count as complete instead."""
    out = io.StringIO()
    bar = progress.LineProgress(total=100, desc="k-means", unit="frame", every=50, file=out)
    bar.update(120)
    bar.close()
    assert out.getvalue().startswith("k-means: 120/120 frame (100.0%)")


def test_iterating_without_a_total_and_disabled_bars(clock):
    out = io.StringIO()
    items = []
    for item in progress.progress_bar(iter(range(5)), desc="corpus", unit="file", every=2, file=out):
        items.append(item)
    assert items == list(range(5))
    assert [line.split(" [")[0] for line in out.getvalue().splitlines()] == [f"corpus: {n} file" for n in (2, 4, 5)]
    quiet = io.StringIO()
    with progress.progress_bar(total=5, disable=True, file=quiet) as bar:
        bar.update(5)
    assert quiet.getvalue() == ""


def test_training_with_stderr_in_a_file_writes_few_plain_lines(train_setup, tmp_path):
    """`lighthubert distill ... 2> file`: a line per log_every steps, no redraws (the tqdm bar
    left 42 '\\r' redraws of this 20-step run in the file)."""
    steps, every = 20, 5
    err = tmp_path / "stderr.txt"
    with open(err, "w") as f:
        done = subprocess.run(
            [sys.executable, "-m", "lighthubert", "distill", "--stage", "1", "--teacher", str(train_setup / "teacher"),
             "--train", str(train_setup / "train.tsv"), "--config", str(train_setup / "distill.yaml"),
             "--out", str(tmp_path / "run"), f"--set=max_steps={steps}", f"--set=log_every={every}",
             "--set=valid_every=1000", "--set=save_every=1000"],
            stdout=subprocess.DEVNULL, stderr=f, env={**os.environ, "OMP_NUM_THREADS": "1"})
    raw = err.read_bytes()  # not read_text: universal newlines would turn each '\r' into a line end
    text = raw.decode()
    assert done.returncode == 0, text[-2000:]
    bars = [line for line in text.splitlines() if line.startswith("stage 1: ")]
    assert raw.count(b"\r") == 0
    assert [b.split(" step ")[0] for b in bars] == [f"stage 1: {n}/{steps}" for n in range(every, steps + 1, every)]
    assert all("loss=" in b and "lr=" in b and "audio_s_per_s=" in b and "<" in b for b in bars)
    assert len(text.splitlines()) <= steps // every + 10 and len(raw) <= 4_000, text
