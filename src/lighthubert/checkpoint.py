"""Checkpoint files: safe loading, format detection, `load_model` for every kind.

Reads official LightHuBERT `.pt` files (ours included), fairseq HuBERT / wav2vec 2.0 `.pt`
files, torchaudio state dicts, transformers folders and compact exports; the key and config
conversions live in `convert.py`. Nothing here unpickles code: `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import re
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as safetensors_load_file
from torch import Tensor

from . import convert, settings
from .convert import CheckpointError
from .model import DistilHuBERT, HuBERT, HuBERTCTC, ModelConfig
from .space import SearchSpace, SubnetConfig
from .supernet import LightHuBERT

log = logging.getLogger(__name__)


class FairseqDictionary:
    """Inert stand-in for `fairseq.data.dictionary.Dictionary` inside fairseq checkpoints.

    The only non-builtin class in `hubert_base_ls960.pt`; its state (symbols, counts) is kept
    as plain attributes, no fairseq code is imported or run.
    """

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


# The allow-list for `weights_only` loading beyond tensors and builtin containers.
_SAFE_GLOBALS = [(FairseqDictionary, "fairseq.data.dictionary.Dictionary"), argparse.Namespace]


def load_file(path: Union[str, Path]) -> dict[str, Any]:
    """`torch.load` with `weights_only=True`: tensors and plain containers only, no pickled code.

    fairseq's `Dictionary` and `argparse.Namespace` (old fairseq `args`) are allowed as inert
    stand-ins; anything else that names a class is refused.

    Raises:
        CheckpointError: missing, truncated, not a PyTorch file, or referring to a class
            that is not allowed; one line saying which.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch < 2.13: "Unsupported global: GLOBAL x.y"; 2.13: "unsupported GLOBAL x.y whose module x is blocked"
        found = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", str(e), re.IGNORECASE)
        if found:
            raise CheckpointError(
                f"{path}: the checkpoint refers to the Python class {found.group(1)}, which safe loading "
                "(weights_only=True) does not run; re-save it as plain tensors and dicts"
            ) from None
        raise CheckpointError(f"{path}: {_other_file(path) or f'not a PyTorch checkpoint ({settings.first_line(e)})'}") from None
    except Exception as e:  # torch.load on arbitrary bytes raises many types (IndexError, EOFError, ...)
        other = _other_file(path) or f"not a readable PyTorch checkpoint, maybe truncated ({settings.first_line(e)})"
        raise CheckpointError(f"{path}: {other}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(obj).__name__}")
    return obj


def _other_file(path: Path) -> Optional[str]:
    """What a file that `torch.load` refused is, when its first bytes tell: so that the user
    reads "an ONNX model" rather than torch's advice to load it with weights_only=False."""
    with open(path, "rb") as f:
        head = f.read(512)
    if path.suffix.lower() == ".onnx" or (head[:1] == b"\x08" and b"pytorch" in head[:32]):
        return ("an ONNX model (an export, for onnxruntime), not a checkpoint; give the checkpoint it was exported "
                "from, or run it with onnxruntime")
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "a safetensors weight file, not a checkpoint; give the folder that holds it and its config.json"
    if head.startswith(b"\x93NUMPY"):
        return "a NumPy array (such as extract's output), not a checkpoint"
    if head.startswith((b"RIFF", b"fLaC", b"OggS", b"ID3")):
        return "an audio file, not a checkpoint; audio files go after the options, the checkpoint after --checkpoint"
    if head and _is_text(head):
        return "a text file, not a PyTorch checkpoint"
    return None


def _is_text(head: bytes) -> bool:
    """UTF-8 without control characters other than tab and newlines (a cut last character allowed)."""
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:
            return False
    return not any(b < 32 and b not in b"\t\r\n" for b in head)


def load_state(model: torch.nn.Module, state: dict[str, Tensor], source: str) -> None:
    """`load_state_dict(strict=True)` with one-line errors naming the missing, extra or misshapen key."""
    own = model.state_dict()
    odd = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if odd:
        raise CheckpointError(f"{source}: {odd[0]} is a {type(state[odd[0]]).__name__}, not a tensor; the weights are damaged")
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    if missing or extra:
        raise CheckpointError(
            f"{source}: does not fit the model: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {extra[:3]}{'...' if len(extra) > 3 else ''}"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"{source}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
    model.load_state_dict(state, strict=True)


def load_official(ckpt: dict[str, Any], source: str):
    """Builds a `LightHuBERT` from an official-format checkpoint dict (already loaded safely).

    `hubert_pruner` (a supernet) starts at its space's default subnet; `student_hubert`
    (stage 1) at `max`, as s3prl's `lighthubert_local` chooses. A checkpoint that we wrote
    carries its own space in `cfg['lighthubert']`.

    Returns:
        (model, dropped keys).
    """
    cfg = ckpt.get("cfg")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{source}: not a LightHuBERT checkpoint (expected {{'cfg': {{'model': ...}}, 'model': state_dict}})")
    mcfg = cfg["model"]
    name = mcfg.get("_name")
    if name not in ("hubert_pruner", "student_hubert"):
        raise CheckpointError(f"{source}: model type {name!r} is not a LightHuBERT checkpoint ('hubert_pruner' or 'student_hubert')")
    ours = cfg.get("lighthubert")
    if isinstance(ours, dict) and "space" in ours:
        space = SearchSpace.from_dict(ours["space"])
    else:
        task = cfg.get("task") if isinstance(cfg.get("task"), dict) else {}
        model_cfg = convert.fairseq_model_config(mcfg, task.get("normalize"))
        base = convert.official_space(mcfg)
        space = SearchSpace(base.name, model_cfg, base.embed_dims, base.heads, base.ffn_ratios, base.depths, base.default)
    state, dropped = convert.official_to_ours(ckpt["model"])
    model = LightHuBERT(space)
    load_state(model, state, source)
    subnet = ours.get("subnet") if isinstance(ours, dict) else None
    model.set_subnet(SubnetConfig.from_official(subnet, space.model.head_dim) if subnet else ("max" if name == "student_hubert" else "default"))
    return model.eval(), dropped


def official_checkpoint(model, stage1: bool = False) -> dict[str, Any]:
    """The official `{'cfg', 'model'}` dict for a `LightHuBERT`, loadable by the official code
    and s3prl's `lighthubert_local` (for the 768-wide, 12-layer spaces), plus our space and
    active subnet under `cfg['lighthubert']`, which they ignore."""
    m, space = model.cfg, model.space
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {
        "cfg": {
            "model": convert.official_config(m, space.name, stage1),
            "task": {"normalize": m.normalize, "sample_rate": 16000},
            "lighthubert": {"space": space.to_dict(), "subnet": model.subnet.to_official(m.head_dim)},
        },
        "model": convert.ours_to_official(state, m.extractor_mode),
    }


CTC_FORMAT = "lighthubert-ctc"  # the "format" of a fine-tuned CTC model's .pt


def ctc_checkpoint(model: HuBERTCTC) -> dict[str, Any]:
    """A fine-tuned CTC model as a `.pt` dict: its `ModelConfig`, vocabulary and weights."""
    return {"format": CTC_FORMAT, "version": 1, "config": model.cfg.asdict(), "vocab": list(model.vocab),
            "final_dropout": model.final_dropout.p,
            "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}


def _load_ctc(ckpt: dict[str, Any], source: str):
    try:
        cfg, vocab = settings.from_dict(ModelConfig, ckpt["config"], "model"), ckpt["vocab"]
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: not a readable {CTC_FORMAT} checkpoint ({e})") from None
    model = HuBERTCTC(cfg, vocab, float(ckpt.get("final_dropout", 0.0)))
    load_state(model, ckpt["state_dict"], source)
    return model, []


# -- loading any checkpoint ----------------------------------------------------------------------
FORMATS = ("lighthubert", "fairseq", "distilhubert", "transformers", "torchaudio", "compact", "ctc")
COMPACT_FORMAT = "lighthubert-compact"  # config.json "format" of a compact export


def detect_format(obj: Union[dict[str, Any], Path]) -> str:
    """Which of `FORMATS` a loaded checkpoint dict (or a folder) is; CheckpointError if none."""
    if isinstance(obj, Path):
        cfg_path = obj / "config.json"
        if not cfg_path.is_file():
            raise CheckpointError(f"{obj}: a folder without config.json is neither a transformers model nor a compact export")
        return "compact" if settings.read_json(cfg_path).get("format") == COMPACT_FORMAT else "transformers"
    if isinstance(obj.get("Distiller"), dict) and isinstance(obj.get("Config"), dict):
        return "distilhubert"
    if obj.get("format") == CTC_FORMAT:
        return "ctc"
    cfg = obj.get("cfg")
    name = cfg.get("model", {}).get("_name") if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict) else None
    if name in ("hubert_pruner", "student_hubert"):
        return "lighthubert"
    if name is not None or obj.get("args") is not None:
        return "fairseq"
    if obj and all(isinstance(v, Tensor) for v in obj.values()) and any(".transformer.layers." in k for k in obj):
        return "torchaudio"
    raise CheckpointError(
        "not a checkpoint this package reads: expected an official LightHuBERT / fairseq .pt "
        "({'cfg' or 'args', 'model'}), a torchaudio state dict, a transformers folder or a compact export"
    )



def load_model(path: Union[str, Path], subnet: Union[str, SubnetConfig, dict, None] = None):
    """Loads any model this package reads, safely; the entry point behind `lighthubert.load`.

    Args:
        path: an official-format LightHuBERT checkpoint (ours included), a fairseq HuBERT /
            wav2vec 2.0 `.pt`, a torchaudio state dict, a transformers folder, or a compact export.
        subnet: for a supernet, `default` / `max` / `min` / JSON / a `SubnetConfig`; None keeps
            the checkpoint's own choice (s3prl's: `max` for stage 1, the space default otherwise).

    Returns:
        A `LightHuBERT` (supernets) or `HuBERT` (everything else), in eval mode.

    Raises:
        CheckpointError: unreadable or unsupported files, keys or shapes that do not fit.
    """
    kind, model = load_with_format(path)
    refuse_non_finite(model, path)
    if subnet is not None:
        if not isinstance(model, LightHuBERT):
            raise CheckpointError(f"{path} is a fixed-shape {kind} model; a subnet can only be chosen for a supernet")
        model.set_subnet(subnet)
    return model


def refuse_non_finite(model: torch.nn.Module, source: Union[str, Path]) -> None:
    """Raises CheckpointError when a weight is NaN or infinite: such a model turns every output
    (features, exports, teacher targets) into NaN without another error."""
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{source}: non-finite weights ({len(bad)} tensors, e.g. {bad[0]}); "
                              "use an earlier checkpoint of the run")


def dense_model(model: HuBERT, subnet: Union[str, SubnetConfig, dict, None] = None) -> tuple[HuBERT, ModelConfig]:
    """The plain dense encoder behind any loaded model: a supernet's subnet (default: its active
    one) exported, a DistilHuBERT student or CTC model without its heads, or `model` itself."""
    if isinstance(model, LightHuBERT):
        return model.export(subnet)
    if subnet is not None:
        raise ValueError("a subnet can only be chosen for a supernet checkpoint; this model has a fixed shape")
    if type(model) is not HuBERT:  # DistilHuBERT's prediction heads, a CTC head, ...: not the encoder's
        return model.without_heads(), model.cfg
    return model, model.cfg


def load_teacher(path: Union[str, Path]) -> HuBERT:
    """Any model this package loads, as a frozen dense teacher: a supernet at its active subnet
    (exported, so its widths are the subnet's), a DistilHuBERT without heads; eval mode, no
    layerdrop, no gradients.

    Raises:
        CheckpointError: unreadable, or with non-finite weights (a teacher that would turn every
            target into NaN).
    """
    teacher, _ = dense_model(load_model(path))
    teacher.encoder.layerdrop = 0.0
    return teacher.eval().requires_grad_(False)


def load_with_format(path: Union[str, Path]):
    """`load_model` without a subnet choice (nor its finiteness check: `teacher-info` describes
    a damaged model too), also returning which of `FORMATS` the file was.

    Raises:
        CheckpointError: every problem with the file, as one line naming it (a config value of
            the wrong type included).
    """
    path = Path(path)
    try:
        if path.is_dir():
            kind = detect_format(path)
            model, dropped = (_load_compact if kind == "compact" else _load_transformers)(path)
        else:
            kind, model, dropped = model_from_dict(load_file(path), str(path))
    except CheckpointError:
        raise
    except ValueError as e:  # a config that does not fit ModelConfig, SearchSpace, ...
        text = str(e)
        raise CheckpointError(text if text.startswith(str(path)) else f"{path}: {text}") from None
    if dropped:
        log.info("%s: dropped %d head / pre-training tensors (%s ...)", path, len(dropped), dropped[0])
    return kind, model.eval()


def model_from_dict(ckpt: dict[str, Any], source: str) -> tuple[str, HuBERT, list[str]]:
    """The model in an already loaded checkpoint dict: (format, model, dropped keys)."""
    try:
        kind = detect_format(ckpt)
    except CheckpointError as e:
        other = _other_file(Path(source)) if Path(source).is_file() else None  # torch.load reads safetensors files too
        raise CheckpointError(f"{source}: {other or e}") from None
    loader = {"lighthubert": load_official, "fairseq": _load_fairseq, "distilhubert": load_distiller,
              "torchaudio": _load_torchaudio, "ctc": _load_ctc}[kind]
    model, dropped = loader(ckpt, source)
    return kind, model, dropped


def restore_weights(model: torch.nn.Module, ckpt: dict[str, Any], source: str) -> None:
    """Loads the weights of an already read checkpoint dict (any format `load` reads) into
    `model` strictly, e.g. a training run's own checkpoint on --resume."""
    _, loaded, _ = model_from_dict(ckpt, source)
    load_state(model, loaded.state_dict(), source)


def _dense(cfg: ModelConfig, state: dict[str, Tensor], source: str) -> HuBERT:
    return _dense_state(HuBERT(cfg), state, source)


def _dense_state(model: HuBERT, state: dict[str, Tensor], source: str) -> HuBERT:
    if "mask_emb" not in state:  # transformers and s3prl drop or lack it; unused at inference
        state["mask_emb"] = torch.zeros(model.cfg.embed_dim)
    load_state(model, state, source)
    return model


def _load_fairseq(ckpt: dict[str, Any], source: str):
    cfg = ckpt.get("cfg")
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        mcfg, task = cfg["model"], cfg.get("task") or {}
    elif ckpt.get("args") is not None:  # pre-hydra fairseq: one argparse Namespace
        mcfg = task = vars(ckpt["args"]) if isinstance(ckpt["args"], argparse.Namespace) else dict(ckpt["args"])
    else:
        raise CheckpointError(f"{source}: a fairseq checkpoint without a model config")
    name = mcfg.get("_name", mcfg.get("arch"))
    if name in ("hubert_ctc", "wav2vec_ctc", "hubert_seq2seq"):  # fine-tuned: the encoder's own config is inside
        inner = mcfg.get("w2v_args")
        if not isinstance(inner, dict) or not isinstance(inner.get("model"), dict):
            raise CheckpointError(f"{source}: fine-tuned {name} checkpoint without its pre-training config (w2v_args)")
        mcfg, task = inner["model"], inner.get("task") or task
        name = mcfg.get("_name")
    if name not in ("hubert", "wav2vec2", "data2vec_audio") and not str(name).startswith(("hubert", "wav2vec")):
        raise CheckpointError(f"{source}: fairseq model type {name!r} is not a HuBERT / wav2vec 2.0 encoder")
    if not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{source}: fairseq checkpoint without a 'model' state dict")
    model_cfg = convert.fairseq_model_config(mcfg, task.get("normalize"), lighthubert=False)
    state, dropped = convert.official_to_ours(ckpt["model"])
    return _dense(model_cfg, state, source), dropped


def load_distiller(ckpt: dict[str, Any], source: str):
    """An s3prl DistilHuBERT `states-*.ckpt` (ours are written in the same layout) as a
    `DistilHuBERT`, heads included. Returns (model, [])."""
    cfg = ckpt["Config"].get("distiller")
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{source}: s3prl checkpoint without Config['distiller']")
    model_cfg, targets = convert.distiller_config(cfg)
    state = convert.distiller_to_ours(ckpt["Distiller"])
    heads = state.get("output_layer.2.weight")
    if heads is None or heads.shape[0] != len(targets):
        found = "no heads" if heads is None else f"{heads.shape[0]} heads"
        raise CheckpointError(f"{source}: {found} in the weights, but its config predicts layers {targets}")
    model = DistilHuBERT(model_cfg, targets, heads.shape[-1])
    return _dense_state(model, state, source), []


def _load_torchaudio(state: dict[str, Tensor], source: str):
    """torchaudio keeps no config: it is read off the shapes. Heads assume 64-dim heads (all
    torchaudio HuBERT / wav2vec 2.0 factories), strides the standard 5,2,2,...; a layer-norm
    front end implies pre-LN layers and normalised input, as in torchaudio's large factories."""
    ours, dropped = convert.torchaudio_to_ours(state)
    conv, i = [], 0
    while f"feature_extractor.conv_layers.{i}.conv.weight" in ours:
        w = ours[f"feature_extractor.conv_layers.{i}.conv.weight"]
        conv.append([w.shape[0], w.shape[2], 5 if i == 0 else 2])
        i += 1
    layers = len({k.split(".")[2] for k in ours if k.startswith("encoder.layers.")})
    if not conv or not layers:
        raise CheckpointError(f"{source}: no conv front end or Transformer layers found")
    embed = ours["post_extract_proj.weight"].shape[0]
    layer_norm = "feature_extractor.conv_layers.1.norm.weight" in ours
    cfg = ModelConfig(
        conv_layers=conv, extractor_mode="layer_norm" if layer_norm else "default",
        conv_bias="feature_extractor.conv_layers.0.conv.bias" in ours, embed_dim=embed,
        heads=[embed // 64] * layers, ffn_dim=[ours["encoder.layers.0.fc1.weight"].shape[0]] * layers,
        conv_pos=ours["encoder.pos_conv.0.weight_v"].shape[2], conv_pos_groups=embed // ours["encoder.pos_conv.0.weight_v"].shape[1],
        layer_norm_first=layer_norm, pred_dim=0, normalize=layer_norm,
    )
    return _dense(cfg, ours, source), dropped


def _load_transformers(path: Path):
    cfg = settings.read_json(path / "config.json")
    if cfg.get("model_type") == "lighthubert":  # our remote-code export (export.save_hf): our keys under `hubert.`
        if not isinstance(cfg.get("lighthubert"), dict):
            raise CheckpointError(f"{path / 'config.json'}: model_type lighthubert without its 'lighthubert' model config")
        state = {k.removeprefix("hubert."): v for k, v in _read_weights(path).items()}
        return _dense(settings.from_dict(ModelConfig, cfg["lighthubert"], "model"), state, str(path)), []
    normalize = None
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        normalize = settings.read_json(pre).get("do_normalize")
    state, dropped = convert.hf_to_ours(_read_weights(path))
    return _dense(convert.hf_model_config(cfg, normalize), state, str(path)), dropped


def _read_weights(path: Path) -> dict[str, Tensor]:
    """transformers weights: model.safetensors, a sharded index, or pytorch_model.bin (safely)."""
    if (path / "model.safetensors").is_file():
        return _read_safetensors(path / "model.safetensors")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = settings.read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: expected a 'weight_map' object of tensor name -> shard file name")
        shards = sorted(set(weight_map.values()))
        inside = path.resolve()
        outside = [s for s in shards if Path(s).is_absolute() or inside not in (inside / s).resolve().parents]
        if outside:  # a shard is a file of this folder; an index must not make us read elsewhere
            raise CheckpointError(f"{index}: shard {outside[0]!r} is outside the model folder; shards are file names in {path}")
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise CheckpointError(f"{path}: missing weight shard(s) {missing}")
        return {k: v for s in shards for k, v in _read_safetensors(path / s).items()}
    if (path / "pytorch_model.bin").is_file():
        return load_file(path / "pytorch_model.bin")
    raise CheckpointError(f"{path}: no weight file (model.safetensors or pytorch_model.bin) next to config.json")


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    """A safetensors file's tensors; CheckpointError naming the file when it is damaged."""
    try:
        return safetensors_load_file(path)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file, maybe truncated ({settings.first_line(e)})") from None


def _load_compact(path: Path):
    meta = settings.read_json(path / "config.json")
    if not isinstance(meta.get("model"), dict):
        raise CheckpointError(f"{path / 'config.json'}: a compact export's config.json needs its 'model' config (an object)")
    cfg = settings.from_dict(ModelConfig, meta["model"], "model")
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{path}: compact export without model.safetensors")
    state = {k: v.float() for k, v in _read_safetensors(weights).items()}
    if "vocab" in meta:  # a fine-tuned CTC model with its head
        try:
            model = HuBERTCTC(cfg, meta["vocab"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path / 'config.json'}: unreadable CTC vocabulary ({e})") from None
        load_state(model, state, str(path))
        return model, []
    return _dense(cfg, state, str(path)), []
