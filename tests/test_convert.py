"""Checkpoint conversion: golden parity with the official code, official .pt round trips,
key tables, and safe loading of bad files."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import seeded  # tests/golden/seeded.py, put on sys.path by conftest
import torch
from torch import nn

from lighthubert import atomic, formats, safeload
from lighthubert.safeload import CheckpointError
from lighthubert.model import PosConv
from lighthubert.space import SearchSpace, SubnetConfig, count_subnet_params
from lighthubert.supernet import LightHuBERT


def project(features) -> np.ndarray:
    """Every hidden state of utterance 0 on the seeded unit vectors, as make_golden.py stores them."""
    proj = seeded.projection()
    return np.stack([(h[0] @ proj[: h.size(-1)]).numpy() for h in features.hidden_states])


# -- golden parity -----------------------------------------------------------------------------
@pytest.mark.parametrize("space", ["base", "small"])
def test_golden_parity_with_official_code(official_supernet, golden, space):
    """Ours against hidden states computed by the official implementation (tests/golden/).

    Tolerance 1e-4: both run float32 over 12 layers of 768-wide random weights, but we use
    `scaled_dot_product_attention` and fused LayerNorm/GELU while the official code uses
    bmm + an fp32 softmax, so summation orders differ; observed differences are about 5e-6.
    """
    model = official_supernet(space)
    x = seeded.audio()
    names = sorted(k for k in golden if k.startswith(space + "/") and k.count("/") == 1)
    assert names == sorted(f"{space}/{name}{seed or ''}" for name, seed in seeded.subnet_plan(space))
    for key in names:
        official = json.loads(str(golden[key + "/subnet"]))
        sub = model.set_subnet(SubnetConfig.from_official(official))
        assert count_subnet_params(model.space, sub) == int(golden[key + "/params"]), key
        with torch.no_grad():
            ours = project(model(x))
        assert ours.shape == golden[key].shape, key
        diff = float(np.abs(ours - golden[key]).max())
        assert diff <= 1e-4, f"{key}: max abs diff {diff}"


def test_official_checkpoint_layout_loads_by_its_cfg(official_supernet, golden):
    """An official-style `.pt` dict (no `lighthubert` section, with the trainer's extra keys)
    picks the small space from `pruner_supernet`, starts at its default subnet, reports the
    dropped keys and reproduces the official output."""
    state = formats.fairseq.from_ours(official_supernet("small").state_dict(), "layer_norm")
    state = {**state, "final_proj.weight": torch.zeros(256, 768), "final_proj.bias": torch.zeros(256),
             "label_embs_concat": torch.zeros(504, 256)}
    cfg = {"model": {"_name": "hubert_pruner", "pruner_supernet": "/x/config/supernet/Supernet-Small.yaml",
                     "conv_feature_layers": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
                     "extractor_mode": "layer_norm", "encoder_layerdrop": 0.05},
           "task": {"normalize": True}}
    model, dropped = formats.official.load({"cfg": cfg, "model": state}, "test")
    assert sorted(dropped) == ["final_proj.bias", "final_proj.weight", "label_embs_concat"]
    assert model.space.name == "small" and model.subnet == SearchSpace.small().default
    assert model.cfg.layerdrop == 0.05 and not model.training
    with torch.no_grad():
        ours = project(model(seeded.audio()))
    assert float(np.abs(ours - golden["small/default"]).max()) <= 1e-4


# -- our official-format checkpoints -----------------------------------------------------------
def round_trip(model: LightHuBERT, tmp_path) -> tuple[LightHuBERT, list[str]]:
    path = tmp_path / "ckpt.pt"
    atomic.save_file(formats.official.checkpoint(model), path)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left
    return formats.official.load(safeload.load_file(path), str(path))


@pytest.mark.parametrize("head_dim", [64, 32])  # 32: the subnet's atten_dim is written with the model's head_dim
def test_official_checkpoint_round_trip(make_tiny_supernet, wav, tmp_path, head_dim):
    model = make_tiny_supernet(head_dim=head_dim, seed=3)
    sub = model.set_subnet(model.space.sample(random.Random(2)))
    ckpt = formats.official.checkpoint(model)
    assert "feature_extractor.conv_layers.0.0.weight" in ckpt["model"]  # fairseq layout
    assert "feature_extractor.conv_layers.2.2.1.bias" in ckpt["model"]
    assert ckpt["cfg"]["model"]["_name"] == "hubert_pruner"
    assert formats.fairseq.parse_conv_layers(ckpt["cfg"]["model"]["conv_feature_layers"]) == model.cfg.conv_layers
    loaded, dropped = round_trip(model, tmp_path)
    assert dropped == [] and loaded.subnet == sub and loaded.space == model.space and not loaded.training
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    with torch.no_grad():
        a, b = model(wav), loaded(wav)
    for x, y in zip(a.hidden_states + [a.prediction], b.hidden_states + [b.prediction]):
        assert torch.equal(x, y)


def test_checkpoint_extra_keys_are_dropped_and_reported(make_tiny_supernet, wav):
    model = make_tiny_supernet(head_dim=64)
    ckpt = formats.official.checkpoint(model)
    ckpt["model"].update({"final_proj.weight": torch.zeros(8, 128), "final_proj.bias": torch.zeros(8),
                          "label_embs_concat": torch.zeros(4, 8)})
    loaded, dropped = formats.official.load(ckpt, "test")
    assert sorted(dropped) == sorted(["final_proj.weight", "final_proj.bias", "label_embs_concat"])
    with torch.no_grad():
        assert torch.equal(loaded(wav).hidden_states[-1], model(wav).hidden_states[-1])


def test_new_weight_norm_spelling_maps_to_weight_g_v():
    state = {"encoder.pos_conv.0.parametrizations.weight.original0": torch.rand(1, 1, 16),
             "encoder.pos_conv.0.parametrizations.weight.original1": torch.randn(128, 32, 16)}
    ours, dropped = formats.fairseq.to_ours(state)
    assert dropped == [] and set(ours) == {"encoder.pos_conv.0.weight_g", "encoder.pos_conv.0.weight_v"}
    assert ours["encoder.pos_conv.0.weight_g"] is state["encoder.pos_conv.0.parametrizations.weight.original0"]
    assert ours["encoder.pos_conv.0.weight_v"] is state["encoder.pos_conv.0.parametrizations.weight.original1"]


def test_new_weight_norm_spelling_means_what_torch_means():
    """torch's `parametrizations.weight_norm(dim=2)` state, mapped, gives PosConv the same weight."""
    torch.manual_seed(0)
    conv = nn.utils.parametrizations.weight_norm(nn.Conv1d(128, 128, 16, groups=4), name="weight", dim=2)
    with torch.no_grad():
        conv.parametrizations.weight.original0.mul_(torch.rand(1, 1, 16) + 0.5)
    state = {f"encoder.pos_conv.0.{k}": v for k, v in conv.state_dict().items()}
    ours, _ = formats.fairseq.to_ours(state)
    pos = PosConv(128, 16, 4)
    pos.load_state_dict({k.removeprefix("encoder.pos_conv.0."): v for k, v in ours.items()}, strict=True)
    torch.testing.assert_close(pos.full_weight(), conv.weight, rtol=0, atol=1e-6)


def test_load_official_with_new_weight_norm_spelling(make_tiny_supernet, wav):
    model = make_tiny_supernet(head_dim=64)
    ckpt = formats.official.checkpoint(model)
    st = ckpt["model"]
    st["encoder.pos_conv.0.parametrizations.weight.original0"] = st.pop("encoder.pos_conv.0.weight_g")
    st["encoder.pos_conv.0.parametrizations.weight.original1"] = st.pop("encoder.pos_conv.0.weight_v")
    loaded, _ = formats.official.load(ckpt, "test")
    with torch.no_grad():
        assert torch.equal(loaded(wav).hidden_states[-1], model(wav).hidden_states[-1])


# -- errors ------------------------------------------------------------------------------------
def test_unknown_key_is_named():
    with pytest.raises(CheckpointError, match=r"encoder\.layers\.0\.fc3\.weight"):
        formats.fairseq.to_ours({"mask_emb": torch.zeros(768), "encoder.layers.0.fc3.weight": torch.zeros(2, 2)})


def test_unknown_key_in_checkpoint_is_named(make_tiny_supernet):
    ckpt = formats.official.checkpoint(make_tiny_supernet(head_dim=64))
    ckpt["model"]["encoder.layers.0.adapter.weight"] = torch.zeros(4)
    with pytest.raises(CheckpointError, match=r"encoder\.layers\.0\.adapter\.weight"):
        formats.official.load(ckpt, "test")


def test_shape_mismatch_names_the_key(make_tiny_supernet):
    model = make_tiny_supernet(head_dim=64)
    state = dict(model.state_dict())
    state["encoder.layers.2.fc1.weight"] = torch.zeros(512, 96)
    with pytest.raises(CheckpointError, match=r"encoder\.layers\.2\.fc1\.weight.*\(512, 96\).*\(512, 128\)"):
        safeload.load_state(model, state, "test")


def test_missing_key_is_named(make_tiny_supernet):
    model = make_tiny_supernet(head_dim=64)
    state = dict(model.state_dict())
    del state["mask_emb"]
    with pytest.raises(CheckpointError, match="mask_emb"):
        safeload.load_state(model, state, "test")


@pytest.mark.parametrize(
    "ckpt, words",
    [
        ({"model": {}}, "not a LightHuBERT checkpoint"),
        ({"cfg": {"model": {"_name": "hubert"}}, "model": {}}, "'hubert'"),
    ],
)
def test_load_official_rejects_other_dicts(ckpt, words):
    with pytest.raises(CheckpointError, match=words):
        formats.official.load(ckpt, "test")


class Foreign:
    """A class that weights-only loading must refuse to import."""

    def __init__(self) -> None:
        self.x = torch.zeros(2)


def write_truncated(path):
    torch.save({"model": {"w": torch.randn(64, 64)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_text(path):
    path.write_text("this is not a checkpoint\nsecond line\n")


def write_foreign(path):
    torch.save({"model": Foreign()}, path)


def write_list(path):
    torch.save([torch.zeros(2)], path)


@pytest.mark.parametrize(
    "write, words",
    [
        (write_truncated, "PyTorch checkpoint"),
        (write_text, "PyTorch checkpoint"),
        (write_foreign, "Foreign"),
        (write_list, "expected a dict"),
    ],
)
def test_load_file_bad_files_raise_one_line(tmp_path, write, words):
    path = tmp_path / "model.pt"
    write(path)
    with pytest.raises(CheckpointError, match=words) as err:
        safeload.load_file(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message


def test_load_file_missing(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        safeload.load_file(tmp_path / "absent.pt")


def test_load_file_plain_dict(tmp_path):
    path = tmp_path / "ok.pt"
    atomic.save_file({"cfg": {"a": [1, 2]}, "model": {"w": torch.arange(3.0)}}, path)
    obj = safeload.load_file(path)
    assert obj["cfg"] == {"a": [1, 2]} and torch.equal(obj["model"]["w"], torch.arange(3.0))


# -- official config -------------------------------------------------------------------------
def test_parse_conv_layers():
    layers = formats.fairseq.parse_conv_layers("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2")
    assert layers == [[512, 10, 5]] + [[512, 3, 2]] * 4 + [[512, 2, 2]] * 2


@pytest.mark.parametrize("text", ["__import__('os')", "[(512, 10, 5)] + open('x')", "[(1.5, 2, 2)]", "[(512,10,5)"])
def test_parse_conv_layers_rejects_code(text):
    with pytest.raises(CheckpointError, match="conv_feature_layers"):
        formats.fairseq.parse_conv_layers(text)
