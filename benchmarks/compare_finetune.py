"""Does pre-training pay for CTC fine-tuning? The teacher, the stage-1 student and the same
architecture with random weights, fine-tuned alike at several seeds, beside MFCC probes.

    python benchmarks/compare_finetune.py --demo ls-4500 --out finetune [--seeds 2] [--steps 800]

From a finished `lighthubert demo` folder (`--demo`: its teacher, stage-1 student and
manifests, with transcripts: `--librispeech`, or the built-in corpus for a quick check),
each initialisation is fine-tuned with `method: ctc` on the demo's training split (all of
it; validation on its valid split) for `--steps` updates of 20 s of audio at each seed, then
scored greedily (no LM) on its test split (`asr.score`: CER, WER):

- teacher, stage 1: the recipe's defaults scaled to the run (`lr`, a frozen conv front end
  as base_10h, the encoder frozen for the first 10% of updates so the new head settles,
  light time and channel masks, no layerdrop);
- random: `random_init` (the stage-1 student's shape and vocabulary, weights from the seed),
  which has nothing to protect, so the front end trains (`feature_grad_mult` 1) and nothing
  is frozen.

References: the demo's MFCC BiLSTM CTC probe (`--librispeech`: heads on 1.5 h), and the same
probe on MFCCs and on the frozen teacher with its heads trained on all of the training audio
the fine-tuning sees (computed here, at `--seeds` head seeds, at least 2). Figures are mean ± sample sd over the seeds; comparisons use the demo's rule
(`probes/spread.py`: beyond 2 x the combined sd). Runs resume from OUT/. Writes
OUT/finetune.md and OUT/finetune.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from lighthubert import asr, checkpoint, demo, probes, transcripts
from lighthubert.demo.pipeline import finished, train_run, trained
from lighthubert.demo.report import cell, verdict
from lighthubert.space import format_table

INITS = {"teacher": "teacher", "stage1": "stage 1", "random": "random"}  # name: label
METRICS = ("CER", "WER")
DEMO_MFCC, ALL_MFCC = "MFCC probe (the demo's)", "MFCC probe, all training audio"
ALL_TEACHER = "teacher probe (frozen), all training audio"


def settings(init: str, steps: int, lr: float, seed: int) -> dict[str, Any]:
    """The fine-tuning settings of one run (docstring above)."""
    common = {"method": "ctc", "max_steps": steps, "lr": lr, "seed": seed, "max_batch_samples": 320_000,
              "mask_prob": 0.3, "mask_channel_prob": 0.1, "mask_channel_length": 16, "layerdrop": 0.0,
              "valid_every": steps, "save_every": steps, "keep_last": 1, "num_workers": 0, "device": "cpu",
              "log_every": 50}
    if init == "random":
        return {**common, "random_init": True, "feature_grad_mult": 1.0, "freeze_encoder_steps": 0}
    return {**common, "freeze_encoder_steps": steps // 10}


def finetuned(cfg: demo.DemoConfig, out: Path, data: dict[str, Path], init: str, steps: int, lr: float,
              seed: int) -> dict[str, Any]:
    """One fine-tuning run (or its cached score): CER, WER and the run's seconds."""
    run = out / f"{init}-seed{seed}"
    scored = run / "score.json"
    if scored.is_file():
        return json.loads(scored.read_text())
    source = trained(cfg)["teacher" if init == "teacher" else "stage1"]  # random: the stage-1 student's shape
    started = time.perf_counter()
    last, valid = train_run(run, None, data, settings(init, steps, lr, seed), init=source)
    seconds = time.perf_counter() - started
    result = asr.score(checkpoint.load_model(last), data["test"], progress=True)
    result = {"CER": result["cer"], "WER": result["wer"], "valid_loss": valid.get("ctc"), "train_seconds": round(seconds, 1),
              "examples": result["examples"]}
    scored.write_text(json.dumps(result, indent=2) + "\n")
    return result


def all_audio_probe(upstream: Any, cache: Path, data: dict[str, Path], seeds: int) -> dict[str, list[float]]:
    """The demo's BiLSTM CTC probe (its settings) on frozen features of `upstream` (MFCC or a
    model), its heads trained on all of the training audio: per-seed CER and WER."""
    if cache.is_file():
        return json.loads(cache.read_text())
    result = probes.probe_tasks(upstream, data["train"], data["test"], {"asr": probes.ProbeTask("asr")},
                                probes.ProbeConfig(seed=0, seeds=seeds, train_hours=0.0), progress=True)["asr"]
    figures = {m.upper(): list(s.values) for m, s in result.metrics.items()}
    cache.write_text(json.dumps(figures) + "\n")
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", required=True, help="a finished `lighthubert demo --librispeech` folder")
    p.add_argument("--out", required=True, help="where the fine-tuning runs and the comparison go")
    p.add_argument("--seeds", type=int, default=2, help="seeds per initialisation (default 2)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="seeds first-seed .. first-seed + seeds - 1 (default 0; to run seeds in parallel processes)")
    p.add_argument("--steps", type=int, default=800, help="fine-tuning updates of 20 s of audio (default 800)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate, tri-stage schedule (default 1e-3)")
    p.add_argument("--inits", nargs="+", choices=INITS, default=list(INITS),
                   help="initialisations to fine-tune (default all three; a subset for a one-variable experiment)")
    args = p.parse_args()
    src = Path(args.demo)
    try:
        cfg = finished(src)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if args.seeds < 1 or args.steps < 10:
        raise SystemExit("--seeds must be >= 1 and --steps >= 10")
    data = demo.prepare_data(cfg, src)
    if not all(transcripts.label_path(data[split], "ltr").is_file() for split in ("train", "valid", "test")):
        raise SystemExit(f"{src}: its manifests have no .ltr transcripts beside them (`demo --librispeech` writes them)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    runs: dict[str, list[dict[str, Any]]] = {init: [] for init in args.inits}
    for seed in range(args.first_seed, args.first_seed + args.seeds):  # every init at a seed, then the next seed
        for init in args.inits:
            runs[init].append(finetuned(cfg, out, data, init, args.steps, args.lr, seed))
    named = {f"fine-tuned from {INITS[init]}": results for init, results in runs.items()}
    figures: dict[str, dict[str, probes.Spread]] = {}
    mfcc_demo = next(r for r in json.loads((src / "report.json").read_text())["rows"] if r["name"].startswith("MFCC"))
    if "CER" in mfcc_demo:  # the demo probed ASR (its LibriSpeech corpus)
        figures[DEMO_MFCC] = {m: probes.Spread.of(mfcc_demo["per_seed"][m]) for m in METRICS}
    teacher = checkpoint.load_model(trained(cfg)["teacher"])
    for name, upstream, cache in ((ALL_MFCC, probes.MFCC, "mfcc-all-audio.json"),
                                  (ALL_TEACHER, teacher, "teacher-all-audio.json")):
        per_seed = all_audio_probe(upstream, out / cache, data, max(args.seeds, 2))
        figures[name] = {m: probes.Spread.of(per_seed[m]) for m in METRICS}
    for name, results in named.items():
        figures[name] = {m: probes.Spread.of([r[m] for r in results]) for m in METRICS}

    pretrained = [f"fine-tuned from {INITS[i]}" for i in ("teacher", "stage1") if i in runs]
    pairs = [(p, f"fine-tuned from {INITS['random']}") for p in pretrained if "random" in runs]
    best = min(pretrained, key=lambda k: figures[k]["CER"].mean) if pretrained else None
    pairs += [(best, ref) for ref in (DEMO_MFCC, ALL_MFCC, ALL_TEACHER) if best and ref in figures]
    pairs += [(ALL_TEACHER, ALL_MFCC)]
    said = [verdict(m, a, figures[a][m], b, figures[b][m]) for a, b in pairs for m in METRICS]
    cols = ["model", "seeds", *METRICS, "valid CTC loss", "train s"]
    cells = []
    for name, f in figures.items():
        results = named.get(name, [])
        loss = probes.Spread.of([r["valid_loss"] for r in results]).format(1, 1) if results else "-"
        secs = f"{sum(r['train_seconds'] for r in results) / len(results):.0f}" if results else "-"
        cells.append([name, str(len(f["CER"].values)), *[cell(m, f[m]) for m in METRICS], loss, secs])
    md = ["# CTC fine-tuning: pre-trained against random initialisation", "",
          f"From `{src}`; {args.steps} updates of 20 s, peak lr {args.lr:g}, seeds {args.first_seed}.."
          f"{args.first_seed + args.seeds - 1}; scored on "
          f"{data['test']} (greedy, no LM). torch threads: {torch.get_num_threads()}.", "",
          "| " + " | ".join(cols) + " |", "|---|" + "--:|" * (len(cols) - 1), *["| " + " | ".join(c) + " |" for c in cells],
          "", "Comparisons (a difference counts beyond 2 x the combined sd):", "", *[f"- {v}" for v in said], "",
          "Examples (reference -> hypothesis), first seed:", "",
          *[f"- {init}: {r} -> {h}" for init, results in runs.items() for r, h in results[0]["examples"][:1]], "",
          f"Time: {time.perf_counter() - started:.0f} s (runs already there are reused).", ""]
    (out / "finetune.md").write_text("\n".join(md))
    (out / "finetune.json").write_text(json.dumps({
        "runs": runs, "figures": {k: {m: s.to_dict() for m, s in f.items()} for k, f in figures.items()},
        "comparisons": said, "steps": args.steps, "lr": args.lr, "seeds": args.seeds}, indent=2) + "\n")
    print(format_table(cols, cells))
    print("\n".join(said))


if __name__ == "__main__":
    main()
