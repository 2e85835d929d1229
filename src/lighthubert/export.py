"""Export a subnet (or any dense model) as a standalone model: compact, transformers, ONNX, official.

- `compact`: `model.safetensors` + `config.json` (the `ModelConfig`, per-layer heads and FFN
  widths) in a folder; `lighthubert.load` reads it without the supernet.
- `hf`: a transformers `HubertModel` folder, for subnets with the same heads and FFN width
  in every layer (transformers has one of each).
- `onnx`: a graph from (waveform, lengths) to every hidden state, dynamic batch and time;
  `quantize="int8"` makes the Transformer's weight matmuls dynamic int8 (ONNX Runtime).
- `official`: the whole supernet in the official `.pt` format with the subnet recorded.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Union

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from . import checkpoint, convert
from .model import DistilHuBERT, HuBERT, ModelConfig
from .space import SubnetConfig
from .supernet import LightHuBERT

log = logging.getLogger(__name__)

FORMATS = ("compact", "hf", "onnx", "official")
QUANTIZE = ("int8",)  # for onnx only


def dense_model(model: HuBERT, subnet: Union[str, SubnetConfig, dict, None] = None) -> tuple[HuBERT, ModelConfig]:
    """The dense model to export: a supernet's subnet (default: its active one), a DistilHuBERT
    student without its heads, or `model` itself."""
    if isinstance(model, LightHuBERT):
        return model.export(subnet)
    if subnet is not None:
        raise ValueError("a subnet can only be chosen for a supernet checkpoint; this model has a fixed shape")
    if isinstance(model, DistilHuBERT):  # the prediction heads are for training only
        return model.without_heads(), model.cfg
    return model, model.cfg


def export_subnet(
    model: HuBERT,
    output: Union[str, Path],
    fmt: str = "compact",
    subnet: Union[str, SubnetConfig, dict, None] = None,
    dtype: torch.dtype = torch.float32,
    quantize: Optional[str] = None,
) -> Path:
    """Writes `model` (a supernet at `subnet`, or a dense model) to `output` in format `fmt`.

    Args:
        quantize: `"int8"` for dynamic int8 weight matmuls in an `onnx` export (see
            `quantize_onnx_int8`); None keeps float32.

    Raises:
        ValueError: an unknown format, a subnet that `hf` cannot represent, `official` for a
            dense model, `quantize` with another format than onnx, or onnxruntime missing.
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
        checkpoint.save_file(checkpoint.official_checkpoint(model), output)
        return output
    dense, cfg = dense_model(model, subnet)
    dense = dense.eval()
    if fmt == "compact":
        save_compact(dense, cfg, output, dtype, model.subnet if isinstance(model, LightHuBERT) else None)
    elif fmt == "hf":
        save_hf(dense, cfg, output)
    else:
        save_onnx(dense, output, quantize=quantize)
    return output


def save_compact(model: HuBERT, cfg: ModelConfig, output: Path, dtype: torch.dtype = torch.float32,
                 subnet: Optional[SubnetConfig] = None) -> None:
    """`output/model.safetensors` (in `dtype`) + `output/config.json`; loads back with `strict=True`."""
    output.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(output / "model.safetensors"))
    meta = {
        "format": checkpoint.COMPACT_FORMAT,
        "version": 1,
        "model": cfg.asdict(),
        "subnet": None if subnet is None else subnet.to_official(cfg.head_dim),
        "dtype": str(dtype).removeprefix("torch."),
    }
    (output / "config.json").write_text(json.dumps(meta, indent=2))


def hf_compatible(cfg: ModelConfig) -> None:
    """Raises ValueError unless transformers' `HubertModel` can hold `cfg` exactly.

    transformers has one head count and one FFN width for all layers, and heads of
    `hidden_size / heads`. A subnet whose attention width (64 * heads) is below its embed
    dim is padded with all-zero heads (zero value and output weights: an exact no-op).
    """
    differ = [i for i in range(cfg.depth) if (cfg.heads[i], cfg.ffn_dim[i]) != (cfg.heads[0], cfg.ffn_dim[0])]
    if differ:
        raise ValueError(
            f"transformers needs the same heads and FFN width in every layer; layers {differ} differ from layer 0 "
            f"(heads {cfg.heads}, ffn_dim {cfg.ffn_dim}); export this subnet as 'compact' or 'onnx'"
        )
    if cfg.embed_dim % cfg.head_dim or cfg.heads[0] * cfg.head_dim > cfg.embed_dim:
        raise ValueError(
            f"transformers splits hidden_size {cfg.embed_dim} into heads of {cfg.head_dim}, which cannot hold "
            f"{cfg.heads[0]} heads; export this subnet as 'compact' or 'onnx'"
        )


def save_hf(model: HuBERT, cfg: ModelConfig, output: Path) -> None:
    """A transformers folder: config.json, model.safetensors, preprocessor_config.json."""
    hf_compatible(cfg)
    state = {k: v.detach().cpu().float() for k, v in model.state_dict().items()}
    e, a = cfg.embed_dim, cfg.heads[0] * cfg.head_dim
    if a < e:  # pad to hidden_size / head_dim heads with zero heads
        for i in range(cfg.depth):
            pre = f"encoder.layers.{i}.self_attn."
            for name in ("q_proj", "k_proj", "v_proj"):
                state[pre + name + ".weight"] = torch.cat([state[pre + name + ".weight"], torch.zeros(e - a, e)])
                state[pre + name + ".bias"] = torch.cat([state[pre + name + ".bias"], torch.zeros(e - a)])
            state[pre + "out_proj.weight"] = torch.cat([state[pre + "out_proj.weight"], torch.zeros(e, e - a)], dim=1)
    output.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in convert.ours_to_hf(state).items()}, str(output / "model.safetensors"),
              metadata={"format": "pt"})
    (output / "config.json").write_text(json.dumps(convert.hf_config(cfg), indent=2))
    processor = {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "feature_size": 1,
        "sampling_rate": 16000,
        "padding_value": 0.0,
        "padding_side": "right",
        "do_normalize": cfg.normalize,
        "return_attention_mask": cfg.extractor_mode == "layer_norm",
    }
    (output / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))


class _HiddenStates(nn.Module):
    """ONNX wrapper: (waveform (B, N), lengths (B,)) -> hidden states (L + 1, B, T, E)."""

    def __init__(self, model: HuBERT) -> None:
        super().__init__()
        self.model = model

    def forward(self, waveform: Tensor, lengths: Tensor) -> Tensor:
        return torch.stack(self.model(waveform, lengths).hidden_states)


def save_onnx(model: HuBERT, output: Path, opset: int = 18, quantize: Optional[str] = None) -> None:
    """ONNX graph with a dynamic batch and time axis; inputs are already normalised waveforms.

    `quantize="int8"` writes the float graph next to `output` first, then its int8 version
    (`quantize_onnx_int8`) to `output`, and removes the float one.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _HiddenStates(model.float().eval()).eval()  # the wrapper too: the exporter warns of a training-mode module
    example = (torch.randn(2, 16000), torch.tensor([16000, 12000]))
    batch, samples = torch.export.Dim("batch", min=1), torch.export.Dim("samples", min=800)
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper, example, dynamo=True, opset_version=opset,
            input_names=["waveform", "lengths"], output_names=["hidden_states"],
            dynamic_shapes={"waveform": {0: batch, 1: samples}, "lengths": {0: batch}},
        )
    if quantize is None:
        program.save(str(output))
        return
    floating = output.with_name(output.stem + ".float32.onnx")
    program.save(str(floating))
    try:
        quantize_onnx_int8(floating, output)
    finally:
        floating.unlink()


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
        ValueError: onnxruntime is not installed, or the graph records no module scopes.
    """
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise ValueError("int8 quantization needs onnxruntime: pip install 'lighthubert[onnx]'") from None
    import onnx

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
