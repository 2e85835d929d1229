"""`lighthubert` CLI: extract and info on real and generated files; each bad input is one line."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from safetensors.torch import save_file

from lighthubert import checkpoint, demo
from lighthubert.cli import main
from lighthubert.data import synthetic_speech
from lighthubert.space import SearchSpace, SubnetConfig
from lighthubert.supernet import LightHuBERT

from conftest import FSDD, demo_like_supernet, require_shared



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
    files = sorted(require_shared(FSDD).glob("*_george_*.wav"))[:3]
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
    # the first bytes of a torch.onnx export (protobuf: ir_version, producer_name "pytorch")
    (lambda p, ck: p.write_bytes(b"\x08\x0a\x12\x07pytorch\x1a\x0a2.13.0+cpu:" + bytes(range(256)) * 4), "an ONNX model"),
    (lambda p, ck: save_file({"w": torch.zeros(3)}, str(p)), "a safetensors weight file"),
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
    assert "weights_only=False" not in lines[0]  # torch's advice to unpickle code is no answer
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


def test_one_parameter_count_for_one_model(tmp_path, capsys, demo_like_search):
    """The issue's subnet e144 h[1,3,1] f[288,288,576] x3 of a 192-wide supernet: `info`,
    `teacher-info` on the supernet and on its compact and hf exports, the search's records
    and the demo's rows give one number, the official rule's, counted here from the tensors."""
    supernet = demo_like_supernet()
    sub = SubnetConfig(144, (1, 3, 1), (288, 288, 576))
    dense, _ = supernet.export(sub)
    tensors = dict(dense.named_parameters())
    head = sum(v.numel() for k, v in tensors.items() if k.startswith("layer_pred_heads."))
    weight_g = tensors["encoder.pos_conv.0.weight_g"].numel()
    official = sum(v.numel() for v in tensors.values()) - head - weight_g + (192 - 144)  # mask_emb at 192
    ckpt = tmp_path / "supernet.pt"
    checkpoint.save_file(checkpoint.official_checkpoint(supernet), ckpt)  # records sub as its subnet
    _, teacher, valid = demo_like_search
    subnet = json.dumps({"embed_dim": 144, "heads": [1, 3, 1], "ffn_dim": [288, 288, 576]})

    def info(*argv):
        assert main([str(a) for a in argv] + ["--json"]) == 0
        return json.loads(capsys.readouterr().out)

    counted = {"info": info("info", "--checkpoint", ckpt, "--subnet", subnet)["subnets"][0]["params"],
               "teacher-info": info("teacher-info", ckpt)["parameters"], "demo": demo.counts(dense)["params"]}
    for fmt, heads in (("compact", head), ("hf", 0)):  # the compact export keeps the prediction head
        assert main(["export", "--checkpoint", str(ckpt), "--format", fmt, "--output", str(tmp_path / fmt)]) == 0
        capsys.readouterr()
        doc = info("teacher-info", tmp_path / fmt)
        counted[f"teacher-info {fmt}"] = doc["parameters"]
        assert doc["all_weights"] == official - (192 - 144) + weight_g + heads  # every tensor the export holds
    assert counted == dict.fromkeys(counted, official), counted

    # the search: every record holds the count `info` gives for its subnet
    assert main(["search", "--checkpoint", str(ckpt), "--teacher", str(teacher), "--valid", str(valid), "--out",
                 str(tmp_path / "search"), "--population", "2", "--generations", "1", "--target-layers", "1",
                 "--device", "cpu", "--quiet"]) == 0
    capsys.readouterr()
    records = [json.loads(line) for line in (tmp_path / "search" / "history.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for rec in records:
        assert rec["params"] == info("info", "--checkpoint", ckpt, "--subnet", json.dumps(rec["subnet"]))["subnets"][0]["params"]


def test_teacher_info_keeps_supernet_and_subnet_apart(tmp_path, capsys):
    supernet = demo_like_supernet()
    supernet.set_subnet(SubnetConfig(144, (2,) * 3, (432,) * 3))
    checkpoint.save_file(checkpoint.official_checkpoint(supernet), tmp_path / "s.pt")
    code, out, _ = run(capsys, "teacher-info", tmp_path / "s.pt")
    lines = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in out.splitlines())
    assert code == 0 and lines["supernet (maximum shape)"] == "e192 h3 f768 x3"
    assert lines["active subnet"] == "e144 h2 f432 x3" and lines["format"] == "lighthubert"
    assert lines["parameters (official rule)"] == f"{supernet.num_params():,}"
    assert lines["all weights (whole supernet)"] == f"{sum(p.numel() for p in supernet.parameters()):,}"
    assert "embed_dim" not in lines  # no unlabelled width that could be either's


def _lighthubert(*argv, **kw):
    """The console command in a fresh process: what a terminal shows (logging set up by main)."""
    return subprocess.run([sys.executable, "-m", "lighthubert", *map(str, argv)], capture_output=True, text=True, **kw)


def test_terminal_output_extract_quiet_and_failed_files(tiny_checkpoint, tmp_path):
    good, empty = tmp_path / "good.wav", tmp_path / "empty.wav"
    sf.write(good, synthetic_speech(0.3, 150.0).numpy(), 16000)
    sf.write(empty, np.zeros(0, np.float32), 16000)
    done = _lighthubert("extract", "--checkpoint", tiny_checkpoint, "--output", tmp_path / "o", "--quiet", good, empty)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [f"wrote 1 file(s) to {tmp_path / 'o'}, 1 failed"]
    # one line for the failed file, and --quiet leaves no INFO line
    assert done.stderr.splitlines() == [f"lighthubert: failed: {empty}: empty audio (0 samples)"], done.stderr


def test_closed_pipe_ends_quietly():
    """`lighthubert info --json | head`: the reader is gone before the first write."""
    proc = subprocess.Popen([sys.executable, "-m", "lighthubert", "info", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait() == 141 and err == ""


def test_a_space_file_named_space_yaml(tmp_path, capsys):
    path = tmp_path / "space.yaml"  # as the demo writes it: the space is named after the file
    path.write_text(yaml.safe_dump(SearchSpace.base().to_dict() | {"name": "space"}))
    code, _, err = run(capsys, "info", "--space", path, "--subnet", "min")
    assert code == 0
    code, _, err = run(capsys, "info", "--space", path, "--subnet",
                       '{"embed_dim": 100, "heads_num": [8], "ffn_embed": [400], "layer_num": 1}')
    assert code == 2 and "embed_dim 100 is not in search space 'space'; allowed" in err and "space space" not in err


def test_demo_prints_a_plain_table(tmp_path, capsys, monkeypatch):
    """The terminal gets aligned text; code fences, image links and pipes go to report.md only."""
    rows = [{"name": "MFCC (39-dim)", "valid_loss": None, "word acc": 0.9},
            {"name": "teacher (HuBERT it. 1)", "valid_loss": 1.47, "word acc": 1.0, "shape": "e192 h3 f768 x4",
             "params": 1_932_864, "macs": 134_680_000, "latency_ms": 8.2},
            {"name": "LightHuBERT subnet, 1/3 of max params", "valid_loss": 0.456, "word acc": 0.95,
             "shape": "e144 h[1,3,1] f[288,288,576] x3", "params": 638_688, "macs": 69_380_000, "latency_ms": 4.8}]
    report = {"rows": rows, "metrics": ["word acc"], "searches": [{"budget": "1/3 of max params", "max_params": 644_288, "best": rows[2]["shape"]}],
              "max_params": 1_932_864, "timings_s": {"data": 0.1}, "config": {"data": None, "labels": {"word": "^(a)"},
                                                                             "population": 8, "generations": 4}}
    monkeypatch.setattr(demo, "run", lambda cfg: report)
    assert main(["demo", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    table, rest = lines[:4], lines[4:]
    assert not any(mark in line for line in lines for mark in ("```", "![", "|", "#"))
    assert len(rest) == 1 and "report.md" in rest[0]
    assert table[0].index("params") == table[2].index("1,932,864") == table[3].index("638,688")  # aligned
    assert [line.split()[-1] for line in table] == ["acc", "0.900", "1.000", "0.950"] and max(map(len, table)) < 150
    md = demo.report_markdown(report)
    assert "| LightHuBERT subnet, 1/3 of max params | e144 h[1,3,1] f[288,288,576] x3 | 638,688 |" in md
