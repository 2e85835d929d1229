"""WavLM teachers: transformers `WavLMModel` folders and the authors' `{'cfg', 'model'}` checkpoints.

References are independent implementations: transformers' `WavLMModel` (random weights,
saved with `save_pretrained`), and the authors' own `WavLM.py` through the golden outputs of
`tests/golden/make_wavlm_golden.py` (its weights and outputs; none of its code is here).
Tolerance 1e-4: float32 with other kernels (their `multi_head_attention_forward`, our SDPA).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import lighthubert
from lighthubert import CheckpointError
from lighthubert.cli import main

transformers = pytest.importorskip("transformers")

GOLDEN = Path(__file__).parent / "golden" / "wavlm_authors.npz"
# heads 32 wide, 32 buckets up to 64 frames: a 0.5 s input has offsets beyond the last bucket
TINY = dict(hidden_size=96, num_hidden_layers=3, num_attention_heads=3, intermediate_size=128, conv_dim=[32, 32, 32],
            conv_kernel=[10, 3, 2], conv_stride=[5, 2, 2], num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
            num_buckets=32, max_bucket_distance=64)
LARGE_STYLE = dict(feat_extract_norm="layer", do_stable_layer_norm=True)


def wavlm(cls=None, seed=0, **overrides):
    torch.manual_seed(seed)
    model = (cls or transformers.WavLMModel)(transformers.WavLMConfig(**{**TINY, **overrides})).eval()
    with torch.no_grad():  # LayerNorms, biases and the gates' constants off their 1 / 0 init
        for name, p in model.named_parameters():
            if p.dim() == 1 or "gru_rel_pos_const" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def assert_hidden_states_match(ours, ref, valid=None, stable=False):
    """Ours [1..L] = transformers' [1..L]; pre-LN: our last = `last_hidden_state`; at valid frames."""
    valid = torch.ones(ours.hidden_states[1].shape[:2], dtype=torch.bool) if valid is None else valid
    assert len(ours.hidden_states) == len(ref.hidden_states)
    for i in range(1, len(ours.hidden_states) - (1 if stable else 0)):
        torch.testing.assert_close(ours.hidden_states[i][valid], ref.hidden_states[i][valid], atol=1e-4, rtol=0)
    torch.testing.assert_close(ours.hidden_states[-1][valid], ref.last_hidden_state[valid], atol=1e-4, rtol=0)


@pytest.mark.parametrize("overrides, stable", [({}, False), (LARGE_STYLE, True)])
def test_transformers_folder(tmp_path, overrides, stable):
    hf = wavlm(**overrides)
    hf.save_pretrained(tmp_path)
    teacher = lighthubert.load(tmp_path)
    assert teacher.cfg.relative_buckets == 32 and teacher.cfg.head_dim == 32
    wav = torch.randn(2, 8000)
    with torch.no_grad():
        assert_hidden_states_match(teacher(wav), hf(wav, output_hidden_states=True), stable=stable)


def test_transformers_padded_batch(tmp_path):
    """A padded batch equals transformers' with its attention mask (layer-norm front end: the
    group-norm one normalises over padding in transformers, not here; docs/interop.md)."""
    hf = wavlm(**LARGE_STYLE)
    hf.save_pretrained(tmp_path)
    wav, lengths = torch.randn(2, 8000), torch.tensor([8000, 5000])
    mask = (torch.arange(8000)[None] < lengths[:, None]).long()
    with torch.no_grad():
        ours = lighthubert.load(tmp_path)(wav, lengths)
        ref = hf(wav, attention_mask=mask, output_hidden_states=True)
    assert_hidden_states_match(ours, ref, ~ours.padding_mask, stable=True)


def test_ctc_folder_drops_the_head(tmp_path):
    hf = wavlm(transformers.WavLMForCTC, vocab_size=12)
    hf.save_pretrained(tmp_path)
    wav = torch.randn(1, 6000)
    with torch.no_grad():
        assert_hidden_states_match(lighthubert.load(tmp_path)(wav), hf.wavlm(wav, output_hidden_states=True))


@pytest.mark.slow
def test_transformers_base_shape(tmp_path):
    hf = transformers.WavLMModel(transformers.WavLMConfig()).eval()  # WavLM Base: 320 buckets up to 800 frames
    hf.save_pretrained(tmp_path)
    wav = torch.randn(1, 16000)
    with torch.no_grad():
        assert_hidden_states_match(lighthubert.load(tmp_path)(wav), hf(wav, output_hidden_states=True))


def authors_checkpoint(name: str) -> tuple[dict, np.lib.npyio.NpzFile]:
    golden = np.load(GOLDEN)
    prefix = f"{name}/model/"
    state = {k[len(prefix):]: torch.from_numpy(golden[k]) for k in golden.files if k.startswith(prefix)}
    return {"cfg": json.loads(str(golden[f"{name}/cfg"])), "model": state}, golden


@pytest.mark.parametrize("name", ["base", "large"])
def test_authors_checkpoint(tmp_path, name):
    ckpt, golden = authors_checkpoint(name)
    torch.save(ckpt, tmp_path / "WavLM-tiny.pt")
    kind, teacher = lighthubert.checkpoint.load_with_format(tmp_path / "WavLM-tiny.pt")
    assert kind == "wavlm" and teacher.cfg.normalize == (name == "large")
    with torch.no_grad():
        out = teacher(torch.from_numpy(golden[f"{name}/wav"]))
    layers = golden[f"{name}/layers"]
    assert len(out.hidden_states) == len(layers) + 1
    for i, ref in enumerate(layers[:-1] if name == "large" else layers, start=1):
        np.testing.assert_allclose(out.hidden_states[i].numpy(), ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(out.hidden_states[-1].numpy(), golden[f"{name}/final"], atol=1e-4, rtol=0)


def test_teacher_info(tmp_path, capsys):
    hf = wavlm()
    hf.save_pretrained(tmp_path / "hf")
    assert main(["teacher-info", str(tmp_path / "hf"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "wavlm" and info["architecture"].startswith("WavLM") and info["layers"] == 3
    assert info["embed_dim"] == 96 and info["heads"] == 3
    assert info["all_weights"] == sum(p.numel() for p in hf.parameters())
    g = dict(hf.named_parameters())["encoder.pos_conv_embed.conv.parametrizations.weight.original0"]
    assert info["parameters"] == info["all_weights"] - g.numel()  # the official rule leaves out weight_g only


def test_bad_inputs(tmp_path, capsys):
    ckpt, _ = authors_checkpoint("base")
    del ckpt["model"]["encoder.layers.0.self_attn.relative_attention_bias.weight"]
    torch.save(ckpt, tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match="without its relative-attention weights"):
        lighthubert.load(tmp_path / "cut.pt")
    wavlm().save_pretrained(tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**cfg, "model_type": "unispeech-sat"}))
    capsys.readouterr()
    assert main(["teacher-info", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'unispeech-sat' is not supported" in err[0] and "wavlm, data2vec-audio" in err[0]
