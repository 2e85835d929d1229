"""`lighthubert` CLI: extract and info on real and generated files; each bad input is one line."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from lighthubert import checkpoint
from lighthubert.cli import main
from lighthubert.data import synthetic_speech
from lighthubert.supernet import LightHuBERT

FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd" / "recordings"


class Foreign:
    """A class that a safe checkpoint load must refuse to construct."""


@pytest.fixture
def tiny_checkpoint(tiny_space, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    checkpoint.save_file(checkpoint.official_checkpoint(LightHuBERT(tiny_space)), path)
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_extract_fsdd_recordings(tiny_checkpoint, tmp_path, capsys):
    files = sorted(FSDD.glob("*_george_*.wav"))[:3] if FSDD.is_dir() else []
    if not files:
        pytest.skip(f"FSDD recordings not found at {FSDD}")
    code, out, _ = run(capsys, "extract", "--checkpoint", tiny_checkpoint, "--output", tmp_path, "--quiet", *files)
    assert code == 0 and "wrote 3 file(s)" in out
    model = checkpoint.load_model(tiny_checkpoint)
    for f in files:
        arr = np.load(tmp_path / f"{f.stem}.npy")
        info = sf.info(f)
        assert arr.dtype == np.float32
        assert arr.shape[0] == model.subnet.depth + 1 and arr.shape[2] == model.subnet.embed_dim
        assert arr.shape[1] == int(model.frame_lengths(torch.tensor([info.frames * 2])))  # 8 kHz -> 16 kHz
        assert np.isfinite(arr).all()


def test_extract_subnet_choice_and_layer(tiny_checkpoint, tmp_path, capsys):
    wav = tmp_path / "a.wav"
    sf.write(wav, synthetic_speech(0.5, 150.0).numpy(), 16000)
    code, _, _ = run(capsys, "extract", "--checkpoint", tiny_checkpoint, "--subnet", "min", "--layer", "1",
                     "--output", tmp_path / "o", "--quiet", wav)
    model = checkpoint.load_model(tiny_checkpoint, "min")
    assert code == 0 and np.load(tmp_path / "o" / "a.npy").shape[1] == model.subnet.embed_dim
    assert np.load(tmp_path / "o" / "a.npy").ndim == 2


def test_stereo_44k_flac_and_empty_wav(tiny_checkpoint, tmp_path, capsys):
    flac, empty = tmp_path / "st.flac", tmp_path / "empty.wav"
    x = synthetic_speech(1.0, 150.0, sample_rate=44100).numpy()
    sf.write(flac, np.stack([x, 0.5 * x], axis=1), 44100)
    sf.write(empty, np.zeros(0, np.float32), 16000)
    code, out, err = run(capsys, "extract", "--checkpoint", tiny_checkpoint, "--output", tmp_path / "o", "--quiet", empty, flac)
    assert code == 1 and "wrote 1 file(s)" in out and "1 failed" in out
    assert (tmp_path / "o" / "st.npy").exists()
    failures = [line for line in err.splitlines() if line.startswith("lighthubert: failed")]
    assert len(failures) == 1 and "empty audio" in failures[0]


def _foreign_pickle(path):
    torch.save({"cfg": Foreign(), "model": {}}, path)


@pytest.mark.parametrize("make, match", [
    (lambda p, ck: p.write_bytes(Path(ck).read_bytes()[:5000]), "not a readable PyTorch checkpoint"),
    (lambda p, ck: p.write_text("this is a text file\n"), "not a"),
    (lambda p, ck: _foreign_pickle(p), "refers to the Python class"),
    (lambda p, ck: torch.save({"cfg": {"model": {"_name": "transformer_lm"}}, "model": {}}, p), "not a HuBERT / wav2vec 2.0 encoder"),
    (lambda p, ck: torch.save({"weights": [1.0]}, p), "not a checkpoint this package reads"),
])
def test_bad_checkpoints_give_one_line(tiny_checkpoint, tmp_path, capsys, make, match):
    bad = tmp_path / "bad.pt"
    make(bad, tiny_checkpoint)
    wav = tmp_path / "a.wav"
    sf.write(wav, synthetic_speech(0.3, 150.0).numpy(), 16000)
    code, _, err = run(capsys, "extract", "--checkpoint", bad, "--output", tmp_path / "o", wav)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lighthubert: error:") and match in lines[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("subnet, match", [
    ('{"embed_dim": 100, "heads_num": [2, 2], "ffn_embed": [200, 200], "layer_num": 2}', "embed_dim 100 is not in"),
    ('{"embed_dim": 64, "heads_num": [2], "ffn_embed": [128, 128], "layer_num": 2}', "heads_num has 1 entries"),
    ("{not json", "not valid JSON"),
    ("nosuchfile.json", "is not 'default', 'max', 'min'"),
])
def test_bad_subnet_gives_one_line(tiny_checkpoint, tmp_path, capsys, subnet, match):
    code, _, err = run(capsys, "extract", "--checkpoint", tiny_checkpoint, "--subnet", subnet, "--output", tmp_path, "x.wav")
    assert code == 2 and len(err.strip().splitlines()) == 1 and match in err


def test_info_table_and_json(capsys):
    code, out, _ = run(capsys, "info", "--space", "base")
    assert code == 0
    assert "6,530,347,008 subnets" in out and "66,897,664" in out and "94,377,728" in out and "41,249,536" in out
    code, out, _ = run(capsys, "info", "--space", "small", "--subnet", "min", "--json")
    doc = json.loads(out)
    assert doc["subnets"][0]["params"] == 11_449_088 and doc["subnets"][0]["official"]["layer_num"] == 10
    code, _, err = run(capsys, "info", "--space", "small", "--subnet", '{"embed_dim": 640, "heads_num": [10], "ffn_embed": [2560], "layer_num": 1}')
    assert code == 2 and "allowed: [256, 384, 512]" in err


def test_info_reads_checkpoint(tiny_checkpoint, capsys):
    code, out, _ = run(capsys, "info", "--checkpoint", tiny_checkpoint)
    assert code == 0 and out.splitlines()[1].startswith("name") and "checkpoint" in out


def test_info_on_a_dense_model_points_to_teacher_info(tiny_checkpoint, tmp_path, capsys):
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--format", "compact", "--output", str(tmp_path / "c")]) == 0
    code, _, err = run(capsys, "info", "--checkpoint", tmp_path / "c")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "lighthubert teacher-info" in err


def test_console_script_is_installed():
    done = subprocess.run([sys.executable, "-m", "lighthubert", "info", "--space", "small"], capture_output=True, text=True)
    assert done.returncode == 0 and "26,879,744" in done.stdout
