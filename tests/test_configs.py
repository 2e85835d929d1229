"""The paper-scale configs (configs/paper/*.yaml) load and run on the CPU.

Each runs one step at its own full size (the 768-wide, 12-layer supernet for LightHuBERT) on
the generated corpus with the tiny teacher; only what a CPU test cannot afford changes: the
batch (1 s of audio), the workers, the teacher's depth-dependent targets, and fp16 on the CPU
(`cpu_autocast`). Slow: four full-size checkpoints of 1.1 GB are written.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import lighthubert
from lighthubert.cli import main
from lighthubert.recipes import RunConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "paper"
SMALL = ["--set=max_steps=1", "--set=save_every=1", "--set=max_batch_samples=16000", "--set=max_sample_size=16000",
         "--set=min_sample_size=4000", "--set=num_workers=0", "--set=cpu_autocast=true"]


def test_every_config_reads_with_its_stated_values():
    stage1 = RunConfig.from_yaml(CONFIGS / "stage1.yaml")
    assert (stage1.recipe.target_layers, stage1.recipe.layerdrop, stage1.train.precision, stage1.train.max_steps) == \
        (8, 0.05, "fp16", 400_000)
    for space in ("base", "small"):
        stage2 = RunConfig.from_yaml(CONFIGS / f"stage2-{space}.yaml")
        assert (stage2.recipe.stage, stage2.recipe.space) == (2, space)
        assert stage2.train == stage1.train  # stage 2 keeps stage 1's optimisation
    assert RunConfig.from_yaml(CONFIGS / "distilhubert.yaml").recipe.distil_targets == [4, 8, 12]
    assert RunConfig.from_yaml(CONFIGS / "finetune-10h.yaml").recipe.freeze_encoder_steps == 10_000
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == ["distilhubert.yaml", "finetune-10h.yaml", "stage1.yaml",
                                                              "stage2-base.yaml", "stage2-small.yaml"]


@pytest.mark.slow
def test_paper_configs_run_a_step_at_full_size(train_setup, tmp_path, capsys):
    data = ["--train", train_setup / "train.tsv", "--valid", train_setup / "valid.tsv"]
    teacher = ["--teacher", train_setup / "teacher"]

    def run(command: str, config: str, out: str, *extra: object) -> Path:
        assert main([str(a) for a in (command, "--config", CONFIGS / config, *data, "--out", tmp_path / out, *SMALL,
                                      *extra)]) == 0
        return tmp_path / out / "step-1.pt"

    refused = main([str(a) for a in ("distill", "--config", CONFIGS / "stage1.yaml", *data, "--out", tmp_path / "refused",
                                     *SMALL, *teacher, "--set=target_layers=2")])
    assert refused == 2 and "shares no tensor shape with the teacher" in capsys.readouterr().err  # the tiny teacher
    stage1 = run("distill", "stage1.yaml", "s1", *teacher, "--set=target_layers=2", "--set=init_from_teacher=false")
    assert lighthubert.load(stage1).cfg.embed_dim == 768
    for space in ("base", "small"):
        supernet = lighthubert.load(run("distill", f"stage2-{space}.yaml", space, *teacher, "--init", stage1,
                                        "--set=target_layers=2"))
        assert supernet.space.name == space and supernet.subnet == supernet.space.default
    run("distill", "distilhubert.yaml", "distil", *teacher, "--set=distil_targets=[1,2,3]")
    tuned = lighthubert.load(run("finetune", "finetune-10h.yaml", "asr", "--init", tmp_path / "small" / "step-1.pt"))
    assert tuned.cfg.embed_dim == 384  # the small space's default subnet, fine-tuned
