"""Recipes: named sets of training choices, expanded to the options a run records.

`paper` is section 3 of the Q-AGREL paper as written (every option at its
default). `brainprop` is the authors' later code (isapome/BrainProp, 2020:
`get_architecture.py`, `main.py`), which trains the same conv and loccon nets
with choices the Q-AGREL paper does not state. A recipe is only a starting
point: options given beside it override it, and a run records the resolved
values, never the name (so two spellings of one run are one run).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Mapping

from qagrel_cli.core.config import Arch, QagrelError, TrainConfig


class Recipe(str, Enum):
    paper = "paper"  # section 3 as written: every option's default
    brainprop = "brainprop"  # the authors' later code

# The authors' later code, option by option (the values for conv nets; `_BRAINPROP_BY_ARCH` below
# holds where loccon and fc differ). Q-AGREL and Error-BP get the same values: that code trains both with
# plain SGD (our default) at one alpha. epsilon 0.02 with a Boltzmann draw is already the paper's.
_BRAINPROP: dict[str, Any] = {
    "batch_norm": True,  # after the ReLU of each conv/loccon layer
    "conv_dropout": 0.3,  # after the strided conv (not the paper's 0.8)
    "padding": "same",
    "init": "normal",  # N(0, 0.005^2): init_sd resolves to config.NORMAL_INIT_SD
    "batch_size": 128,
    "lr": 0.1,
    "lr_halve_every": 100,
    "patience": 45,
    "min_delta": 0.001,
    "validation": "test",  # `validation_data=(test_images, test_labels)`
}
_BRAINPROP_BY_ARCH: dict[Arch, dict[str, Any]] = {
    Arch.loccon: {"padding": "valid", "batch_size": 32},
    # The dense net: no conv layers to normalise, pad or drop out.
    Arch.fc: {"batch_norm": None, "conv_dropout": None, "padding": None},
}
RECIPES = tuple(r.value for r in Recipe)
# Settings a recipe may set: the options of `qagrel train` that take a recipe's value when not given.
RECIPE_FIELDS = tuple(_BRAINPROP)
# The settings a run's recipe label (`recipe_label`) names: the recipe's, and the SD its normal init resolves to.
LABELLED_FIELDS = (*RECIPE_FIELDS, "init_sd")


def recipe_options(name: str, arch: Arch | str) -> dict[str, Any]:
    """The options recipe `name` gives a run of `arch` (empty for `paper`: every option's default)."""
    if name not in RECIPES:
        raise QagrelError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    if name == "paper":
        return {}
    options = {**_BRAINPROP, **_BRAINPROP_BY_ARCH.get(Arch(arch), {})}
    return {key: value for key, value in options.items() if value is not None}


def _departures(config: TrainConfig, name: str) -> list[str]:
    """The recipe settings in which `config` departs from recipe `name` for its row, e.g. ['padding valid']."""
    values = config.to_dict()
    recipe = TrainConfig(**{**recipe_options(name, config.arch), "arch": config.arch, "rule": config.rule,
                            "dataset": config.dataset, "fc": config.fc}).to_dict()
    return [f"{field} {values[field]}" for field in LABELLED_FIELDS
            if values[field] != recipe[field] and not (field == "init_sd" and values["init"] != "normal")]


def follows_brainprop(config: TrainConfig) -> bool:
    """Whether `config` is a run of the authors' later recipe, whole or with components taken back to the
    paper's: it departs from that recipe in fewer settings than from the paper's text."""
    return len(_departures(config, Recipe.brainprop.value)) < len(_departures(config, Recipe.paper.value))


def recipe_label(config: TrainConfig) -> str:
    """The recipe a run follows, for reports: the recipe it departs from least ('paper' or 'brainprop'), and
    after 'but' the settings in which it departs from that one (e.g. 'brainprop but batch_norm False'), so
    the label alone gives every recipe setting of the run."""
    nearest = Recipe.brainprop.value if follows_brainprop(config) else Recipe.paper.value
    departures = _departures(config, nearest)
    return nearest + (f" but {', '.join(departures)}" if departures else "")


def with_recipe(options: Mapping[str, Any]) -> dict[str, Any]:
    """TrainConfig options from `options`, which may name a `recipe`: the recipe's values, then every option
    given beside it (which wins). Options without a recipe come back unchanged."""
    options = dict(options)
    name = options.pop("recipe", None)
    if name is None:
        return options
    arch = options.get("arch", Arch.conv.value)
    try:
        arch = Arch(arch)
    except ValueError:
        return options  # TrainConfig names the bad architecture
    return {**recipe_options(str(name), arch), **options}


__all__ = ["Recipe", "RECIPES", "RECIPE_FIELDS", "recipe_options", "with_recipe", "follows_brainprop", "recipe_label"]
