"""data2vec audio teachers: transformers `Data2VecAudioModel` folders and fairseq `data2vec_audio` .pt files.

The reference is transformers' `Data2VecAudioModel` (an independent implementation, random
weights). The fairseq files are written by this test from its weights with fairseq's key
layout (`encoder.pos_conv.{j}.0.*`, `feature_extractor.conv_layers.{i}.0 / .2.1`), by its
own table. Tolerance 1e-4: float32, other kernels.
"""

import json
import re

import pytest
import torch

import lighthubert
from lighthubert.cli import main

transformers = pytest.importorskip("transformers")

# heads 24 wide; 3 positional convs of kernel 6 (even: SamePad drops a frame)
TINY = dict(hidden_size=72, num_hidden_layers=3, num_attention_heads=3, intermediate_size=96, conv_dim=[32, 32, 32],
            conv_kernel=[10, 3, 2], conv_stride=[5, 2, 2], num_conv_pos_embeddings=3, conv_pos_kernel_size=6,
            num_conv_pos_embedding_groups=4)
HF_TO_FAIRSEQ = [  # this test's own table
    (r"^masked_spec_embed$", "mask_emb"),
    (r"^feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
    (r"^feature_extractor\.conv_layers\.(\d+)\.layer_norm\.", r"feature_extractor.conv_layers.\1.2.1."),
    (r"^feature_projection\.layer_norm\.", "layer_norm."),
    (r"^feature_projection\.projection\.", "post_extract_proj."),
    (r"^encoder\.pos_conv_embed\.layers\.(\d+)\.conv\.", r"encoder.pos_conv.\1.0."),
    (r"^encoder\.layers\.(\d+)\.attention\.", r"encoder.layers.\1.self_attn."),
    (r"^encoder\.layers\.(\d+)\.layer_norm\.", r"encoder.layers.\1.self_attn_layer_norm."),
    (r"^encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.", r"encoder.layers.\1.fc1."),
    (r"^encoder\.layers\.(\d+)\.feed_forward\.output_dense\.", r"encoder.layers.\1.fc2."),
]


def data2vec(cls=None, seed=0, **overrides):
    torch.manual_seed(seed)
    model = (cls or transformers.Data2VecAudioModel)(transformers.Data2VecAudioConfig(**{**TINY, **overrides})).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def assert_hidden_states_match(ours, ref, valid=None):
    """Ours [1..L] = transformers' [1..L] (post-LN layers), at valid frames."""
    valid = torch.ones(ours.hidden_states[1].shape[:2], dtype=torch.bool) if valid is None else valid
    assert len(ours.hidden_states) == len(ref.hidden_states)
    for i in range(1, len(ours.hidden_states)):
        torch.testing.assert_close(ours.hidden_states[i][valid], ref.hidden_states[i][valid], atol=1e-4, rtol=0)


def test_transformers_folder_padded_batch(tmp_path):
    hf = data2vec()
    hf.save_pretrained(tmp_path)
    teacher = lighthubert.load(tmp_path)
    assert (teacher.cfg.pos_conv_layers, teacher.cfg.conv_pos, teacher.cfg.head_dim) == (3, 6, 24) and teacher.cfg.normalize
    wav, lengths = torch.randn(2, 8000), torch.tensor([8000, 5000])
    mask = (torch.arange(8000)[None] < lengths[:, None]).long()
    with torch.no_grad():
        ours = teacher(wav, lengths)
        assert_hidden_states_match(ours, hf(wav, attention_mask=mask, output_hidden_states=True), ~ours.padding_mask)


def test_ctc_folder_drops_the_head(tmp_path):
    hf = data2vec(transformers.Data2VecAudioForCTC, vocab_size=12)
    hf.save_pretrained(tmp_path)
    wav = torch.randn(1, 6000)
    with torch.no_grad():
        assert_hidden_states_match(lighthubert.load(tmp_path)(wav), hf.data2vec_audio(wav, output_hidden_states=True))


@pytest.mark.slow
def test_transformers_base_shape(tmp_path):
    hf = transformers.Data2VecAudioModel(transformers.Data2VecAudioConfig()).eval()  # data2vec audio Base
    hf.save_pretrained(tmp_path)
    wav = torch.randn(1, 16000)
    with torch.no_grad():
        assert_hidden_states_match(lighthubert.load(tmp_path)(wav), hf(wav, output_hidden_states=True))


def fairseq_state(hf) -> dict:
    state = {}
    for key, value in hf.state_dict().items():
        for pattern, repl in HF_TO_FAIRSEQ:
            if re.match(pattern, key):
                key = re.sub(pattern, repl, key)
                break
        state[key] = value.clone()
    return state


FAIRSEQ_CFG = dict(_name="data2vec_audio", extractor_mode="layer_norm", encoder_layers=3, encoder_embed_dim=72,
                   encoder_ffn_embed_dim=96, encoder_attention_heads=3, conv_pos=18, pos_conv_depth=3, conv_pos_groups=4,
                   conv_feature_layers="[(32, 10, 5), (32, 3, 2), (32, 2, 2)]", layer_norm_first=False)


def test_fairseq_checkpoint_and_finetuned(tmp_path):
    hf = data2vec()
    state = fairseq_state(hf)
    state.update({"final_proj.weight": torch.zeros(72, 72), "final_proj.bias": torch.zeros(72)})  # data2vec's regression head
    torch.save({"cfg": {"model": FAIRSEQ_CFG, "task": {"normalize": True}}, "model": state}, tmp_path / "d2v.pt")
    wav = torch.randn(1, 6000)
    with torch.no_grad():
        ref = hf(wav, output_hidden_states=True)
        kind, teacher = lighthubert.checkpoint.load_with_format(tmp_path / "d2v.pt")
        assert kind == "data2vec" and teacher.cfg.conv_pos == 6  # fairseq: max(3, conv_pos // depth) per conv
        assert_hidden_states_match(teacher(wav), ref)
        ctc = {"w2v_encoder.w2v_model." + k: v for k, v in fairseq_state(hf).items()}
        ctc.update({"w2v_encoder.proj.weight": torch.zeros(12, 72), "w2v_encoder.proj.bias": torch.zeros(12)})
        cfg = {"model": {"_name": "wav2vec_ctc", "w2v_args": {"model": FAIRSEQ_CFG, "task": {"normalize": True}}}}
        torch.save({"cfg": cfg, "model": ctc}, tmp_path / "d2v_ctc.pt")
        assert_hidden_states_match(lighthubert.load(tmp_path / "d2v_ctc.pt")(wav), ref)


def test_teacher_info(tmp_path, capsys):
    hf = data2vec()
    hf.save_pretrained(tmp_path / "hf")
    assert main(["teacher-info", str(tmp_path / "hf"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "data2vec" and info["architecture"].startswith("data2vec audio") and info["layers"] == 3
    assert info["embed_dim"] == 72 and info["normalize"] is True
    assert info["parameters"] == info["all_weights"] == sum(p.numel() for p in hf.parameters())  # no weight_g here
