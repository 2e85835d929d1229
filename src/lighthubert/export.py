"""Export a subnet (or any dense model) as a standalone model: compact, transformers, ONNX, official.

- `compact`: `model.safetensors` + `config.json` (the `ModelConfig`, per-layer heads and FFN
  widths) in a folder; `lighthubert.load` reads it without the supernet.
- `hf`: a transformers folder: `HubertModel` where it holds the subnet (the same heads and FFN
  width in every layer), else this package's model as remote code that `AutoModel` loads
  with `trust_remote_code=True`.
- `onnx`: a graph from (waveform, lengths) to every hidden state, dynamic batch and time;
  `quantize="int8"` makes the Transformer's weight matmuls dynamic int8 (ONNX Runtime).

A fine-tuned CTC model (`HuBERTCTC`) keeps its head and vocabulary in compact and ONNX
exports (the ONNX graph adds a `logits` output and records the vocabulary in its metadata);
an `hf` export holds the encoder alone (`HubertModel`), as extraction sees it.
- `official`: the whole supernet in the official `.pt` format with the subnet recorded.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import logging
import warnings
from pathlib import Path
from typing import Iterator, Optional, Union

import torch
from torch import Tensor, nn

from . import atomic, checkpoint
from .formats import compact, official, transformers
from .model import HuBERT, HuBERTCTC, ModelConfig
from .space import SubnetConfig
from .supernet import LightHuBERT

log = logging.getLogger(__name__)

FORMATS = ("compact", "hf", "onnx", "official")
QUANTIZE = ("int8",)  # for onnx only


def export_subnet(
    model: HuBERT,
    output: Union[str, Path],
    fmt: str = "compact",
    subnet: Union[str, SubnetConfig, dict, None] = None,
    dtype: torch.dtype = torch.float32,
    quantize: Optional[str] = None,
) -> Path:
    """Writes `model` (a supernet at `subnet`, or a dense model) to `output` in format `fmt`.

    `model` keeps its modes, dtype and weights; a supernet given `subnet` is left with it active
    (so that the caller can describe what was written).

    Args:
        quantize: `"int8"` for dynamic int8 weight matmuls in an `onnx` export (see
            `quantize_onnx_int8`); None keeps float32.

    Raises:
        ValueError: an unknown format, `official` for a dense model, or `quantize` with another
            format than onnx.
        MissingExtra: an optional package the format needs is not installed.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {list(FORMATS)}")
    if quantize is not None and (quantize not in QUANTIZE or fmt != "onnx"):
        raise ValueError(f"quantize must be one of {list(QUANTIZE)} with the onnx format, got {quantize!r} for {fmt}")
    output = Path(output)
    if fmt == "official":
        if not isinstance(model, LightHuBERT):
            raise ValueError("the official format holds a supernet; export a dense model as compact, hf or onnx")
        if subnet is not None:
            model.set_subnet(subnet)
        atomic.save_file(official.checkpoint(model), output)
        return output
    if isinstance(model, HuBERTCTC) and fmt != "hf":
        if subnet is not None:
            raise ValueError("a subnet can only be chosen for a supernet checkpoint; this model has a fixed shape")
        dense, cfg = model, model.cfg  # the head travels with the encoder
    else:
        if isinstance(model, HuBERTCTC):
            log.info("an hf export holds the encoder (HubertModel) without the CTC head; compact and onnx keep it")
        dense, cfg = checkpoint.dense_model(model, subnet)
    if fmt == "compact":
        save_compact(dense, cfg, output, dtype, model.subnet if isinstance(model, LightHuBERT) else None)
    elif fmt == "hf":
        save_hf(dense, cfg, output)
    else:
        save_onnx(dense, output, quantize=quantize)
    return output


def how_to_load(output: Path, fmt: str) -> str:
    """One line for the user: how to open the export `output` outside this package."""
    if fmt == "hf":
        if (output / REMOTE_CODE[1]).is_file():
            return f"transformers.AutoModel.from_pretrained('{output}', trust_remote_code=True) (this package's model as remote code)"
        return f"transformers.HubertModel.from_pretrained('{output}')"
    if fmt == "onnx":
        return f"onnxruntime.InferenceSession('{output}'): waveform (B, N), lengths (B,) -> hidden_states (and a CTC model's logits)"
    return f"lighthubert.load('{output}')"


def save_compact(model: HuBERT, cfg: ModelConfig, output: Path, dtype: torch.dtype = torch.float32,
                 subnet: Optional[SubnetConfig] = None) -> None:
    """`output/model.safetensors` (in `dtype`) + `output/config.json`; loads back with `strict=True`.
    Both are written before either replaces an earlier export (`atomic.staged_folder`)."""
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": compact.FORMAT,
        "version": 1,
        "model": cfg.asdict(),
        "subnet": None if subnet is None else subnet.to_official(cfg.head_dim),
        "dtype": str(dtype).removeprefix("torch."),
    }
    if isinstance(model, HuBERTCTC):
        meta["vocab"] = list(model.vocab)
    with atomic.staged_folder(output) as staged:
        atomic.save_tensors(state, staged / "model.safetensors")
        atomic.save_text(json.dumps(meta, indent=2), staged / "config.json")


def hubert_model_fits(cfg: ModelConfig) -> Optional[str]:
    """None when transformers' `HubertModel` holds `cfg` exactly, else the reason why not.

    transformers has one head count and one FFN width for all layers, and heads of
    `hidden_size / heads`. A subnet whose attention width (64 * heads) is below its embed
    dim is padded with all-zero heads (zero value and output weights: an exact no-op).
    """
    differ = [i for i in range(cfg.depth) if (cfg.heads[i], cfg.ffn_dim[i]) != (cfg.heads[0], cfg.ffn_dim[0])]
    if differ:
        return (f"HubertModel needs the same heads and FFN width in every layer; layers {differ} differ from layer 0 "
                f"(heads {cfg.heads}, ffn_dim {cfg.ffn_dim})")
    if cfg.embed_dim % cfg.head_dim or cfg.heads[0] * cfg.head_dim > cfg.embed_dim:
        return f"HubertModel splits hidden_size {cfg.embed_dim} into heads of {cfg.head_dim}, which cannot hold {cfg.heads[0]} heads"
    return None


REMOTE_CODE = ("configuration_lighthubert.py", "modeling_lighthubert.py", "model.py", "positions.py")  # written into remote-code folders


def save_hf(model: HuBERT, cfg: ModelConfig, output: Path) -> str:
    """A transformers folder: config.json, model.safetensors, preprocessor_config.json.

    A `HubertModel` folder where transformers' own class holds the shape; otherwise this
    package's model as remote code (`REMOTE_CODE` files, `auto_map` in config.json), which
    `AutoModel.from_pretrained(output, trust_remote_code=True)` loads.

    Every file is written before any replaces an earlier export's (`atomic.staged_folder`).

    Returns:
        Which: "HubertModel" or "remote code".
    """
    state = {k: v.detach().cpu().float() for k, v in model.state_dict().items() if not k.startswith("layer_pred_heads.")}
    why = hubert_model_fits(cfg)
    if why is None:
        kind, weights, config = "HubertModel", transformers.from_ours(_pad_heads(state, cfg)), transformers.config_dict(cfg)
    else:
        log.info("%s: writing this package's model as transformers remote code", why)
        kind, weights, config = "remote code", {f"hubert.{k}": v for k, v in state.items()}, _remote_config(cfg)
    processor = {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "feature_size": 1,
        "sampling_rate": 16000,
        "padding_value": 0.0,
        "padding_side": "right",
        "do_normalize": cfg.normalize,
        # our model masks padding exactly; HubertModel's group-norm front end would not
        "return_attention_mask": kind == "remote code" or cfg.extractor_mode == "layer_norm",
    }
    with atomic.staged_folder(output, stale=REMOTE_CODE) as staged:  # a HubertModel export over a remote-code one
        if kind == "remote code":
            source = Path(__file__).parent
            for name in REMOTE_CODE:
                atomic.save_text((source / name).read_text(encoding="utf-8"), staged / name)
        atomic.save_tensors({k: v.contiguous() for k, v in weights.items()}, staged / "model.safetensors", {"format": "pt"})
        atomic.save_text(json.dumps(config, indent=2), staged / "config.json")
        atomic.save_text(json.dumps(processor, indent=2), staged / "preprocessor_config.json")
    return kind


def _pad_heads(state: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Pads attention to hidden_size / head_dim heads with all-zero heads, for HubertModel."""
    e, a = cfg.embed_dim, cfg.heads[0] * cfg.head_dim
    if a == e:
        return state
    state = dict(state)
    for i in range(cfg.depth):
        pre = f"encoder.layers.{i}.self_attn."
        for name in ("q_proj", "k_proj", "v_proj"):
            state[pre + name + ".weight"] = torch.cat([state[pre + name + ".weight"], torch.zeros(e - a, e)])
            state[pre + name + ".bias"] = torch.cat([state[pre + name + ".bias"], torch.zeros(e - a)])
        state[pre + "out_proj.weight"] = torch.cat([state[pre + "out_proj.weight"], torch.zeros(e, e - a)], dim=1)
    return state


def _remote_config(cfg: ModelConfig) -> dict:
    """config.json of a remote-code folder: `LightHuBERTConfig` with our `ModelConfig` inside."""
    return {
        "model_type": "lighthubert",
        "architectures": ["LightHuBERTModel"],
        "auto_map": {"AutoConfig": "configuration_lighthubert.LightHuBERTConfig",
                     "AutoModel": "modeling_lighthubert.LightHuBERTModel"},
        "lighthubert": {**cfg.asdict(), "pred_dim": 0},
        "hidden_size": cfg.embed_dim,
        "num_hidden_layers": cfg.depth,
    }


class _HiddenStates(nn.Module):
    """ONNX wrapper: (waveform (B, N), lengths (B,)) -> hidden states (L + 1, B, T, E), and
    for a CTC model also its logits (B, T, V)."""

    def __init__(self, model: HuBERT) -> None:
        super().__init__()
        self.model = model

    def forward(self, waveform: Tensor, lengths: Tensor) -> Union[Tensor, tuple[Tensor, Tensor]]:
        out = self.model(waveform, lengths)
        hidden = torch.stack(out.hidden_states)
        return (hidden, out.prediction) if isinstance(self.model, HuBERTCTC) else hidden


def save_onnx(model: HuBERT, output: Path, opset: int = 18, quantize: Optional[str] = None) -> None:
    """ONNX graph with a dynamic batch and time axis; inputs are already normalised waveforms.
    The graph is float32 in eval mode, traced from a copy: `model` stays as the caller has it.

    `quantize="int8"` writes the float graph next to `output` first, then its int8 version
    (`quantize_onnx_int8`) to `output`, and removes the float one. `output` is written as
    checkpoints are (`atomic.write_atomic`): an earlier file survives a full disk.

    Raises:
        MissingExtra: onnx or onnxscript (torch's exporter needs both), or for int8
            onnxruntime, is not installed.
    """
    require("onnx", "onnxscript", *(["onnxruntime"] if quantize else []), extra="onnx", purpose="ONNX export")
    output.parent.mkdir(parents=True, exist_ok=True)
    # eval() on the wrapper reaches the copy inside it (the exporter warns of a training-mode module)
    wrapper = _HiddenStates(copy.deepcopy(model).float()).eval()
    example = (torch.randn(2, 16000), torch.tensor([16000, 12000]))
    batch, samples = torch.export.Dim("batch", min=1), torch.export.Dim("samples", min=800)
    with torch.no_grad(), _exporter_chatter_off():
        program = torch.onnx.export(
            wrapper, example, dynamo=True, opset_version=opset, verbose=False,
            input_names=["waveform", "lengths"],
            output_names=["hidden_states", "logits"] if isinstance(model, HuBERTCTC) else ["hidden_states"],
            dynamic_shapes={"waveform": {0: batch, 1: samples}, "lengths": {0: batch}},
        )
    if isinstance(model, HuBERTCTC):
        program.model.metadata_props["vocab"] = json.dumps(model.vocab)  # token i of the logits; 0 is the blank
    if quantize is None:
        atomic.write_atomic(output, lambda tmp: program.save(str(tmp)))
        return
    floating = output.with_name(output.stem + ".float32.onnx")
    try:
        atomic.write_atomic(floating, lambda tmp: program.save(str(tmp)))
        atomic.write_atomic(output, lambda tmp: quantize_onnx_int8(floating, tmp))
    finally:
        floating.unlink(missing_ok=True)


def quantize_onnx_int8(source: Path, output: Path) -> list[str]:
    """Dynamic int8 quantization of an exported graph's weight matmuls (ONNX Runtime).

    Every MatMul with a constant weight outside the conv front end (`post_extract_proj`,
    q/k/v/out, fc1, fc2) gets int8 weights, per output channel, and int8 activations whose
    scale is computed at run time; the conv front end (whose inference path is itself made
    of matmuls, see `ConvBlock`), the positional conv, the attention products and the norms
    stay float32, as speech exporters leave the front end. The front end's nodes are found
    by the module scope the exporter records on each node.

    Returns:
        The names of the quantized nodes.

    Raises:
        ValueError: the graph records no module scopes.
        MissingExtra: onnx or onnxruntime is not installed.
    """
    require("onnx", "onnxruntime", extra="onnx", purpose="int8 quantization")
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source)).graph
    weights = {t.name for t in graph.initializer}
    scopes = {n.name: next((p.value for p in n.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
              for n in graph.node}
    matmuls = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    if any(scopes[n.name] is None for n in matmuls):
        raise ValueError(f"{source}: the graph does not record module scopes, so the conv front end cannot be kept "
                         "float; export it with this package's save_onnx")
    nodes = [n.name for n in matmuls if "feature_extractor" not in scopes[n.name]]
    quantize_dynamic(str(source), str(output), op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes,
                     per_channel=True, weight_type=QuantType.QInt8)
    log.info("quantized %d of %d weight matmuls to int8 (the conv front end stays float)", len(nodes), len(matmuls))
    return nodes


@contextlib.contextmanager
def _exporter_chatter_off() -> Iterator[None]:
    """Keeps the exporter's own output off the terminal unless debug logging is on (`-v`):
    about 300 INFO lines from onnxscript and onnx_ir per export, torch's warnings that
    torchvision is absent, deprecations inside torch.export."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class MissingExtra(ImportError):
    """An optional package is not installed; the message names the pip extra that installs it."""


def require(*modules: str, extra: str, purpose: str) -> None:
    """Raises `MissingExtra` (one line: what is missing, the `pip install` that fixes it)
    unless every module in `modules` imports."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingExtra(f"{purpose} needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                           f"not installed: pip install 'lighthubert[{extra}]'")
