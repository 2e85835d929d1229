"""Subnet search: evolution or random sampling under parameter, MAC or latency budgets.

The deleted official scripts (reference notes §10.2) minimise the distillation validation
loss of a trained supernet under a parameter budget, with a genome of
`[embed] + [ffn_ratio] * max_depth + [heads] * max_depth + [depth]` choice indices. We keep
that fitness and those genes, ordered `[embed] + [heads] * max_depth + [ffn_ratio] * max_depth
+ [depth]` (`GenomeCodec`; per-gene mutation and uniform crossover do not depend on the
order), add MAC and latency budgets (latency measured on each subnet's exported dense model,
the one users deploy), append one gene per conv group where the space's front end is elastic
(so those budgets reach the front end), and write every evaluation to `history.jsonl` so that
a rerun with `resume=True` continues where the last one stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor

from . import distributed
from .data import AudioDataset, Batch, validation_batches
from .model import HuBERT
from .progress import Progress, progress_bar
from .recipes.lighthubert import LightHuBERTDistillConfig, LightHuBERTRecipe
from .space import SearchSpace, SubnetConfig, count_macs, count_subnet_params, format_count, format_table
from .supernet import LightHuBERT

log = logging.getLogger(__name__)

Genome = tuple  # (embed_idx, heads_idx * L, ratio_idx * L, depth_idx, conv_idx * G), L = max depth, G = conv groups


@dataclass
class SearchConfig:
    """Settings of one search; the fitness-relevant ones must match on resume."""

    algorithm: str = "evolution"  # evolution | random
    population: int = 20  # candidates per generation
    generations: int = 10  # generations (random: batches of `population` samples)
    mutation_prob: float = 0.1  # evolution: chance that a gene is redrawn
    crossover: float = 0.5  # evolution: chance that a child is the uniform crossover of two parents
    parent_fraction: float = 0.25  # evolution: best fraction of the population kept as parents
    seed: int = 1  # seeds the search and the validation masks and crops
    max_params: Optional[int] = None  # budget: official parameter count (None: no limit)
    max_macs: Optional[int] = None  # budget: MACs per 1 s of audio (None: no limit)
    max_latency_ms: Optional[float] = None  # budget: measured latency of the exported subnet, 1 s of audio on `device` (None: no limit)
    measure_latency: bool = False  # measure (and record) latency even without a latency budget
    latency_runs: int = 5  # timed forward passes per subnet; the median is kept
    valid_batches: int = 0  # validation batches per fitness evaluation (0: all)
    max_batch_samples: int = 1_400_000  # padded samples per validation batch
    max_sample_size: int = 320_000  # crop cap of validation utterances
    min_sample_size: int = 0  # shorter validation utterances are skipped
    target_layers: int = 8  # targets: mean of the teacher's last K layers (as in training)
    mask_prob: float = 0.65  # span-mask start probability (as in training)
    mask_length: int = 10  # span length in frames
    loss_on: str = "masked"  # masked | all
    instance_norm: bool = True  # instance-normalise each teacher layer before averaging (as in training)
    device: Optional[str] = None  # cpu | cuda | cuda:N (default: cuda if available)

    def __post_init__(self) -> None:
        if self.algorithm not in ("evolution", "random"):
            raise ValueError(f"algorithm must be one of ['evolution', 'random'], got {self.algorithm!r}")
        if self.loss_on not in ("masked", "all"):
            raise ValueError(f"loss_on must be one of ['masked', 'all'], got {self.loss_on!r}")
        for name, low in (("population", 2), ("generations", 1), ("latency_runs", 1), ("max_batch_samples", 1),
                          ("max_sample_size", 1), ("target_layers", 1), ("mask_length", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be at least {low}, got {getattr(self, name)}")
        for name in ("valid_batches", "min_sample_size", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("mutation_prob", "crossover", "mask_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 < self.parent_fraction <= 1:
            raise ValueError(f"parent_fraction must be in (0, 1], got {self.parent_fraction}")
        for name in ("max_params", "max_macs", "max_latency_ms"):
            v = getattr(self, name)
            if v is not None and not v > 0:  # NaN too: "not a number" rather than a budget no subnet meets
                raise ValueError(f"{name} must be a positive number (or None for no limit), got {v}")
        distributed.resolve_device(self.device)  # a device this machine lacks: refused before any model is loaded

    def fitness_key(self) -> dict[str, Any]:
        """The settings a cached loss depends on; a resumed run must share them."""
        keys = ("seed", "valid_batches", "max_batch_samples", "max_sample_size", "min_sample_size", "target_layers",
                "mask_prob", "mask_length", "loss_on", "instance_norm")
        return {k: getattr(self, k) for k in keys}


# The search settings that make its fitness the training run's validation loss, and where a
# checkpoint written by `Trainer` records them: (section of its run config, key).
FITNESS_FROM_RUN = {"target_layers": "recipe", "instance_norm": "recipe", "mask_prob": "recipe", "mask_length": "recipe",
                    "loss_on": "recipe", "max_batch_samples": "trainer", "max_sample_size": "trainer",
                    "min_sample_size": "trainer"}


def training_fitness(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The fitness settings of the run that wrote a supernet checkpoint (`FITNESS_FROM_RUN`),
    read from its training state; {} for a checkpoint without one (e.g. an official release).
    An older flat run config is read key by key."""
    run = (ckpt.get("trainer") or {}).get("config") if isinstance(ckpt.get("trainer"), dict) else None
    if not isinstance(run, dict) or run.get("method", "lighthubert") != "lighthubert":
        return {}
    return {k: (run[section] if isinstance(run.get(section), dict) else run).get(k) for k, section in FITNESS_FROM_RUN.items()
            if k in (run[section] if isinstance(run.get(section), dict) else run)}


# -- genome --------------------------------------------------------------------------------------
class GenomeCodec:
    """Integer genomes over a `SearchSpace`; decoding keeps the first `depth` per-layer genes.

    Layout: embed, heads x L, ffn_ratio x L, depth, conv width x G (L the largest depth, G the
    conv groups; none in a space with a fixed front end). The front-end genes come after the
    depth gene, so the Transformer genes keep their positions in every space.
    """

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.layers = max(space.depths)
        self.depth_gene = 1 + 2 * self.layers
        # choices per gene: embed, heads x L, ratio x L, depth, conv width x G
        self.sizes = ((len(space.embed_dims),) + (len(space.heads),) * self.layers
                      + (len(space.ffn_ratios),) * self.layers + (len(space.depths),)
                      + (len(space.conv_dims),) * len(space.conv_groups))

    def random(self, rng: random.Random) -> Genome:
        return tuple(rng.randrange(n) for n in self.sizes)

    def minimum(self) -> Genome:
        return (0,) * len(self.sizes)

    def decode(self, g: Genome) -> SubnetConfig:
        s, n = self.space, self.layers
        e, d = s.embed_dims[g[0]], s.depths[g[self.depth_gene]]
        heads = tuple(s.heads[i] for i in g[1 : 1 + d])
        ffn = tuple(int(s.ffn_ratios[i] * e) for i in g[1 + n : 1 + n + d])
        conv = s.conv_widths([s.conv_dims[i] for i in g[self.depth_gene + 1 :]]) if s.conv_dims else ()
        return SubnetConfig(e, heads, ffn, conv)

    def active(self, g: Genome) -> list[int]:
        """Gene positions that change the decoded subnet."""
        n, d = self.layers, self.space.depths[g[self.depth_gene]]
        return [0, *range(1, 1 + d), *range(1 + n, 1 + n + d), *range(self.depth_gene, len(self.sizes))]

    def mutate(self, g: Genome, rng: random.Random, prob: float) -> Genome:
        return tuple(rng.randrange(n) if rng.random() < prob else x for x, n in zip(g, self.sizes))

    def crossover(self, a: Genome, b: Genome, rng: random.Random) -> Genome:
        """Uniform crossover: each gene from either parent with probability 1/2."""
        return tuple(x if rng.random() < 0.5 else y for x, y in zip(a, b))

    def shrink(self, g: Genome, rng: random.Random) -> Optional[Genome]:
        """One active gene above its smallest choice, lowered by one; None at the minimum."""
        up = [i for i in self.active(g) if g[i] > 0]
        if not up:
            return None
        i = rng.choice(up)
        return g[:i] + (g[i] - 1,) + g[i + 1 :]


# -- measurements --------------------------------------------------------------------------------
LATENCY_OF = "exported dense model"  # what `latency_ms` measures; written beside it in history.jsonl


def measure_latency(model: HuBERT, sub: Optional[SubnetConfig] = None, runs: int = 5, seconds: float = 1.0) -> float:
    """Median ms of one forward pass of the model a user deploys, on `seconds` of audio.

    A supernet is exported first (`LightHuBERT.export` of `sub`, default its active subnet:
    the dense model `lighthubert export` writes) and that model is timed: the sliced
    supernet runs slower than its export (the slices' overhead, the most at block-wise FFNs),
    so timing it would over-state every latency and penalise exactly those subnets. A dense
    model is timed as it is.

    Raises:
        ValueError: `sub` given for a dense model.
    """
    if isinstance(model, LightHuBERT):
        model = model.export(sub)[0].eval()
    elif sub is not None:
        raise ValueError("a subnet can only be chosen for a supernet; this model has a fixed shape")
    return time_forward(model, runs, seconds)


@torch.no_grad()
def time_forward(model: HuBERT, runs: int = 5, seconds: float = 1.0) -> float:
    """Median wall-clock ms of `model`'s forward on a fixed `seconds`-long input, on its
    device, after one warm-up pass."""
    device = model.mask_emb.device
    x = torch.randn(1, int(seconds * 16000), generator=torch.Generator().manual_seed(0)).to(device)
    times = []
    for i in range(runs + 1):  # the first run warms up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


class Fitness:
    """Distillation validation loss of a subnet, as `Trainer.validate` computes it.

    Teacher targets are computed once per validation batch (they do not depend on the
    subnet), on the first subnet not in the cache, so that a search whose evaluations are
    all in its history (a finished search run again) reads no audio; batch b's masks come
    from a generator seeded by `seed + b`, so every subnet sees the same masks. Losses are
    cached per `SubnetConfig`.
    """

    def __init__(self, model: LightHuBERT, teacher: HuBERT, valid_tsv: Union[str, Path], cfg: SearchConfig) -> None:
        if model.cfg.pred_dim != teacher.cfg.embed_dim:
            raise ValueError(f"the supernet's prediction head has {model.cfg.pred_dim} outputs but the teacher is "
                             f"{teacher.cfg.embed_dim} wide; search needs a supernet distilled from this teacher")
        if cfg.target_layers > teacher.cfg.depth:
            raise ValueError(f"target_layers {cfg.target_layers} exceeds the teacher's {teacher.cfg.depth} layers")
        self.model, self.teacher, self.cfg, self.valid_tsv = model, teacher, cfg, valid_tsv
        distill = LightHuBERTDistillConfig(stage=2, target_layers=cfg.target_layers, mask_prob=cfg.mask_prob,
                                           mask_length=cfg.mask_length, loss_on=cfg.loss_on,
                                           instance_norm=cfg.instance_norm)
        self.recipe = LightHuBERTRecipe(distill, teacher, seed=cfg.seed)
        self.dataset = AudioDataset(valid_tsv, min_samples=cfg.min_sample_size)
        if len(self.dataset) == 0:
            raise ValueError(f"{valid_tsv}: no validation utterance of at least {cfg.min_sample_size} samples")
        self.batches: Optional[list[tuple[int, Batch, Tensor]]] = None  # (batch index, batch, teacher target)
        self.cache: dict[SubnetConfig, float] = {}

    def _prepare(self) -> list[tuple[int, Batch, Tensor]]:
        """The validation batches and their teacher targets (computed once), kept in host
        memory: on a GPU a 1% valid split of LibriSpeech 960 h holds about 2 GB of audio and 5 GB
        of HuBERT Base targets (docs/training.md, "Scale rehearsal"); each evaluation moves one
        batch at a time to the device."""
        if self.batches is None:
            device, cfg, batches = self.model.mask_emb.device, self.cfg, []
            for b, batch in validation_batches(self.dataset, cfg.max_batch_samples, cfg.max_sample_size, cfg.seed):
                if cfg.valid_batches and b >= cfg.valid_batches:
                    break
                with torch.no_grad():
                    batches.append((b, batch, self.recipe.targets(batch.to(device)).cpu()))
            if not batches:
                raise ValueError(f"{self.valid_tsv}: no readable validation audio")
            self.batches = batches
        return self.batches

    @torch.no_grad()
    def __call__(self, sub: SubnetConfig) -> float:
        if sub not in self.cache:
            self.model.eval()
            total, count = 0.0, 0
            device = self.model.mask_emb.device
            for b, batch, target in self._prepare():
                gen = torch.Generator().manual_seed(self.cfg.seed + b)
                loss = self.recipe.loss(self.model, self.model, sub, batch.to(device), target.to(device), gen)
                total += loss.item() * batch.wav.size(0)
                count += batch.wav.size(0)
            self.cache[sub] = total / count
        return self.cache[sub]


# -- the search ----------------------------------------------------------------------------------
@dataclass
class SearchResult:
    best: SubnetConfig  # lowest validation loss within the budgets
    best_loss: float
    evaluations: int  # distinct subnets with a loss (resumed ones included)
    new_evaluations: int  # of which evaluated in this run
    history: list = field(default_factory=list)  # every record of history.jsonl
    pareto: list = field(default_factory=list)  # records on the params-vs-loss Pareto front, by params


def check_budgets(space: SearchSpace, cfg: SearchConfig) -> None:
    """ValueError naming the smallest achievable figure when no subnet meets a budget."""
    low = space.min()
    params = count_subnet_params(space, low)
    if cfg.max_params is not None and params > cfg.max_params:
        raise ValueError(f"max_params {cfg.max_params:,} is below the smallest subnet of {space.title} "
                         f"({params:,} parameters, the min subnet)")
    macs = count_macs(space.model_config(low))
    if cfg.max_macs is not None and macs > cfg.max_macs:
        raise ValueError(f"max_macs {cfg.max_macs:,} is below the smallest subnet of {space.title} "
                         f"({macs:,} MACs per 1 s of audio, the min subnet)")


def pareto_front(records: list[dict]) -> list[dict]:
    """Records no other beats on both params and loss, by ascending params."""
    front, best = [], float("inf")
    for r in sorted(records, key=lambda r: (r["params"], r["loss"])):
        if r["loss"] < best:
            front.append(r)
            best = r["loss"]
    return front


def pareto_table(front: list[dict]) -> str:
    """Text table of a Pareto front (params vs loss; latency where measured)."""
    lat = any("latency_ms" in r for r in front)
    cols = ["subnet", "params", "MACs/1s audio", "loss"] + (["latency ms (exported, measured)"] if lat else [])
    rows = [[r["describe"], f"{r['params']:,}", format_count(r["macs"]), f"{r['loss']:.5f}"]
            + ([f"{r['latency_ms']:.1f}" if "latency_ms" in r else "-"] if lat else []) for r in front]
    return format_table(cols, rows)


def plot_pareto(records: list[dict], front: list[dict], best: dict, max_params: Optional[int], path: Path) -> None:
    """PNG of every evaluated subnet (parameters vs validation loss), the Pareto front, the best
    subnet and the parameter budget."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ax.scatter([r["params"] / 1e6 for r in records], [r["loss"] for r in records], s=14, color="0.6", label="evaluated")
    ax.plot([r["params"] / 1e6 for r in front], [r["loss"] for r in front], "o-", color="tab:blue", label="Pareto front")
    ax.scatter([best["params"] / 1e6], [best["loss"]], s=90, marker="*", color="tab:red", zorder=3,
               label=f"best: {best['describe']}")
    if max_params is not None:
        ax.axvline(max_params / 1e6, color="tab:red", linestyle="--", linewidth=1, label="parameter budget")
    ax.set_xlabel("parameters (M, official count)")
    ax.set_ylabel("distillation validation loss")
    ax.set_title(f"subnet search: {len(records)} subnets")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


class _Searcher:
    """One run: feasibility, evaluation with the history cache, and the two algorithms."""

    def __init__(self, model: LightHuBERT, fitness: Fitness, cfg: SearchConfig, history: Path,
                 cached: dict[SubnetConfig, dict], bar: Progress) -> None:
        self.model, self.fitness, self.cfg = model, fitness, cfg
        self.space = model.space
        self.codec = GenomeCodec(self.space)
        self.rng = random.Random(cfg.seed)
        self.history, self.cached, self.bar = history, cached, bar
        self.records: dict[SubnetConfig, dict] = {}  # evaluated in this run or found in the history
        # latencies of older histories were of the sliced supernet: measured again
        self.latency: dict[SubnetConfig, float] = {s: r["latency_ms"] for s, r in cached.items()
                                                   if "latency_ms" in r and r.get("latency_of") == LATENCY_OF}
        self.new = 0
        self.measure = cfg.measure_latency or cfg.max_latency_ms is not None

    def latency_ms(self, sub: SubnetConfig) -> float:
        if sub not in self.latency:
            self.latency[sub] = measure_latency(self.model, sub, self.cfg.latency_runs)
        return self.latency[sub]

    def feasible(self, g: Genome) -> bool:
        sub, cfg = self.codec.decode(g), self.cfg
        if cfg.max_params is not None and count_subnet_params(self.space, sub) > cfg.max_params:
            return False
        if cfg.max_macs is not None and count_macs(self.space.model_config(sub)) > cfg.max_macs:
            return False
        return cfg.max_latency_ms is None or self.latency_ms(sub) <= cfg.max_latency_ms

    def repair(self, g: Genome) -> Genome:
        """Lowers random active genes one step at a time until `g` is within the budgets."""
        while not self.feasible(g):
            smaller = self.codec.shrink(g, self.rng)
            if smaller is None:  # only a latency budget can fail here (min checked up front); noise
                raise ValueError(f"max_latency_ms {self.cfg.max_latency_ms} is below the measured latency of the "
                                 f"exported min subnet ({self.latency_ms(self.codec.decode(g)):.1f} ms for 1 s of audio)")
            g = smaller
        return g

    def sample(self, tries: int = 100) -> Genome:
        """A uniform feasible genome by rejection; repaired after `tries` rejections."""
        for _ in range(tries):
            g = self.codec.random(self.rng)
            if self.feasible(g):
                return g
        return self.repair(g)

    def evaluate(self, g: Genome, generation: int) -> dict:
        sub = self.codec.decode(g)
        if sub not in self.records:
            if sub in self.cached:
                rec = self.cached[sub]
                if self.measure and rec.get("latency_of") != LATENCY_OF:  # an older history's sliced-supernet figure
                    rec = {**rec, "latency_ms": round(self.latency_ms(sub), 3), "latency_of": LATENCY_OF}
                self.fitness.cache[sub] = rec["loss"]
            else:
                rec = {"generation": generation, "subnet": sub.to_official(self.space.model.head_dim),
                       "describe": sub.describe(), "params": count_subnet_params(self.space, sub),
                       "macs": count_macs(self.space.model_config(sub))}
                if self.measure:
                    rec["latency_ms"], rec["latency_of"] = round(self.latency_ms(sub), 3), LATENCY_OF
                rec["loss"] = self.fitness(sub)
                with open(self.history, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                self.new += 1
            self.records[sub] = rec
        self.bar.update(1)
        best = min(r["loss"] for r in self.records.values())
        self.bar.set_postfix(best_loss=f"{best:.4f}", evaluated=len(self.records))
        return self.records[sub]

    def unseen_sample(self) -> Genome:
        """A feasible sample not evaluated yet, redrawn up to 100 times (then the last draw)."""
        for _ in range(100):
            g = self.sample()
            if self.codec.decode(g) not in self.records:
                break
        return g

    def run_random(self) -> None:
        """`population * generations` samples, redrawn when already evaluated."""
        for gen in range(self.cfg.generations):
            for _ in range(self.cfg.population):
                self.evaluate(self.unseen_sample(), gen)

    def run_evolution(self) -> None:
        """`population` random subnets, then per generation `population` new children of the
        best `parent_fraction` evaluated so far (crossover and/or mutation, repaired into the
        budgets); a child already evaluated is redrawn, up to 100 times and then as a random
        sample (the parents' neighbourhood is used up), so evolution spends as many distinct
        evaluations as random search."""
        cfg, codec = self.cfg, self.codec
        losses = {g: self.evaluate(g, 0)["loss"] for g in (self.unseen_sample() for _ in range(cfg.population))}
        keep = max(1, round(cfg.parent_fraction * cfg.population))
        for gen in range(1, cfg.generations):
            parents = sorted(losses, key=lambda g: (losses[g], g))[:keep]
            for _ in range(cfg.population):
                for _ in range(100):
                    if len(parents) > 1 and self.rng.random() < cfg.crossover:
                        a, b = self.rng.sample(parents, 2)
                        child = codec.crossover(a, b, self.rng)
                    else:
                        child = self.rng.choice(parents)
                    child = self.repair(codec.mutate(child, self.rng, cfg.mutation_prob))
                    if codec.decode(child) not in self.records:
                        break
                else:
                    child = self.unseen_sample()
                losses[child] = self.evaluate(child, gen)["loss"]


def _read_history(path: Path, space: SearchSpace) -> dict[SubnetConfig, dict]:
    cached: dict[SubnetConfig, dict] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            sub = SubnetConfig.from_official(rec["subnet"], space.model.head_dim)
            float(rec["loss"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{n}: not a search history record ({e})") from None
        space.validate(sub)
        cached[sub] = rec
    return cached


def search(model: LightHuBERT, teacher: HuBERT, valid_tsv: Union[str, Path], out_dir: Union[str, Path],
           cfg: SearchConfig, resume: bool = False, progress: bool = True) -> SearchResult:
    """Searches `model`'s space for the lowest distillation validation loss within the budgets.

    Writes `out_dir/search.json` (settings), `history.jsonl` (one line per evaluated subnet),
    `best.json` (the official subnet dict) and `pareto.json` (params-vs-loss front).

    Args:
        resume: reuse the losses in an existing `history.jsonl`; the seeded search replays the
            same candidates, so an interrupted run continues where it stopped.

    Raises:
        ValueError: bad settings, a budget no subnet meets, an existing history without
            `resume`, or a history written with other fitness settings.
    """
    if not isinstance(model, LightHuBERT):
        raise ValueError("search needs a supernet (LightHuBERT) checkpoint, got a fixed-shape model")
    space = model.space
    check_budgets(space, cfg)
    device = distributed.resolve_device(cfg.device)
    model.to(device).eval()
    teacher = teacher.to(device).eval().requires_grad_(False)
    teacher.encoder.layerdrop = 0.0
    fitness = Fitness(model, teacher, valid_tsv, cfg)  # checks the settings against the teacher: before any file
    out = Path(out_dir)
    history, settings = out / "history.jsonl", out / "search.json"
    meta = {"space": space.to_dict(), "valid": str(valid_tsv), "fitness": cfg.fitness_key()}
    cached: dict[SubnetConfig, dict] = {}
    if history.exists() and history.stat().st_size:
        if not resume:
            raise ValueError(f"{history} already exists; pass --resume to continue that search or choose another --out")
        if settings.exists():
            old = json.loads(settings.read_text())
            diff = sorted(k for k in meta["fitness"] if old.get("fitness", {}).get(k) != meta["fitness"][k])
            if diff or old.get("space") != meta["space"]:
                raise ValueError(f"{history} was written with other settings ({', '.join(diff) or 'space'}); "
                                 "its losses cannot be reused, choose another --out")
        cached = _read_history(history, space)
        log.info("resuming: %d evaluations in %s", len(cached), history)
    out.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps({**meta, "config": dataclasses.asdict(cfg)}, indent=2))
    total = cfg.population * cfg.generations
    with progress_bar(total=total, disable=not progress, unit="subnet", desc=cfg.algorithm) as bar:
        s = _Searcher(model, fitness, cfg, history, cached, bar)
        if cfg.max_latency_ms is not None and s.latency_ms(space.min()) > cfg.max_latency_ms:
            raise ValueError(f"max_latency_ms {cfg.max_latency_ms} is below the measured latency of the exported min "
                             f"subnet ({s.latency_ms(space.min()):.1f} ms for 1 s of audio on {device})")
        s.run_evolution() if cfg.algorithm == "evolution" else s.run_random()

    records = list(s.records.values())
    best_rec = min(records, key=lambda r: (r["loss"], r["params"]))
    best = SubnetConfig.from_official(best_rec["subnet"], space.model.head_dim)
    front = pareto_front(records)
    (out / "best.json").write_text(json.dumps(best.to_official(space.model.head_dim), indent=2) + "\n")
    (out / "pareto.json").write_text(json.dumps(front, indent=2) + "\n")
    plot_pareto(records, front, best_rec, cfg.max_params, out / "pareto.png")
    log.info("best %s: loss %.5f, %s parameters", best.describe(), best_rec["loss"], f"{best_rec['params']:,}")
    return SearchResult(best, best_rec["loss"], len(records), s.new, records, front)
