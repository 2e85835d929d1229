"""Once-for-all channel sorting of the conv front end: the full model's function is unchanged,
the channels end up in descending importance, and importance is what the docstring says
(the L1 norm of the weights that read a channel), checked by hand on one channel."""

import dataclasses

import pytest
import torch
import yaml

from lighthubert import atomic, checkpoint, formats
from lighthubert.channel_order import channel_importance, sort_conv_channels
from lighthubert.model import HuBERT
from lighthubert.recipes import RunConfig
from lighthubert.space import SearchSpace
from lighthubert.supernet import LightHuBERT

from conftest import TRAIN, randomize_, tiny_model_config


@pytest.mark.parametrize("mode, bias", [("layer_norm", True), ("default", False)])
def test_sorting_keeps_the_full_model_and_orders_by_importance(make_wav, mode, bias):
    torch.manual_seed(0)
    cfg = dataclasses.replace(tiny_model_config(extractor_mode=mode), conv_bias=bias)
    model = randomize_(HuBERT(cfg), 1).eval()
    wav = make_wav(1600)
    with torch.no_grad():
        before = model(wav).hidden_states
    orders = sort_conv_channels(model)
    with torch.no_grad():
        after = model(wav).hidden_states
    assert all(not torch.equal(o, torch.arange(len(o))) for o in orders)  # random weights: something moved
    for b, a in zip(before, after):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for imp in channel_importance(model):
        assert (imp[:-1] >= imp[1:]).all()


@torch.no_grad()
def test_importance_by_hand():
    torch.manual_seed(0)
    model = randomize_(HuBERT(tiny_model_config()), 1).eval()
    imp = channel_importance(model)
    second = model.feature_extractor.conv_layers[1].conv.weight  # reads layer 0's channels
    assert float(imp[0][5]) == pytest.approx(float(second[:, 5, :].abs().sum()))
    last = model.post_extract_proj.weight[:, 7] * model.layer_norm.weight[7]
    assert float(imp[-1][7]) == pytest.approx(float(last.abs().sum()))


def test_narrow_prefix_of_a_sorted_supernet_keeps_the_important_channels(make_front_end_supernet, make_wav):
    """What sorting is for: at 16 of 32 channels the kept channels are the 16 most important
    ones of the unsorted supernet, and the full-width supernet is unchanged."""
    model = make_front_end_supernet("layer_norm")
    wav = make_wav(1600)
    model.set_subnet("max")
    with torch.no_grad():
        full = model(wav).hidden_states[-1]
    ranked = [set(torch.argsort(i, descending=True)[:16].tolist()) for i in channel_importance(model)]
    orders = sort_conv_channels(model)
    assert [set(o[:16].tolist()) for o in orders] == ranked
    with torch.no_grad():
        torch.testing.assert_close(model(wav).hidden_states[-1], full, rtol=1e-5, atol=1e-5)


def test_stage_2_sorts_the_init_only_when_asked_and_only_for_an_elastic_front_end(train_setup, tmp_path):
    """`sort_conv_channels` on a stage-2 recipe: the student starts from the sorted --init; a
    space with a fixed front end (nothing to sort for) is refused before any work."""
    space = yaml.safe_load((train_setup / "space.yaml").read_text())
    space["search_space"]["conv_dim"] = [16, 32]
    (tmp_path / "elastic.yaml").write_text(yaml.safe_dump(space))
    torch.manual_seed(0)
    elastic = SearchSpace.from_yaml(tmp_path / "elastic.yaml")
    elastic = dataclasses.replace(elastic, model=dataclasses.replace(elastic.model, pred_dim=64))  # the teacher's width
    init = randomize_(LightHuBERT(elastic), 1)
    atomic.save_file(formats.official.checkpoint(init), tmp_path / "init.pt")
    settings = {**TRAIN, "stage": 2, "space": str(tmp_path / "elastic.yaml")}
    teacher = str(train_setup / "teacher")

    def student(**extra):
        recipe = RunConfig.from_dict({**settings, **extra}).build(teacher=teacher, init=str(tmp_path / "init.pt"))
        return recipe.build(None, torch.device("cpu"), progress=False).state_dict()

    plain, ordered = student(), student(sort_conv_channels=True)
    reference = checkpoint.load_model(tmp_path / "init.pt")
    sort_conv_channels(reference)
    for key, value in reference.state_dict().items():
        assert torch.equal(ordered[key], value), key
    w = "feature_extractor.conv_layers.1.conv.weight"
    assert not torch.equal(plain[w], ordered[w]) and torch.equal(plain[w], init.state_dict()[w])
    with pytest.raises(ValueError, match="sort_conv_channels .* needs stage 2 and a space with conv_dim choices"):
        RunConfig.from_dict({**settings, "space": str(train_setup / "space.yaml"), "sort_conv_channels": True}).build(
            teacher=teacher, init=str(tmp_path / "init.pt"))
