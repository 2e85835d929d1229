"""The dense HuBERT encoder: teacher, stage-1 student and every exported subnet.

One implementation serves every fixed-shape model in the package. Heads and FFN widths are
per layer, so an exported non-uniform subnet is an ordinary `HuBERT`. The supernet
(`supernet.LightHuBERT`) is this same module tree built from elastic layers.

Module attributes follow fairseq's keys (`post_extract_proj`, `encoder.pos_conv.0`,
`encoder.layers.{i}.self_attn.q_proj`, `fc1`, `layer_pred_heads`), so the encoder of an
official checkpoint loads as is; only the conv front end's keys are renamed (`formats/fairseq.py`).

Shapes: `B` batch, `N` samples, `T` frames, `E` embed dim, `C` conv channels.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .positions import LayerNormPosConv, gated_bias, position_bias

_DEFAULT_CONV = [[512, 10, 5]] + [[512, 3, 2]] * 4 + [[512, 2, 2]] * 2


@dataclass
class ModelConfig:
    """Shape and behaviour of a HuBERT-style encoder (fairseq's `HubertConfig`, trimmed)."""

    conv_layers: list[list[int]] = field(default_factory=lambda: [list(c) for c in _DEFAULT_CONV])  # [channels, kernel, stride] per block; official: conv_feature_layers
    extractor_mode: str = "layer_norm"  # "layer_norm" (LightHuBERT, HuBERT Large) or "default" (GroupNorm in block 0, HuBERT Base)
    conv_bias: bool = False  # bias in the conv front end
    embed_dim: int = 768  # official: encoder_embed_dim
    heads: list[int] = field(default_factory=lambda: [12] * 12)  # attention heads per layer; official: encoder_attention_heads
    ffn_dim: list[int] = field(default_factory=lambda: [3072] * 12)  # FFN width per layer; official: encoder_ffn_embed_dim
    head_dim: int = 64  # width of one attention head (fixed at 64 in LightHuBERT)
    feature_layer_norm: bool = True  # LayerNorm on the CNN frames before the projection (transformers: feat_proj_layer_norm)
    conv_pos: int = 128  # positional conv kernel size
    conv_pos_groups: int = 16  # positional conv groups
    pos_conv_layers: int = 0  # data2vec audio: this many conv -> LayerNorm -> GELU blocks of kernel conv_pos as the positional encoder (0: HuBERT's one weight-normed conv); official: pos_conv_depth
    relative_buckets: int = 0  # WavLM: buckets of the gated relative position bias (0: none); official: num_buckets
    relative_max_distance: int = 800  # WavLM: the offset of the last relative bucket; official: max_distance
    layer_norm_first: bool = False  # pre-LN layers (False: post-LN, as HuBERT Base and LightHuBERT)
    pred_dim: int = 768  # width of the distillation prediction head; 0 for none; official: teacher_embed_dim
    normalize: bool = True  # expects per-utterance normalised waveforms (official task.normalize)
    dropout: float = 0.1  # dropout after attention, FFN and on the encoder input
    activation_dropout: float = 0.0  # dropout inside the FFN
    layerdrop: float = 0.0  # probability of skipping a layer in training; official: encoder_layerdrop
    dropout_input: float = 0.0  # dropout on the projected features
    feature_grad_mult: float = 1.0  # gradient scale of the conv front end (0 freezes it)
    supernet_embed_dim: int = 0  # embed dim of the supernet this model is a subnet of (0: none); read only by the official parameter count

    def __post_init__(self) -> None:
        self.conv_layers = [list(map(int, c)) for c in self.conv_layers]
        self.heads = [int(h) for h in self.heads]
        self.ffn_dim = [int(f) for f in self.ffn_dim]
        if any(len(c) != 3 for c in self.conv_layers) or not self.conv_layers:
            raise ValueError(f"conv_layers must be a non-empty list of [channels, kernel, stride], got {self.conv_layers}")
        if self.extractor_mode not in ("layer_norm", "default"):
            raise ValueError(f"extractor_mode must be 'layer_norm' or 'default', got {self.extractor_mode!r}")
        if len(self.heads) != len(self.ffn_dim) or not self.heads:
            raise ValueError(
                f"heads and ffn_dim need one entry per layer, got {len(self.heads)} and {len(self.ffn_dim)}"
            )
        if min(self.heads) < 1 or min(self.ffn_dim) < 1 or min(map(min, self.conv_layers)) < 1:
            raise ValueError(f"heads, ffn_dim and conv_layers must be positive, got heads {self.heads}, "
                             f"ffn_dim {self.ffn_dim}, conv_layers {self.conv_layers}")
        for name in ("embed_dim", "head_dim", "conv_pos", "conv_pos_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.pos_conv_layers < 0:
            raise ValueError(f"pos_conv_layers must be >= 0 (0: one weight-normed conv), got {self.pos_conv_layers}")
        if self.relative_buckets:
            if self.relative_buckets < 4 or self.relative_max_distance <= self.relative_buckets // 4:
                raise ValueError(f"relative_buckets must be at least 4 and relative_max_distance above a quarter of them, "
                                 f"got {self.relative_buckets} and {self.relative_max_distance}")
            if any(h * self.head_dim != self.embed_dim for h in self.heads):
                raise ValueError(f"WavLM's gate splits embed_dim {self.embed_dim} into heads of {self.head_dim}: "
                                 f"every layer needs heads x head_dim = embed_dim, got heads {self.heads}")
        if self.pred_dim < 0:
            raise ValueError(f"pred_dim must be >= 0 (0: no prediction head), got {self.pred_dim}")
        for name in ("dropout", "activation_dropout", "layerdrop", "dropout_input"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be a probability in [0, 1), got {getattr(self, name)}")
        if self.embed_dim % self.conv_pos_groups:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by conv_pos_groups {self.conv_pos_groups}")
        if self.supernet_embed_dim and self.supernet_embed_dim < self.embed_dim:
            raise ValueError(f"supernet_embed_dim {self.supernet_embed_dim} is below embed_dim {self.embed_dim}; "
                             "a subnet is at most as wide as its supernet (0: not a subnet)")

    @property
    def depth(self) -> int:
        return len(self.heads)

    @property
    def conv_dim(self) -> int:
        return self.conv_layers[-1][0]

    def asdict(self) -> dict[str, Any]:
        """The fields as a dict; those of subnets and of WavLM / data2vec teachers only where they
        are set, so that the configs of other models read the same as those written before the
        fields existed."""
        d = dataclasses.asdict(self)
        for name, unset in _OPTIONAL_FIELDS.items():
            if d[name] == unset:
                del d[name]
        return d


_OPTIONAL_FIELDS = {"supernet_embed_dim": 0, "pos_conv_layers": 0, "relative_buckets": 0, "relative_max_distance": 800}


def dense_linear(in_features: int, out_features: int, bias: bool = True, in_blocks: int = 1, out_blocks: int = 1) -> nn.Linear:
    """nn.Linear with the elastic constructor's signature; the block layout only matters there."""
    return nn.Linear(in_features, out_features, bias)


def inference_cached(module: nn.Module, name: str, sources: tuple[Tensor, ...], build: Callable[[], Tensor]) -> Tensor:
    """`build()`, a tensor derived from `sources` (parameters), kept on `module` for inference.

    Recomputing such tensors on every forward (a permuted copy of conv taps, a weight-normed
    weight) is pure overhead at inference. The cache is keyed by each source's storage,
    version, dtype and shape: an in-place update (optimizer step, `load_state_dict`) moves the
    version, and `.to()` / `.half()` make new storage, so either rebuilds it; it is a plain
    attribute, never in the state dict. Changes made through `.data` bypass the version
    counter and are not seen. Whenever autograd records (training), while tracing or compiling
    (ONNX export, `torch.compile`), and for inference tensors (no version counter), `build()`
    runs every time instead.
    """
    if (torch.is_grad_enabled() and any(t.requires_grad for t in sources)) or torch.compiler.is_compiling() \
            or any(t.is_inference() for t in sources):
        return build()
    key = tuple((t.data_ptr(), t._version, t.dtype, t.device, t.shape) for t in sources)
    cache = module.__dict__.setdefault("_inference_cache", {})
    if name not in cache or cache[name][0] != key:
        with torch.inference_mode(False), torch.no_grad():  # a normal tensor: usable later with autograd on
            cache[name] = (key, build())
    return cache[name][1]


class ConvBlock(nn.Module):
    """One conv front-end block, channels-last: conv -> [LayerNorm | GroupNorm] -> GELU.

    The conv runs as matrix products on strided views of a (B, N, C) tensor instead of
    `nn.Conv1d` on (B, C, N): no transposes around the LayerNorm, and about 1.5x faster on CPU
    (benchmarks/bench_extract.py). Weights keep `nn.Conv1d`'s layout (C_out, C_in, k); the
    products' layouts of them are built once for inference (`inference_cached`).
    When the weights need gradients, `F.conv1d` runs instead: the backward of the strided
    products (a zero-filled copy per tap) is the slower one there.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, norm: str, bias: bool) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, bias=bias)
        nn.init.kaiming_normal_(self.conv.weight)
        self.norm: Optional[nn.Module] = None
        if norm == "layer_norm":
            self.norm = nn.LayerNorm(c_out)
        elif norm == "group_norm":
            self.norm = nn.GroupNorm(c_out, c_out)

    def out_lengths(self, lengths: Tensor) -> Tensor:
        """Output steps for `lengths` input steps (B,): floor((n - k) / s) + 1."""
        k, s = self.conv.kernel_size[0], self.conv.stride[0]
        return torch.div(lengths - k, s, rounding_mode="floor") + 1

    def forward(self, x: Tensor, frames: Optional[Tensor] = None) -> Tensor:  # (B, N, C_in) -> (B, T, C_out)
        """`frames` (B,): valid output frames per utterance, so that GroupNorm ignores padding."""
        norm = self.norm
        return self.run(x, frames, self.conv.weight, self.conv.bias,
                        None if norm is None else norm.weight, None if norm is None else norm.bias)

    def run(self, x: Tensor, frames: Optional[Tensor], w: Tensor, b: Optional[Tensor], norm_weight: Optional[Tensor],
            norm_bias: Optional[Tensor]) -> Tensor:
        """conv -> norm -> GELU with the given weights: this block's own, or (the elastic
        block) their leading channels, (C_out, C_in, k) conv and (C_out,) norm weights."""
        k, s = self.conv.kernel_size[0], self.conv.stride[0]
        bsz, n, c = x.shape
        t = (n - k) // s + 1
        if t < 1:
            raise ValueError(f"input of {n} steps is shorter than the conv kernel ({k})")
        if c == 1:  # first block: materialising the windows is cheap with one channel
            y = F.linear(x[..., 0].unfold(1, k, s), w[:, 0, :], b)
        elif torch.is_grad_enabled() and w.requires_grad:  # training: conv1d's backward is ~1.6x faster than the products'
            y = F.conv1d(x.transpose(1, 2), w, b, stride=s).transpose(1, 2)
        elif k <= s:  # non-overlapping windows are a plain strided view
            win = x.as_strided((bsz, t, k * c), (x.stride(0), s * c, 1))
            flat = inference_cached(self, "flat", (w,), lambda: w.permute(0, 2, 1).reshape(w.size(0), k * c))
            y = F.linear(win, flat, b)
        else:  # overlapping windows: one product per kernel tap, accumulated in place
            dtype = autocast_dtype(x) or x.dtype
            taps = inference_cached(self, "taps", (w,), lambda: w.permute(2, 1, 0).contiguous()).to(dtype)  # (k, C_in, C_out)
            x = x.to(dtype)
            y = torch.bmm(x[:, 0 : s * (t - 1) + 1 : s], taps[0].expand(bsz, -1, -1))  # tap 0 makes y: no zero fill
            if b is not None:
                y += b.to(dtype)
            for j in range(1, k):
                y.baddbmm_(x[:, j : j + s * (t - 1) + 1 : s], taps[j].expand(bsz, -1, -1))
        if isinstance(self.norm, nn.LayerNorm):  # in float32, as fairseq's Fp32LayerNorm
            y = F.layer_norm(y.float(), (y.size(-1),), norm_weight.float(), norm_bias.float(), self.norm.eps).type_as(y)
        elif isinstance(self.norm, nn.GroupNorm):
            y = self._channel_norm(y.float(), frames, norm_weight.float(), norm_bias.float()).type_as(y)
        return F.gelu(y) if y.requires_grad else torch.ops.aten.gelu_(y)  # in place when no backward needs y

    def _channel_norm(self, y: Tensor, frames: Optional[Tensor], weight: Tensor, bias: Tensor) -> Tensor:
        """GroupNorm(C, C) (fairseq's Fp32GroupNorm) over each utterance's valid frames only.

        fairseq and transformers normalise over the padding too, so their padded batches
        differ from one utterance at a time; statistics over `frames` make the two equal.
        One group per channel, so the leading channels' statistics are those of the full norm.
        """
        if frames is None:
            return F.group_norm(y.transpose(1, 2), y.size(-1), weight, bias, self.norm.eps).transpose(1, 2)
        valid = (torch.arange(y.size(1), device=y.device)[None, :] < frames[:, None]).unsqueeze(-1).to(y.dtype)
        count = valid.sum(1, keepdim=True).clamp(min=1)
        mean = (y * valid).sum(1, keepdim=True) / count
        var = ((y - mean).square() * valid).sum(1, keepdim=True) / count
        return (y - mean) * torch.rsqrt(var + self.norm.eps) * weight + bias


def autocast_dtype(x: Tensor) -> Optional[torch.dtype]:
    """The dtype autocast would run a matrix product on `x` in, on its device; None outside
    autocast or for float64, which autocast leaves alone. Hand-written products (in place,
    or over blocks of a weight) are not autocast, so they cast by hand to this."""
    kind = x.device.type
    if x.dtype == torch.float64 or not torch.is_autocast_enabled(kind):
        return None
    return torch.get_autocast_dtype(kind)


class FeatureExtractor(nn.Module):
    """wav2vec 2.0 / HuBERT conv front end: waveform (B, N) -> frames (B, T, C)."""

    def __init__(self, conv_layers: list, mode: str, bias: bool, block: Callable[..., ConvBlock] = ConvBlock) -> None:
        super().__init__()
        blocks, c_in = [], 1
        for i, (c, k, s) in enumerate(conv_layers):
            norm = "layer_norm" if mode == "layer_norm" else ("group_norm" if i == 0 else "none")
            blocks.append(block(c_in, c, k, s, norm, bias))
            c_in = c
        self.conv_layers = nn.ModuleList(blocks)

    def forward(self, wav: Tensor, lengths: Optional[Tensor] = None) -> Tensor:  # (B, N) -> (B, T, C)
        """`lengths` (B,): valid samples, needed only by the GroupNorm of the `default` mode."""
        x = wav.unsqueeze(-1)
        for block in self.conv_layers:
            lengths = None if lengths is None else block.out_lengths(lengths)
            x = block(x, lengths)
        return x

    def min_samples(self, frames: int = 1) -> int:
        """The fewest samples that give `frames` frames (400 for one, 720 for two, with HuBERT's front end)."""
        n = frames
        for block in reversed(self.conv_layers):
            n = (n - 1) * block.conv.stride[0] + block.conv.kernel_size[0]
        return n

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Frames produced from `lengths` samples (B,), as torchaudio's `_get_feat_extract_output_lengths`."""
        for block in self.conv_layers:
            lengths = block.out_lengths(lengths)
        return lengths.clamp(min=0)


class PosConv(nn.Module):
    """Weight-normed grouped conv positional embedding -> SamePad -> GELU, on (B, T, E).

    Holds fairseq's `weight_g` (1, 1, k) and `weight_v` (E, E/groups, k) directly (weight
    norm over all dims but the kernel one, `dim=2`), so official keys load unchanged; the
    `parametrizations.weight.original0/1` spelling is mapped in `formats/keys.py`.
    """

    def __init__(self, embed_dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.kernel, self.groups = kernel, groups
        v = torch.randn(embed_dim, embed_dim // groups, kernel) * math.sqrt(4.0 / (kernel * embed_dim))
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(v.norm(dim=(0, 1), keepdim=True))
        self.bias = nn.Parameter(torch.zeros(embed_dim))

    def full_weight(self) -> Tensor:
        return self.weight_block(*self.weight_v.shape[:2])

    def weight_block(self, out: int, inp: int) -> Tensor:
        """The first `out` x `inp` block of g * v / ||v|| (norms over (out, in) for each kernel
        tap, as `weight_norm(dim=2)`), without building the rest of the full weight."""
        scale = self.weight_g / self.weight_v.square().sum((0, 1), keepdim=True).sqrt()  # 9x faster than .norm() here
        return self.weight_v[:out, :inp] * scale

    def conv(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:  # (B, T, E) -> (B, T, E)
        y = F.conv1d(x.transpose(1, 2), weight, bias, padding=self.kernel // 2, groups=self.groups)
        if self.kernel % 2 == 0:  # fairseq's SamePad drops the extra frame of an even kernel
            y = y[..., :-1]
        return F.gelu(y).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        weight = inference_cached(self, "weight", (self.weight_g, self.weight_v), self.full_weight)
        return self.conv(x, weight, self.bias)


@dataclass(frozen=True)
class Ops:
    """Constructors of the layers that the supernet makes elastic; dense by default."""

    linear: Callable[..., nn.Linear] = dense_linear
    layer_norm: Callable[..., nn.LayerNorm] = nn.LayerNorm
    pos_conv: Callable[..., PosConv] = PosConv
    conv_block: Callable[..., ConvBlock] = ConvBlock


DENSE = Ops()


class SelfAttention(nn.Module):
    """Multi-head self-attention; the head count follows the width of `q_proj`'s output.

    Deriving the heads from the projected width lets the elastic model switch heads by
    slicing `q/k/v_proj` alone (prefix heads, as the official `SMHA`). fairseq's attention
    dropout is not applied: the official LightHuBERT never applies it either.

    With `relative_buckets` (WavLM), the scores get the encoder's relative position bias,
    gated per head and query by this layer's `grep_linear` and `grep_a`; the first layer
    holds the bucket embedding (`relative_attention_bias`). The names are the authors' keys.
    """

    def __init__(self, embed_dim: int, heads: int, head_dim: int, ops: Ops = DENSE, relative_buckets: int = 0,
                 owns_bias: bool = False) -> None:
        super().__init__()
        self.head_dim = head_dim
        inner = heads * head_dim
        self.k_proj = ops.linear(embed_dim, inner)
        self.v_proj = ops.linear(embed_dim, inner)
        self.q_proj = ops.linear(embed_dim, inner)
        self.out_proj = ops.linear(inner, embed_dim)
        for proj in (self.k_proj, self.v_proj, self.q_proj):
            nn.init.xavier_uniform_(proj.weight, gain=1 / math.sqrt(2))
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)
        if relative_buckets:
            self.grep_linear = nn.Linear(head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, heads, 1, 1))
            if owns_bias:
                self.relative_attention_bias = nn.Embedding(relative_buckets, heads)

    def forward(self, x: Tensor, padding_mask: Optional[Tensor], bias: Optional[Tensor] = None) -> Tensor:  # (B, T, E) -> (B, T, E)
        """`bias` (H, T, T): the relative position bias (WavLM), gated here; None for none."""
        bsz, t, _ = x.shape
        q, k, v = (p(x).view(bsz, t, -1, self.head_dim).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        mask = None if padding_mask is None else ~padding_mask[:, None, None, :]
        if bias is not None:
            gated = gated_bias(x, bias, self.grep_linear, self.grep_a).to(q.dtype)
            mask = gated if mask is None else gated.masked_fill(~mask, float("-inf"))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(y.transpose(1, 2).reshape(bsz, t, -1))


class EncoderLayer(nn.Module):
    """Transformer layer; post-LN (HuBERT Base) or pre-LN. Returns the FFN output too.

    The FFN output before the residual (`layer_result`) is what LightHuBERT's and data2vec's
    targets average (reference notes §2.4).
    """

    def __init__(self, embed_dim: int, heads: int, head_dim: int, ffn_dim: int, cfg: ModelConfig, ops: Ops = DENSE,
                 first: bool = False) -> None:
        super().__init__()
        self.layer_norm_first = cfg.layer_norm_first
        self.self_attn = SelfAttention(embed_dim, heads, head_dim, ops, cfg.relative_buckets, owns_bias=first)
        self.self_attn_layer_norm = ops.layer_norm(embed_dim)
        # FFN units come in blocks of embed_dim (the official SLinear splits); see ElasticLinear.
        blocks = max(ffn_dim // embed_dim, 1)
        self.fc1 = ops.linear(embed_dim, ffn_dim, out_blocks=blocks)
        self.fc2 = ops.linear(ffn_dim, embed_dim, in_blocks=blocks)
        self.final_layer_norm = ops.layer_norm(embed_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.activation_dropout = nn.Dropout(cfg.activation_dropout)
        for fc in (self.fc1, self.fc2):
            nn.init.normal_(fc.weight, std=0.02)
            nn.init.zeros_(fc.bias)

    def forward(self, x: Tensor, padding_mask: Optional[Tensor], bias: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        residual = x
        if self.layer_norm_first:
            x = residual + self.dropout(self.self_attn(self.self_attn_layer_norm(x), padding_mask, bias))
            residual = x
            ffn = self._ffn(self.final_layer_norm(x))
            return residual + self.dropout(ffn), ffn
        x = self.self_attn_layer_norm(residual + self.dropout(self.self_attn(x, padding_mask, bias)))
        ffn = self._ffn(x)
        return self.final_layer_norm(x + self.dropout(ffn)), ffn

    def _ffn(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        h = F.gelu(h.float()).type_as(h)  # fairseq's gelu runs in float32
        return self.fc2(self.activation_dropout(h))


class Encoder(nn.Module):
    """Positional conv, LayerNorm and the Transformer layers; runs the layers in `kept_layers`.

    WavLM's relative position bias is computed once from the first layer's bucket embedding
    and shared by every layer, which gates it (the authors' `pos_bias`, passed down the layers).
    """

    def __init__(self, cfg: ModelConfig, ops: Ops = DENSE) -> None:
        super().__init__()
        if cfg.pos_conv_layers:  # data2vec; fairseq's keys `encoder.pos_conv.{j}.0.*`
            self.pos_conv = LayerNormPosConv(cfg.embed_dim, cfg.conv_pos, cfg.conv_pos_groups, cfg.pos_conv_layers)
        else:  # a Sequential of one, so the key is fairseq's `encoder.pos_conv.0.*`
            self.pos_conv = nn.Sequential(ops.pos_conv(cfg.embed_dim, cfg.conv_pos, cfg.conv_pos_groups))
        self.layer_norm = ops.layer_norm(cfg.embed_dim)
        self.layers = nn.ModuleList(
            EncoderLayer(cfg.embed_dim, h, cfg.head_dim, f, cfg, ops, first=i == 0)
            for i, (h, f) in enumerate(zip(cfg.heads, cfg.ffn_dim))
        )
        self.relative_max_distance = cfg.relative_max_distance if cfg.relative_buckets else 0
        self.layer_norm_first = cfg.layer_norm_first
        self.dropout = nn.Dropout(cfg.dropout)
        self.layerdrop = cfg.layerdrop
        self.kept_layers: list[int] = list(range(cfg.depth))

    def forward(self, x: Tensor, padding_mask: Optional[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Runs the layers on (B, T, E) frames.

        fairseq also pads T to a multiple of `required_seq_len_multiple` (2) with masked frames,
        an fp16 speed trick; masked keys contribute nothing, so we skip it.

        Returns:
            Each kept layer's output and its FFN output (`layer_result`), each (B, T, E).
        """
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = x + self.pos_conv(x)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        bias = None
        if self.relative_max_distance:
            bias = position_bias(self.layers[0].self_attn.relative_attention_bias, x.size(1), self.relative_max_distance)
        outputs, ffns = [], []
        for i in self.kept_layers:
            if self.training and self.layerdrop > 0 and torch.rand(()) < self.layerdrop:
                continue
            x, ffn = self.layers[i](x, padding_mask, bias)
            outputs.append(x)
            ffns.append(ffn)
        if self.layer_norm_first and outputs:
            outputs[-1] = self.layer_norm(outputs[-1])
        return outputs, ffns


class Features(NamedTuple):
    """What `HuBERT.forward` returns.

    `hidden_states[0]` is the `post_extract_proj` output (the official LightHuBERT
    convention, before the positional conv) and `hidden_states[i]` the output of layer i.
    """

    hidden_states: list  # 1 + depth tensors, each (B, T, E)
    layer_results: list  # each layer's FFN output before the residual, (B, T, E)
    padding_mask: Optional[Tensor]  # (B, T), True at padded frames; None without `lengths`
    prediction: Optional[Tensor]  # prediction head on the last layer, (B, T, pred_dim)


class HuBERT(nn.Module):
    """A HuBERT / LightHuBERT encoder of fixed shape (per-layer heads and FFN widths)."""

    def __init__(self, cfg: ModelConfig, ops: Ops = DENSE) -> None:
        super().__init__()
        self.cfg = cfg
        self.feature_extractor = FeatureExtractor(cfg.conv_layers, cfg.extractor_mode, cfg.conv_bias, ops.conv_block)
        self.layer_norm = ops.layer_norm(cfg.conv_dim) if cfg.feature_layer_norm else None
        self.post_extract_proj = ops.linear(cfg.conv_dim, cfg.embed_dim)
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.mask_emb = nn.Parameter(torch.rand(cfg.embed_dim))
        self.encoder = Encoder(cfg, ops)
        # The official head reads the last layer whatever the depth and is keyed by it.
        self.layer_pred_heads = nn.ModuleDict()
        if cfg.pred_dim:
            self.layer_pred_heads[str(cfg.depth - 1)] = ops.linear(cfg.embed_dim, cfg.pred_dim, bias=False)

    def without_heads(self) -> "HuBERT":
        """The plain `HuBERT` of a subclass with extra heads (DistilHuBERT's, a CTC head): the
        encoder's weights copied, the heads left out; for extraction, teachers and export."""
        dense = HuBERT(self.cfg).to(self.mask_emb)
        own = dense.state_dict()
        dense.load_state_dict({k: v for k, v in self.state_dict().items() if k in own})
        return dense.train(self.training)

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        """Frames per utterance for `lengths` samples (B,)."""
        return self.feature_extractor.output_lengths(lengths)

    def forward(self, wav: Tensor, lengths: Optional[Tensor] = None, mask: Optional[Tensor] = None,
                channel_mask: Optional[Tensor] = None) -> Features:
        """Encodes a batch of waveforms.

        Args:
            wav: (B, N) 16 kHz audio, already normalised if `cfg.normalize`; padded at the end.
            lengths: (B,) valid samples per utterance; None when nothing is padded. A frame
                is valid when its whole receptive field is, so a padded batch gives the same
                valid frames as one utterance at a time.
            mask: (B, T) frames to replace by `mask_emb` (masked prediction), or None.
            channel_mask: (B, E) projected channels to zero in every frame (fairseq's
                fine-tuning `mask_channel_*`), or None.

        Returns:
            `Features` with every hidden state, FFN output, padding mask and prediction.
        """
        if lengths is not None:
            lengths = lengths.to(wav.device)
        if self.cfg.feature_grad_mult > 0:
            x = self.feature_extractor(wav, lengths)
            if self.cfg.feature_grad_mult != 1.0 and x.requires_grad:
                x = _GradScale.apply(x, self.cfg.feature_grad_mult)
        else:
            with torch.no_grad():
                x = self.feature_extractor(wav, lengths)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        padding_mask = None
        if lengths is not None:
            frames = self.frame_lengths(lengths)
            padding_mask = torch.arange(x.size(1), device=x.device)[None, :] >= frames[:, None]
        x = self.dropout_input(self.post_extract_proj(x))
        if mask is not None:
            x = torch.where(mask.unsqueeze(-1), self.mask_emb[: x.size(-1)].to(x.dtype), x)
        if channel_mask is not None:
            x = x.masked_fill(channel_mask.unsqueeze(1), 0.0)
        outputs, ffns = self.encoder(x, padding_mask)
        prediction = None
        if len(self.layer_pred_heads):
            (head,) = self.layer_pred_heads.values()
            prediction = head(outputs[-1])
        return Features([x] + outputs, ffns, padding_mask, prediction)


class SplitLinear(nn.Module):
    """N independent Linear(D_in -> D_out) maps over N contiguous chunks of the input.

    The layout of s3prl's DistilHuBERT `SplitLinear` (weight (N, D_in, D_out), bias
    (1, 1, N, D_out)), so its checkpoints load as they are.
    """

    def __init__(self, dim_in: int, splits: int, dim_out: int) -> None:
        super().__init__()
        bound = dim_in**-0.5
        self.weight = nn.Parameter(torch.empty(splits, dim_in, dim_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(1, 1, splits, dim_out).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:  # (B, T, N * D_in) -> (B, T, N, D_out)
        b, t, _ = x.shape
        n, d_in, _ = self.weight.shape
        return torch.einsum("btnd,nde->btne", x.view(b, t, n, d_in), self.weight) + self.bias


class DistilHuBERT(HuBERT):
    """DistilHuBERT's student: a shallow HuBERT plus one prediction head per teacher target.

    The heads (s3prl's `output_layer`: Linear(E, N*D), GELU, `SplitLinear`) read the last
    layer and exist for training only; the representation to use downstream is the last
    Transformer layer (`hidden_states[-1]`), as the paper evaluates it.
    """

    def __init__(self, cfg: ModelConfig, targets: list, target_dim: int) -> None:
        super().__init__(cfg)
        self.targets = [int(t) for t in targets]  # teacher layers the heads predict (1-based), e.g. [4, 8, 12]
        n = len(self.targets)
        self.output_layer = nn.Sequential(nn.Linear(cfg.embed_dim, target_dim * n), nn.GELU(),
                                          SplitLinear(target_dim, n, target_dim))

    def forward(self, wav: Tensor, lengths: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Features:
        """`HuBERT.forward`, with `prediction` (B, T, targets, target_dim) from the heads."""
        out = super().forward(wav, lengths, mask)
        return out._replace(prediction=self.output_layer(out.hidden_states[-1]))



BLANK = "<blank>"  # token 0 of every CTC vocabulary


class HuBERTCTC(HuBERT):
    """A HuBERT with a CTC head for speech recognition (fairseq's `hubert_ctc`, `w2v_encoder.proj`).

    `prediction` holds the logits over `vocab` (index 0 is the CTC blank) from the last layer
    after `final_dropout`. `freeze_encoder` runs everything but the head without gradients:
    fairseq fine-tunes the head alone for the first `freeze_finetune_updates` updates.
    """

    def __init__(self, cfg: ModelConfig, vocab: list, final_dropout: float = 0.0) -> None:
        super().__init__(cfg)
        if len(vocab) < 2 or vocab[0] != BLANK or len(set(vocab)) != len(vocab):
            raise ValueError(f"a CTC vocabulary starts with {BLANK!r} and holds distinct tokens, got {vocab[:5]}...")
        self.vocab = list(vocab)
        self.final_dropout = nn.Dropout(final_dropout)
        self.ctc_proj = nn.Linear(cfg.embed_dim, len(vocab))

    def forward(self, wav: Tensor, lengths: Optional[Tensor] = None, mask: Optional[Tensor] = None,
                channel_mask: Optional[Tensor] = None, freeze_encoder: bool = False) -> Features:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not freeze_encoder):
            out = super().forward(wav, lengths, mask, channel_mask)
        return out._replace(prediction=self.ctc_proj(self.final_dropout(out.hidden_states[-1])))



FRONT_END = ("feature_extractor.", "layer_norm.", "post_extract_proj.")  # keys fed by the waveform's features


def matching_state(source: HuBERT, target: HuBERT) -> dict[str, Tensor]:
    """The tensors of `source` that mean the same in `target`, to initialise it from them.

    A tensor is taken when its key and shape match and, for the front end (the conv layers,
    the feature LayerNorm and `post_extract_proj`), when both models read the same input the
    same way: the same `extractor_mode` (HuBERT Base's block-0 GroupNorm and a LayerNorm
    share a key and a shape but not a meaning), the same conv layers and bias, and the same
    input normalisation (conv weights learnt on raw audio do not fit normalised audio). The
    positional conv, `mask_emb` and the Transformer layers work in the embedding space and
    are taken whenever the shapes match; prediction heads never are.
    """
    s, t = source.cfg, target.cfg
    same_front = (s.extractor_mode, s.conv_layers, s.conv_bias, s.normalize) == (t.extractor_mode, t.conv_layers, t.conv_bias, t.normalize)
    own = target.state_dict()
    return {k: v for k, v in source.state_dict().items()
            if k in own and own[k].shape == v.shape and not k.startswith("layer_pred_heads.")
            and (same_front or not k.startswith(FRONT_END))}


class _GradScale(torch.autograd.Function):
    """Scales the gradient only (fairseq's GradMultiply), for `feature_grad_mult`."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None
