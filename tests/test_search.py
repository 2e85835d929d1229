"""Subnet search on the tiny training setup: genome, budgets, determinism, resume, CLI."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch

from lighthubert import atomic, checkpoint, formats, safeload
from lighthubert.cli import main
from lighthubert.search import Fitness, GenomeCodec, SearchConfig, check_budgets, pareto_front, search, training_fitness
from lighthubert.space import SearchSpace, SubnetConfig, count_macs, count_subnet_params
from lighthubert.supernet import LightHuBERT
from lighthubert.trainer import Trainer
from lighthubert.recipes import LightHuBERTRecipe, RunConfig

from conftest import TRAIN

FAST = dict(population=4, generations=3, valid_batches=2, max_batch_samples=64000, max_sample_size=8000,
            min_sample_size=4000, target_layers=2, device="cpu")


@pytest.fixture(scope="module")
def setup(train_setup):
    """(supernet, teacher, space): the supernet's head predicts the teacher's width, as LightHuBERTRecipe sets."""
    teacher = checkpoint.load_model(train_setup / "teacher")
    space = SearchSpace.from_yaml(train_setup / "space.yaml")
    space = dataclasses.replace(space, model=dataclasses.replace(space.model, pred_dim=teacher.cfg.embed_dim))
    torch.manual_seed(0)
    return LightHuBERT(space).eval(), teacher, space


def _run(setup, train_setup, out, resume=False, **kw):
    model, teacher, _ = setup
    return search(model, teacher, train_setup / "valid.tsv", out, SearchConfig(**{**FAST, **kw}), resume=resume,
                  progress=False)


def test_genome_ops_stay_inside_space(tiny_space):
    codec, rng = GenomeCodec(tiny_space), random.Random(0)
    for _ in range(200):
        a, b = codec.random(rng), codec.random(rng)
        for g in (a, codec.mutate(a, rng, 0.5), codec.crossover(a, b, rng), codec.shrink(a, rng) or a):
            assert len(g) == 2 * max(tiny_space.depths) + 2
            tiny_space.validate(codec.decode(g))
    assert codec.decode(codec.minimum()) == tiny_space.min()
    assert codec.shrink(codec.minimum(), rng) is None


def test_config_errors_name_the_field():
    for kw, name in ((dict(algorithm="grid"), "algorithm"), (dict(population=1), "population"),
                     (dict(mutation_prob=2), "mutation_prob"), (dict(max_params=0), "max_params"),
                     (dict(parent_fraction=0), "parent_fraction")):
        with pytest.raises(ValueError, match=name):
            SearchConfig(**kw)


def test_impossible_budget_names_the_smallest_subnet():
    with pytest.raises(ValueError, match=r"max_params 1,000,000 is below the smallest subnet of the base space "
                                         r"\(41,249,536 parameters, the min subnet\)"):
        check_budgets(SearchSpace.base(), SearchConfig(max_params=1_000_000))
    with pytest.raises(ValueError, match="max_macs 1 is below .* MACs per 1 s of audio, the min subnet"):
        check_budgets(SearchSpace.base(), SearchConfig(max_macs=1))


def test_budgets_respected_and_outputs_valid(setup, train_setup, tmp_path):
    _, _, space = setup
    mid = count_subnet_params(space, space.default)
    macs = count_macs(space.model_config(space.default))
    result = _run(setup, train_setup, tmp_path, max_params=mid, max_macs=macs, measure_latency=True, latency_runs=1)
    lines = [json.loads(x) for x in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert len(lines) == result.evaluations == result.new_evaluations > 1
    for rec in lines:
        sub = SubnetConfig.from_official(rec["subnet"], space.model.head_dim)
        space.validate(sub)
        assert rec["params"] == count_subnet_params(space, sub) <= mid
        assert rec["macs"] <= macs and rec["latency_ms"] > 0 and rec["loss"] > 0
    best = SubnetConfig.parse((tmp_path / "best.json").read_text(), space.model.head_dim)
    space.validate(best)
    assert best == result.best and result.best_loss == min(r["loss"] for r in lines)
    front = json.loads((tmp_path / "pareto.json").read_text())
    assert front == pareto_front(lines) and front[-1]["loss"] == result.best_loss
    from matplotlib.image import imread

    png = imread(tmp_path / "pareto.png")  # a real picture: 6.4 x 4.2 in at 120 dpi, not blank
    assert png.shape[:2] == (504, 768) and png[..., :3].std() > 0.05


def test_latency_budget_times_the_exported_model_selects_and_refuses(setup, train_setup, tmp_path, monkeypatch):
    """Latency is that of each subnet's exported dense model (never the sliced supernet). A
    timer that reads the model it is given (its MACs, in ms) makes the budget deterministic
    through the real search loop: over-budget candidates are timed and refused, never
    evaluated; a budget below the exported min subnet is an error naming its latency."""
    import lighthubert.search as search_module
    from lighthubert.model import HuBERT

    _, _, space = setup
    timed: list[int] = []

    def timer(model, runs=5, seconds=1.0):
        assert type(model) is HuBERT and not model.training, "latency must be timed on the exported dense model"
        timed.append(count_macs(model.cfg))
        return count_macs(model.cfg) / 1e6

    monkeypatch.setattr(search_module, "time_forward", timer)

    def ms(sub):
        return count_macs(space.model_config(sub)) / 1e6

    budget = (ms(space.min()) + ms(space.max())) / 2
    result = _run(setup, train_setup, tmp_path / "a", max_latency_ms=budget)
    lines = [json.loads(x) for x in (tmp_path / "a" / "history.jsonl").read_text().splitlines()]
    assert len(lines) == result.evaluations > 1
    for rec in lines:
        sub = SubnetConfig.from_official(rec["subnet"], space.model.head_dim)
        assert rec["latency_of"] == "exported dense model" and rec["latency_ms"] == round(ms(sub), 3) <= budget
    refused = [m for m in timed if m / 1e6 > budget]
    assert refused and not any(r["macs"] in refused for r in lines)  # timed, over budget, never evaluated
    assert ms(result.best) <= budget

    low = ms(space.min())
    with pytest.raises(ValueError, match=rf"below the measured latency of the exported min subnet \({low:.1f} ms"):
        _run(setup, train_setup, tmp_path / "b", max_latency_ms=low * 0.99)


def test_evolution_deterministic_and_resume_reuses_history(setup, train_setup, tmp_path):
    a = _run(setup, train_setup, tmp_path / "a", seed=3)
    b = _run(setup, train_setup, tmp_path / "b", seed=3)
    assert (tmp_path / "a" / "history.jsonl").read_text() == (tmp_path / "b" / "history.jsonl").read_text()
    assert a.best == b.best
    with pytest.raises(ValueError, match="--resume"):
        _run(setup, train_setup, tmp_path / "a", seed=3)
    with pytest.raises(ValueError, match="other settings"):
        _run(setup, train_setup, tmp_path / "a", resume=True, seed=4)
    # an interrupted run (history cut after 3 lines) continues: 3 reused, the rest evaluated
    lines = (tmp_path / "b" / "history.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "b" / "history.jsonl").write_text("".join(lines[:3]))
    c = _run(setup, train_setup, tmp_path / "b", resume=True, seed=3)
    assert c.new_evaluations == a.evaluations - 3 and c.best == a.best
    assert (tmp_path / "b" / "history.jsonl").read_text() == (tmp_path / "a" / "history.jsonl").read_text()
    again = _run(setup, train_setup, tmp_path / "b", resume=True, seed=3)
    assert again.new_evaluations == 0 and again.best == a.best


def test_evolution_explores_when_children_repeat(setup, train_setup, tmp_path):
    # No crossover and no mutation: every child copies a parent, so every child is redrawn as a random sample.
    evo = _run(setup, train_setup, tmp_path / "evo", seed=1, population=4, generations=3, mutation_prob=0.0, crossover=0.0)
    assert evo.evaluations == 12 and len(set(r["describe"] for r in evo.history)) == 12


def test_evolution_vs_random_same_evaluations(setup, train_setup, tmp_path):
    evo = _run(setup, train_setup, tmp_path / "evo", seed=1, population=6, generations=4)
    rnd = _run(setup, train_setup, tmp_path / "rnd", seed=1, algorithm="random", population=6, generations=4)
    assert evo.evaluations == rnd.evaluations == 24  # children already evaluated are redrawn
    print(f"evolution best {evo.best_loss:.5f} ({evo.evaluations} subnets), "
          f"random best {rnd.best_loss:.5f} ({rnd.evaluations} subnets)")
    assert evo.best_loss <= rnd.best_loss


def test_cli_search(setup, train_setup, tmp_path, capsys):
    model, _, space = setup
    ckpt = tmp_path / "supernet.pt"
    atomic.save_file(formats.official.checkpoint(model), ckpt)
    base = ["search", "--checkpoint", str(ckpt), "--teacher", str(train_setup / "teacher"), "--valid",
            str(train_setup / "valid.tsv"), "--out", str(tmp_path / "s"), "--target-layers", "2", "--population", "3",
            "--generations", "2", "--valid-batches", "1", "--device", "cpu", "--quiet"]
    assert main(base + ["--max-params", "1000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lighthubert: error: max_params 1,000 is below the smallest subnet")
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "best subnet" in out and "loss" in out and "params" in out
    space.validate(SubnetConfig.parse((tmp_path / "s" / "best.json").read_text(), space.model.head_dim))
    assert main(base) == 2 and "--resume" in capsys.readouterr().err
    assert main(base + ["--resume"]) == 0


def test_a_finished_search_run_again_reads_no_audio(demo_like_search, tmp_path, monkeypatch):
    """Every evaluation is in the history, so the rerun (the demo's, each time it is run
    again) neither loads the validation audio nor runs the teacher."""
    ckpt, teacher_path, valid = demo_like_search
    model, teacher = checkpoint.load_model(ckpt), checkpoint.load_model(teacher_path)
    cfg = SearchConfig(population=3, generations=2, target_layers=1, device="cpu", seed=0)
    calls = []
    real = LightHuBERTRecipe.targets
    monkeypatch.setattr(LightHuBERTRecipe, "targets", lambda self, *a: calls.append(1) or real(self, *a))
    first = search(model, teacher, valid, tmp_path / "s", cfg, progress=False)
    assert calls and first.new_evaluations == 6
    calls.clear()
    again = search(model, teacher, valid, tmp_path / "s", cfg, resume=True, progress=False)
    assert calls == [] and again.new_evaluations == 0
    assert (again.best, again.best_loss, again.history) == (first.best, first.best_loss, first.history)


def test_search_takes_its_fitness_from_the_supernets_training_run(train_setup, tmp_path, capsys):
    """No fitness flag: the search scores subnets with the settings that trained the supernet,
    so its loss of a subnet is the run's own validation loss of it; a flag overrides one
    setting, and a start that fails leaves no folder behind."""
    settings = {**TRAIN, "space": str(train_setup / "space.yaml"), "mask_length": 3, "max_sample_size": 12000,
                "valid_every": 2, "save_every": 2, "seed": 5}
    for stage, init in ((1, None), (2, tmp_path / "s1" / "step-2.pt")):
        cfg = RunConfig.from_dict({**settings, "stage": stage, "max_steps": 2})
        recipe = cfg.build(teacher=str(train_setup / "teacher"), init=str(init) if init else None)
        Trainer(recipe, cfg.train, str(train_setup / "train.tsv"), str(train_setup / "valid.tsv"), str(tmp_path / f"s{stage}")).fit()
    ckpt = tmp_path / "s2" / "step-2.pt"
    fitness = training_fitness(safeload.load_file(ckpt))
    assert fitness == {"target_layers": 2, "instance_norm": True, "mask_prob": 0.65, "mask_length": 3, "loss_on": "masked",
                       "max_batch_samples": 64000, "max_sample_size": 12000, "min_sample_size": 4000}
    logged = [json.loads(line) for line in (tmp_path / "s2" / "log.jsonl").read_text().splitlines()]
    trained = [r["loss"] for r in logged if r["type"] == "valid"][-1]
    model, teacher = checkpoint.load_model(ckpt), checkpoint.load_model(train_setup / "teacher")
    score = Fitness(model, teacher, train_setup / "valid.tsv", SearchConfig(**fitness, seed=5, device="cpu"))
    assert score(model.space.default) == pytest.approx(trained["default"], rel=1e-5)
    assert score(model.space.min()) == pytest.approx(trained["min"], rel=1e-5)

    base = ["search", "--checkpoint", str(ckpt), "--teacher", str(train_setup / "teacher"), "--valid",
            str(train_setup / "valid.tsv"), "--population", "2", "--generations", "1", "--device", "cpu", "--quiet"]
    capsys.readouterr()
    assert main(base + ["--out", str(tmp_path / "a")]) == 0  # no --target-layers: the run's 2, not the default 8
    said = capsys.readouterr().out.splitlines()[0]
    assert said.startswith("fitness settings: ") and "mask_length 3 (training run)" in said and "target_layers 2 (training run)" in said
    saved = json.loads((tmp_path / "a" / "search.json").read_text())["fitness"]
    assert (saved["mask_length"], saved["max_sample_size"]) == (3, 12000)
    assert main(base + ["--out", str(tmp_path / "b"), "--mask-length", "4"]) == 0
    assert json.loads((tmp_path / "b" / "search.json").read_text())["fitness"]["mask_length"] == 4
    assert main(base + ["--out", str(tmp_path / "c"), "--target-layers", "9"]) == 2
    assert not (tmp_path / "c").exists()


# -- an elastic conv front end (issue 14) -------------------------------------------------------
def test_genome_carries_the_front_end(tiny_space):
    """One gene per conv group after the depth gene; the fixed space's genome is unchanged."""
    fe = dataclasses.replace(tiny_space, conv_dims=(16, 24, 32), conv_groups=((0,), (1, 2)))
    codec, rng = GenomeCodec(fe), random.Random(0)
    layers = max(fe.depths)
    assert len(codec.sizes) == 2 * layers + 2 + 2 == len(GenomeCodec(tiny_space).sizes) + 2
    seen = set()
    for _ in range(200):
        a, b = codec.random(rng), codec.random(rng)
        for g in (a, codec.mutate(a, rng, 0.5), codec.crossover(a, b, rng), codec.shrink(a, rng) or a):
            sub = codec.decode(g)
            fe.validate(sub)
            assert sub.conv_dim == fe.conv_widths([fe.conv_dims[i] for i in g[-2:]])
            seen.add(sub.conv_dim)
    assert len(seen) == 9
    assert codec.decode(codec.minimum()) == fe.min()
    top = codec.minimum()[:-2] + (2, 2)
    assert codec.shrink(top, rng)[-2:] in ((1, 2), (2, 1))  # front-end genes are active: a budget can lower them


def test_a_mac_budget_reaches_the_front_end(setup, train_setup, tmp_path):
    """Below the fixed-front-end min subnet's MACs only narrower front ends are feasible."""
    model, teacher, space = setup
    fe = dataclasses.replace(space, conv_dims=(8, 16, 32))
    limit = count_macs(space.model_config(space.min())) - 1
    with pytest.raises(ValueError, match="max_macs"):
        check_budgets(space, SearchConfig(max_macs=limit))
    check_budgets(fe, SearchConfig(max_macs=limit))
    supernet = LightHuBERT(fe).eval()
    supernet.load_state_dict(model.state_dict())
    result = search(supernet, teacher, train_setup / "valid.tsv", tmp_path, SearchConfig(**{**FAST, "max_macs": limit}),
                    progress=False)
    for rec in result.history:
        sub = SubnetConfig.from_official(rec["subnet"], space.model.head_dim)
        fe.validate(sub)
        assert rec["macs"] == count_macs(fe.model_config(sub)) <= limit and min(sub.conv_dim) < 32
    assert result.best.conv_dim and " c" in result.best.describe()
