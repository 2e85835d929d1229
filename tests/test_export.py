"""Export round trips: compact (lighthubert), hf (transformers), onnx (onnxruntime), official.

Each export must reproduce the supernet's sliced forward on the same audio within 1e-4
(float32; different kernels sum in different orders).
"""

import json
import random

import numpy as np
import pytest
import torch

import lighthubert
from lighthubert import checkpoint
from lighthubert.cli import main
from lighthubert.export import export_subnet
from lighthubert.space import SearchSpace, SubnetConfig
from lighthubert.supernet import LightHuBERT

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


def test_hf_refuses_nonuniform_and_too_many_heads(tiny, tmp_path, capsys):
    sub = SubnetConfig(96, (2, 3, 3), (288, 288, 192))
    with pytest.raises(ValueError, match=r"layers \[1, 2\] differ from layer 0.*'compact' or 'onnx'"):
        export_subnet(tiny, tmp_path / "x", "hf", sub)
    with pytest.raises(ValueError, match="cannot hold 4 heads"):
        export_subnet(tiny, tmp_path / "x", "hf", SubnetConfig(64, (4,) * 2, (128,) * 2))
    ckpt = tmp_path / "tiny.pt"
    checkpoint.save_file(checkpoint.official_checkpoint(tiny), ckpt)
    code = main(["export", "--checkpoint", str(ckpt), "--format", "hf", "--subnet", json.dumps(
        {"embed_dim": 96, "heads": [2, 3, 3], "ffn_dim": [288, 288, 192]}), "--output", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "differ from layer 0" in err[0]


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
    checkpoint.save_file(checkpoint.official_checkpoint(tiny), ckpt)
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
