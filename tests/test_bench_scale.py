"""The scale rehearsal's own machinery (benchmarks/bench_scale.py) at a small N, so the script
cannot rot between the runs that fill docs/training.md."""

import importlib.util
from pathlib import Path

import pytest

from lighthubert import transcripts
from lighthubert.manifest import read_manifest

from conftest import LIBRISPEECH, require_shared

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_scale.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_scale", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_tree_and_manifest_stage_at_200_utterances(tmp_path, capsys):
    bench = _bench()
    source = require_shared(LIBRISPEECH)
    assert bench.main(["--sizes", "210", "--stages", "manifest", "--work", str(tmp_path), "--source", str(source),
                       "--pool", "40", "--keep"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.split()[:2] == ["210", "manifest"])
    assert row.split()[-2:] == ["exit", "0"], out  # seconds and MB were measured, the CLI succeeded
    split = tmp_path / "n210" / bench.SPLIT
    chapters = sorted(split.glob("*/*"))  # SPEAKER/CHAPTER: 50 a chapter, 2 chapters a speaker, the last one short
    assert [c.relative_to(split).as_posix() for c in chapters] == ["100/10000", "100/10001", "101/10002", "101/10003",
                                                                   "102/10004"]
    assert [len(list(c.glob("*.flac"))) for c in chapters] == [50, 50, 50, 50, 10]
    assert len({p.stat().st_ino for p in split.rglob("*.flac")}) == 40  # hard links to the pool, not copies
    texts = transcripts.read_transcripts(split)
    assert len(texts) == 210 and texts["100-10001-0000"].text.endswith(" QXB")  # chapter 1's made-up name
    manifests = tmp_path / "n210" / "out" / "manifest"
    entries = [e for name in ("train", "valid") for e in read_manifest(manifests / f"{name}.tsv").entries]
    assert len(entries) == 210 and all(n > 16_000 for _, n in entries)
    assert len((manifests / "train.phn").read_text().splitlines()) == len(read_manifest(manifests / "train.tsv").entries)
    assert "exponents" in out and "no two sizes a decade apart" in out
