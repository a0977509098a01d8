"""Table 1's rows: which runs belong together, and how a row's settings are shown.

A row is what Table 1 calls a row: dataset, rule, first layer, hidden units and
learning rate alpha, read from each run's config (never from its path). Any
other setting that differs between the runs of one such row (a protocol
reading such as input scaling or the BP optimizer, epsilon, train_size, ...)
splits it into one line per value, labelled by an extra column, so runs with
different settings are never averaged together. `qagrel table`, `qagrel
status` and the sweep estimate group runs this way.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any, Iterable

from qagrel_cli.core.config import (ARCH_NAMES, CONFIG_FIELDS, DATASET_NAMES, DEFAULTS, ENUM_FIELDS, PROTOCOL_READINGS,
                                    RULE_NAMES, TrainConfig, reads)
from qagrel_cli.core.recipes import LABELLED_FIELDS, Recipe, follows_brainprop, recipe_label
from qagrel_cli.sweeps.results import RunRecord

TABLE1_FIELDS = ("dataset", "rule", "arch", "hidden_units", "lr")
# Settings that never make a row of their own: the seed is what a row averages over.
_NOT_ROW_FIELDS = frozenset({"seed", "device", "dataset", "rule", "arch", "fc", "lr"})


@dataclass(frozen=True)
class RowKey:
    """What makes a Table 1 row: dataset, rule, first layer, hidden units, alpha, plus any other varying setting."""

    dataset: str
    rule: str
    arch: str
    hidden_units: str
    lr: float
    extras: tuple[tuple[str, Any], ...] = ()
    table1_units: str = ""  # the hidden units of Table 1's network for this row (padding 'same' changes them)

    @property
    def sort_key(self) -> tuple:
        """Table 1's order: dataset, first layer (Full, Conv, LocCon), rule (Q-AGREL first), depth; within a
        row, the paper's recipe before the authors' later one (whose alpha is its own), then the default
        (literal) setting first."""
        later_recipe = not dict(self.extras).get("recipe", Recipe.paper.value).startswith(Recipe.paper.value)
        return (table1_order(DATASET_NAMES, self.dataset), table1_order(ARCH_NAMES, self.arch),
                table1_order(RULE_NAMES, self.rule), self.hidden_units.count("-"), self.hidden_units, later_recipe,
                self.lr, readings_order(self.extras))

    def cells(self) -> list[str]:
        """Display cells: Dataset, Rule, 1st layer, Hidden units, alpha, extras ('–' for a setting the rule does
        not read, such as Q-AGREL's optimizer)."""
        return [DATASET_NAMES.get(self.dataset, self.dataset), RULE_NAMES.get(self.rule, self.rule),
                ARCH_NAMES.get(self.arch, self.arch), self.hidden_units, format_alpha(self.lr),
                *[setting_cell(name, v, self.rule) for name, v in self.extras]]


def setting_cell(name: str, value: Any, rule: str) -> str:
    """One setting of a run of `rule` for a table cell: '–' where the rule does not read it (Q-AGREL's
    optimizer, Error-BP's epsilon), so a default no run uses never looks like a choice."""
    return format_setting(value) if reads(rule, name) else "–"


def setting_order(name: str, value: Any) -> tuple[int, str]:
    """A sort key for one setting's values: an Enum's declaration order (the paper's reading first, e.g.
    symmetric, random, fixed), unknown values after; other settings by value."""
    enum = ENUM_FIELDS.get(name)
    values = [e.value for e in enum] if enum is not None else []
    return (values.index(value) if value in values else len(values), json.dumps(value, default=str))


def readings_order(extras: tuple[tuple[str, Any], ...]) -> list[tuple[bool, int, str]]:
    """A sort key for the extra settings of a row: the default (literal) reading first, then in
    `setting_order`."""
    return [(value != DEFAULTS.get(name), *setting_order(name, value)) for name, value in extras]


def table1_order(order: dict[str, str], value: str) -> int:
    return list(order).index(value) if value in order else len(order)


def format_setting(value: Any) -> str:
    """A config value (as in TrainConfig.to_dict) for a table cell: fc as 1000,500, None as -."""
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "-" if value is None else str(value)


def format_alpha(lr: float) -> str:
    """The paper's style, 1e-03; falls back to %g when one digit would lose information."""
    short = f"{lr:.0e}"
    return short if math.isclose(float(short), lr) else f"{lr:g}"


def format_duration(seconds: float) -> str:
    """Seconds as the unit a reader plans in: s, min, h, days, weeks."""
    for unit, size in (("weeks", 7 * 86400), ("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 1.5 * size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def settings(config: TrainConfig) -> dict[str, Any]:
    """`config` as plain values (TrainConfig.to_dict), init_range None where it is the range that follows
    from init and arch: that is no setting of its own, and reports neither show it nor split by it."""
    values = config.to_dict()
    if config.init_range == replace(config, init_range=None).init_range:
        values["init_range"] = None
    return values


def row_key_fields(records: Iterable[RunRecord]) -> list[str]:
    """Table 1's row fields, plus every other setting that differs between runs of one Table 1 row.

    A setting that only differs between rows (init_range is 0.05 for fc and
    0.02 for conv by default) needs no column of its own. A protocol reading
    (PROTOCOL_READINGS) gets one whenever a run departs from the literal reading,
    so a row trained with Adam never passes for the paper's plain SGD. When any
    run follows the authors' later recipe, a first column, `recipe`, names the
    recipe each row follows and its departures from it (`recipes.recipe_label`),
    in place of a column for each setting a recipe sets.
    """
    values: dict[tuple[tuple, str], set[str]] = {}
    for record in records:
        config = settings(record.config)
        table1 = (config["dataset"], config["rule"], config["arch"], record.hidden_units, config["lr"])
        for name, value in config.items():
            values.setdefault((table1, name), set()).add(json.dumps(value))
    varying = {name for (_, name), seen in values.items()
               if len(seen) > 1 or (name in PROTOCOL_READINGS and seen != {json.dumps(DEFAULTS[name])})}
    recipe = ["recipe"] if any(follows_brainprop(record.config) for record in records) else []
    labelled = set(LABELLED_FIELDS) if recipe else set()  # the recipe column names these settings' values
    return [*TABLE1_FIELDS, *recipe,
            *[f for f in CONFIG_FIELDS if f in varying and f not in _NOT_ROW_FIELDS and f not in labelled]]


def row_key(record: RunRecord, fields: list[str]) -> RowKey:
    """The row `record` belongs to, given the fields from `row_key_fields`."""
    config = {**record.config.to_dict(), "recipe": recipe_label(record.config)}
    return RowKey(config["dataset"], config["rule"], config["arch"], record.hidden_units, float(config["lr"]),
                  tuple((f, config[f]) for f in fields[len(TABLE1_FIELDS):]), record.table1_units)


__all__ = ["RowKey", "TABLE1_FIELDS", "table1_order", "readings_order", "row_key", "row_key_fields", "settings",
           "setting_cell", "format_setting", "format_alpha", "format_duration"]
