"""Sweep files: a YAML grid of training runs, read, validated and expanded. Imports nothing of execution.

A sweep file lists TrainConfig fields under `grid:`; lists are swept, scalars
are fixed. `recipe:` (core/recipes.py) may stand among them: each run takes its
recipe's values for the options the grid does not give. `seeds: 10` is seeds 0-9 (or a list, or '0-4,7'). Each `include:`
entry is a copy of the grid with some keys replaced; `exclude:` entries drop
every run that matches all their keys. `pack: K` trains up to K runs that
differ only in seed as one seed pack (qagrel_cli/core/packs.py). Runs live in
`<results>/<sweep-name>/<run-id>/`, named by their config, so a run is the same
run in every sweep that contains it and is never trained twice.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from qagrel_cli.core.config import CONFIG_FIELDS, QagrelError, TrainConfig, parse_seeds
from qagrel_cli.core.recipes import recipe_options, with_recipe

SWEEP_KEYS = ("name", "grid", "seeds", "pack", "include", "exclude")
# The sweep file as it was run, kept in its results folder so that `qagrel status`
# knows the runs that have not started yet. '_' keeps it out of pd.read_parquet.
SWEEP_FILE = "_sweep.yaml"

class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` as a string (it wants `1.0e-3`); accept the form everyone writes."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


@dataclass(frozen=True)
class Sweep:
    """A validated sweep file: its name and every run it expands to, in run order."""

    name: str
    path: Path
    text: str
    configs: tuple[TrainConfig, ...]
    pack: int = 1  # runs that differ only in seed are trained this many at a time as one seed pack

    def run_dir(self, results: Path, config: TrainConfig) -> Path:
        """Where `config`'s run lives when this sweep writes under `results`."""
        return Path(results) / self.name / config.run_id


def load_sweep(path: Path) -> Sweep:
    """Read, validate and expand a sweep file; raise a one-line QagrelError naming file, key and value."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise QagrelError(f"{path}: cannot read the sweep file ({err.strerror or err})") from None
    return parse_sweep(text, path)


def parse_sweep(text: str, path: Path, default_name: str | None = None) -> Sweep:
    """Validate and expand the sweep file `text`; `path` names it in errors, its stem is the default name."""
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise QagrelError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None
    if not isinstance(data, dict):
        raise QagrelError(f"{path}: a sweep file is a mapping with keys {', '.join(SWEEP_KEYS)}")
    for key in data:
        if key not in SWEEP_KEYS:
            raise QagrelError(f"{path}: unknown key {key!r}; a sweep file has: {', '.join(SWEEP_KEYS)} "
                              "(TrainConfig options go under grid:)")
    name = data.get("name", default_name or path.stem)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise QagrelError(f"{path}: name: must be a folder name of letters, digits, '.', '_', '-', got {name!r}")
    grid = _axes(path, "grid", data.get("grid"))
    seeds = _seeds(path, data.get("seeds"))
    if seeds is not None and "seed" in grid:
        raise QagrelError(f"{path}: give either seeds: or grid.seed, not both")
    pack = data.get("pack", 1)
    if isinstance(pack, bool) or not isinstance(pack, int) or pack < 1:
        raise QagrelError(f"{path}: pack: give how many runs that differ only in seed to train as one pack "
                          f"(1 = no packing), got {pack!r}")
    includes = [_axes(path, f"include[{i}]", entry) for i, entry in enumerate(_entries(path, "include", data))]
    excludes = [_axes(path, f"exclude[{i}]", entry) for i, entry in enumerate(_entries(path, "exclude", data))]

    combos: list[tuple[str, dict[str, Any]]] = []
    for where, axes in [("grid", grid)] + [(f"include[{i}]", {**grid, **inc}) for i, inc in enumerate(includes)]:
        if seeds is not None and "seed" not in axes:
            axes = {**axes, "seed": seeds}
        combos += [(where, dict(zip(axes, values))) for values in itertools.product(*axes.values())]

    configs: dict[str, TrainConfig] = {}
    for where, combo in combos:
        try:
            config = TrainConfig.from_dict(with_recipe(combo))
        except QagrelError as err:  # a combination the single values did not reveal
            raise QagrelError(f"{path}: {where}: {err} (in {combo})") from None
        if not any(_matches(config, ex) for ex in excludes):
            configs.setdefault(config.run_id, config)  # an include may repeat a grid run
    if not configs:
        raise QagrelError(f"{path}: the sweep expands to no runs (every combination is excluded)")
    # Seed 0 of every row first: an early look at the whole table, not all seeds of one row.
    ordered = sorted(configs.values(), key=lambda c: c.seed)
    return Sweep(name=name, path=path, text=text, configs=tuple(ordered), pack=pack)


def refuse_other_sweep(stored: Path, text: str, given: Path, hint: str) -> None:
    """One-line QagrelError naming both files when the results folder's sweep file `stored` exists and holds
    another sweep than `text` (the sweep file `given`): one name, one sweep, in a results root. `hint` says
    what the user can do."""
    try:
        if not stored.exists() or stored.read_bytes() == text.encode():
            return
    except OSError as err:
        raise QagrelError(f"{stored}: cannot read the sweep file ({err.strerror or err})") from None
    raise QagrelError(f"{stored} is not {given}: a different sweep is there under the name "
                      f"{stored.parent.name!r}; {hint}")


def check_sweep_name(sweep: Sweep, results: Path) -> None:
    """Refuse, in one line naming both files, a sweep whose name another sweep file already used in `results`."""
    refuse_other_sweep(Path(results) / sweep.name / SWEEP_FILE, sweep.text, sweep.path,
                       "give this sweep another name:, or --replace to make it that name's sweep")


def _axes(path: Path, where: str, mapping: Any) -> dict[str, list[Any]]:
    """A grid-like mapping as key -> non-empty list of values, each value checked by TrainConfig."""
    if not isinstance(mapping, dict) or not mapping:
        hint = "TrainConfig options with a value or a list of values, e.g. {rule: [qagrel, bp]}"
        raise QagrelError(f"{path}: {where}: an empty grid; give {hint}" if not mapping
                          else f"{path}: {where}: must be a mapping of {hint}, got {mapping!r}")
    axes: dict[str, list[Any]] = {}
    for key, value in mapping.items():
        if key not in CONFIG_FIELDS and key != "recipe":
            raise QagrelError(f"{path}: {where}: unknown key {key!r}; known: recipe, {', '.join(CONFIG_FIELDS)}")
        if key == "recipe" and where.startswith("exclude"):
            raise QagrelError(f"{path}: {where}: exclude runs by the options a recipe sets, not by its name")
        values = value if isinstance(value, list) else [value]
        if not values:
            raise QagrelError(f"{path}: {where}.{key}: an empty list sweeps over nothing")
        for v in values:
            try:  # TrainConfig (and recipes) own every check of a value; repeat none of them here
                recipe_options(v, "conv") if key == "recipe" else TrainConfig.check_value(key, v)
            except QagrelError as err:
                raise QagrelError(f"{path}: {where}.{key}: {err}") from None
        axes[key] = values
    return axes


def _seeds(path: Path, seeds: Any) -> list[int] | None:
    """`seeds:` in config.parse_seeds's syntax: `10` is seeds 0-9; a list or '0-4,7' names them."""
    if seeds is None:
        return None
    try:
        return parse_seeds(seeds)
    except QagrelError as err:
        raise QagrelError(f"{path}: {err}") from None


def _entries(path: Path, key: str, data: dict[str, Any]) -> list[Any]:
    entries = data.get(key) or []
    if not isinstance(entries, list):
        raise QagrelError(f"{path}: {key}: must be a list of mappings like - {{dataset: mnist, arch: fc}}, "
                          f"got {entries!r}")
    return entries


def _matches(config: TrainConfig, exclude: dict[str, list[Any]]) -> bool:
    """True when every key of the exclude entry holds one of its values (compared after resolving defaults)."""
    return all(getattr(config, key) in [TrainConfig.check_value(key, v) for v in values]
               for key, values in exclude.items())


__all__ = ["Sweep", "load_sweep", "parse_sweep", "refuse_other_sweep", "check_sweep_name", "SWEEP_FILE", "SWEEP_KEYS"]
