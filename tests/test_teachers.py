"""Teachers from every format: transformers folders, fairseq .pt, torchaudio state dicts.

Reference outputs come from transformers' own `HubertModel` (an independent implementation);
the fairseq and torchaudio files are written by this test from its weights, with the key
layouts of those libraries (`../shared/reference/ecosystem.md` §1.4, §1.9, §2.3, §2.6).
"""

import json
import re
import sys
import types

import pytest
import torch

import lighthubert
from lighthubert import CheckpointError
from lighthubert.cli import main

transformers = pytest.importorskip("transformers")

TINY = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128, conv_dim=[32, 32, 32],
            conv_kernel=[10, 3, 2], conv_stride=[5, 2, 2], num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
# transformers -> fairseq names, this test's own table (ecosystem.md §1.9)
HF_TO_FAIRSEQ = [
    (r"^masked_spec_embed$", "mask_emb"),
    (r"^feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
    (r"^feature_extractor\.conv_layers\.0\.layer_norm\.", "feature_extractor.conv_layers.0.2."),
    (r"^feature_projection\.layer_norm\.", "layer_norm."),
    (r"^feature_projection\.projection\.", "post_extract_proj."),
    (r"^encoder\.pos_conv_embed\.conv\.", "encoder.pos_conv.0."),
    (r"^encoder\.layers\.(\d+)\.attention\.", r"encoder.layers.\1.self_attn."),
    (r"^encoder\.layers\.(\d+)\.layer_norm\.", r"encoder.layers.\1.self_attn_layer_norm."),
    (r"^encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.", r"encoder.layers.\1.fc1."),
    (r"^encoder\.layers\.(\d+)\.feed_forward\.output_dense\.", r"encoder.layers.\1.fc2."),
]


def hf_model(seed=0, **overrides):
    torch.manual_seed(seed)
    model = transformers.HubertModel(transformers.HubertConfig(**{**TINY, **overrides})).eval()
    with torch.no_grad():  # make LayerNorm / bias values distinct from their 1 / 0 init
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def hf_reference(model, wav):
    with torch.no_grad():
        return model(wav, output_hidden_states=True)


def assert_layers_match(ours, ref, stable=False):
    """Ours [1..L] = transformers [1..L] (post-LN); pre-LN: our last = last_hidden_state."""
    got = ours.hidden_states
    assert len(got) == len(ref.hidden_states)
    upto = len(got) - 1 if stable else len(got)
    for i in range(1, upto):
        torch.testing.assert_close(got[i], ref.hidden_states[i], atol=1e-4, rtol=0)  # float32, different kernels
    torch.testing.assert_close(got[-1], ref.last_hidden_state, atol=1e-4, rtol=0)


@pytest.mark.parametrize("overrides, stable", [
    ({}, False),
    (dict(feat_extract_norm="layer", do_stable_layer_norm=True), True),
    (dict(feat_proj_layer_norm=False), False),
])
def test_transformers_folder(tmp_path, overrides, stable):
    hf = hf_model(**overrides)
    hf.save_pretrained(tmp_path)
    teacher = lighthubert.load(tmp_path)
    wav = torch.randn(2, 8000)
    ours = teacher(wav)
    assert_layers_match(ours, hf_reference(hf, wav), stable)
    assert len(ours.layer_results) == TINY["num_hidden_layers"] and ours.layer_results[0].shape == ours.hidden_states[1].shape


@pytest.mark.slow
def test_transformers_base_config(tmp_path):
    hf = transformers.HubertModel(transformers.HubertConfig()).eval()
    hf.save_pretrained(tmp_path)
    wav = torch.randn(1, 16000)
    assert_layers_match(lighthubert.load(tmp_path)(wav), hf_reference(hf, wav))


def test_transformers_bin_weights_and_missing_weights(tmp_path):
    hf = hf_model()  # the older transformers layout: pytorch_model.bin (read with weights_only=True)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(hf.config.to_json_string())
    wav = torch.randn(1, 4000)
    assert_layers_match(lighthubert.load(tmp_path)(wav), hf_reference(hf, wav))
    (tmp_path / "pytorch_model.bin").unlink()
    with pytest.raises(CheckpointError, match="no weight file"):
        lighthubert.load(tmp_path)


def fairseq_keys(hf) -> dict:
    """A transformers model's state dict under fairseq names, by this test's own table."""
    state = {}
    for key, value in hf.state_dict().items():
        key = key.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1", "weight_v")
        for pattern, repl in HF_TO_FAIRSEQ:
            if re.match(pattern, key):
                key = re.sub(pattern, repl, key)
                break
        state[key] = value
    return state


def _fairseq_state(hf):
    state = fairseq_keys(hf)
    state["final_proj.weight"] = torch.randn(16, 64)
    state["final_proj.bias"] = torch.randn(16)
    state["label_embs_concat"] = torch.randn(104, 16)
    return state


def _with_fake_fairseq(fn):
    """Runs `fn` with a stand-in `fairseq.data.dictionary` module, so a pickle names that class."""
    mod = types.ModuleType("fairseq.data.dictionary")

    class Dictionary:
        def __init__(self):
            self.symbols, self.count, self.indices = ["<s>", "<pad>", "</s>", "<unk>", "0"], [1] * 5, {"0": 4}

    Dictionary.__module__ = "fairseq.data.dictionary"
    Dictionary.__qualname__ = "Dictionary"
    mod.Dictionary = Dictionary
    names = ["fairseq", "fairseq.data", "fairseq.data.dictionary"]
    saved = {n: sys.modules.get(n) for n in names}
    sys.modules.update({"fairseq": types.ModuleType("fairseq"), "fairseq.data": types.ModuleType("fairseq.data"),
                        "fairseq.data.dictionary": mod})
    try:
        return fn(Dictionary)
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


FAIRSEQ_CFG = {"_name": "hubert", "extractor_mode": "default", "encoder_layers": 3, "encoder_embed_dim": 64,
               "encoder_ffn_embed_dim": 128, "encoder_attention_heads": 4, "activation_fn": "gelu",
               "conv_feature_layers": "[(32, 10, 5)] + [(32, 3, 2)] + [(32, 2, 2)]", "conv_pos": 16,
               "conv_pos_groups": 4, "layer_norm_first": False, "dropout": 0.1, "encoder_layerdrop": 0.05,
               "final_dim": 16, "untie_final_proj": True}


def test_fairseq_hubert_checkpoint(tmp_path):
    hf = hf_model()
    path = tmp_path / "hubert_tiny.pt"

    def save(Dictionary):
        torch.save({"args": None, "cfg": {"model": FAIRSEQ_CFG, "task": {"normalize": False, "labels": ["km"]}},
                    "model": _fairseq_state(hf), "task_state": {"dictionaries": [Dictionary()]},
                    "optimizer_history": [{"num_updates": 10}]}, path)

    _with_fake_fairseq(save)
    assert "fairseq" not in sys.modules or not hasattr(sys.modules["fairseq"], "data")
    teacher = lighthubert.load(path)
    assert teacher.cfg.extractor_mode == "default" and not teacher.cfg.normalize and teacher.cfg.pred_dim == 0
    wav = torch.randn(2, 8000)
    assert_layers_match(teacher(wav), hf_reference(hf, wav))


def test_fairseq_ctc_finetuned_drops_the_head(tmp_path):
    hf = hf_model()
    state = {f"w2v_encoder.w2v_model.{k}": v for k, v in _fairseq_state(hf).items() if not k.startswith(("final_proj", "label"))}
    state["w2v_encoder.proj.weight"], state["w2v_encoder.proj.bias"] = torch.randn(32, 64), torch.randn(32)
    cfg = {"model": {"_name": "hubert_ctc", "w2v_args": {"model": FAIRSEQ_CFG, "task": {"normalize": False}}}}
    torch.save({"cfg": cfg, "model": state}, tmp_path / "ctc.pt")
    wav = torch.randn(1, 6000)
    assert_layers_match(lighthubert.load(tmp_path / "ctc.pt")(wav), hf_reference(hf, wav))


def test_torchaudio_state_dict(tmp_path):
    # torchaudio keeps no config: heads are read as 64 wide, as in all its factories
    hf = hf_model(feat_extract_norm="layer", do_stable_layer_norm=True, hidden_size=128, num_attention_heads=2, intermediate_size=256)
    # torchaudio = transformers names with encoder.feature_projection. / encoder.transformer. prefixes (§2.6)
    state = {}
    for k, v in hf.state_dict().items():
        if k.startswith("feature_projection."):
            k = "encoder." + k
        elif k.startswith("encoder."):
            k = "encoder.transformer." + k[len("encoder."):]
        elif k == "masked_spec_embed":
            continue
        state[k] = v
    state["aux.weight"], state["aux.bias"] = torch.randn(29, 128), torch.randn(29)
    torch.save(state, tmp_path / "ta.pth")
    teacher = lighthubert.load(tmp_path / "ta.pth")
    assert teacher.cfg.layer_norm_first and teacher.cfg.extractor_mode == "layer_norm"
    wav = torch.randn(1, 6000)
    assert_layers_match(teacher(wav), hf_reference(hf, wav), stable=True)


def test_unsupported_and_bad_files(tmp_path):
    torch.save({"cfg": {"model": {"_name": "transformer_lm"}}, "model": {}}, tmp_path / "lm.pt")
    with pytest.raises(CheckpointError, match="not a HuBERT / wav2vec 2.0 encoder"):
        lighthubert.load(tmp_path / "lm.pt")
    torch.save({"weights": [1, 2, 3]}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint this package reads"):
        lighthubert.load(tmp_path / "other.pt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(CheckpointError, match="without config.json"):
        lighthubert.load(tmp_path / "folder")
    hf = hf_model()
    hf.save_pretrained(tmp_path / "wav2vec")
    cfg = json.loads((tmp_path / "wav2vec" / "config.json").read_text())
    cfg["model_type"] = "whisper"
    (tmp_path / "wav2vec" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="model_type 'whisper' is not supported"):
        lighthubert.load(tmp_path / "wav2vec")


def test_teacher_info_cli(tmp_path, capsys):
    hf_model().save_pretrained(tmp_path / "hf")
    assert main(["teacher-info", str(tmp_path / "hf"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "transformers" and info["layers"] == 3 and info["embed_dim"] == 64
    hf = hf_model()
    assert info["all_weights"] == sum(p.numel() for p in hf.parameters())
    # the official rule leaves out only the positional conv's weight_g, (1, 1, kernel) here
    g = dict(hf.named_parameters())["encoder.pos_conv_embed.conv.parametrizations.weight.original0"]
    assert info["parameters"] == info["all_weights"] - g.numel() and g.numel() == hf.config.num_conv_pos_embeddings
    (tmp_path / "hf" / "model.safetensors").unlink()
    assert main(["teacher-info", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no weight file" in err[0]


def test_extract_cli_on_teacher(tmp_path, capsys):
    import numpy as np
    import soundfile as sf

    hf = hf_model()
    hf.save_pretrained(tmp_path / "hf")
    wav = np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1
    sf.write(tmp_path / "a.wav", wav, 16000)
    assert main(["extract", "--checkpoint", str(tmp_path / "hf"), "--output", str(tmp_path / "o"), "--quiet", str(tmp_path / "a.wav")]) == 0
    arr = np.load(tmp_path / "o" / "a.npy")
    ref = hf_reference(hf, torch.from_numpy(sf.read(tmp_path / "a.wav", dtype="float32")[0])[None])
    assert arr.shape == (4, ref.last_hidden_state.shape[1], 64)
    np.testing.assert_allclose(arr[1:], torch.stack(ref.hidden_states[1:])[:, 0].numpy(), atol=1e-4)
    assert main(["extract", "--checkpoint", str(tmp_path / "hf"), "--subnet", "max", "--output", str(tmp_path / "o"), str(tmp_path / "a.wav")]) == 2
    assert "only be chosen for a supernet" in capsys.readouterr().err
