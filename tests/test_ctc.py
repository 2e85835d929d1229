"""CTC fine-tuning (`finetune`, recipes/ctc.py) and speech recognition (`transcribe`, asr.py),
on the generated corpus (its manifests come with .ltr label files)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import lighthubert
from lighthubert import asr, atomic, checkpoint, formats, safeload
from lighthubert.cli import main
from lighthubert.audio import AudioError, normalize
from lighthubert.extract import min_samples
from lighthubert.losses import span_mask
from lighthubert.model import BLANK, HuBERTCTC, ModelConfig
from lighthubert.space import SearchSpace, SubnetConfig
from lighthubert.supernet import LightHuBERT

from conftest import CONV

FAST = ["--set=num_workers=0", "--set=log_every=1", "--set=max_batch_samples=64000", "--set=lr=1e-3",
        "--set=mask_channel_length=8", "--set=warmup=0.1", "--set=hold=0.5"]


def run_cli(*argv: object) -> int:
    return main([str(a) for a in argv])


def finetune(setup: Path, out: Path, steps: int, *extra: object) -> int:
    return run_cli("finetune", "--init", setup / "teacher", "--train", setup / "train.tsv", "--valid", setup / "valid.tsv",
                   "--out", out, f"--set=max_steps={steps}", f"--set=valid_every={steps}", f"--set=save_every={steps}",
                   *FAST, *extra)


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_masks_stay_inside_each_utterance_and_padded_normalisation():
    lengths = torch.tensor([40, 12, 3])
    mask = span_mask(3, 40, 0.75, 10, torch.Generator().manual_seed(0), lengths=lengths)
    for row, n in enumerate(lengths.tolist()):
        assert mask[row, :n].any() and not mask[row, n:].any()
    channels = span_mask(4, 64, 0.5, 8, torch.Generator().manual_seed(1), min_spans=0)
    assert 0.1 < channels.float().mean() < 0.7
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(900, generator=g) * 3 + 1, torch.randn(500, generator=g) * 0.2
    batch = torch.zeros(2, 900)
    batch[0], batch[1, :500] = a, b
    out = normalize(batch, torch.tensor([900, 500]))
    torch.testing.assert_close(out[1, :500], normalize(b), atol=1e-4, rtol=0)
    torch.testing.assert_close(out[0], normalize(a), atol=1e-4, rtol=0)
    assert torch.equal(out[1, 500:], torch.zeros(400))


def test_ctc_model_and_its_checkpoint(tmp_path):
    cfg = ModelConfig(conv_layers=CONV, embed_dim=64, heads=[2, 2], ffn_dim=[128, 128], head_dim=32, conv_pos=16,
                      conv_pos_groups=4, pred_dim=0)
    with pytest.raises(ValueError, match="starts with '<blank>'"):
        HuBERTCTC(cfg, ["A", BLANK])
    torch.manual_seed(0)
    model = HuBERTCTC(cfg, [BLANK, "|", "A", "B"]).eval()
    atomic.save_file(formats.ctc.checkpoint(model), tmp_path / "ctc.pt")
    loaded = lighthubert.load(tmp_path / "ctc.pt")
    assert isinstance(loaded, HuBERTCTC) and loaded.vocab == model.vocab
    wav = torch.randn(2, 8000)
    torch.testing.assert_close(loaded(wav).prediction, model(wav).prediction)
    encoder, _ = checkpoint.dense_model(loaded)  # what extract, teachers and export see: no head
    assert type(encoder) is lighthubert.HuBERT
    torch.testing.assert_close(encoder(wav).hidden_states[-1], model(wav).hidden_states[-1])
    # a padded batch recognises what each utterance gives alone
    short = wav[1, :5000]
    batched = asr.recognise(loaded, [wav[0], short])
    assert batched == [asr.recognise(loaded, [wav[0]])[0], asr.recognise(loaded, [short])[0]]


def test_recognise_batches_as_extract_does():
    """`recognise` takes `extract`'s batches (extract.model_batches): the model's dtype, the
    same too-short error; it used to batch on its own, in float32 whatever the model."""
    cfg = ModelConfig(conv_layers=CONV, embed_dim=64, heads=[2, 2], ffn_dim=[128, 128], head_dim=32, conv_pos=16,
                      conv_pos_groups=4, pred_dim=0, normalize=True)
    torch.manual_seed(0)
    model = HuBERTCTC(cfg, [BLANK, "|", "A", "B"])
    wavs = [torch.randn(8000) * 3, torch.randn(5000)]
    want = asr.recognise(model, wavs)
    assert asr.recognise(model.double(), wavs) == want and any(want)
    shortest = min_samples(model)
    with pytest.raises(AudioError, match=f"input 1: {shortest - 1} samples is too short; at least {shortest} "):
        asr.recognise(model, [wavs[0], torch.randn(shortest - 1)])


def test_ctc_model_exports_with_its_head(tmp_path):
    """compact and ONNX keep the head (ONNX: a logits output and the vocabulary in its metadata);
    hf holds the encoder alone; the head's weights are random, so agreement is not by chance."""
    from lighthubert.export import export_subnet

    cfg = ModelConfig(conv_layers=CONV, embed_dim=64, heads=[2, 2], ffn_dim=[128, 128], head_dim=32, conv_pos=16,
                      conv_pos_groups=4, pred_dim=0)
    torch.manual_seed(0)
    model = HuBERTCTC(cfg, [BLANK, "|", "A", "B"]).eval()
    wav, lengths = torch.randn(2, 8000), torch.tensor([8000, 6000])
    with torch.no_grad():
        want = model(wav, lengths).prediction
    compact = lighthubert.load(export_subnet(model, tmp_path / "c", "compact"))
    assert isinstance(compact, HuBERTCTC) and compact.vocab == model.vocab
    torch.testing.assert_close(compact(wav, lengths).prediction, want, atol=1e-5, rtol=0)
    hf = lighthubert.load(export_subnet(model, tmp_path / "h", "hf"))
    assert type(hf) is lighthubert.HuBERT
    torch.testing.assert_close(hf(wav, lengths).hidden_states[-1], model(wav, lengths).hidden_states[-1], atol=1e-5, rtol=0)

    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(export_subnet(model, tmp_path / "m.onnx", "onnx")), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["hidden_states", "logits"]
    assert json.loads(sess.get_modelmeta().custom_metadata_map["vocab"]) == model.vocab
    hidden, logits = sess.run(None, {"waveform": wav.numpy(), "lengths": lengths.numpy()})
    frames = model.frame_lengths(lengths)
    for b in range(2):  # padded frames are not compared
        torch.testing.assert_close(torch.from_numpy(logits)[b, : frames[b]], want[b, : frames[b]], atol=1e-4, rtol=0)


def test_finetune_learns_freezes_then_resumes_bit_identically(train_setup, tmp_path, capsys):
    assert finetune(train_setup, tmp_path / "run", 40, "--set=freeze_encoder_steps=20", "--set=valid_every=20") == 0
    valid = [r["loss"]["ctc"] for r in _log(tmp_path / "run") if r["type"] == "valid"]
    assert len(valid) == 2 and valid[1] < 0.8 * valid[0]  # the CTC loss falls well
    teacher, tuned = lighthubert.load(train_setup / "teacher"), lighthubert.load(tmp_path / "run" / "step-40.pt")
    assert isinstance(tuned, HuBERTCTC) and tuned.vocab[0] == BLANK and "|" in tuned.vocab
    conv = "feature_extractor.conv_layers.3.conv.weight"
    assert torch.equal(tuned.state_dict()[conv], teacher.state_dict()[conv])  # the conv front end stays frozen
    assert not torch.equal(tuned.encoder.layers[0].fc1.weight, teacher.encoder.layers[0].fc1.weight)  # the rest trained

    # frozen steps train the head alone; a run stopped there and resumed ends where a straight one does
    assert finetune(train_setup, tmp_path / "straight", 6, "--set=freeze_encoder_steps=3", "--set=save_every=3") == 0
    early = lighthubert.load(tmp_path / "straight" / "step-3.pt")
    assert torch.equal(early.encoder.layers[0].fc1.weight, teacher.encoder.layers[0].fc1.weight)
    assert not torch.equal(early.ctc_proj.weight, lighthubert.load(tmp_path / "straight" / "step-6.pt").ctc_proj.weight)
    (tmp_path / "resumed").mkdir()
    shutil.copy(tmp_path / "straight" / "step-3.pt", tmp_path / "resumed" / "step-3.pt")
    assert finetune(train_setup, tmp_path / "resumed", 6, "--set=freeze_encoder_steps=3", "--set=save_every=3",
                    "--resume") == 0
    a = safeload.load_file(tmp_path / "straight" / "step-6.pt")["state_dict"]
    b = safeload.load_file(tmp_path / "resumed" / "step-6.pt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_finetune_from_random_weights_beside_a_pretrained_init(train_setup, tmp_path):
    """random_init keeps --init's shape and vocabulary but starts from a new random draw (the
    baseline that says what pre-training is worth); with feature_grad_mult 1 its front end
    trains. Both runs learn; the pre-trained one ends far nearer its --init than the random one."""
    rand_args = ("--set=random_init=true", "--set=feature_grad_mult=1.0", "--set=freeze_encoder_steps=0",
                 "--set=valid_every=20", "--set=save_every=20")
    assert finetune(train_setup, tmp_path / "random", 40, *rand_args) == 0
    assert finetune(train_setup, tmp_path / "pretrained", 40, "--set=freeze_encoder_steps=0", "--set=valid_every=20") == 0
    for run in ("random", "pretrained"):
        valid = [r["loss"]["ctc"] for r in _log(tmp_path / run) if r["type"] == "valid"]
        assert len(valid) == 2 and valid[1] < 0.97 * valid[0], (run, valid)  # both learn (6-7% in 20 steps here)
    teacher = lighthubert.load(train_setup / "teacher")
    rand, pre = lighthubert.load(tmp_path / "random" / "step-40.pt"), lighthubert.load(tmp_path / "pretrained" / "step-40.pt")
    assert SubnetConfig.of(rand.cfg) == SubnetConfig.of(teacher.cfg) and rand.vocab == pre.vocab
    key = "encoder.layers.1.fc2.weight"
    start = teacher.state_dict()[key]
    # 40 steps move the pre-trained weights about 0.3x as far as a new draw lies: a start from --init, not a draw
    assert (pre.state_dict()[key] - start).norm() < 0.5 * (rand.state_dict()[key] - start).norm()
    conv = "feature_extractor.conv_layers.3.conv.weight"
    assert not torch.equal(lighthubert.load(tmp_path / "random" / "step-20.pt").state_dict()[conv], rand.state_dict()[conv])
    assert torch.equal(pre.state_dict()[conv], teacher.state_dict()[conv])  # feature_grad_mult 0: the recipe's default


def test_label_characters_outside_the_vocabulary_are_refused_before_any_step(train_setup, tmp_path, capsys):
    """A character only the validation labels hold (or, for a fine-tuned --init, one its
    vocabulary lacks) stops the run before its first step, naming the label file and line."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train", "valid"):
        for ext in ("tsv", "ltr"):
            shutil.copy(train_setup / f"{name}.{ext}", data / f"{name}.{ext}")
    ltr = (data / "valid.ltr").read_text().splitlines()
    ltr[2] += " Q"  # line 3; the generated corpus spells no Q
    (data / "valid.ltr").write_text("\n".join(ltr) + "\n")
    capsys.readouterr()
    run = tmp_path / "run"
    assert run_cli("finetune", "--init", train_setup / "teacher", "--train", data / "train.tsv", "--valid",
                   data / "valid.tsv", "--out", run, "--set=max_steps=2", "--set=valid_every=2", "--set=save_every=1",
                   "--set=freeze_encoder_steps=0", *FAST) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert f"{data / 'valid.ltr'}:3: character 'Q' is not in the fine-tuning vocabulary" in err[-1] and len(err) == 1
    assert not list(run.glob("step-*.pt")) and not (run / "log.jsonl").exists()  # no step was taken

    # a fine-tuned model continues with its own vocabulary: training labels outside it are refused too
    cfg = ModelConfig(conv_layers=CONV, embed_dim=64, heads=[2, 2], ffn_dim=[128, 128], head_dim=32, conv_pos=16,
                      conv_pos_groups=4, pred_dim=0)
    first = (data / "train.ltr").read_text().splitlines()[0].split()
    lacking = HuBERTCTC(cfg, [BLANK, *sorted(set(first) - {first[0]})])
    atomic.save_file(formats.ctc.checkpoint(lacking), tmp_path / "ctc.pt")
    assert run_cli("finetune", "--init", tmp_path / "ctc.pt", "--train", data / "train.tsv", "--out", tmp_path / "run2",
                   "--set=max_steps=1", *FAST) == 2
    err = capsys.readouterr().err.strip().splitlines()
    want = f"{data / 'train.ltr'}:1: character {first[0]!r} is not in the fine-tuning vocabulary"
    assert want in err[-1] and len(err) == 1
    assert not list((tmp_path / "run2").glob("step-*.pt"))


def test_transcribe_prints_a_line_per_file_and_scores(train_setup, tmp_path, capsys):
    assert finetune(train_setup, tmp_path / "run", 2, "--set=freeze_encoder_steps=0") == 0
    ckpt = tmp_path / "run" / "step-2.pt"
    audio = sorted((train_setup / "corpus" / "audio").glob("*.wav"))[:3]
    capsys.readouterr()
    assert run_cli("transcribe", "--checkpoint", ckpt, *audio) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(p) for p in audio]
    assert run_cli("transcribe", "--checkpoint", ckpt, "--manifest", train_setup / "test.tsv", "--quiet") == 0
    out = capsys.readouterr().out.splitlines()[-1]
    assert "CER" in out and "WER" in out and "over 20 utterances" in out


def test_finetune_a_supernet_subnet(train_setup, tmp_path):
    space = SearchSpace.from_yaml(train_setup / "space.yaml")
    torch.manual_seed(0)
    atomic.save_file(formats.official.checkpoint(LightHuBERT(space)), tmp_path / "supernet.pt")
    assert run_cli("finetune", "--init", tmp_path / "supernet.pt", "--subnet", "min", "--train", train_setup / "train.tsv",
                   "--out", tmp_path / "run", "--set=max_steps=1", *FAST) == 0
    tuned = lighthubert.load(tmp_path / "run" / "step-1.pt")
    assert (tuned.cfg.embed_dim, tuned.cfg.depth) == (space.min().embed_dim, space.min().depth)


def test_bad_input_is_one_line(train_setup, tmp_path, capsys):
    assert finetune(train_setup, tmp_path / "run", 1, "--set=freeze_encoder_steps=0") == 0
    ckpt = tmp_path / "run" / "step-1.pt"
    # a reference character the model cannot output
    root = tmp_path / "m"
    root.mkdir()
    for ext in ("tsv", "ltr"):
        shutil.copy((train_setup / "test").with_suffix("." + ext), root / f"test.{ext}")
    ltr = (root / "test.ltr").read_text().splitlines()
    ltr[4] = ltr[4] + " Q"
    (root / "test.ltr").write_text("\n".join(ltr) + "\n")
    capsys.readouterr()
    assert run_cli("transcribe", "--checkpoint", ckpt, "--manifest", root / "test.tsv", "--quiet") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "test.ltr:5: character(s) 'Q' are not in the model's vocabulary" in err[0]
    assert run_cli("transcribe", "--checkpoint", train_setup / "teacher", train_setup / "corpus" / "audio" / "one_ada_0.wav") == 2
    assert "has no CTC head; fine-tune it first" in capsys.readouterr().err
    (root / "test.ltr").write_text("\n".join(ltr[:-1]) + "\n")
    assert run_cli("transcribe", "--checkpoint", ckpt, "--manifest", root / "test.tsv") == 2
    assert "lines but" in capsys.readouterr().err
    assert run_cli("finetune", "--train", train_setup / "train.tsv", "--out", tmp_path / "x") == 2
    assert "finetune needs --init" in capsys.readouterr().err
    assert run_cli("finetune", "--init", train_setup / "teacher", "--train", tmp_path / "nolabels.tsv", "--out",
                   tmp_path / "y") == 2
