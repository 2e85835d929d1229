"""Search spaces: official counts and depth maps, subnet configs, seeded sampling, YAML spaces."""

from __future__ import annotations

import dataclasses
import json
import random
import re

import pytest
import yaml

from lighthubert import settings
from lighthubert.model import ModelConfig
from lighthubert.space import SearchSpace, SubnetConfig, count_macs, count_params, count_subnet_params, depth_map

from conftest import tiny_search_space

# Official `calc_sampled_param_num` values (reference notes §3, §5).
OFFICIAL_PARAMS = {
    ("base", "max"): 94_377_728,
    ("base", "default"): 66_897_664,
    ("base", "min"): 41_249_536,
    ("small", "max"): 44_398_336,
    ("small", "default"): 26_879_744,
    ("small", "min"): 11_449_088,
}

# Official `STransformerEncoder.depth_maps`, 0-based kept layers (reference notes §2.7).
OFFICIAL_DEPTH_MAPS = {
    12: (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11),
    11: (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10),
    10: (0, 1, 2, 3, 4, 5, 6, 8, 9, 10),
    9: (0, 1, 2, 4, 5, 6, 8, 9, 10),
    8: (0, 1, 2, 4, 5, 6, 8, 9),
    7: (0, 1, 2, 4, 5, 8, 9),
    6: (0, 1, 4, 5, 8, 9),
}


# -- presets -----------------------------------------------------------------------------------
@pytest.mark.parametrize("space, which", sorted(OFFICIAL_PARAMS))
def test_official_param_counts(space, which):
    s = SearchSpace.named(space)
    assert count_subnet_params(s, s.subnet(which)) == OFFICIAL_PARAMS[space, which]


def test_official_named_subnets():
    base, small = SearchSpace.base(), SearchSpace.small()
    assert base.default == SubnetConfig(640, (10,) * 12, (2560,) * 12)
    assert base.min() == SubnetConfig(512, (8,) * 12, (1792,) * 12)
    assert small.max() == SubnetConfig(512, (8,) * 12, (2048,) * 12)
    assert small.min() == SubnetConfig(256, (4,) * 10, (768,) * 10)
    assert base.model == small.model == ModelConfig()  # one 768-wide supernet


def test_count_params_of_the_full_model_excludes_only_the_head():
    # the supernet's own count is the base max subnet: mask_emb is full width in both
    assert count_params(ModelConfig()) == 94_377_728


@pytest.mark.parametrize("space, expected", [("base", 6_530_347_008), ("small", 951_892_141_473)])
def test_num_subnets(space, expected):
    assert SearchSpace.named(space).num_subnets == expected


def test_named_rejects_unknown_space():
    with pytest.raises(ValueError, match="'large'"):
        SearchSpace.named("large")


@pytest.mark.parametrize(
    "field, kw",
    [
        ("embed_dims", {"embed_dims": (64, 256)}),  # wider than the supernet
        ("embed_dims", {"embed_dims": (66,)}),  # not a multiple of conv_pos_groups
        ("heads", {"heads": (2, 5)}),
        ("ffn_ratios", {"ffn_ratios": (5.0,)}),
        ("depths", {"depths": (5,)}),
        ("depths", {"depths": ()}),
    ],
)
def test_search_space_constructor_names_the_bad_field(tiny_space, field, kw):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(tiny_space, **kw)


# -- depth maps --------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", sorted(OFFICIAL_DEPTH_MAPS))
def test_depth_map_matches_official_table(depth):
    assert depth_map(12, depth) == OFFICIAL_DEPTH_MAPS[depth]


@pytest.mark.parametrize("max_depth", [1, 2, 3, 4, 5, 6, 7, 12, 13, 24])
def test_depth_map_rule_for_any_depth(max_depth):
    """Every map keeps `depth` sorted distinct layers including layer 0, and is nested."""
    previous: set[int] = set()
    for depth in range(1, max_depth + 1):
        kept = depth_map(max_depth, depth)
        assert len(kept) == depth
        assert list(kept) == sorted(set(kept))
        assert kept[0] == 0 and kept[-1] < max_depth
        assert previous <= set(kept)
        previous = set(kept)
    assert previous == set(range(max_depth))


def test_depth_map_drops_block_first_layers_last():
    """Below 3 layers of 12 only block starts remain (layers 0, 4, 8), the last block's first."""
    assert depth_map(12, 3) == (0, 4, 8)
    assert depth_map(12, 2) == (0, 4)
    assert depth_map(12, 1) == (0,)


@pytest.mark.parametrize("depth", [0, 13])
def test_depth_map_rejects_out_of_range(depth):
    with pytest.raises(ValueError, match=r"1\.\.12"):
        depth_map(12, depth)


# -- SubnetConfig ------------------------------------------------------------------------------
def test_subnet_official_dict_round_trip():
    sub = SearchSpace.small().sample(random.Random(7))
    d = sub.to_official()
    assert d["atten_dim"] == [64 * h for h in sub.heads]
    assert d["layer_num"] == sub.depth and d["slide_wsz"] == ["global"] * sub.depth
    assert SubnetConfig.from_official(d) == sub
    assert SubnetConfig.parse(sub.to_json()) == sub
    assert SubnetConfig.parse(json.dumps(d)) == sub
    ours = {"embed_dim": sub.embed_dim, "heads": list(sub.heads), "ffn_dim": list(sub.ffn_dim)}
    assert SubnetConfig.parse(json.dumps(ours)) == sub


def test_subnet_accepts_official_ffn_ratio_key():
    """The official `.subnet` dict also carries `ffn_ratio`, which is ignored."""
    d = SearchSpace.base().default.to_official()
    assert SubnetConfig.from_official({**d, "ffn_ratio": [4.0] * 12}) == SearchSpace.base().default


def test_subnet_is_hashable_and_describes_itself():
    a = SubnetConfig(640, [10] * 12, [2560] * 12)
    assert a == SubnetConfig(640, (10,) * 12, (2560,) * 12) and len({a, SearchSpace.base().default}) == 1
    assert a.describe() == "e640 h10 f2560 x12" and a.is_uniform
    b = SubnetConfig(512, (8, 10), (1792, 2048))
    assert b.describe() == "e512 h[8,10] f[1792,2048] x2" and not b.is_uniform


def test_shape_of_a_dense_model_names_a_non_standard_front_end():
    """HuBERT's 512-channel front end is left out of the text; any other widths (an exported
    narrow front end) are shown, so two models that differ only there are told apart."""
    assert SubnetConfig.of(SearchSpace.base().model_config(SearchSpace.base().max())).describe() == "e768 h12 f3072 x12"
    narrow = ModelConfig(embed_dim=96, heads=[3, 2], ffn_dim=[192, 288],
                         conv_layers=[[16, 10, 5], [32, 3, 2], [24, 2, 2]])
    assert SubnetConfig.of(narrow).describe() == "e96 h[3,2] f[192,288] x2 c[16,32,24]"


@pytest.mark.parametrize(
    "spec, field, allowed",
    [
        ({"embed_dim": 700, "heads": [10] * 12, "ffn_dim": [2560] * 12}, "embed_dim", "[512, 640, 768]"),
        ({"embed_dim": 640, "heads": [10] * 3 + [6] + [10] * 8, "ffn_dim": [2560] * 12}, r"heads\[3\]", "[8, 10, 12]"),
        ({"embed_dim": 640, "heads": [10] * 12, "ffn_dim": [2000] + [2560] * 11}, r"ffn_dim\[0\]", "[2240, 2560]"),
        ({"embed_dim": 640, "heads": [10] * 11, "ffn_dim": [2560] * 11}, "depth", "[12]"),
    ],
)
def test_subnet_outside_space_names_field_and_allowed_values(spec, field, allowed):
    with pytest.raises(ValueError, match=field) as err:
        SearchSpace.base().subnet(spec)
    assert allowed in str(err.value)


def official(**changes):
    d = SearchSpace.base().default.to_official()
    d.update(changes)
    return d


@pytest.mark.parametrize(
    "d, names",
    [
        (official(heads_num=[10] * 11), ["heads_num", "layer_num"]),
        (official(ffn_embed=[2560] * 13), ["ffn_embed", "layer_num"]),
        (official(atten_dim=[640] * 11), ["atten_dim", "layer_num"]),
        (official(atten_dim=[640, 640, 512] + [640] * 9), [r"atten_dim\[2\]", "heads_num"]),
        (official(heads_nums=[10] * 12), ["heads_nums"]),
        ({k: v for k, v in official().items() if k != "embed_dim"}, ["embed_dim"]),
        (official(slide_wsz=[32] * 12), ["slide_wsz"]),
    ],
)
def test_subnet_official_dict_errors_name_the_field(d, names):
    with pytest.raises(ValueError) as err:
        SubnetConfig.from_official(d)
    for name in names:
        assert re.search(name, str(err.value)), (name, str(err.value))


def test_subnet_parse_errors():
    with pytest.raises(ValueError, match="JSON"):
        SubnetConfig.parse("{embed_dim: 640")
    with pytest.raises(ValueError, match="object"):
        SubnetConfig.parse("[640]")
    with pytest.raises(ValueError, match="extra"):
        SubnetConfig.parse(json.dumps({"embed_dim": 64, "heads": [2], "ffn_dim": [128], "extra": 1}))
    with pytest.raises(ValueError, match="one entry per layer"):
        SubnetConfig(64, (2, 2), (128,))


@pytest.mark.parametrize("missing", ["embed_dim", "ffn_dim"])
def test_subnet_parse_missing_key_is_named(missing):
    d = {"embed_dim": 64, "heads": [2], "ffn_dim": [128]}
    del d[missing]
    with pytest.raises(ValueError, match=missing):
        SubnetConfig.parse(json.dumps(d))


def test_subnet_from_json_file(tmp_path):
    path = tmp_path / "sub.json"
    sub = SearchSpace.base().min()
    path.write_text(sub.to_json())
    assert SearchSpace.base().subnet(str(path)) == sub
    with pytest.raises(ValueError, match="not 'default'"):
        SearchSpace.base().subnet(str(tmp_path / "missing.json"))


# -- sampling ----------------------------------------------------------------------------------
@pytest.mark.parametrize("space", ["base", "small"])
@pytest.mark.parametrize("seed", [1, 2])
def test_sample_reproduces_official_sampler(golden, space, seed):
    """`random.Random(s)` draws what the official `sample_subnet()` drew after `random.seed(s)`."""
    official_dict = json.loads(str(golden[f"{space}/random{seed}/subnet"]))
    ours = SearchSpace.named(space).sample(random.Random(seed))
    assert ours == SubnetConfig.from_official(official_dict)
    assert ours.to_official() == official_dict


@pytest.mark.parametrize("space", ["base", "small"])
def test_sample_stays_in_space_and_covers_it(space):
    s = SearchSpace.named(space)
    rng = random.Random(0)
    subs = [s.sample(rng) for _ in range(300)]
    for sub in subs:
        s.validate(sub)
    assert {sub.embed_dim for sub in subs} == set(s.embed_dims)
    assert {sub.depth for sub in subs} == set(s.depths)
    assert {h for sub in subs for h in sub.heads} == set(s.heads)
    assert {f / sub.embed_dim for sub in subs for f in sub.ffn_dim} == set(s.ffn_ratios)
    assert s.sample(random.Random(3)) == s.sample(random.Random(3))


# -- YAML spaces -------------------------------------------------------------------------------
def test_yaml_round_trip(tmp_path, tiny_space):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_space.to_dict()))
    loaded = SearchSpace.from_yaml(path)
    assert loaded == tiny_space
    assert loaded.to_dict() == tiny_space.to_dict()
    assert SearchSpace.named(str(path)) == tiny_space


HAND_WRITTEN = """\
supernet:
  conv_layers: [[32, 10, 5], [32, 3, 2], [32, 2, 2]]
  embed_dim: 128
  heads: [4, 4, 4, 4]
  ffn_dim: [512, 512, 512, 512]
  head_dim: 32
  conv_pos: 16
  conv_pos_groups: 4
  pred_dim: 64
search_space:
  embed_dim: [128, 64, 96]
  heads: [2, 3, 4]
  ffn_ratio: [2, 3, 4]
  depth: [2, 3, 4]
default:
  embed_dim: 96
  heads: [3, 3, 3]
  ffn_dim: [288, 288, 288]
"""


def test_yaml_hand_written(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(HAND_WRITTEN)
    s = SearchSpace.from_yaml(path)
    assert s.name == "mine"
    assert s.embed_dims == (64, 96, 128) and s.ffn_ratios == (2.0, 3.0, 4.0)
    assert s.model.embed_dim == 128 and s.model.heads == [4] * 4 and s.model.head_dim == 32
    assert s.default == SubnetConfig(96, (3,) * 3, (288,) * 3)
    assert s.kept_layers(3) == depth_map(4, 3)


@pytest.mark.parametrize(
    "old, new, name",
    [
        ("  embed_dim: 128\n", "  embed_dimm: 128\n", "embed_dimm"),  # supernet field
        ("search_space:\n", "serach_space:\n", "serach_space"),  # section
        ("  ffn_ratio: [2, 3, 4]\n", "  ffn_ratios: [2, 3, 4]\n", "ffn_ratios"),  # search_space key
        ("  ffn_dim: [288, 288, 288]\n", "  ffn_dim: [288, 288, 288]\n  extra: 1\n", "extra"),  # default key
    ],
)
def test_yaml_unknown_key_is_named(tmp_path, old, new, name):
    assert old in HAND_WRITTEN
    path = tmp_path / "bad.yaml"
    path.write_text(HAND_WRITTEN.replace(old, new, 1))
    with pytest.raises(ValueError, match=name):
        SearchSpace.from_yaml(path)


def test_yaml_default_outside_space_is_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(HAND_WRITTEN.replace("embed_dim: 96", "embed_dim: 80"))
    with pytest.raises(ValueError, match="embed_dim 80"):
        SearchSpace.from_yaml(path)


# -- counts ------------------------------------------------------------------------------------
def test_count_macs_positive_and_growing():
    base = SearchSpace.base()
    cfg = {w: base.model_config(base.subnet(w)) for w in ("min", "default", "max")}
    assert 0 < count_macs(cfg["min"]) < count_macs(cfg["default"]) < count_macs(cfg["max"])
    assert count_macs(cfg["default"], seconds=1.0) < count_macs(cfg["default"], seconds=2.0)
    # only embed_dim changes: every term that depends on it grows
    wider = dataclasses.replace(cfg["default"], embed_dim=768)
    assert count_macs(cfg["default"]) < count_macs(wider)
    # attention is quadratic in length: doubling the audio more than doubles the encoder MACs
    assert count_macs(cfg["max"], seconds=4.0) > 2 * count_macs(cfg["max"], seconds=2.0)


def test_a_subnet_and_its_export_config_count_the_same():
    """The official count keeps mask_emb at the supernet's width (768) for every subnet, and
    the export's config records that width; a model of the same shape that is no subnet
    counts mask_emb at its own width."""
    base = SearchSpace.base()
    sub = base.default
    exported = base.model_config(sub)
    assert exported.supernet_embed_dim == 768
    assert count_subnet_params(base, sub) == count_params(exported) == 66_897_664
    assert settings.from_dict(ModelConfig, exported.asdict(), "model") == exported  # survives every config file
    standalone = dataclasses.replace(exported, supernet_embed_dim=0)
    assert count_params(exported) - count_params(standalone) == 768 - 640
    assert "supernet_embed_dim" not in standalone.asdict()  # configs of other models read as before
    with pytest.raises(ValueError, match="supernet_embed_dim 512 is below embed_dim 640"):
        dataclasses.replace(exported, supernet_embed_dim=512)


# -- elastic conv front end (issue 14) ---------------------------------------------------------
FRONT_END_YAML = HAND_WRITTEN.replace("  depth: [2, 3, 4]\n", "  depth: [2, 3, 4]\n  conv_dim: [32, 16, 24]\n  conv_groups: [[0], [1, 2]]\n")


def front_end_space(groups: tuple = ()) -> SearchSpace:
    return dataclasses.replace(tiny_search_space(), name="fe", conv_dims=(16, 24, 32), conv_groups=groups)


def test_fixed_front_end_spaces_serialise_and_count_as_before(tiny_space):
    """Without conv_dims nothing about a space or its subnets mentions the front end."""
    for space in (SearchSpace.base(), SearchSpace.small(), tiny_space):
        d = space.to_dict()
        assert set(d["search_space"]) == {"embed_dim", "heads", "ffn_ratio", "depth"}
        assert set(d["default"]) == {"embed_dim", "heads", "ffn_dim"}
        assert space.conv_dims == space.conv_groups == ()
        for sub in (space.max(), space.min(), space.sample(random.Random(0))):
            assert sub.conv_dim == () and "conv_dim" not in sub.to_official() and " c" not in sub.describe()
            assert space.model_config(sub).conv_layers == space.model.conv_layers
    assert SearchSpace.base().num_subnets == 6_530_347_008


def test_front_end_space_draws_the_transformer_as_the_fixed_space_does(tiny_space):
    """The front end is drawn after everything else, so seeded draws keep the official order."""
    fe = front_end_space()
    for seed in range(5):
        fixed, elastic = tiny_space.sample(random.Random(seed)), fe.sample(random.Random(seed))
        assert dataclasses.replace(elastic, conv_dim=()) == fixed
        fe.validate(elastic)
    assert fe.num_subnets == tiny_space.num_subnets * 3**3
    assert fe.max().conv_dim == (32, 32, 32) and fe.min().conv_dim == (16, 16, 16)  # sandwich: widest and narrowest
    assert {c for s in range(40) for c in fe.sample(random.Random(s)).conv_dim} == {16, 24, 32}


def test_front_end_groups_share_one_width():
    fe = front_end_space(((0,), (1, 2)))
    assert fe.num_subnets == front_end_space().num_subnets // 3
    for seed in range(10):
        conv = fe.sample(random.Random(seed)).conv_dim
        assert conv[1] == conv[2]
    assert fe.conv_widths([16, 32]) == (16, 32, 32)
    with pytest.raises(ValueError, match=r"conv_dim of layers \[1, 2\] must be equal"):
        fe.validate(SubnetConfig(64, (2, 2), (128, 128), (16, 16, 32)))


def test_front_end_subnet_serialisation_round_trips():
    fe = front_end_space()
    sub = SubnetConfig(96, (3, 2), (192, 288), (16, 32, 24))
    official = sub.to_official(32)
    assert official["conv_dim"] == [16, 32, 24]
    assert SubnetConfig.from_official(official, 32) == sub
    assert SubnetConfig.parse(sub.to_json()) == sub  # to_json writes 64-dim heads' atten_dim
    ours = {"embed_dim": 96, "heads": [3, 2], "ffn_dim": [192, 288], "conv_dim": [16, 32, 24]}
    assert fe.subnet(ours) == sub
    assert sub.describe() == "e96 h[3,2] f[192,288] x2 c[16,32,24]"
    assert dataclasses.replace(sub, conv_dim=(24,) * 3).describe().endswith(" c24")
    # a subnet that names no front end gets the widest one
    assert fe.subnet({"embed_dim": 96, "heads": [3, 2], "ffn_dim": [192, 288]}).conv_dim == (32, 32, 32)


def test_front_end_yaml(tmp_path):
    path = tmp_path / "fe.yaml"
    path.write_text(FRONT_END_YAML)
    s = SearchSpace.from_yaml(path)
    assert s.conv_dims == (16, 24, 32) and s.conv_groups == ((0,), (1, 2))
    assert s.default.conv_dim == (32, 32, 32)  # the YAML default names no front end: the widest
    assert SearchSpace.from_dict(s.to_dict(), "fe") == s
    path.write_text(yaml.safe_dump(s.to_dict()))
    assert SearchSpace.from_yaml(path) == s


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"conv_dims": (16, 48)}, r"conv_dim \[16, 48\] must be in 1\.\.32"),
        ({"conv_dims": (16,), "conv_groups": ((0,), (1,))}, r"must hold each conv layer 0\.\.2 once"),
        ({"conv_dims": (16,), "conv_groups": ((0, 1), (1, 2))}, "must hold each conv layer"),
        ({"conv_groups": ((0, 1, 2),)}, "conv_groups needs conv_dim choices"),
    ],
)
def test_front_end_space_errors_name_the_field(tiny_space, kw, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(tiny_space, **kw)


@pytest.mark.parametrize(
    "conv, match",
    [
        ((16, 16), "conv_dim has 2 entries but search space 'fe' has 3 conv layers"),
        ((16, 20, 16), r"conv_dim\[1\] = 20 is not in search space 'fe'; allowed: \[16, 24, 32\]"),
    ],
)
def test_front_end_subnet_outside_space_is_named(conv, match):
    with pytest.raises(ValueError, match=match):
        front_end_space().validate(SubnetConfig(64, (2, 2), (128, 128), conv))


def test_a_front_end_choice_in_a_fixed_space_is_refused(tiny_space):
    with pytest.raises(ValueError, match="conv front end is fixed; leave conv_dim out"):
        tiny_space.subnet({"embed_dim": 64, "heads": [2, 2], "ffn_dim": [128, 128], "conv_dim": [16, 16, 16]})


def test_front_end_counts_match_a_hand_computation(tiny_space):
    """Narrowing conv layer 1 of [[32, 10, 5], [32, 3, 2], [32, 2, 2]] from 32 to 16 channels,
    1 s of audio (3199, 1599, 799 frames after each layer): layer 1 loses 1599 x 16 x 32 x 3
    MACs and layer 2, which reads its output, 799 x 32 x 16 x 2; parameters: 16 x 32 x 3
    conv weights and 2 x 16 LayerNorm entries in layer 1, 32 x 16 x 2 weights in layer 2."""
    fe = front_end_space()
    sub = dataclasses.replace(fe.max(), conv_dim=(32, 16, 32))
    wide, narrow = fe.model_config(fe.max()), fe.model_config(sub)
    assert count_macs(wide) - count_macs(narrow) == 1599 * 16 * 32 * 3 + 799 * 32 * 16 * 2 == 3_274_240
    assert count_params(wide) - count_params(narrow) == 16 * 32 * 3 + 2 * 16 + 32 * 16 * 2
    # at full width the front end counts as in the fixed space
    fixed = tiny_space.max()
    assert count_subnet_params(fe, fe.max()) == count_subnet_params(tiny_space, fixed)
    assert count_macs(wide) == count_macs(tiny_space.model_config(fixed))
    # the last layer also feeds the feature LayerNorm and post_extract_proj (E = 128, 799 frames)
    last = fe.model_config(dataclasses.replace(fe.max(), conv_dim=(32, 32, 16)))
    assert count_macs(wide) - count_macs(last) == 799 * 16 * 32 * 2 + 799 * 16 * 128
    assert count_params(wide) - count_params(last) == 16 * 32 * 2 + 2 * 16 + 2 * 16 + 16 * 128
