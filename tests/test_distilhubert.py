"""DistilHuBERT: the student and its heads, s3prl and transformers checkpoints, training through
the shared trainer, export without heads, and the errors of its recipe."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import lighthubert
from lighthubert import safeload
from lighthubert.cli import main
from lighthubert.model import DistilHuBERT, ModelConfig

transformers = pytest.importorskip("transformers")
from test_teachers import assert_layers_match, fairseq_keys, hf_model, hf_reference  # noqa: E402

S3PRL_CFG = {"extractor_mode": "default", "extractor_conv_feature_layers": "[(32, 10, 5)] + [(32, 3, 2)] + [(32, 2, 2)]",
             "feature_grad_mult": 0.1, "conv_pos": 16, "conv_pos_groups": 4, "encoder_layers": 2, "encoder_embed_dim": 64,
             "encoder_ffn_embed_dim": 128, "encoder_attention_heads": 4, "activation_fn": "gelu", "layer_norm_first": False,
             "final_dim": 64, "out_layer_type": "expand-last", "task_emb_type": "expand-last"}


def test_base_shape_parameter_counts():
    """23.49 M without heads and 3.54 M of heads for the paper's student (peers §1.1)."""
    cfg = ModelConfig(extractor_mode="default", heads=[12] * 2, ffn_dim=[3072] * 2, feature_layer_norm=False, pred_dim=0)
    with torch.device("meta"):
        m = DistilHuBERT(cfg, [4, 8, 12], 768)
    body = sum(p.numel() for n, p in m.named_parameters() if not n.startswith("output_layer") and n != "mask_emb")
    heads = sum(p.numel() for n, p in m.named_parameters() if n.startswith("output_layer"))
    assert (body, heads) == (23_491_200, 3_543_552)


def _s3prl_state(hf, heads):
    """The s3prl `Distiller` layout of a transformers 2-layer HuBERT plus heads (this test's own table)."""
    state = {k: v for k, v in fairseq_keys(hf).items() if k != "mask_emb"}  # DistillerModel has no mask_emb
    g = torch.Generator().manual_seed(0)
    state["output_layer.0.weight"] = torch.randn(64 * heads, 64, generator=g) * 0.1
    state["output_layer.0.bias"] = torch.randn(64 * heads, generator=g) * 0.1
    if heads == 1:
        state["output_layer.2.layer.weight"] = torch.randn(64, 64, generator=g) * 0.1
        state["output_layer.2.layer.bias"] = torch.randn(64, generator=g) * 0.1
    else:
        state["output_layer.2.weight"] = torch.randn(heads, 64, 64, generator=g) * 0.1
        state["output_layer.2.bias"] = torch.randn(1, 1, heads, 64, generator=g) * 0.1
    return state


@pytest.mark.parametrize("targets", [[1, 2, 3], [3]])
def test_s3prl_states_checkpoint(tmp_path, targets):
    hf = hf_model(num_hidden_layers=2, feat_proj_layer_norm=False)
    state = _s3prl_state(hf, len(targets))
    cfg = dict(S3PRL_CFG, n_tasks=len(targets), pred_layer_id=targets)
    torch.save({"Distiller": state, "Config": {"distiller": cfg}, "Step": 10, "Optimizer": {}}, tmp_path / "states-10.ckpt")
    model = lighthubert.load(tmp_path / "states-10.ckpt")
    assert isinstance(model, DistilHuBERT) and model.targets == targets and not model.cfg.feature_layer_norm
    wav = torch.randn(1, 6000)
    out = model(wav)
    assert_layers_match(out, hf_reference(hf, wav))
    # the heads: Linear -> GELU -> one Linear per target, on the last layer
    h = torch.nn.functional.gelu(torch.nn.functional.linear(out.hidden_states[-1], state["output_layer.0.weight"], state["output_layer.0.bias"]))
    first = h[..., :64] @ (state["output_layer.2.weight"][0] if len(targets) > 1 else state["output_layer.2.layer.weight"].t())
    first = first + (state["output_layer.2.bias"][0, 0, 0] if len(targets) > 1 else state["output_layer.2.layer.bias"])
    torch.testing.assert_close(out.prediction[:, :, 0], first, atol=1e-5, rtol=0)


def test_transformers_distilhubert_layout(tmp_path):
    hf = hf_model(num_hidden_layers=2, feat_proj_layer_norm=False)
    hf.save_pretrained(tmp_path)
    wav = torch.randn(2, 5000)
    assert_layers_match(lighthubert.load(tmp_path)(wav), hf_reference(hf, wav))


def _cmd(train_setup, out, *extra):
    return ["distill", "--method", "distilhubert", "--teacher", str(train_setup / "teacher"), "--train", str(train_setup / "train.tsv"),
            "--valid", str(train_setup / "valid.tsv"), "--out", str(out), "--set", "num_workers=0", "--set", "log_every=1",
            "--set", "distil_targets=[1,2,3]", "--set", "max_batch_samples=64000", "--set", "max_sample_size=16000",
            "--set", "min_sample_size=4000", *extra]


@pytest.mark.slow
def test_train_export_and_resume(train_setup, tmp_path, capsys):
    settings = ("--set", "lr=2e-3", "--set", "warmup=0.1")
    assert main(_cmd(train_setup, tmp_path / "run", "--set", "max_steps=30", "--set", "valid_every=15", *settings)) == 0
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    valid = [r["loss"]["student"] for r in log if r["type"] == "valid"]
    assert len(valid) == 2 and valid[1] < valid[0]
    saved = safeload.load_file(tmp_path / "run" / "step-30.pt")
    assert saved["Config"]["distiller"]["pred_layer_id"] == [1, 2, 3] and "output_layer.2.weight" in saved["Distiller"]
    student = lighthubert.load(tmp_path / "run" / "step-30.pt")
    assert isinstance(student, DistilHuBERT) and student.cfg.depth == 2

    assert main(["export", "--checkpoint", str(tmp_path / "run" / "step-30.pt"), "--format", "hf", "--output", str(tmp_path / "hf")]) == 0
    hf = transformers.HubertModel.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.num_hidden_layers == 2 and hf.config.feat_proj_layer_norm is False
    wav = torch.randn(1, 8000)
    with torch.no_grad():
        ours = student(wav).hidden_states
        ref = hf(wav, output_hidden_states=True).hidden_states
    for i in (1, 2):
        torch.testing.assert_close(ref[i], ours[i], atol=1e-4, rtol=0)

    assert main(["export", "--checkpoint", str(tmp_path / "run" / "step-30.pt"), "--format", "compact", "--output", str(tmp_path / "c")]) == 0
    compact = lighthubert.load(tmp_path / "c")
    assert type(compact) is lighthubert.HuBERT  # heads dropped
    torch.testing.assert_close(torch.stack(compact(wav).hidden_states), torch.stack(ours), atol=1e-5, rtol=0)

    capsys.readouterr()
    assert main(_cmd(train_setup, tmp_path / "run", "--set", "max_steps=32", "--resume", *settings)) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 32


def test_recipe_errors(train_setup, tmp_path, capsys):
    assert main(_cmd(train_setup, tmp_path / "r", "--set", "distil_targets=[4,8,12]")) == 2
    assert "distil_targets [4, 8, 12]: each must be a teacher layer in 1..3" in capsys.readouterr().err
    hf = hf_model(num_hidden_layers=2, feat_proj_layer_norm=False)
    cfg = dict(S3PRL_CFG, conv_pos=16, n_tasks=3, pred_layer_id=[1, 2, 3])
    torch.save({"Distiller": _s3prl_state(hf, 3), "Config": {"distiller": cfg}}, tmp_path / "three.ckpt")
    assert main(_cmd(train_setup, tmp_path / "r2", "--set", "distil_targets=[1,3]", "--init", str(tmp_path / "three.ckpt"))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has heads for layers [1, 2, 3]; this run predicts layers [1, 3]" in err[0]
    done = subprocess.run([sys.executable, "-m", "lighthubert", "distill", "--method", "tinybert"], capture_output=True, text=True)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "invalid choice: 'tinybert'" in done.stderr
