"""Export round trips: compact (lighthubert), hf (transformers), onnx (onnxruntime), official.

Each export must reproduce the supernet's sliced forward on the same audio within 1e-4
(float32; different kernels sum in different orders).
"""

import ast
import dataclasses
import json
import os
import random
import stat
import sys

import numpy as np
import pytest
import torch

import lighthubert
from lighthubert import atomic, formats, safeload
from lighthubert.cli import main
from lighthubert.export import REMOTE_CODE, export_subnet
from lighthubert.space import SearchSpace, SubnetConfig
from lighthubert.supernet import LightHuBERT

from conftest import demo_like_supernet

ATOL = 1e-4


def supernet_outputs(model, wav, lengths=None):
    with torch.no_grad():
        return torch.stack(model(wav, lengths).hidden_states)


@pytest.fixture
def tiny(tiny_space):
    torch.manual_seed(0)
    return LightHuBERT(tiny_space).eval()


def nonuniform(space, seed=0):
    rng = random.Random(seed)
    while True:
        sub = space.sample(rng)
        if not sub.is_uniform:
            return sub


def test_compact_round_trip_nonuniform(tiny, tmp_path):
    sub = nonuniform(tiny.space)
    export_subnet(tiny, tmp_path / "c", "compact", sub)
    meta = json.loads((tmp_path / "c" / "config.json").read_text())
    assert meta["model"]["heads"] == list(sub.heads) and meta["model"]["ffn_dim"] == list(sub.ffn_dim)
    loaded = lighthubert.load(tmp_path / "c")
    assert type(loaded) is lighthubert.HuBERT
    wav = torch.randn(2, 3000)
    lengths = torch.tensor([3000, 2100])
    tiny.set_subnet(sub)
    torch.testing.assert_close(supernet_outputs(loaded, wav, lengths), supernet_outputs(tiny, wav, lengths), atol=ATOL, rtol=0)
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in tiny.parameters())


def test_compact_float16_is_half_the_size(tiny, tmp_path):
    export_subnet(tiny, tmp_path / "f32", "compact", "max")
    export_subnet(tiny, tmp_path / "f16", "compact", "max", dtype=torch.float16)
    s32 = (tmp_path / "f32" / "model.safetensors").stat().st_size
    s16 = (tmp_path / "f16" / "model.safetensors").stat().st_size
    assert s16 < 0.55 * s32
    tiny.set_subnet("max")
    wav = torch.randn(1, 2000)
    torch.testing.assert_close(supernet_outputs(lighthubert.load(tmp_path / "f16"), wav), supernet_outputs(tiny, wav), atol=0.05, rtol=0.05)


def _hf_outputs(folder, wav):
    transformers = pytest.importorskip("transformers")
    hf = transformers.HubertModel.from_pretrained(folder).eval()
    with torch.no_grad():
        out = hf(wav, output_hidden_states=True)
    return out


@pytest.mark.parametrize("heads", [4, 3])  # 3 heads of 32 in a 128 model: padded with an all-zero head
def test_hf_round_trip_uniform(tiny, tmp_path, heads):
    sub = SubnetConfig(128, (heads,) * 3, (384,) * 3)
    export_subnet(tiny, tmp_path / "hf", "hf", sub)
    pre = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    assert pre["do_normalize"] is True and pre["sampling_rate"] == 16000
    wav = torch.randn(1, 4000)
    out = _hf_outputs(tmp_path / "hf", wav)
    ours = supernet_outputs(tiny, wav)
    for i in range(1, len(out.hidden_states)):
        torch.testing.assert_close(out.hidden_states[i], ours[i], atol=ATOL, rtol=0)


def test_hf_exports_what_hubert_model_cannot_hold_as_remote_code(tmp_path, capsys):
    """Per-layer heads and FFN widths, and 144 = 2.25 heads of 64: transformers' HubertModel
    holds neither, so the folder carries this package's model for `trust_remote_code`."""
    transformers = pytest.importorskip("transformers")
    model = demo_like_supernet()
    sub = SubnetConfig(144, (1, 3, 1), (288, 288, 576))
    ckpt = tmp_path / "supernet.pt"
    atomic.save_file(formats.official.checkpoint(model), ckpt)
    assert main(["export", "--checkpoint", str(ckpt), "--format", "hf", "--subnet", json.dumps(
        {"embed_dim": 144, "heads": [1, 3, 1], "ffn_dim": [288, 288, 576]}), "--output", str(tmp_path / "hf")]) == 0
    assert "trust_remote_code=True" in capsys.readouterr().out
    folder = tmp_path / "hf"
    for code in folder.glob("*.py"):  # the remote code needs torch and transformers, not this package
        tree = ast.parse(code.read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
        assert imported <= {"__future__", "dataclasses", "math", "typing", "torch", "transformers"}, (code.name, imported)
    hf = transformers.AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(hf).__name__ == "LightHuBERTModel"
    extractor = transformers.AutoFeatureExtractor.from_pretrained(folder)
    assert extractor.return_attention_mask and extractor.do_normalize == model.cfg.normalize
    wav, lengths = torch.randn(2, 4000), torch.tensor([4000, 3100])
    mask = (torch.arange(4000)[None, :] < lengths[:, None]).long()
    model.set_subnet(sub)
    ref = supernet_outputs(model, wav, lengths)
    with torch.no_grad():
        out = torch.stack(hf(wav, attention_mask=mask, output_hidden_states=True).hidden_states)
        ours = supernet_outputs(lighthubert.load(folder), wav, lengths)  # our loader reads the folder too
    frames = model.frame_lengths(lengths)
    assert out.shape == ref.shape == (4, 2, int(frames[0]), 144)
    for b in range(2):  # valid frames of each utterance
        torch.testing.assert_close(out[:, b, : frames[b]], ref[:, b, : frames[b]], atol=ATOL, rtol=0)
        torch.testing.assert_close(ours[:, b, : frames[b]], ref[:, b, : frames[b]], atol=ATOL, rtol=0)


def test_hf_stays_hubert_model_where_it_fits(tiny, tmp_path):
    export_subnet(tiny, tmp_path / "hf", "hf", SubnetConfig(128, (3,) * 3, (384,) * 3))
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["HubertModel"]
    assert not list((tmp_path / "hf").glob("*.py"))


def test_hf_over_a_remote_code_export_leaves_no_stale_code(tiny, tmp_path):
    """A HubertModel export into a folder that held a remote-code one removes the old `.py`
    files (they would no longer match config.json) and keeps what else the user put there."""
    export_subnet(tiny, tmp_path / "hf", "hf", nonuniform(tiny.space, seed=1))
    assert {p.name for p in (tmp_path / "hf").glob("*.py")} == set(REMOTE_CODE)
    (tmp_path / "hf" / "NOTES.md").write_text("mine")
    export_subnet(tiny, tmp_path / "hf", "hf", SubnetConfig(128, (3,) * 3, (384,) * 3))
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["HubertModel"]
    assert not list((tmp_path / "hf").glob("*.py")) and (tmp_path / "hf" / "NOTES.md").read_text() == "mine"


def _onnx_run(path, wav, lengths):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"waveform": wav.numpy(), "lengths": lengths.numpy()})[0]


def test_onnx_nonuniform_dynamic_axes(tiny, tmp_path):
    pytest.importorskip("onnxscript")
    sub = nonuniform(tiny.space, seed=1)
    export_subnet(tiny, tmp_path / "m.onnx", "onnx", sub)
    for batch, samples in ((2, 3000), (3, 5100)):
        wav = torch.randn(batch, samples)
        lengths = torch.tensor([samples - 400 * i for i in range(batch)])
        np.testing.assert_allclose(_onnx_run(tmp_path / "m.onnx", wav, lengths), supernet_outputs(tiny, wav, lengths).numpy(), atol=ATOL)


def test_onnx_int8_quantizes_the_transformer_matmuls_only(tiny, tmp_path, capsys):
    """--quantize int8: the weight matmuls after the conv front end become int8 (1 + 6 per
    layer), the front end's stay float; hidden states move by about 1% of their range,
    far above float noise (ATOL) and far below the states themselves."""
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    sub = nonuniform(tiny.space, seed=1)
    export_subnet(tiny, tmp_path / "f.onnx", "onnx", sub)
    export_subnet(tiny, tmp_path / "q.onnx", "onnx", sub, quantize="int8")
    assert not (tmp_path / "q.float32.onnx").exists()
    ops = [n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node]
    float_ops = [n.op_type for n in onnx.load(str(tmp_path / "f.onnx")).graph.node]
    assert ops.count("MatMulInteger") == 1 + 6 * sub.depth
    assert ops.count("MatMul") == float_ops.count("MatMul") - ops.count("MatMulInteger") > 0  # front end + attention
    assert (tmp_path / "q.onnx").stat().st_size < 0.6 * (tmp_path / "f.onnx").stat().st_size
    wav, lengths = torch.randn(2, 4000), torch.tensor([4000, 3000])
    ref = supernet_outputs(tiny, wav, lengths).numpy()
    got = _onnx_run(tmp_path / "q.onnx", wav, lengths)
    for i in range(ref.shape[0]):
        err = np.abs(got[i] - ref[i]).max() / np.abs(ref[i]).max()
        assert 10 * ATOL < err < 0.05, f"hidden state {i}: relative error {err:.4f}"

    ckpt = tmp_path / "s.pt"
    atomic.save_file(formats.official.checkpoint(tiny), ckpt)
    assert main(["export", "--checkpoint", str(ckpt), "--format", "compact", "--output", str(tmp_path / "c"),
                 "--quantize", "int8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "with the onnx format" in err[0]


def test_official_export_records_subnet(tiny, tmp_path):
    sub = nonuniform(tiny.space, seed=2)
    export_subnet(tiny, tmp_path / "o.pt", "official", sub)
    loaded = lighthubert.load(tmp_path / "o.pt")
    assert loaded.subnet == sub
    wav = torch.randn(1, 2500)
    torch.testing.assert_close(supernet_outputs(loaded, wav), supernet_outputs(tiny, wav), atol=0, rtol=0)


def test_export_leaves_the_callers_model_as_it_was(tiny, tmp_path):
    """Exporting reads the model: its modes (a mixed train/eval one), dtype (float64) and weights
    stay as the caller had them, and the ONNX graph (float32) still computes its outputs."""
    pytest.importorskip("onnxscript")
    model, _ = tiny.export(nonuniform(tiny.space, seed=3))
    model = model.double().train()
    model.encoder.layers[0].eval()  # e.g. a frozen part
    modes = {name: m.training for name, m in model.named_modules()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for fmt, out in (("compact", "c"), ("hf", "h"), ("onnx", "m.onnx")):
        export_subnet(model, tmp_path / out, fmt)
        assert {name: m.training for name, m in model.named_modules()} == modes, fmt
        state = model.state_dict()
        assert all(state[k].dtype == torch.float64 and torch.equal(state[k], v) for k, v in before.items()), fmt
    wav, lengths = torch.randn(2, 3000), torch.tensor([3000, 2100])
    with torch.no_grad():
        want = torch.stack(model.eval()(wav.double(), lengths).hidden_states).float().numpy()
    np.testing.assert_allclose(_onnx_run(tmp_path / "m.onnx", wav, lengths), want, atol=ATOL)


def test_export_argument_errors(tiny, tmp_path):
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export_subnet(tiny, tmp_path / "x", "tflite")
    dense, _ = tiny.export("max")
    with pytest.raises(ValueError, match="official format holds a supernet"):
        export_subnet(dense, tmp_path / "x.pt", "official")
    with pytest.raises(ValueError, match="only be chosen for a supernet"):
        export_subnet(dense, tmp_path / "x", "compact", "min")


@pytest.mark.slow
@pytest.mark.parametrize("space", ["base", "small"])
def test_default_subnets_full_size(space, tmp_path):
    """Both official default subnets through compact, hf and onnx, on 1 s of audio."""
    torch.manual_seed(0)
    model = LightHuBERT(SearchSpace.named(space)).eval()
    wav = torch.randn(1, 16000)
    ref = supernet_outputs(model, wav)
    export_subnet(model, tmp_path / "c", "compact")
    torch.testing.assert_close(supernet_outputs(lighthubert.load(tmp_path / "c"), wav), ref, atol=ATOL, rtol=0)
    export_subnet(model, tmp_path / "hf", "hf")
    out = _hf_outputs(tmp_path / "hf", wav)
    for i in range(1, len(out.hidden_states)):
        torch.testing.assert_close(out.hidden_states[i], ref[i], atol=ATOL, rtol=0)
    pytest.importorskip("onnxscript")
    export_subnet(model, tmp_path / "m.onnx", "onnx")
    np.testing.assert_allclose(_onnx_run(tmp_path / "m.onnx", wav, torch.tensor([16000])), ref.numpy(), atol=ATOL)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_follow_the_umask(tiny, tmp_path, umask):
    """Checkpoints and exports are shared like any other file (they were 0600 beside a 0644 config.json)."""
    old = os.umask(umask)
    try:
        atomic.save_file(formats.official.checkpoint(tiny), tmp_path / "run" / "step-1.pt")  # the trainer's writer
        export_subnet(tiny, tmp_path / "o.pt", "official")
        export_subnet(tiny, tmp_path / "c", "compact")
        export_subnet(tiny, tmp_path / "hf", "hf", SubnetConfig(96, (2, 3, 3), (288, 288, 192)))
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 9 and not list(tmp_path.rglob("*.tmp"))
    assert {str(p): stat.S_IMODE(p.stat().st_mode) for p in files} == {str(p): 0o666 & ~umask for p in files}


def test_onnx_export_prints_one_line(tiny, tmp_path, capfd):
    """Without -v: our line only; the exporter's INFO lines and warnings stay off the terminal."""
    pytest.importorskip("onnxscript")
    ckpt = tmp_path / "tiny.pt"
    atomic.save_file(formats.official.checkpoint(tiny), ckpt)
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--output", str(tmp_path / "m.onnx")]) == 0
    out, err = capfd.readouterr()
    assert err == "" and out.count("\n") == 1 and out.startswith("wrote onnx export"), (out, err[:2000])


@pytest.mark.parametrize("missing", ["onnx", "onnxscript"])
def test_missing_onnx_package_names_the_extra(tiny, tmp_path, capsys, monkeypatch, missing):
    ckpt = tmp_path / "tiny.pt"
    atomic.save_file(formats.official.checkpoint(tiny), ckpt)
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` now raises ImportError
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--output", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"lighthubert: error: ONNX export needs {missing}, which is not installed: pip install 'lighthubert[onnx]'"]
    assert not (tmp_path / "m.onnx").exists()


# -- an elastic conv front end (issue 14) -------------------------------------------------------
NARROW = SubnetConfig(128, (4,) * 3, (384,) * 3, (16, 24, 16))  # uniform, so transformers' HubertModel holds it


@pytest.fixture
def front_end(make_front_end_supernet):
    return make_front_end_supernet()


def test_compact_writes_the_narrow_front_end(front_end, tmp_path):
    export_subnet(front_end, tmp_path / "c", "compact", NARROW)
    meta = json.loads((tmp_path / "c" / "config.json").read_text())
    assert [c[0] for c in meta["model"]["conv_layers"]] == [16, 24, 16] and meta["subnet"]["conv_dim"] == [16, 24, 16]
    loaded = lighthubert.load(tmp_path / "c")
    assert loaded.feature_extractor.conv_layers[1].conv.weight.shape == (24, 16, 3)
    wav, lengths = torch.randn(2, 3000), torch.tensor([3000, 2100])
    front_end.set_subnet(NARROW)
    torch.testing.assert_close(supernet_outputs(loaded, wav, lengths), supernet_outputs(front_end, wav, lengths), atol=ATOL, rtol=0)


@pytest.mark.parametrize("mode", ["layer_norm", "default"])
def test_hf_writes_the_narrow_front_end_as_conv_dim(make_front_end_supernet, tmp_path, mode):
    model = make_front_end_supernet(mode)
    export_subnet(model, tmp_path / "hf", "hf", NARROW)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["HubertModel"] and config["conv_dim"] == [16, 24, 16]
    wav = torch.randn(1, 4000)
    out = _hf_outputs(tmp_path / "hf", wav)
    ours = supernet_outputs(model, wav)
    for i in range(1, len(out.hidden_states)):  # transformers' 0 is the encoder input after pos-conv, ours before
        torch.testing.assert_close(out.hidden_states[i], ours[i], atol=ATOL, rtol=0)


@pytest.mark.slow  # about 13 s on a loaded 2-core machine: the exporter
def test_onnx_writes_the_narrow_front_end(front_end, tmp_path):
    pytest.importorskip("onnxscript")
    sub = dataclasses.replace(nonuniform(front_end.space, seed=1), conv_dim=(24, 16, 16))
    export_subnet(front_end, tmp_path / "m.onnx", "onnx", sub)
    wav, lengths = torch.randn(2, 3000), torch.tensor([3000, 2600])
    np.testing.assert_allclose(_onnx_run(tmp_path / "m.onnx", wav, lengths), supernet_outputs(front_end, wav, lengths).numpy(),
                               atol=ATOL)


def test_official_checkpoint_of_a_front_end_space_is_full_width(front_end, tiny_space, tmp_path):
    """The official format holds the whole supernet (the official code loads it at full width);
    the front-end choice is recorded in our space and subnet under cfg['lighthubert']."""
    export_subnet(front_end, tmp_path / "o.pt", "official", NARROW)
    ckpt = safeload.load_file(tmp_path / "o.pt")
    torch.manual_seed(0)
    fixed = formats.official.checkpoint(LightHuBERT(tiny_space))
    assert {k: v.shape for k, v in ckpt["model"].items()} == {k: v.shape for k, v in fixed["model"].items()}
    assert ckpt["cfg"]["model"]["conv_feature_layers"] == fixed["cfg"]["model"]["conv_feature_layers"]
    ours = ckpt["cfg"]["lighthubert"]
    assert ours["space"]["search_space"]["conv_dim"] == [16, 24, 32] and ours["subnet"]["conv_dim"] == [16, 24, 16]
    loaded = lighthubert.load(tmp_path / "o.pt")
    assert loaded.space == front_end.space and loaded.subnet == NARROW
    wav = torch.randn(1, 2500)
    torch.testing.assert_close(supernet_outputs(loaded, wav), supernet_outputs(front_end, wav), atol=0, rtol=0)
