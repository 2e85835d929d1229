"""HuBERT iteration-1 pre-training (`pretrain-teacher`): k-means units, the masked-unit loss,
the fairseq checkpoint it writes, resume, and bad input."""

import json
import shutil

import pytest
import torch
import yaml

import lighthubert
from lighthubert import checkpoint, cli, formats, safeload
from lighthubert.audio import synthetic_speech
from lighthubert.data import AudioDataset, Batch
from lighthubert.model import ModelConfig
from lighthubert.probes import mfcc
from lighthubert.recipes import RunConfig
from lighthubert.recipes import hubert as pretrain

HUBERT_CONV = [[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2  # HuBERT's frames (400 / 320) at 32 channels
TEACHER = {"conv_layers": HUBERT_CONV, "embed_dim": 64, "heads": [2, 2], "ffn_dim": [128, 128], "head_dim": 32,
           "conv_pos": 16, "conv_pos_groups": 4}
SETTINGS = {"model": TEACHER, "clusters": 8, "kmeans_frames": 3000, "final_dim": 16, "lr": 2e-3, "warmup": 0.1,
            "max_batch_samples": 48000, "max_sample_size": 16000, "min_sample_size": 4000, "num_workers": 0,
            "log_every": 1, "mask_length": 4}


def test_kmeans_recovers_separated_clusters():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = torch.cat([c + 0.5 * torch.randn(200, 2, generator=gen) for c in centres])
    found = pretrain.kmeans(x, 4, seed=3)
    # every true centre has a centroid within 0.2, and each point goes to its own blob's centroid
    dist = torch.cdist(centres, found)
    assert dist.min(dim=1).values.max() < 0.2
    assign = pretrain._nearest(x, found)
    blob_of = dist.argmin(dim=1)  # centroid index of each blob
    assert torch.equal(assign, blob_of.repeat_interleave(200))


def test_kmeans_keeps_every_cluster_in_use():
    x = torch.cat([torch.zeros(50, 3), torch.ones(50, 3)])  # 2 distinct points, 2 clusters
    assert len(set(pretrain._nearest(x, pretrain.kmeans(x, 2, seed=0)).tolist())) == 2


def test_units_align_with_the_model_frames(train_setup):
    recipe = RunConfig.from_dict({**SETTINGS, "method": "hubert"}).build()
    student = recipe.build(AudioDataset(train_setup / "train.tsv", min_samples=4000), torch.device("cpu"), False)
    wav = torch.stack([synthetic_speech(0.77, 120.0, seed=1), synthetic_speech(0.77, 200.0, seed=2)])
    batch = Batch(wav, None, [0, 1])
    units = recipe.targets(batch)
    out = student(wav)
    assert units.shape == out.hidden_states[-1].shape[:2] == (2, 1 + (wav.size(1) - 400) // 320)
    assert units.dtype == torch.int64 and 0 <= units.min() and units.max() < 8
    assert out.prediction.shape == (2, units.size(1), 8)
    # the units are the nearest centroids of the standardised MFCC frames
    z = (mfcc(wav[0]) - recipe.units.mean) / recipe.units.std
    assert torch.equal(units[0], torch.cdist(z, recipe.units.centroids).argmin(-1))
    loss = recipe.loss(student, student, None, batch, units, torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and 1.0 < loss.item() < 4.0  # about ln(8) = 2.08 at random init


def _pretrain(root, out, steps, *extra):
    (root / "pretrain.yaml").write_text(yaml.safe_dump(SETTINGS))
    return cli.main(["pretrain-teacher", "--config", str(root / "pretrain.yaml"), "--train", str(root / "train.tsv"),
                     "--valid", str(root / "valid.tsv"), "--out", str(out), "--set", f"max_steps={steps}",
                     "--set", f"valid_every={steps}", "--set", f"save_every={steps}", *extra])


@pytest.mark.slow
def test_pretrain_teacher_learns_and_writes_a_fairseq_teacher(train_setup, tmp_path, capsys):
    assert _pretrain(train_setup, tmp_path / "t", 60) == 0
    log = [json.loads(line) for line in (tmp_path / "t" / "log.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in log if r["type"] == "train"]
    assert sum(train[-10:]) / 10 < sum(train[:10]) / 10 - 0.2  # the unit cross entropy falls
    ckpt = tmp_path / "t" / "step-60.pt"
    raw = safeload.load_file(ckpt)
    assert raw["cfg"]["model"]["_name"] == "hubert" and raw["model"]["label_embs_concat"].shape == (8, 16)
    assert raw["units"]["centroids"].shape == (8, 39)
    kind, teacher = formats.load_with_format(ckpt)
    assert kind == "fairseq" and teacher.cfg.depth == 2 and teacher.cfg.extractor_mode == "default"
    # the loaded teacher computes what the trained model computed
    recipe = RunConfig.from_dict({**SETTINGS, "method": "hubert"}).build()
    trained = recipe.build(None, torch.device("cpu"), False)
    recipe.restore(trained, raw, str(ckpt))
    wav = synthetic_speech(1.0, 150.0).unsqueeze(0)
    with torch.no_grad():
        for a, b in zip(teacher(wav).hidden_states, trained.eval()(wav).hidden_states):
            torch.testing.assert_close(a, b)
    # and it is a teacher: distillation accepts it
    assert cli.main(["teacher-info", str(ckpt)]) == 0
    assert "fairseq" in capsys.readouterr().out


@pytest.mark.slow
def test_pretrain_resume_is_bit_identical(train_setup, tmp_path):
    assert _pretrain(train_setup, tmp_path / "straight", 6, "--set", "save_every=3") == 0
    (tmp_path / "resumed").mkdir()  # a run stopped after step 3: its checkpoint alone
    shutil.copy(tmp_path / "straight" / "step-3.pt", tmp_path / "resumed" / "step-3.pt")
    assert _pretrain(train_setup, tmp_path / "resumed", 6, "--resume") == 0
    a = safeload.load_file(tmp_path / "straight" / "step-6.pt")
    b = safeload.load_file(tmp_path / "resumed" / "step-6.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["units"]["centroids"], b["units"]["centroids"])


def test_bad_input_is_one_line(train_setup, tmp_path, capsys):
    bad_conv = {**SETTINGS, "model": {**TEACHER, "conv_layers": [[32, 10, 5], [32, 3, 2]]}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad_conv))
    args = ["pretrain-teacher", "--train", str(train_setup / "train.tsv"), "--out", str(tmp_path / "o")]
    assert cli.main(args + ["--config", str(tmp_path / "bad.yaml")]) == 2
    assert "frames of 20 samples every 10" in capsys.readouterr().err
    assert cli.main(args + ["--set", "model={embed_dim: 64, headz: [2]}"]) == 2
    assert "headz" in capsys.readouterr().err
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump({**SETTINGS, "clusters": 100_000, "kmeans_frames": 200_000}))
    assert cli.main(args + ["--config", str(tmp_path / "ok.yaml"), "--set", "max_steps=1"]) == 2
    assert "k-means needs at least clusters=100000 frames" in capsys.readouterr().err
    assert cli.main(args + ["--set", "method=lighthubert"]) == 2
    assert "pretrain-teacher trains with method hubert" in capsys.readouterr().err


def test_distill_still_needs_a_teacher(train_setup, tmp_path, capsys):
    assert cli.main(["distill", "--train", str(train_setup / "train.tsv"), "--out", str(tmp_path / "o")]) == 2
    assert "distill needs --teacher" in capsys.readouterr().err


def test_teacher_shape_defaults_to_hubert_base():
    recipe = RunConfig.from_dict({"method": "hubert"}).build()
    cfg = recipe.model_cfg
    assert (cfg.embed_dim, cfg.depth, cfg.ffn_dim[0], cfg.extractor_mode, cfg.normalize) == (768, 12, 3072, "default", False)
    assert isinstance(cfg, ModelConfig) and cfg.pred_dim == 0


def test_iteration_2_clusters_an_earlier_models_layer(train_setup, tmp_path, capsys):
    """units_from / units_layer: the units are k-means of that model's hidden state, frame for
    frame on the student's grid; a model with other frames is refused."""
    recipe = RunConfig.from_dict({**SETTINGS, "method": "hubert", "units_from": str(train_setup / "teacher"),
                                  "units_layer": 2}).build()
    student = recipe.build(AudioDataset(train_setup / "train.tsv", min_samples=4000), torch.device("cpu"), False)
    wav = torch.stack([synthetic_speech(0.77, 120.0, seed=1), synthetic_speech(0.77, 200.0, seed=2)])
    units = recipe.targets(Batch(wav, None, [0, 1]))
    teacher = checkpoint.load_model(train_setup / "teacher")
    with torch.no_grad():
        layer = teacher(wav).hidden_states[2]  # (2, T, 64): the clustered features
    assert recipe.units.centroids.shape == (8, 64) and units.shape == layer.shape[:2] == student(wav).prediction.shape[:2]
    z = (layer[0] - recipe.units.mean) / recipe.units.std
    assert torch.equal(units[0], torch.cdist(z, recipe.units.centroids).argmin(-1))
    assert _pretrain(train_setup, tmp_path / "it2", 2, "--set", f"units_from={train_setup / 'teacher'}",
                     "--set", "units_layer=2") == 0
    assert safeload.load_file(tmp_path / "it2" / "step-2.pt")["units"]["centroids"].shape == (8, 64)
    from lighthubert.export import save_compact

    odd = checkpoint.load_model(train_setup / "teacher")
    odd_cfg = ModelConfig(**{**odd.cfg.asdict(), "conv_layers": [[32, 10, 5], [32, 3, 2]]})
    save_compact(lighthubert.HuBERT(odd_cfg), odd_cfg, tmp_path / "odd")
    assert _pretrain(train_setup, tmp_path / "it2b", 1, "--set", f"units_from={tmp_path / 'odd'}") == 2
    assert "its frames are not HuBERT's (400 samples every 320)" in capsys.readouterr().err


@pytest.mark.parametrize("normalize", [True, False])
def test_the_student_sees_normalised_audio_when_its_config_says_so(normalize):
    """The saved checkpoint says `task.normalize` and every consumer (extract, probes, distill's
    teacher) normalises each utterance first: training must feed the model the same input."""
    recipe = RunConfig.from_dict({**SETTINGS, "method": "hubert", "model": {**TEACHER, "normalize": normalize}}).build()
    student = recipe.build(None, torch.device("cpu"), False).eval()
    seen = []
    student.feature_extractor.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    wav = torch.stack([synthetic_speech(0.77, 120.0, seed=1), synthetic_speech(0.77, 200.0, seed=2)])
    wav = wav * torch.tensor([[0.3], [3.0]]) + 0.2  # quiet and loud, with a DC offset
    target = torch.randint(8, (2, 1 + (wav.size(1) - 400) // 320), generator=torch.Generator().manual_seed(0))
    recipe.loss(student, student, None, Batch(wav, None, [0, 1]), target, torch.Generator().manual_seed(0))
    if normalize:
        torch.testing.assert_close(seen[0].mean(-1), torch.zeros(2), atol=1e-5, rtol=0)
        torch.testing.assert_close(seen[0].std(-1), torch.ones(2), atol=1e-2, rtol=0)  # layer_norm eps: 0.998
    else:
        assert torch.equal(seen[0], wav)
