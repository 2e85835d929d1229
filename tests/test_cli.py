"""`lighthubert` CLI: extract and info on real and generated files; each bad input is one line."""

import json
import os
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

from lighthubert import atomic, checkpoint, demo, formats, safeload
from lighthubert.cli import main
from lighthubert.audio import synthetic_speech
from lighthubert.space import SearchSpace, SubnetConfig
from lighthubert.supernet import LightHuBERT

from conftest import FSDD, demo_like_supernet, require_shared



class Foreign:
    """A class that a safe checkpoint load must refuse to construct."""


@pytest.fixture
def tiny_checkpoint(tiny_space, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    atomic.save_file(formats.official.checkpoint(LightHuBERT(tiny_space)), path)
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
    atomic.save_file(formats.official.checkpoint(supernet), ckpt)  # records sub as its subnet
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
    atomic.save_file(formats.official.checkpoint(supernet), tmp_path / "s.pt")
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


# -- issue 16: every bad input is one line, before any work ---------------------------------------
def _nan_checkpoint(tmp, ck):
    model = checkpoint.load_model(ck)
    with torch.no_grad():
        model.encoder.layers[0].fc1.weight[0, 0] = float("nan")
    atomic.save_file(formats.official.checkpoint(model), tmp / "nan.pt")
    return tmp / "nan.pt"


def _folder(tmp, ck, fmt, edit):
    """An export of the tiny checkpoint in `fmt`, then damaged by `edit(folder)`."""
    folder = tmp / fmt
    assert main(["export", "--checkpoint", str(ck), "--format", fmt, "--subnet", "max", "--output", str(folder)]) == 0
    edit(folder)
    return folder


def _compact_model(tmp, ck, key, value):
    def edit(folder):
        meta = json.loads((folder / "config.json").read_text())
        meta["model"][key] = value
        (folder / "config.json").write_text(json.dumps(meta))
    return _folder(tmp, ck, "compact", edit)


def _sharded(tmp, ck, weight_map):
    def edit(folder):
        (folder / "model.safetensors").rename(folder / "shard.safetensors")
        (folder / "model.safetensors.index.json").write_text(json.dumps(weight_map))
    return _folder(tmp, ck, "hf", edit)


def _string_in_state(tmp, ck):
    ckpt = safeload.load_file(ck)
    ckpt["model"][next(iter(ckpt["model"]))] = "not a tensor"
    torch.save(ckpt, tmp / "s.pt")
    return tmp / "s.pt"


def _blocked_global(tmp, ck):
    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))
    torch.save({"cfg": Payload(), "model": {}}, tmp / "evil.pt")
    return tmp / "evil.pt"


def _space(tmp, key, value):
    d = SearchSpace.base().to_dict()
    d["search_space"][key] = value
    (tmp / "space.yaml").write_text(yaml.safe_dump(d))
    return tmp / "space.yaml"


def _write(tmp, name, data: bytes):
    (tmp / name).write_bytes(data)
    return tmp / name


OURS = '{{"embed_dim": {}, "heads": {}, "ffn_dim": [512, 512, 512, 512]}}'
# (argv built from (tmp_path, tiny checkpoint, a.wav), what the one line must say)
BAD_INPUTS = {
    "NaN weights, extract": (lambda t, c, w: ["extract", "--checkpoint", _nan_checkpoint(t, c), "--output", t / "o", w],
                             "non-finite weights (1 tensors, e.g. encoder.layers.0.fc1.weight)"),
    "NaN weights, export": (lambda t, c, w: ["export", "--checkpoint", _nan_checkpoint(t, c), "--format", "compact",
                                             "--output", t / "o"], "non-finite weights"),
    "NaN weights, probe": (lambda t, c, w: ["probe", "--checkpoint", _nan_checkpoint(t, c), "--train", w, "--test", w,
                                            "--labels", "(a)"], "non-finite weights"),
    "corrupt compact safetensors": (lambda t, c, w: ["teacher-info", _folder(t, c, "compact", lambda f: (
        f / "model.safetensors").write_bytes(b"\x10" + bytes(7) + b"{garbage"))], "model.safetensors: not a readable safetensors file"),
    "corrupt hf safetensors": (lambda t, c, w: ["teacher-info", _folder(t, c, "hf", lambda f: (
        f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:300]))], "not a readable safetensors file"),
    "compact config without model": (lambda t, c, w: ["teacher-info", _folder(t, c, "compact", lambda f: (
        f / "config.json").write_text('{"format": "lighthubert-compact"}'))], "needs its 'model' config"),
    "config heads null": (lambda t, c, w: ["teacher-info", _compact_model(t, c, "heads", None)], "heads must be a list[int], got null"),
    "config dropout x": (lambda t, c, w: ["teacher-info", _compact_model(t, c, "dropout", "x")], "dropout must be a float, got 'x'"),
    "config head_dim 0": (lambda t, c, w: ["teacher-info", _compact_model(t, c, "head_dim", 0)], "head_dim must be at least 1"),
    "hf config a list": (lambda t, c, w: ["teacher-info", _folder(t, c, "hf", lambda f: (f / "config.json").write_text("[1]"))],
                         "config.json: expected an object in JSON, found list"),
    "hf config not UTF-8": (lambda t, c, w: ["teacher-info", _folder(t, c, "hf", lambda f: (f / "config.json").write_bytes(b"\xff{"))],
                            "config.json: not a UTF-8 JSON file"),
    "preprocessor bad JSON": (lambda t, c, w: ["teacher-info", _folder(t, c, "hf", lambda f: (
        f / "preprocessor_config.json").write_text('{"a": 1 "b": 2}'))], "preprocessor_config.json: not valid JSON"),
    "index without weight_map": (lambda t, c, w: ["teacher-info", _sharded(t, c, {"metadata": {}})], "expected a 'weight_map' object"),
    "index /abs/path": (lambda t, c, w: ["teacher-info", _sharded(t, c, {"weight_map": {"a": str(t / "hf" / "shard.safetensors")}})],
                        "is outside the model folder"),
    "index ../../x": (lambda t, c, w: ["teacher-info", _sharded(t, c, {"weight_map": {"a": "../tiny.pt"}})],
                      "is outside the model folder"),
    "string in a state dict": (lambda t, c, w: ["teacher-info", _string_in_state(t, c)], "is a str, not a tensor"),
    "blocked pickle global": (lambda t, c, w: ["teacher-info", _blocked_global(t, c)], "refers to the Python class"),
    "--subnet heads null": (lambda t, c, w: ["info", "--checkpoint", c, "--subnet", OURS.format(128, "null")],
                            "subnet heads must be a list with one entry per layer, got None"),
    "--subnet scalar heads": (lambda t, c, w: ["info", "--checkpoint", c, "--subnet", OURS.format(128, 4)],
                              "subnet heads must be a list"),
    "--subnet embed_dim string": (lambda t, c, w: ["info", "--checkpoint", c, "--subnet", OURS.format('"96"', [4] * 4)],
                                  "subnet embed_dim must be an integer, got '96' (str)"),
    "--subnet file not UTF-8": (lambda t, c, w: ["info", "--checkpoint", c, "--subnet", _write(t, "s.json", b"\xff{")],
                                "s.json: not a UTF-8 JSON file"),
    "space embed_dim [abc]": (lambda t, c, w: ["info", "--space", _space(t, "embed_dim", ["abc"])],
                              "space.yaml: setting search_space.embed_dim[0] must be an int, got 'abc'"),
    "space embed_dim 768": (lambda t, c, w: ["info", "--space", _space(t, "embed_dim", 768)], "search_space.embed_dim must be a list"),
    "space embed_dim null": (lambda t, c, w: ["info", "--space", _space(t, "embed_dim", None)], "search_space.embed_dim must be"),
    "space depth [11.5]": (lambda t, c, w: ["info", "--space", _space(t, "depth", [11.5])], "depth[0] must be an int, got 11.5"),
    "space not UTF-8": (lambda t, c, w: ["info", "--space", _write(t, "space.yaml", b"\xff: 1")], "space.yaml: not a UTF-8"),
    "config YAML not UTF-8": (lambda t, c, w: ["distill", "--config", _write(t, "c.yaml", b"\xff: 1"), "--print-config"],
                              "c.yaml: not a UTF-8"),
    "--device bogus": (lambda t, c, w: ["extract", "--checkpoint", c, "--output", t / "o", "--device", "bogus", w],
                       "device 'bogus' is not one of cpu, cuda, cuda:N or mps"),
    "--batch-seconds 0": (lambda t, c, w: ["extract", "--checkpoint", c, "--output", t / "o", "--batch-seconds", "0", w],
                          "expected a positive number of seconds, got '0'"),
    "--batch-seconds -5": (lambda t, c, w: ["extract", "--checkpoint", c, "--output", t / "o", "--batch-seconds", "-5", w],
                           "expected a positive number of seconds"),
    "--batch-seconds inf": (lambda t, c, w: ["extract", "--checkpoint", c, "--output", t / "o", "--batch-seconds", "inf", w],
                            "expected a positive number of seconds"),
    "--max-latency-ms nan": (lambda t, c, w: ["search", "--checkpoint", c, "--teacher", c, "--valid", w, "--out", t / "s",
                                              "--max-latency-ms", "nan"], "max_latency_ms must be a positive number"),
    "demo --test-regex (": (lambda t, c, w: ["demo", "--out", t / "d", "--data", t, "--labels", "w=^(a)", "--test-regex", "("],
                            "--test-regex '(' is not a valid regular expression"),
}
if not torch.cuda.is_available():
    BAD_INPUTS["--device cuda on a CPU build"] = (
        lambda t, c, w: ["extract", "--checkpoint", c, "--output", t / "o", "--device", "cuda", w], "device 'cuda': ")


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_every_bad_input_is_one_line(case, tiny_checkpoint, tmp_path, capsys):
    wav = tmp_path / "a.wav"
    sf.write(wav, synthetic_speech(0.3, 150.0).numpy(), 16000)
    argv, match = BAD_INPUTS[case]
    argv = argv(tmp_path, tiny_checkpoint, wav)
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # a usage error, found by argparse
        code = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("lighthubert: error: "), err
    assert match in lines[0] and "weights_only=False" not in lines[0]
    assert not (tmp_path / "o").exists()  # refused before any output


def test_audio_the_model_cannot_use_fails_that_file_only(tiny_checkpoint, tmp_path, capsys):
    """A float WAV peaking at 1e30 (finite, but the features overflow) and a 1 Hz header."""
    good, loud, slow = tmp_path / "good.wav", tmp_path / "loud.wav", tmp_path / "slow.wav"
    sf.write(good, synthetic_speech(0.3, 150.0).numpy(), 16000)
    sf.write(loud, 1e30 * synthetic_speech(0.3, 150.0).numpy(), 16000, subtype="FLOAT")
    sf.write(slow, np.zeros(4, np.float32), 1)
    code, out, err = run(capsys, "extract", "--checkpoint", tiny_checkpoint, "--output", tmp_path / "o", "--quiet",
                         good, loud, slow)
    assert code == 1 and "wrote 1 file(s)" in out and "2 failed" in out
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("lighthubert: failed: ") for line in lines)
    said = {line.split(": ")[2]: line for line in lines}  # file -> its line
    assert "the model's features are not finite" in said[str(loud)] and "peaks at 9e+29" in said[str(loud)]  # synthetic_speech peaks at 0.9
    assert "sample rate 1 Hz is below 4000 Hz" in said[str(slow)]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["good.npy"]  # nothing for the failed files


def _disk_full(monkeypatch):
    """Every write of a file's bytes writes half, then fails as a full disk does (torch.save
    raises RuntimeError for it, everything else OSError)."""
    import errno
    from pathlib import Path as P

    def half(self, data, *a, **k):
        with open(self, "wb") as f:
            f.write((data.encode() if isinstance(data, str) else data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    def torch_save(obj, f, *a, **k):
        P(f).write_bytes(b"PK\x03\x04")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")

    monkeypatch.setattr(P, "write_bytes", half)
    monkeypatch.setattr(P, "write_text", half)
    monkeypatch.setattr(torch, "save", torch_save)
    monkeypatch.setattr(np, "save", lambda f, arr, *a, **k: (f.write(b"\x93NUMPY"), half(P(f.name), b"xx")))
    if hasattr(torch.onnx, "ONNXProgram"):  # the exporter's own file writer
        monkeypatch.setattr(torch.onnx.ONNXProgram, "save", lambda self, path, *a, **k: half(P(path), b"\x08\x07" * 64))


@pytest.mark.parametrize("fmt, output", [("compact", "c"), ("hf", "hf"), ("official", "m.pt"), ("onnx", "m.onnx")])
def test_a_full_disk_keeps_the_earlier_export(fmt, output, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    if fmt == "onnx":
        pytest.importorskip("onnxscript")
    argv = ["export", "--checkpoint", tiny_checkpoint, "--format", fmt, "--subnet", "max", "--output", tmp_path / output]
    assert run(capsys, *argv)[0] == 0
    target = tmp_path / output
    before = {p: p.read_bytes() for p in ([target] if target.is_file() else sorted(target.iterdir()))}
    _disk_full(monkeypatch)
    code, _, err = run(capsys, *argv)
    monkeypatch.undo()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and f"{target}: could not be written" in lines[0], err
    assert {p: p.read_bytes() for p in before} == before  # every earlier file, byte for byte
    assert sorted(tmp_path.iterdir()) == sorted({tiny_checkpoint, target})  # no temporary file or folder left


def test_a_full_disk_during_extract_names_the_file_and_leaves_no_tmp(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    wav = tmp_path / "a.wav"
    sf.write(wav, synthetic_speech(0.3, 150.0).numpy(), 16000)
    _disk_full(monkeypatch)
    code, _, err = run(capsys, "extract", "--checkpoint", tiny_checkpoint, "--output", tmp_path / "o", "--quiet", wav)
    monkeypatch.undo()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and f"{tmp_path / 'o' / 'a.npy'}: could not be written (No space left" in lines[0]
    assert list((tmp_path / "o").iterdir()) == []
