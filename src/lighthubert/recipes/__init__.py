"""Training recipes, one file each, behind `trainer.Recipe`; and a run's settings (`RunConfig`).

- `lighthubert`: LightHuBERT's stage 1 and stage 2 (`recipes/lighthubert.py`)
- `distilhubert`: DistilHuBERT (`recipes/distilhubert.py`)
- `hubert`: HuBERT pre-training of a teacher from MFCC units (`recipes/hubert.py`)
- `ctc`: CTC fine-tuning for speech recognition (`recipes/ctc.py`)

`recipes/frozen.py` freezes what a student never trains, before DDP wraps it.

A run's settings are the recipe's name (`method`), the trainer's `TrainConfig` and the
recipe's own settings dataclass. In YAML they are either sectioned
(`{method, trainer: {...}, recipe: {...}}`, what `config.yaml` and `--print-config` write) or
flat (`{method, lr, stage, ...}`, each key found in whichever of the two it names: no key is
in both). `--set key=value` overrides work the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from .. import settings
from ..trainer import Recipe, TrainConfig
from .ctc import CTCFinetuneConfig, CTCRecipe
from .distilhubert import DistilHuBERTConfig, DistilHuBERTRecipe
from .hubert import HuBERTPretrainConfig, HuBERTRecipe
from .lighthubert import LightHuBERTDistillConfig, LightHuBERTRecipe

RECIPES: dict[str, type] = {r.name: r for r in (LightHuBERTRecipe, DistilHuBERTRecipe, HuBERTRecipe, CTCRecipe)}

__all__ = ["RECIPES", "RunConfig", "CTCFinetuneConfig", "CTCRecipe", "DistilHuBERTConfig", "DistilHuBERTRecipe", "HuBERTPretrainConfig", "HuBERTRecipe",
           "LightHuBERTDistillConfig", "LightHuBERTRecipe"]


@dataclass
class RunConfig:
    """Every setting of one training run: which recipe, the trainer's settings, the recipe's."""

    method: str  # a key of RECIPES
    train: TrainConfig
    recipe: Any  # RECIPES[method].Settings

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        """Reads a sectioned or flat settings dict; the recipe's `trainer_defaults` fill the
        trainer keys it leaves out.

        Raises:
            ValueError: an unknown method or key (named, with the known ones), a key given
                twice, or a value of the wrong type or range.
        """
        d = dict(d)
        method = d.pop("method", "lighthubert")
        if method not in RECIPES:
            raise ValueError(f"method must be one of {list(RECIPES)}, got {method!r}")
        recipe = RECIPES[method]
        sections = {"trainer": d.pop("trainer", None) or {}, "recipe": d.pop("recipe", None) or {}}
        for name, section in sections.items():
            if not isinstance(section, dict):
                raise ValueError(f"the {name} section must be a mapping of settings, got {section!r}")
        trainer_keys, recipe_keys = set(settings.field_types(TrainConfig)), set(settings.field_types(recipe.Settings))
        for key, value in d.items():
            section = "trainer" if key in trainer_keys else "recipe" if key in recipe_keys else None
            if section is None:
                raise ValueError(f"unknown setting {key!r} for method {method}; trainer settings: "
                                 f"{', '.join(sorted(trainer_keys))}; {method} settings: {', '.join(sorted(recipe_keys))}")
            if key in sections[section]:
                raise ValueError(f"setting {key!r} is given twice (flat and in the {section} section)")
            sections[section][key] = value
        train = settings.from_dict(TrainConfig, {**recipe.trainer_defaults, **sections["trainer"]}, "trainer")
        return cls(method, train, settings.from_dict(recipe.Settings, sections["recipe"], method))

    @classmethod
    def from_yaml(cls, path: Union[str, Path, None], overrides: Sequence[str] = (), **fixed: Any) -> "RunConfig":
        """A YAML file (or nothing: the defaults), then `key=value` overrides (values read as
        YAML), then `fixed` keys (e.g. a CLI's `--stage`), each replacing the one before."""
        d = settings.read_mapping(path) if path else {}
        for key, value in {**settings.parse_overrides(overrides), **fixed}.items():
            _set(d, key, value)
        return cls.from_dict(d)

    def asdict(self) -> dict[str, Any]:
        return {"method": self.method, "trainer": dataclasses.asdict(self.train), "recipe": dataclasses.asdict(self.recipe)}

    def to_yaml(self) -> str:
        return settings.dump(self.asdict())

    def build(self, teacher: Optional[str] = None, init: Optional[str] = None) -> Recipe:
        """The recipe object for this run (loads the teacher, checks the settings against it),
        with the files it was built from as its `inputs`: their contents are part of the run's
        identity (`--resume` refuses others)."""
        recipe = RECIPES[self.method](self.recipe, teacher=teacher, init=init, seed=self.train.seed)
        recipe.inputs = {"teacher": teacher, "init": init}
        return recipe


def _set(d: dict[str, Any], key: str, value: Any) -> None:
    """Sets `key` in a flat or sectioned settings dict, replacing it wherever it already is."""
    if key == "method":
        d["method"] = value
        return
    for section in ("trainer", "recipe"):
        if isinstance(d.get(section), dict) and key in d[section]:
            d[section][key] = value
            return
    d[key] = value
