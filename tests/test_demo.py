"""`lighthubert demo`: the whole pipeline end to end (tiny settings), its report, resuming,
real audio through --data, and bad input."""

import json
import os
import re

import numpy as np
import pytest
import soundfile as sf

from lighthubert import cli, demo
from lighthubert.space import SearchSpace, count_params

from conftest import FSDD, require_shared

TINY = ["--set", "speakers=2", "--set", "takes=5", "--set", "teacher_steps=4", "--set", "stage1_steps=2",
        "--set", "stage2_steps=2", "--set", "population=2", "--set", "generations=1", "--set", "probe_epochs=2",
        "--set", "batch_seconds=3"]
ROWS = ["MFCC (39-dim)", "teacher (HuBERT it. 1)", "LightHuBERT stage 1", "DistilHuBERT (2 layers)",
        "LightHuBERT subnet, 1/3 of max params", "LightHuBERT subnet, DistilHuBERT's params",
        "LightHuBERT subnet, 2/3 of max params"]


@pytest.mark.slow
def test_demo_runs_end_to_end_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in report["rows"]] == ROWS
    for row in ROWS:
        assert row in printed
    rows = {r["name"]: r for r in report["rows"]}
    space = SearchSpace.from_yaml(out / "space.yaml")
    max_params = count_params(space.model_config(space.max()))
    assert report["max_params"] == max_params
    assert rows["LightHuBERT subnet, 1/3 of max params"]["params"] <= max_params / 3
    assert rows["LightHuBERT subnet, DistilHuBERT's params"]["params"] <= rows["DistilHuBERT (2 layers)"]["params"]
    assert rows["teacher (HuBERT it. 1)"]["params"] == max_params  # the supernet has the teacher's shape
    assert report["metrics"] == ["word acc", "speaker acc", "PER"]
    for r in report["rows"]:  # what the report shows is what the probes measured (their cache)
        cached = json.loads((out / "probes" / (re.sub(r"[^a-z0-9]+", "-", r["name"].lower()).strip("-") + ".json")).read_text())
        assert all(r[m] == cached[m] for m in report["metrics"])
        if r["name"] != "MFCC (39-dim)":
            assert r["latency_ms"] > 0 and r["macs"] > 0 and r["valid_loss"] > 0
    png = (out / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    md = (out / "report.md").read_text()
    assert "![results](report.png)" in md and "word acc" in md and "speaker acc" in md and "PER vs teacher" in md
    assert (out / "corpus" / "test.phn").read_text().splitlines()[0] == "z I r o"  # the synthesiser's phones
    # a second run reuses every step: no checkpoint is rewritten, the report is the same
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("step-*.pt")}
    assert len(stamps) == 4  # teacher, stage 1, stage 2, DistilHuBERT: keep_last 1 each
    assert cli.main(["demo", "--out", str(out), *TINY]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("step-*.pt")} == stamps
    assert cli.main(["demo", "--out", str(out), *TINY, "--set", "teacher_steps=5"]) == 2
    assert "holds a demo run with other settings (teacher_steps)" in capsys.readouterr().err
    again = json.loads((out / "report.json").read_text())
    assert [{k: v for k, v in r.items() if k != "latency_ms"} for r in again["rows"]] == \
        [{k: v for k, v in r.items() if k != "latency_ms"} for r in report["rows"]]


@pytest.mark.slow
def test_demo_on_real_audio_with_a_test_regex(tmp_path):
    require_shared(FSDD)
    audio = tmp_path / "audio"
    audio.mkdir()
    for f in sorted(FSDD.glob("*.wav")):
        digit, speaker, take = f.stem.split("_")
        if speaker in ("george", "jackson") and digit in "0123" and int(take) < 8:
            os.symlink(f, audio / f.name)
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--data", str(audio), "--labels", r"digit=^(\d)_",
                     "--labels", r"speaker=^\d_(\w+)_", "--test-regex", r"_[0-1]$", *TINY[4:], "--set", "probe_epochs=30"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["config"]["labels"]) == {"digit", "speaker"}
    test = (out / "data" / "test.tsv").read_text().splitlines()[1:]
    assert len(test) == 16 and all(line.split("\t")[0].split(".")[0].endswith(("_0", "_1")) for line in test)
    assert report["metrics"] == ["digit acc", "speaker acc"]  # no .phn labels here: no PER
    mfcc = next(r for r in report["rows"] if r["name"].startswith("MFCC"))
    assert mfcc["digit acc"] > 0.5  # 4 digits: chance is 0.25; MFCC probes of real digits score far above it


@pytest.mark.parametrize("args, message", [
    (["--data", "DATA"], "--data needs --labels"),
    (["--labels", "w=^(a)"], "--labels names the labels of --data files"),
    (["--set", "teacher_stepz=3"], "unknown demo setting(s) ['teacher_stepz']"),
    (["--set", "budgets=['2']"], "budget '2': give a fraction"),
    (["--data", "DATA", "--labels", "word"], "--labels expects name=regex-or-CSV"),
    (["--data", "DATA", "--labels", r"word=^(\d)_", "--test-regex", "."], "matches 4 of 4 files"),
    (["--data", "DATA", "--labels", r"word=^zz(\d)"], "zz"),
    (["--data", "DATA", "--labels", r"word=^(\d)_", "--test-regex", "_9$"], "test class(es) absent from training"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, message):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("0_a_1", "1_a_2", "0_b_3", "2_b_9"):
        sf.write(data / f"{name}.wav", np.zeros(8000, dtype="float32") + 0.1, 16000)
    args = [str(data) if a == "DATA" else a for a in args]
    assert cli.main(["demo", "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_budget_fractions():
    assert demo.budget_fraction("1/3") == pytest.approx(1 / 3)
    assert demo.budget_fraction(0.5) == 0.5
    assert demo.budget_fraction("distilhubert") is None
    for bad in ("0", "3/2", "x", "1/0"):
        with pytest.raises(ValueError, match="give a fraction"):
            demo.budget_fraction(bad)


def test_prepare_data_skips_an_unreadable_file(tmp_path, caplog):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("0_a_1", "1_a_2", "0_b_3", "1_b_4"):
        sf.write(data / f"{name}.wav", np.zeros(8000, dtype="float32") + 0.1, 8000)
    (data / "1_a_3.wav").write_text("not audio")
    cfg = demo.DemoConfig(data=str(data), labels={"word": r"^(\d)_"}, test_regex="_[34]$", valid_fraction=0.3)
    paths = demo.prepare_data(cfg, tmp_path / "out")
    lines = [line for p in paths.values() for line in p.read_text().splitlines()[1:]]
    assert sorted(lines) == ["0_a_1.wav\t16000", "0_b_3.wav\t16000", "1_a_2.wav\t16000", "1_b_4.wav\t16000"]
    assert "1_a_3.wav: skipped" in caplog.text
