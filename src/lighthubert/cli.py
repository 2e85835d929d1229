"""`lighthubert <command>`: flags -> config -> the Python API. Errors are one line, exit 2."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch
import yaml

from . import checkpoint, data, demo, distributed, probes, search
from .export import FORMATS as EXPORT_FORMATS
from .export import QUANTIZE as EXPORT_QUANTIZE
from .export import export_subnet
from .extract import extract_files
from .model import HuBERT
from .space import SearchSpace, SubnetConfig, count_macs, count_subnet_params, format_count, format_table
from .supernet import LightHuBERT
from .trainer import DistillConfig, Trainer, TrainingError

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
    print(f"space {space.name}: {space.num_subnets:,} subnets; embed_dim {list(space.embed_dims)}, "
          f"heads {list(space.heads)}, ffn_ratio {list(space.ffn_ratios)}, depth {list(space.depths)}")
    _print_table(rows)
    return 0


def _shape(model: HuBERT) -> str:
    """The active shape, e.g. `e384 h6 f1536 x12`, of a supernet's subnet or a dense model."""
    if isinstance(model, LightHuBERT):
        return model.subnet.describe()
    return SubnetConfig(model.cfg.embed_dim, tuple(model.cfg.heads), tuple(model.cfg.ffn_dim)).describe()


def cmd_extract(args: argparse.Namespace) -> int:
    model = checkpoint.load_model(args.checkpoint, args.subnet)
    if args.device:
        model.to(args.device)
    log.info("model %s", _shape(model))
    report = extract_files(model, args.audio, args.output, layer=args.layer,
                           max_batch_samples=int(args.batch_seconds * data.SAMPLE_RATE), progress=not args.quiet)
    for _, reason in report.failed:
        print(f"lighthubert: failed: {reason}", file=sys.stderr)
    print(f"wrote {len(report.written)} file(s) to {args.output}, {len(report.failed)} failed")
    return 1 if report.failed else 0


def cmd_teacher_info(args: argparse.Namespace) -> int:
    kind, model = checkpoint.load_with_format(args.path)
    cfg = model.cfg
    info = {
        "path": str(args.path),
        "format": kind,
        "shape": _shape(model),
        "embed_dim": cfg.embed_dim,
        "layers": cfg.depth,
        "heads": cfg.heads[0] if len(set(cfg.heads)) == 1 else cfg.heads,
        "ffn_dim": cfg.ffn_dim[0] if len(set(cfg.ffn_dim)) == 1 else cfg.ffn_dim,
        "extractor_mode": cfg.extractor_mode,
        "layer_norm_first": cfg.layer_norm_first,
        "normalize": cfg.normalize,
        "parameters": sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("layer_pred_heads", "output_layer"))),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for k, v in info.items():
            print(f"{k.ljust(width)}  {f'{v:,}' if isinstance(v, int) and not isinstance(v, bool) else v}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    model = checkpoint.load_model(args.checkpoint)
    dtype = {"float32": torch.float32, "float16": torch.float16}[args.dtype]
    if args.dtype != "float32" and args.format != "compact":
        raise ValueError("--dtype float16 applies to the compact format only")
    out = export_subnet(model, args.output, args.format, args.subnet, dtype, args.quantize)
    kind = args.format + (f" ({args.quantize})" if args.quantize else "")
    print(f"wrote {kind} export of {_shape(model)} to {out}")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    """`distill` and `pretrain-teacher` (method hubert, no teacher): one trainer behind both."""
    pretrain = args.command == "pretrain-teacher"
    if pretrain:  # the method first, so that a --set method=... contradicting it is reported below
        overrides = ("method=hubert",) + tuple(args.set or ())
    else:
        flags = (("stage", args.stage), ("method", args.method))
        overrides = tuple(args.set or ()) + tuple(f"{k}={v}" for k, v in flags if v is not None)
    cfg = DistillConfig.from_yaml(args.config, overrides)
    if pretrain and cfg.method != "hubert":
        raise ValueError(f"pretrain-teacher trains with method hubert; the config says {cfg.method!r}")
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    missing = [f"--{n}" for n in (() if pretrain else ("teacher",)) + ("train", "out") if not getattr(args, n)]
    if missing:
        raise ValueError(f"{args.command} needs {', '.join(missing)}")
    out = Path(args.out)
    if not args.resume and any(out.glob("step-*.pt")):
        raise ValueError(f"{out} already holds checkpoints; pass --resume to continue that run or choose another --out")
    ctx = distributed.init(cfg.device)
    try:
        trainer = Trainer(cfg, None if pretrain else args.teacher, args.train, args.valid, args.out,
                          init=None if pretrain else args.init, ctx=ctx)
        if args.resume and not trainer.resume():
            log.info("--resume: no checkpoint in %s yet, starting from scratch", out)
        summary = trainer.fit()
    finally:
        distributed.shutdown()
    if ctx.is_main:
        print(json.dumps({k: v for k, v in summary.items() if k != "type"}))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: the whole pipeline on the built-in corpus (or --data), then the report."""
    settings: dict = {"out": args.out}
    for item in args.set or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {item!r}")
        settings[key.strip()] = yaml.safe_load(value)
    if args.data:
        settings.update(data=args.data, test_regex=args.test_regex)
    if args.labels:
        if not args.data:
            raise ValueError("--labels names the labels of --data files; the built-in corpus has its own")
        pairs = [item.partition("=") for item in args.labels]
        bad = [k for k, sep, v in pairs if not sep or not k or not v]
        if bad:
            raise ValueError(f"--labels expects name=regex-or-CSV, e.g. word='^(\\d)_'; got {args.labels}")
        settings["labels"] = {k.strip(): v for k, _, v in pairs}
    elif args.data:
        raise ValueError("--data needs --labels name=regex-or-CSV (one or more), e.g. --labels word='^(\\d)_'")
    fields = {f.name for f in dataclasses.fields(demo.DemoConfig)}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise ValueError(f"unknown demo setting(s) {unknown}; known: {', '.join(sorted(fields))}")
    cfg = demo.DemoConfig(**settings)
    report = demo.run(cfg)
    print(demo.report_markdown(report))
    print(f"report: {Path(cfg.out) / 'report.md'}, plot: {Path(cfg.out) / 'report.png'}")
    return 0


def cmd_manifest(args: argparse.Namespace) -> int:
    exts = [e.strip() for e in args.ext.split(",") if e.strip()]
    if not exts:
        raise ValueError(f"--ext must list extensions such as flac,wav; got {args.ext!r}")
    paths = data.write_manifest(args.audio_dir, args.out, args.valid_percent, exts, args.seed)
    train, valid = (data.read_manifest(path) for path in paths)
    print(f"wrote {paths[0]} ({len(train.entries)} files) and {paths[1]} ({len(valid.entries)} files); root {train.root}")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    cfg = probes.ProbeConfig(task=args.task, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                             hidden=args.hidden, seed=args.seed)
    if args.checkpoint == probes.MFCC:
        if args.subnet or args.device:
            raise ValueError("--subnet and --device need a checkpoint; the mfcc baseline has neither")
        source, name = probes.MFCC, probes.MFCC
    else:
        source = checkpoint.load_model(args.checkpoint, args.subnet)
        if args.device:
            source.to(args.device)
        name = _shape(source)
    result = probes.probe(source, args.train, args.test, args.labels, cfg, progress=not args.quiet)
    if args.json:
        print(json.dumps({"source": name, **result.to_dict()}, indent=2))
        return 0
    print(f"{result.task} on {name}: accuracy {result.accuracy:.3f} ({round(result.accuracy * result.n_test)}/{result.n_test} "
          f"test utterances; {len(result.classes)} classes, {result.n_train} training utterances)")
    print("layer  weight")
    for i, w in enumerate(result.layer_weights):
        print(f"{i:>5}  {w:.3f}  {'#' * round(40 * w)}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    cfg = search.SearchConfig(
        algorithm=args.algorithm, population=args.population, generations=args.generations, seed=args.seed,
        max_params=args.max_params, max_macs=args.max_macs, max_latency_ms=args.max_latency_ms,
        measure_latency=args.measure_latency, valid_batches=args.valid_batches, target_layers=args.target_layers,
        device=args.device)
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


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error of the CLI (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"lighthubert: error: {message} (see {self.prog} --help)\n")


def _training_args(p: argparse.ArgumentParser) -> None:
    """The flags `distill` and `pretrain-teacher` share: both run `cmd_distill`'s trainer."""
    p.add_argument("--train", help="training manifest (.tsv)")
    p.add_argument("--valid", help="validation manifest (.tsv)")
    p.add_argument("--out", help="run folder: config.yaml, log.jsonl, step-N.pt checkpoints")
    p.add_argument("--config", help="YAML file of DistillConfig settings (see --print-config)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one setting (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--print-config", action="store_true", help="print the effective config as YAML and exit")
    p.set_defaults(func=cmd_distill)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lighthubert", description="LightHuBERT: once-for-all HuBERT supernets.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("extract", help="write every hidden state of audio files as .npy",
                       description="Writes <output>/<stem>.npy per input: float32 (layers+1, frames, embed_dim); "
                                   "index 0 is the projected CNN features, index i layer i's output.")
    e.add_argument("--checkpoint", required=True, help="LightHuBERT checkpoint (official .pt or ours)")
    e.add_argument("--subnet", help=f"{SUBNET_HELP}; default: the checkpoint's own (max for stage 1, the space default for a supernet)")
    e.add_argument("--output", required=True, help="output folder")
    e.add_argument("--layer", type=int, help="write only this hidden state, shape (frames, embed_dim)")
    e.add_argument("--batch-seconds", type=float, default=60.0, help="padded audio per forward pass (default 60)")
    e.add_argument("--device", help="torch device, e.g. cuda (default cpu)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.add_argument("audio", nargs="+", help="audio files (any soundfile format; mono down-mix, resampled to 16 kHz)")
    e.set_defaults(func=cmd_extract)

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
                   "hf: transformers HubertModel folder (uniform subnets); onnx: .onnx file; official: supernet .pt")
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
    t.add_argument("--teacher", help="teacher checkpoint: fairseq .pt, transformers folder, torchaudio, compact, LightHuBERT")
    t.add_argument("--init", help="initial student weights (stage 2: the stage-1 checkpoint)")
    _training_args(t)

    h = sub.add_parser("pretrain-teacher", help="pre-train a small HuBERT teacher (iteration 1: MFCC k-means units)",
                       description="HuBERT iteration 1: k-means on MFCC frames of the training set, then masked "
                                   "prediction of the units. Writes fairseq HuBERT checkpoints (OUT/step-N.pt) that "
                                   "every --teacher option reads. Settings as for distill; the shape is the `model` "
                                   "setting, e.g. --set 'model={embed_dim: 256, heads: [4,4,4,4], ffn_dim: [1024,1024,1024,1024]}'. "
                                   "One process, or many with torchrun.")
    _training_args(h)

    d = sub.add_parser("demo", help="the whole pipeline on a built-in corpus (or your audio) and a report",
                       description="Pre-trains a small teacher, runs LightHuBERT stage 1 and 2 on a small supernet, "
                                   "searches it at three parameter budgets, trains DistilHuBERT with the same steps, "
                                   "probes every model, the teacher and MFCCs, and writes OUT/report.md, report.json "
                                   "and report.png. Re-running the same command resumes. Defaults: about 9.5 minutes "
                                   "on 2 CPU cores.")
    d.add_argument("--out", default="lighthubert-demo", help="output folder (default ./lighthubert-demo)")
    d.add_argument("--data", help="folder of audio files to use instead of the built-in corpus (needs --labels)")
    d.add_argument("--labels", action="append", metavar="NAME=SPEC", help="a probe: regex on the file stem (first "
                   "group = label) or CSV file of path,label; repeatable, e.g. word='^(\\d)_' speaker='^\\d_(\\w+)_'")
    d.add_argument("--test-regex", help="--data files whose stem matches are the test set (default: a seeded 20%%)")
    d.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a demo setting, e.g. teacher_steps=300 "
                   "(see docs/demo.md)")
    d.set_defaults(func=cmd_demo)

    m = sub.add_parser("manifest", help="write fairseq train.tsv/valid.tsv manifests for an audio folder",
                       description="Finds audio files recursively and writes OUT/train.tsv and OUT/valid.tsv in "
                                   "fairseq's wav2vec_manifest.py format: the root folder, then path<TAB>frames.")
    m.add_argument("audio_dir", help="folder searched recursively")
    m.add_argument("--out", required=True, help="output folder for train.tsv and valid.tsv")
    m.add_argument("--valid-percent", type=float, default=0.01, help="fraction in [0, 1] sent to valid.tsv (default 0.01 = 1%%)")
    m.add_argument("--ext", default="flac,wav", help="comma-separated extensions, case-insensitive (default flac,wav)")
    m.add_argument("--seed", type=int, default=42, help="seed of the train/valid split (default 42)")
    m.set_defaults(func=cmd_manifest)

    r = sub.add_parser("probe", help="SUPERB-style probe: train a small head on frozen features, report test accuracy",
                       description="Computes every hidden state of the train and test manifests once, trains a "
                                   "learnable softmax-weighted sum of them (s3prl's Featurizer), mean pooling and a "
                                   "small head, and prints the test accuracy and the learned layer weights.")
    r.add_argument("--checkpoint", required=True, help="any checkpoint `lighthubert.load` reads, or `mfcc` for the MFCC baseline")
    r.add_argument("--subnet", help=f"{SUBNET_HELP}; default: the checkpoint's own")
    r.add_argument("--train", required=True, help="training manifest (.tsv)")
    r.add_argument("--test", required=True, help="test manifest (.tsv)")
    r.add_argument("--labels", required=True, help="CSV file of path,label rows (paths relative to the manifest root or "
                   "absolute), or a regex on the file stem whose first group is the label, e.g. '^(\\d)_'")
    defaults = probes.ProbeConfig()
    r.add_argument("--task", default=defaults.task, choices=probes.TASKS, help="probe task (default %(default)s)")
    r.add_argument("--epochs", type=int, default=defaults.epochs, help="training epochs (default %(default)s)")
    r.add_argument("--lr", type=float, default=defaults.lr, help="Adam learning rate (default %(default)s)")
    r.add_argument("--batch-size", type=int, default=defaults.batch_size, help="utterances per step (default %(default)s)")
    r.add_argument("--hidden", type=int, default=defaults.hidden,
                   help="width of the head's ReLU layer; 0 = linear head, SUPERB's (default %(default)s)")
    r.add_argument("--seed", type=int, default=defaults.seed, help="seeds the head's init and batch order (default %(default)s)")
    r.add_argument("--device", help="torch device for the upstream, e.g. cuda (default cpu)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--json", action="store_true", help="machine-readable output")
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
    s.add_argument("--target-layers", type=int, default=8, help="mean of the teacher's last K layers, as in "
                   "training (default %(default)s)")
    s.add_argument("--device", help="torch device (default cuda if available); latency is measured there")
    s.add_argument("--resume", action="store_true", help="reuse OUT/history.jsonl and continue")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_search)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, OSError, yaml.YAMLError, TrainingError) as e:
        print(f"lighthubert: error: {e}", file=sys.stderr)
        return 2
