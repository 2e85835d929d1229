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
    tiny = [*TINY, "--set", "probe_seeds=2"]
    assert cli.main(["demo", "--out", str(out), *tiny]) == 0
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
        assert r["probe_seeds"] == [0, 1] and all(len(r["per_seed"][m]) == 2 for m in report["metrics"])
        assert all(r[m] == pytest.approx(sum(r["per_seed"][m]) / 2) for m in report["metrics"])
        if r["name"] != "MFCC (39-dim)":
            assert r["latency_ms"] > 0 and r["macs"] > 0 and r["valid_loss"] > 0
    png = (out / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    md = (out / "report.md").read_text()
    assert "![results](report.png)" in md and "word acc" in md and "speaker acc" in md and "## Comparisons" in md
    assert len(report["comparisons"]) == 3 * (5 + 6 + 1)  # 3 metrics x (5 vs the teacher, 6 vs MFCC, 1 head-to-head)
    assert all(c["verdict"] in md for c in report["comparisons"])
    assert (out / "corpus" / "test.phn").read_text().splitlines()[0] == "z I r o"  # the synthesiser's phones
    # a second run reuses every step: no checkpoint is rewritten, the report is the same
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("step-*.pt")}
    assert len(stamps) == 4  # teacher, stage 1, stage 2, DistilHuBERT: keep_last 1 each
    assert cli.main(["demo", "--out", str(out), *tiny]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("step-*.pt")} == stamps
    assert cli.main(["demo", "--out", str(out), *tiny, "--set", "teacher_steps=5"]) == 2
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


def test_folder_split_builds_its_sets_once(tmp_path, monkeypatch):
    """The `--data` split is a partition of the files, and the membership sets behind it are
    built once, not once per file: the count must not grow with the folder (it was quadratic:
    at 100 k files it built 180 k sets of up to 20 k paths)."""
    built = []

    def counting_set(*args):
        built.append(1)
        return set(*args)

    monkeypatch.setattr(demo.corpora, "set", counting_set, raising=False)
    counts = []
    for n in (10, 40):
        data = tmp_path / f"data{n}"
        data.mkdir()
        for i in range(n):
            sf.write(data / f"{i % 2}_s_{i}.wav", np.full(160, 0.1, dtype="float32"), 16000)
        built.clear()
        paths = demo.prepare_data(demo.DemoConfig(data=str(data), labels={"word": r"^(\d)_"}), tmp_path / f"out{n}")
        counts.append(len(built))
        split = {k: [line.split("\t")[0] for line in p.read_text().splitlines()[1:]] for k, p in paths.items()}
        names = [name for rows in split.values() for name in rows]
        assert sorted(names) == sorted(f"{i % 2}_s_{i}.wav" for i in range(n))  # every file in exactly one split
        assert len(split["test"]) == n // 5 and len(split["valid"]) == max(1, round((n - n // 5) * 0.1))
    assert counts[0] == counts[1], f"sets built: {counts[0]} for 10 files, {counts[1]} for 40"


def _row(name, params, **per_seed):
    """A report row as `pipeline.measure` writes it: each column's mean, sd and seeds' figures."""
    spreads = {m: demo.report.Spread.of(v) for m, v in per_seed.items()}
    return {"name": name, **({"params": params, "macs": 10 * params, "shape": "e8 h1 f8 x1", "latency_ms": 1.0}
                             if params else {}), "valid_loss": None, "probe_seeds": [0, 1],
            **{m: s.mean for m, s in spreads.items()}, "sd": {m: s.sd for m, s in spreads.items()},
            "per_seed": {m: list(v) for m, v in per_seed.items()}}


def test_report_says_which_differences_lie_within_the_seed_spread(tmp_path):
    """Two seeds per model. Teacher against MFCC: PER 41.0 ± 1.4% vs 51.0 ± 1.4%, a 10-point
    difference against 2 x sqrt(1.41^2 + 1.41^2) = 4.0 points: beyond the spread. Speaker
    accuracy 0.920 ± 0.028 vs 0.930 ± 0.028, a difference of 0.010 against 0.080: within."""
    acc, per = "speaker acc", "PER"
    rows = [_row("MFCC (39-dim)", 0, **{acc: [0.91, 0.95], per: [0.50, 0.52]}),
            _row("teacher (HuBERT it. 1)", 100, **{acc: [0.90, 0.94], per: [0.40, 0.42]}),
            _row("DistilHuBERT (2 layers)", 50, **{acc: [0.80, 0.82], per: [0.45, 0.49]}),
            _row("LightHuBERT subnet, DistilHuBERT's params", 49, **{acc: [0.70, 0.72], per: [0.44, 0.52]})]
    report = {"rows": rows, "metrics": [acc, per], "searches": [], "max_params": 100, "timings_s": {"probes": 1.0},
              "config": {**demo.DemoConfig(probe_seeds=2).__dict__, "labels": {}}}
    md = demo.report_markdown(report)
    assert "| teacher (HuBERT it. 1) | e8 h1 f8 x1 | 100 | 1.00K | 1.0 | - | 0.920 ± 0.028 | 41.0 ± 1.4% |" in md, md
    assert ("- PER, teacher (HuBERT it. 1) vs MFCC (39-dim): teacher (HuBERT it. 1) better, beyond the seed spread: "
            "41.0 ± 1.4% vs 51.0 ± 1.4% (2 / 2 seeds; ratio 80.4%), difference 10.0 points > 2 x combined sd = 4.0 points") in md
    assert ("- speaker acc, teacher (HuBERT it. 1) vs MFCC (39-dim): within the seed spread, no ranking: 0.920 ± 0.028 "
            "vs 0.930 ± 0.028 (2 / 2 seeds; ratio 98.9%), difference 0.010 <= 2 x combined sd = 0.080") in md
    # the subnet against DistilHuBERT: speakers 0.710 vs 0.810 beyond 0.040 (DistilHuBERT better); PER 48.0 ± 5.7
    # vs 47.0 ± 2.8: 1.0 point within 2 x sqrt(5.66^2 + 2.83^2) = 12.6 points
    assert ("speaker acc, LightHuBERT subnet, DistilHuBERT's params vs DistilHuBERT (2 layers): DistilHuBERT (2 layers) "
            "better, beyond the seed spread") in md
    assert ("PER, LightHuBERT subnet, DistilHuBERT's params vs DistilHuBERT (2 layers): within the seed spread, no "
            "ranking: 48.0 ± 5.7% vs 47.0 ± 2.8% (2 / 2 seeds; ratio 102.1%), difference 1.0 points <= 2 x combined "
            "sd = 12.6 points") in md
    stated = demo.report.comparisons(report)
    assert len(stated) == 2 * (2 + 3 + 1)  # 2 metrics x (2 vs the teacher, 3 vs MFCC, 1 head-to-head)
    judged = {(c["model"][:8], c["reference"][:8], c["metric"]): c["beyond_spread"] for c in stated}
    assert judged[("teacher ", "MFCC (39", per)] is True and judged[("teacher ", "MFCC (39", acc)] is False
    teacher_per = next(c for c in stated if c["model"].startswith("teacher") and c["metric"] == per)
    assert teacher_per["model_figure"]["values"] == [0.40, 0.42] and teacher_per["margin"] == pytest.approx(0.04)
    assert "0.920 ± 0.028" in demo.report_text(report)
    demo.report.plot(report, [], tmp_path / "report.png")  # error bars from the seeds' sd
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_one_seed_is_reported_as_not_judged():
    rows = [_row("MFCC (39-dim)", 0, PER=[0.5]), _row("teacher (HuBERT it. 1)", 100, PER=[0.4])]
    report = {"rows": rows, "metrics": ["PER"], "searches": [], "max_params": 100, "timings_s": {},
              "config": {**demo.DemoConfig().__dict__, "labels": {}}}
    md = demo.report_markdown(report)
    assert ("- PER, teacher (HuBERT it. 1) vs MFCC (39-dim): not judged, one seed: no spread measured: 40.0% vs 50.0% "
            "(1 / 1 seeds; ratio 80.0%), difference 10.0 points") in md, md
    assert "| 40.0% |" in md and "±" not in md.split("## Comparisons")[0].split("|---")[1]


def test_demo_probes_every_model_at_three_head_seeds_by_default():
    from lighthubert.demo.pipeline import probe_settings
    librispeech = demo.DemoConfig(librispeech="ls", **demo.LIBRISPEECH)
    assert probe_settings(librispeech).seeds == 3 and probe_settings(demo.DemoConfig()).seeds == 3
    assert probe_settings(demo.DemoConfig(probe_seeds=5, seed=2)).seeds == 5
    with pytest.raises(ValueError, match="probe_seeds must be at least 1"):
        demo.DemoConfig(probe_seeds=0)
