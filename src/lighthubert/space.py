"""Search spaces, subnet configs, sampling, depth maps, and parameter / MAC counts.

A `SearchSpace` pairs the supernet's maximum shape (a `ModelConfig`) with the choices a
subnet may take: embed dim, heads and FFN ratio per layer, and depth; optionally (issue 14)
the channels of the conv front end, one choice per group of conv layers. The official spaces
(`base`, `small`; reference notes §3) share one 768-wide, 12-layer supernet and keep the
front end fixed.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

from . import settings
from .model import ModelConfig

def depth_map(max_depth: int, depth: int) -> tuple[int, ...]:
    """Indices of the supernet layers a subnet of `depth` layers keeps.

    The rule behind the official 12-layer table ("layer block: 1-4, 5-8, 9-12"), for any
    depth: split the layers into 3 contiguous blocks (as `numpy.array_split`) and drop layers
    cycling over the blocks from last to first, each time the block's last remaining layer
    but never its first; the blocks' first layers go last, last block first. For 12 layers it
    reproduces the official `depth_maps` (e.g. depth 10 keeps 0-6, 8, 9, 10), which its
    checkpoints need.
    """
    if not 1 <= depth <= max_depth:
        raise ValueError(f"depth must be in 1..{max_depth}, got {depth}")
    rank = {}  # layer -> (round in which it is dropped, -block)
    for b, block in enumerate(np.array_split(np.arange(max_depth), min(3, max_depth))):
        for p, layer in enumerate(block):
            rank[int(layer)] = (len(block) - 1 - p if p else max_depth, -b)
    dropped = sorted(rank, key=rank.get)[: max_depth - depth]
    return tuple(i for i in range(max_depth) if i not in dropped)


@dataclass(frozen=True)
class SubnetConfig:
    """One subnet: global embed dim, per-layer heads and FFN widths; depth = len(heads).

    Frozen so that it can key caches. The official dict (`atten_dim`, `embed_dim`,
    `ffn_embed`, `heads_num`, `layer_num`, `slide_wsz`) is read and written by
    `from_official` / `to_official`; `conv_dim` joins it only when set, so the subnets of
    spaces with a fixed front end serialise as the official code writes them.
    """

    embed_dim: int  # width of every layer's input and output
    heads: tuple  # attention heads of each kept layer
    ffn_dim: tuple  # FFN width of each kept layer
    conv_dim: tuple = ()  # channels of each conv front-end layer; () where the space's front end is fixed

    def __post_init__(self) -> None:
        object.__setattr__(self, "embed_dim", settings.integer("subnet embed_dim", self.embed_dim, 1))
        for name in ("heads", "ffn_dim", "conv_dim"):
            values = getattr(self, name)
            if not isinstance(values, (list, tuple)):
                raise ValueError(f"subnet {name} must be a list with one entry per layer, got {values!r}")
            object.__setattr__(self, name, tuple(settings.integer(f"subnet {name}[{i}]", v, 1) for i, v in enumerate(values)))
        if len(self.heads) != len(self.ffn_dim) or not self.heads:
            raise ValueError(f"heads and ffn_dim need one entry per layer, got {len(self.heads)} and {len(self.ffn_dim)}")

    @property
    def depth(self) -> int:
        return len(self.heads)

    @property
    def is_uniform(self) -> bool:
        return len(set(self.heads)) == 1 and len(set(self.ffn_dim)) == 1

    @classmethod
    def of(cls, cfg: ModelConfig) -> "SubnetConfig":
        """The shape of a dense model (for `describe()`); not checked against any space. The
        conv widths are kept where they are not HuBERT's 512 in every layer (an exported
        narrow front end, a small teacher), so the description tells those models apart."""
        widths = tuple(c for c, _, _ in cfg.conv_layers)
        return cls(cfg.embed_dim, tuple(cfg.heads), tuple(cfg.ffn_dim), () if set(widths) == {512} else widths)

    @classmethod
    def from_official(cls, d: dict[str, Any], head_dim: int = 64) -> "SubnetConfig":
        """Reads the official subnet dict; checks list lengths against `layer_num` and atten_dim = 64*heads."""
        required = ("embed_dim", "heads_num", "ffn_embed", "layer_num")
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"subnet is missing {missing}; expected the keys {list(required)} (+ atten_dim, slide_wsz)")
        known = set(required) | {"atten_dim", "slide_wsz", "ffn_ratio", "conv_dim"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown subnet key(s) {unknown}; expected {sorted(known)}")
        n = settings.integer("subnet layer_num", d["layer_num"], 1)
        for key in ("heads_num", "ffn_embed", "atten_dim", "slide_wsz"):
            if key in d and not isinstance(d[key], list):
                raise ValueError(f"subnet {key} must be a list with one entry per layer, got {d[key]!r}")
            if key in d and len(d[key]) != n:
                raise ValueError(f"subnet {key} has {len(d[key])} entries but layer_num is {n}")
        if "atten_dim" in d:
            bad = [i for i, (a, h) in enumerate(zip(d["atten_dim"], d["heads_num"])) if a != head_dim * h]
            if bad:
                i = bad[0]
                raise ValueError(
                    f"subnet atten_dim[{i}] = {d['atten_dim'][i]} must equal {head_dim} * heads_num[{i}] = {head_dim * d['heads_num'][i]}"
                )
        if any(w not in ("global", None) for w in d.get("slide_wsz", [])):
            raise ValueError("subnet slide_wsz must be 'global': sliding-window attention is not in any search space")
        return cls(d["embed_dim"], d["heads_num"], d["ffn_embed"], d.get("conv_dim", ()))

    def to_official(self, head_dim: int = 64) -> dict[str, Any]:
        """The official subnet dict, plus `conv_dim` (not an official key) when it is set."""
        d = {
            "atten_dim": [head_dim * h for h in self.heads],
            "embed_dim": self.embed_dim,
            "ffn_embed": list(self.ffn_dim),
            "heads_num": list(self.heads),
            "layer_num": self.depth,
            "slide_wsz": ["global"] * self.depth,
        }
        if self.conv_dim:
            d["conv_dim"] = list(self.conv_dim)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_official())

    @classmethod
    def parse(cls, text: str, head_dim: int = 64) -> "SubnetConfig":
        """Reads a JSON object (official dict, or ours: embed_dim/heads/ffn_dim[/conv_dim]) from a string."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"subnet is not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ValueError(f"subnet JSON must be an object, got {type(d).__name__}")
        if "heads" in d or "ffn_dim" in d:
            ours, optional = {"embed_dim", "heads", "ffn_dim"}, {"conv_dim"}
            if not ours <= set(d) <= ours | optional:
                raise ValueError(f"subnet keys {sorted(d)}: missing {sorted(ours - set(d))}, "
                                 f"unknown {sorted(set(d) - ours - optional)}; expected embed_dim, heads, ffn_dim (and conv_dim)")
            return cls(d["embed_dim"], d["heads"], d["ffn_dim"], d.get("conv_dim", ()))
        return cls.from_official(d, head_dim)

    def describe(self) -> str:
        """Short text such as `e640 h10 f2560 x12` (uniform) or `e640 h[8,10,...] f[...] x12`,
        then the front end (`c256`, `c[128,256,...]`) when `conv_dim` is set."""
        text = f"e{self.embed_dim} h{_compact(self.heads)} f{_compact(self.ffn_dim)} x{self.depth}"
        return f"{text} c{_compact(self.conv_dim)}" if self.conv_dim else text


def _compact(values: tuple) -> str:
    """`10` when every value is 10, else `[8,10,...]`; for `describe`."""
    return str(values[0]) if len(set(values)) == 1 else "[" + ",".join(map(str, values)) + "]"


@dataclass(frozen=True)
class SearchSpace:
    """The choices of a once-for-all supernet and the maximum shape that holds them.

    `ffn_dim` of a layer is `int(ratio * embed_dim)` for a ratio in `ffn_ratios`, as the
    official sampler computes it.

    The conv front end is elastic only where `conv_dims` is given (issue 14; the official
    spaces keep it fixed): every conv layer takes its leading channels, one choice of
    `conv_dims` per group of `conv_groups` (default: one group per layer, as heads and FFN
    widths are per layer). Per layer by default because the layers cost very unequal MACs
    (in HuBERT's front end layer 1 does half of them, layers 5-6 about 3%), so a MAC budget is
    best met by narrowing the costly layers; groups tie layers to keep the space small.
    """

    name: str  # "base", "small" or a custom name
    model: ModelConfig  # the supernet's maximum shape (every subnet is a slice of it)
    embed_dims: tuple  # choices of embed_dim
    heads: tuple  # choices of heads per layer
    ffn_ratios: tuple  # choices of FFN ratio per layer
    depths: tuple  # choices of depth
    default: SubnetConfig = field(default=None)  # the space's named default subnet (None: the max)
    conv_dims: tuple = ()  # choices of channels per conv-layer group (empty: the front end is fixed)
    conv_groups: tuple = ()  # conv layers that share one choice, e.g. ((0,), (1, 2, 3, 4), (5, 6)); empty: one per layer

    def __post_init__(self) -> None:
        for name in ("embed_dims", "heads", "ffn_ratios", "depths"):
            object.__setattr__(self, name, tuple(sorted(getattr(self, name))))
            if not getattr(self, name):
                raise ValueError(f"search space {self.name!r}: {name} must not be empty")
        m = self.model
        if len(set(m.heads)) != 1 or len(set(m.ffn_dim)) != 1:
            raise ValueError("a supernet needs the same heads and FFN width in every layer")
        if m.relative_buckets or m.pos_conv_layers:  # elastic layers exist for HuBERT's alone
            raise ValueError("a supernet is HuBERT-shaped: no relative_buckets (WavLM) nor pos_conv_layers (data2vec)")
        checks = [
            ("embed_dims", max(self.embed_dims) <= m.embed_dim and all(e % m.conv_pos_groups == 0 for e in self.embed_dims),
             f"at most {m.embed_dim} and multiples of {m.conv_pos_groups}"),
            ("heads", max(self.heads) <= m.heads[0] and min(self.heads) > 0, f"in 1..{m.heads[0]}"),
            ("ffn_ratios", max(self.ffn_ratios) * max(self.embed_dims) <= m.ffn_dim[0] and min(self.ffn_ratios) > 0,
             f"positive with ratio * max embed_dim <= {m.ffn_dim[0]}"),
            ("depths", max(self.depths) <= m.depth and min(self.depths) > 0, f"in 1..{m.depth}"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"search space {self.name!r}: {name} {getattr(self, name)} must be {allowed}")
        if m.ffn_dim[0] % m.embed_dim:
            raise ValueError(f"search space {self.name!r}: the supernet FFN width {m.ffn_dim[0]} must be a multiple of embed_dim {m.embed_dim}")
        self._check_front_end()
        if self.default is None:
            object.__setattr__(self, "default", self.max())
        else:
            object.__setattr__(self, "default", self._with_front_end(self.default))
            self.validate(self.default)

    def _check_front_end(self) -> None:
        """Sorts `conv_dims`, fills in the default `conv_groups` and checks both."""
        layers = len(self.model.conv_layers)
        dims = tuple(sorted(self.conv_dims))
        groups = tuple(tuple(g) for g in self.conv_groups) or (tuple((i,) for i in range(layers)) if dims else ())
        object.__setattr__(self, "conv_dims", dims)
        object.__setattr__(self, "conv_groups", groups)
        if groups and not dims:
            raise ValueError(f"search space {self.name!r}: conv_groups needs conv_dim choices")
        narrowest = min((c for c, _k, _s in self.model.conv_layers), default=0)
        if dims and not 0 < dims[0] <= dims[-1] <= narrowest:
            raise ValueError(f"search space {self.name!r}: conv_dim {list(dims)} must be in 1..{narrowest} "
                             "(the narrowest supernet conv layer)")
        if groups and (sorted(i for g in groups for i in g) != list(range(layers)) or not all(groups)):
            raise ValueError(f"search space {self.name!r}: conv_groups {[list(g) for g in groups]} must hold each "
                             f"conv layer 0..{layers - 1} once, in non-empty groups")

    @property
    def title(self) -> str:
        """How messages name the space: `the base space`, or `search space 'demo'` for a custom
        one (named after its file, so the demo's space.yaml would read "the space space")."""
        return f"the {self.name} space" if self.name in ("base", "small") else f"search space {self.name!r}"

    # -- presets -------------------------------------------------------------------------------
    @classmethod
    def base(cls) -> "SearchSpace":
        """Official `base` space: 6,530,347,008 subnets; default e640 h10 f2560 x12."""
        return cls("base", ModelConfig(), (512, 640, 768), (8, 10, 12), (3.5, 4.0), (12,),
                   SubnetConfig(640, (10,) * 12, (2560,) * 12))

    @classmethod
    def small(cls) -> "SearchSpace":
        """Official `small` space (a slice of the same 768-wide supernet); default e384 h6 f1536 x12."""
        return cls("small", ModelConfig(), (256, 384, 512), (4, 6, 8), (3.0, 3.5, 4.0), (10, 11, 12),
                   SubnetConfig(384, (6,) * 12, (1536,) * 12))

    @classmethod
    def named(cls, name: str) -> "SearchSpace":
        if name == "base":
            return cls.base()
        if name == "small":
            return cls.small()
        if Path(name).is_file():
            return cls.from_yaml(name)
        raise ValueError(f"unknown search space {name!r}: use 'base', 'small' or a YAML file")

    @classmethod
    def from_dict(cls, d: dict[str, Any], name: str = "custom") -> "SearchSpace":
        """Reads `{supernet: ModelConfig fields, search_space: {embed_dim, heads, ffn_ratio, depth[, conv_dim,
        conv_groups]}, default: subnet}`."""
        unknown = sorted(set(d) - {"name", "supernet", "search_space", "default"})
        if unknown:
            raise ValueError(f"unknown search-space section(s) {unknown}; expected supernet, search_space, default")
        if "search_space" not in d:
            raise ValueError("a search-space file needs a 'search_space' section")
        model = settings.from_dict(ModelConfig, d.get("supernet") or {}, "model")
        s = d["search_space"]
        keys = {"embed_dim": "list[int]", "heads": "list[int]", "ffn_ratio": "list[float]", "depth": "list[int]"}
        optional = {"conv_dim": "list[int]", "conv_groups": "list[list[int]]"}
        if not isinstance(s, dict) or not set(keys) <= set(s) <= set(keys) | set(optional):
            raise ValueError(f"search_space must be a mapping with exactly the keys {sorted(keys)} "
                             f"(and optionally {sorted(optional)}), got {s!r}")
        choices = {k: tuple(settings.convert(f"search_space.{k}", s[k], kind) if k in s else ())
                   for k, kind in {**keys, **optional}.items()}
        default = d.get("default")
        if default is not None:
            default = SubnetConfig.parse(json.dumps(default), model.head_dim)
        return cls(d.get("name", name), model, choices["embed_dim"], choices["heads"], choices["ffn_ratio"],
                   choices["depth"], default, choices["conv_dim"], choices["conv_groups"])

    @classmethod
    def from_yaml(cls, path: Union[str, Path]) -> "SearchSpace":
        """A space file (`from_dict`'s sections); every error is one line naming the file."""
        d = settings.read_mapping(path)
        try:
            return cls.from_dict(d, name=Path(path).stem)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """The `from_dict` sections; the front-end keys only in a space that has them."""
        space = {"embed_dim": list(self.embed_dims), "heads": list(self.heads), "ffn_ratio": list(self.ffn_ratios),
                 "depth": list(self.depths)}
        default = {"embed_dim": self.default.embed_dim, "heads": list(self.default.heads), "ffn_dim": list(self.default.ffn_dim)}
        if self.conv_dims:
            space.update(conv_dim=list(self.conv_dims), conv_groups=[list(g) for g in self.conv_groups])
            default["conv_dim"] = list(self.default.conv_dim)
        return {"name": self.name, "supernet": self.model.asdict(), "search_space": space, "default": default}

    # -- subnets -------------------------------------------------------------------------------
    def _subnet(self, e: int, h: int, r: float, d: int, c: int) -> SubnetConfig:
        return SubnetConfig(e, (h,) * d, (int(r * e),) * d, (c,) * len(self.model.conv_layers) if self.conv_dims else ())

    def max(self) -> SubnetConfig:
        return self._subnet(max(self.embed_dims), max(self.heads), max(self.ffn_ratios), max(self.depths),
                            max(self.conv_dims, default=0))

    def min(self) -> SubnetConfig:
        return self._subnet(min(self.embed_dims), min(self.heads), min(self.ffn_ratios), min(self.depths),
                            min(self.conv_dims, default=0))

    def conv_widths(self, per_group: Sequence[int]) -> tuple[int, ...]:
        """Per-layer channels from one width per `conv_groups` entry (what the search genome holds)."""
        widths = [0] * len(self.model.conv_layers)
        for group, c in zip(self.conv_groups, per_group, strict=True):
            for i in group:
                widths[i] = c
        return tuple(widths)

    def _with_front_end(self, sub: SubnetConfig) -> SubnetConfig:
        """`sub` with the widest front end when it names none (e.g. an official subnet dict) in
        a space whose front end is elastic; otherwise `sub` itself."""
        if self.conv_dims and not sub.conv_dim:
            return dataclasses.replace(sub, conv_dim=self.max().conv_dim)
        return sub

    def subnet(self, spec: Union[str, SubnetConfig, dict]) -> SubnetConfig:
        """Resolves `default`, `max`, `min`, a JSON file, a JSON string or a dict; validated."""
        if isinstance(spec, SubnetConfig):
            sub = spec
        elif isinstance(spec, dict):
            sub = SubnetConfig.parse(json.dumps(spec), self.model.head_dim)
        elif spec in ("default", "max", "min"):
            sub = {"default": self.default, "max": self.max(), "min": self.min()}[spec]
        elif spec.lstrip().startswith("{"):
            sub = SubnetConfig.parse(spec, self.model.head_dim)
        elif Path(spec).is_file():
            sub = SubnetConfig.parse(settings.read_text(spec, "JSON"), self.model.head_dim)
        else:
            raise ValueError(f"subnet {spec!r} is not 'default', 'max', 'min', a JSON file or a JSON object")
        sub = self._with_front_end(sub)
        self.validate(sub)
        return sub

    def validate(self, sub: SubnetConfig) -> None:
        """Raises ValueError naming the field and the allowed values when `sub` is outside the space."""
        if sub.embed_dim not in self.embed_dims:
            raise ValueError(f"embed_dim {sub.embed_dim} is not in {self.title}; allowed: {list(self.embed_dims)}")
        if sub.depth not in self.depths:
            raise ValueError(f"depth (layer_num) {sub.depth} is not in {self.title}; allowed: {list(self.depths)}")
        for i, h in enumerate(sub.heads):
            if h not in self.heads:
                raise ValueError(f"heads[{i}] = {h} is not in {self.title}; allowed: {list(self.heads)}")
        allowed_ffn = [int(r * sub.embed_dim) for r in self.ffn_ratios]
        for i, f in enumerate(sub.ffn_dim):
            if f not in allowed_ffn:
                raise ValueError(
                    f"ffn_dim[{i}] = {f} is not in {self.title} for embed_dim {sub.embed_dim}; "
                    f"allowed: {allowed_ffn} (ratios {list(self.ffn_ratios)})"
                )
        if not self.conv_dims:
            if sub.conv_dim:
                raise ValueError(f"conv_dim {list(sub.conv_dim)} is not a dimension of {self.title}: its conv front end "
                                 "is fixed; leave conv_dim out")
            return
        if len(sub.conv_dim) != len(self.model.conv_layers):
            raise ValueError(f"conv_dim has {len(sub.conv_dim)} entries but {self.title} has "
                             f"{len(self.model.conv_layers)} conv layers; give one width per layer")
        for i, c in enumerate(sub.conv_dim):
            if c not in self.conv_dims:
                raise ValueError(f"conv_dim[{i}] = {c} is not in {self.title}; allowed: {list(self.conv_dims)}")
        for group in self.conv_groups:
            if len({sub.conv_dim[i] for i in group}) > 1:
                raise ValueError(f"conv_dim of layers {list(group)} must be equal in {self.title} (one conv_groups "
                                 f"entry), got {[sub.conv_dim[i] for i in group]}")

    def sample(self, rng: random.Random) -> SubnetConfig:
        """Uniform sample in the official order (depth, embed, FFN ratio per layer, heads per
        layer), then a front-end width per conv group where the space has them.

        With `rng = random.Random(s)` it draws what the official `sample_subnet()` draws after
        `random.seed(s)`; the front end is drawn last, so that stays true.
        """
        d = rng.choice(self.depths)
        e = rng.choice(self.embed_dims)
        ffn = tuple(int(rng.choice(self.ffn_ratios) * e) for _ in range(d))
        heads = tuple(rng.choice(self.heads) for _ in range(d))
        conv = self.conv_widths([rng.choice(self.conv_dims) for _ in self.conv_groups]) if self.conv_dims else ()
        return SubnetConfig(e, heads, ffn, conv)

    @property
    def num_subnets(self) -> int:
        """len(embed) * sum over depths d of (len(ratios) * len(heads))^d, times
        len(conv_dims)^groups with an elastic front end."""
        transformer = len(self.embed_dims) * sum((len(self.ffn_ratios) * len(self.heads)) ** d for d in self.depths)
        return transformer * len(self.conv_dims) ** len(self.conv_groups) if self.conv_dims else transformer

    def kept_layers(self, depth: int) -> tuple[int, ...]:
        return depth_map(self.model.depth, depth)

    def model_config(self, sub: SubnetConfig) -> ModelConfig:
        """The `ModelConfig` of the dense model that `sub` exports to; it records the
        supernet's width, so that the export counts as many parameters as the subnet. Its
        `conv_layers` carry the subnet's front-end channels, so counts include them."""
        conv = [[c, k, s] for c, (_c, k, s) in zip(sub.conv_dim, self.model.conv_layers)] or self.model.conv_layers
        return dataclasses.replace(self.model, conv_layers=conv, embed_dim=sub.embed_dim, heads=list(sub.heads),
                                   ffn_dim=list(sub.ffn_dim), supernet_embed_dim=self.model.embed_dim)


# -- counting ------------------------------------------------------------------------------------
def count_params(cfg: ModelConfig) -> int:
    """Parameters of a model as the official `calc_sampled_param_num` counts them: the one
    count every command and report shows (docs/model.md, "Counting").

    Counts the conv front end, its norms, the feature LayerNorm, `mask_emb`,
    `post_extract_proj`, the positional conv (`weight_v` and bias; its `weight_g` is not
    counted; data2vec's stack of convs), the encoder LayerNorm and the layers (WavLM's
    relative bias and gates included); the prediction head is excluded.
    `mask_emb` is counted at the supernet's full width (`cfg.supernet_embed_dim`) for a
    subnet, as the official code does, which does not slice it; so a subnet and its export
    count the same. Closed form, no model is built.
    """
    return _count(cfg, cfg.supernet_embed_dim or cfg.embed_dim)


def count_subnet_params(space: SearchSpace, sub: SubnetConfig) -> int:
    """Official parameter count of `sub` (base default: 66,897,664): `count_params` of its export."""
    return count_params(space.model_config(sub))


def _count(cfg: ModelConfig, mask_width: int) -> int:
    total, c_in = 0, 1
    for i, (c, k, _s) in enumerate(cfg.conv_layers):
        total += c * c_in * k + (c if cfg.conv_bias else 0)
        if cfg.extractor_mode == "layer_norm" or i == 0:
            total += 2 * c
        c_in = c
    e, c = cfg.embed_dim, cfg.conv_dim
    total += (2 * c if cfg.feature_layer_norm else 0) + mask_width  # feature LayerNorm, mask_emb
    total += c * e + e  # post_extract_proj
    total += max(cfg.pos_conv_layers, 1) * (e * (e // cfg.conv_pos_groups) * cfg.conv_pos + e)  # positional conv(s)
    total += 2 * e  # encoder LayerNorm
    for h, f in zip(cfg.heads, cfg.ffn_dim):
        a = h * cfg.head_dim
        total += 3 * (e * a + a) + (a * e + e) + 4 * e + (e * f + f) + (f * e + e)
        if cfg.relative_buckets:  # WavLM's gate: grep_linear and grep_a
            total += cfg.head_dim * 8 + 8 + h
    return total + cfg.relative_buckets * cfg.heads[0]  # WavLM's bucket embedding, in the first layer


def count_macs(cfg: ModelConfig, seconds: float = 1.0, sample_rate: int = 16000) -> int:
    """Multiply-accumulates to encode one utterance of `seconds` (excludes the prediction head).

    Counts the convolutions and every matrix product, the attention scores and weighted sum
    included (quadratic in length, hence the fixed duration); norms and activations are
    ignored, as in MAC counters such as thop.
    """
    n = int(seconds * sample_rate)
    total, c_in = 0, 1
    for c, k, s in cfg.conv_layers:
        n = (n - k) // s + 1
        total += n * c * c_in * k
        c_in = c
    t, e = max(n, 0), cfg.embed_dim
    total += t * cfg.conv_dim * e  # post_extract_proj
    total += max(cfg.pos_conv_layers, 1) * t * e * (e // cfg.conv_pos_groups) * cfg.conv_pos  # positional conv(s)
    for h, f in zip(cfg.heads, cfg.ffn_dim):
        a = h * cfg.head_dim
        total += t * 4 * e * a + 2 * t * t * a + 2 * t * e * f
    return total


def format_count(n: float) -> str:
    """12,345,678 -> '12.35M'; for tables."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def format_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned text columns separated by two spaces, header first; for the CLI's tables."""
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [list(columns), *rows])
