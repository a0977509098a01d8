"""Table 1 from run folders: grouping into rows, mean (SD) over seeds, the paper beside ours.

Rows are grouped as qagrel_cli/reports/rows.py says: Table 1's row, split into
one line per protocol reading (or other setting) that differs between its runs.

Statistics are taken over the seeds that converged, as in the paper, whose `*`
marks rows where only some seeds did. "Converged" is recomputed here from each
summary (not diverged, best validation accuracy at least `converged_above`
times chance), so that the threshold is the reader's choice.

With the paper beside ours, a row gets the paper's values only when its runs
follow the paper's protocol (`protocol_differences`): a 4-epoch smoke test on
5,000 images set beside Table 1 would read as a failed reproduction. Rows that
differ show "–" there, and a note says which settings differ.
"""

from __future__ import annotations

import csv
import functools
import importlib.resources
import io
import math
import statistics
from dataclasses import dataclass
from enum import Enum
from typing import Any

from qagrel_cli.core import run_folder
from qagrel_cli.core.config import (ARCH_NAMES, CONFIG_FIELDS, DATASET_NAMES, PROTOCOL_READINGS, RULE_SETTINGS, reads,
                                    QagrelError, Rule, TrainConfig)
from qagrel_cli.core.recipes import follows_brainprop, recipe_options
from qagrel_cli.core.stopping import converged, stopped_sooner, summary_under_stopping
from qagrel_cli.reports.rows import (TABLE1_FIELDS, RowKey, format_alpha, format_setting, readings_order, row_key,
                                     row_key_fields, table1_order)
from qagrel_cli.sweeps.results import RunRecord


class EpochsAt(str, Enum):
    stop = "stop"  # the epoch at which the stopping criterion was met (the paper's)
    best = "best"  # the epoch of the best validation accuracy


class AccuracyAt(str, Enum):
    best = "best"  # test accuracy at the best-validation epoch (the paper's)
    final = "final"  # test accuracy at the last epoch
    peak = "peak"  # the highest test accuracy of any epoch up to the stop (the test set as validation set)


class Compare(str, Enum):
    paper = "paper"  # Table 1 of the paper, shipped as qagrel_cli/paper/table1.csv


# ------------------------------------------------------- the paper's protocol

# What a run's config may differ in and still be set beside Table 1: the seed (what a row averages over),
# where it ran, the row itself (dataset, rule, first layer, hidden units; alpha is checked against Table 1's),
# and the readings of the paper's open protocol choices, which are readings OF the paper: comparing
# them with its numbers is the point of the protocol study (docs/reproduction.md).
_COMPARABLE_WHATEVER = frozenset({"seed", "device", "dataset", "arch", "fc", "rule", *PROTOCOL_READINGS})


def protocol_differences(config: TrainConfig) -> list[str]:
    """The settings in which `config` departs from the paper's protocol, e.g. ['max_epochs 4 (paper 500)'].

    The paper's protocol is TrainConfig's defaults, which are the paper's section 3 (all training
    images but a validation set of 1000, batches of 100, early stopping with patience 20 within 500
    epochs, epsilon 0.02, symmetric feedback, weights uniform in +-0.02, fc +-0.05) with Table 1's
    alpha for the row. The init range is the paper's only under uniform init: He init, an open
    reading, sets its own.
    """
    keep = {name: getattr(config, name) for name in _COMPARABLE_WHATEVER}
    paper = TrainConfig(**keep)  # every other field at its default: alpha and init range resolved for the row
    # A run of the authors' later recipe is a reading of the paper by its authors: the recipe's own values
    # (alpha, batch size, patience) are readings too, so the row is set beside Table 1's.
    recipe = recipe_options("brainprop", config.arch) if follows_brainprop(config) else {}
    differences = []
    for name in CONFIG_FIELDS:
        ours, theirs = getattr(config, name), getattr(paper, name)
        if name in _COMPARABLE_WHATEVER or ours == theirs or (name in recipe and ours == recipe[name]):
            continue
        shown = {"lr": "α"}.get(name, name)
        differences.append(f"{shown} {_setting(name, ours)} (paper {_setting(name, theirs)})")
    return differences


def _setting(name: str, value: Any) -> str:
    if name == "train_size" and value is None:
        return "all"
    if name == "lr":
        return format_alpha(value)
    return format_setting(value.value if isinstance(value, Enum) else value)


# ------------------------------------------------------------ statistics

@dataclass(frozen=True)
class Stat:
    """Mean and sample SD (ddof=1) of a row's values; None where undefined."""

    mean: float | None
    sd: float | None
    n: int

    @classmethod
    def of(cls, values: list[float]) -> "Stat":
        return cls(statistics.fmean(values) if values else None,
                   statistics.stdev(values) if len(values) > 1 else None, len(values))


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper's Table 1 (accuracies in percent)."""

    key: RowKey
    epochs: Stat
    accuracy: Stat
    seeds_converged: int
    seeds: int


@dataclass(frozen=True)
class Row:
    """One row of our table: statistics over the converged seeds of one RowKey."""

    key: RowKey
    epochs: Stat
    accuracy: Stat
    converged: int
    finished: int
    paper: PaperRow | None = None
    # With --compare: how its runs depart from the paper's protocol (then `paper` is None).
    differs: tuple[str, ...] = ()

    @property
    def star(self) -> bool:
        """The paper's `*`: not every seed converged."""
        return self.converged < self.finished

    @property
    def epochs_diff(self) -> float | None:
        """(ours - paper) / paper SD, for the epochs."""
        return _diff(self.epochs, self.paper.epochs) if self.paper else None

    @property
    def accuracy_diff(self) -> float | None:
        """(ours - paper) / paper SD, for the accuracy."""
        return _diff(self.accuracy, self.paper.accuracy) if self.paper else None


def _diff(ours: Stat, paper: Stat) -> float | None:
    if ours.mean is None or paper.mean is None or not paper.sd:
        return None
    return (ours.mean - paper.mean) / paper.sd


@dataclass(frozen=True)
class Ratio:
    """Q-AGREL/BP epochs for one dataset and first layer, over the hidden units both rules have."""

    dataset: str
    arch: str
    extras: tuple[tuple[str, Any], ...]
    hidden_units: tuple[str, ...]
    ours: float | None
    paper: float | None


@dataclass(frozen=True)
class ResultTable:
    """Everything a format needs to print the table."""

    source: str
    rows: list[Row]
    extra_fields: list[str]
    unfinished: int
    epochs_at: EpochsAt
    accuracy_at: AccuracyAt
    converged_above: float
    class_counts: tuple[int, ...]
    compare: bool
    ratios: list[Ratio]
    patience: int | None = None  # early stopping replayed from the logs with this patience
    max_epochs: int | None = None  # ... and this epoch cap

    def notes(self) -> list[str]:
        """The definitions printed under the table, in plain text."""
        epochs = ("the epoch at which the stopping criterion was met" if self.epochs_at == EpochsAt.stop
                  else "the epoch of the best validation accuracy")
        accuracy = {AccuracyAt.best: "test accuracy at the best-validation epoch",
                    AccuracyAt.final: "test accuracy at the last epoch",
                    AccuracyAt.peak: "the highest test accuracy of any epoch up to the stop (chosen on the "
                                     "test set, as if it were the validation set)"}[self.accuracy_at]
        chance = ", ".join(f"{100 * self.converged_above / k:g}% with {k} classes" for k in self.class_counts)
        notes = [f"Epochs: {epochs}. Accuracy: {accuracy}, in %.",
                 "Values are mean (SD) over the converged seeds; SD is the sample standard deviation (ddof=1).",
                 f"Seeds: converged/finished; * not every seed converged. Converged: finished without diverging "
                 f"and best validation accuracy >= {self.converged_above:g}x chance ({chance}).",
                 ]
        replayed = [f"patience {self.patience}"] if self.patience is not None else []
        if self.max_epochs is not None:
            replayed.append(f"at most {self.max_epochs} epochs")
        if replayed:
            notes.append(f"Early stopping replayed from each run's log with {' and '.join(replayed)}: where each "
                         f"run would have stopped, and its best epoch up to there.")
        if self.unfinished:
            notes.append(f"{self.unfinished} unfinished run(s) left out (qagrel status lists them).")
        if self.compare:
            notes.append("Paper: Table 1 of Pozzi, Bohte & Roelfsema; Δ [SD] = (ours - paper) / paper SD.")
            notes.append("Epoch ratio: mean Q-AGREL epochs / mean Error-BP epochs over the hidden units both "
                         "rules have (the paper reports 1.5-2.5x).")
            notes += self.not_comparable()
        return notes

    def not_comparable(self) -> list[str]:
        """One note per set of settings that keeps rows from the paper's values (shown as –), naming the rows."""
        rows_by_reason: dict[tuple[str, ...], list[str]] = {}
        for row in self.rows:
            if row.differs:
                cells = row.key.cells()
                extras = [f"{name.replace('_', ' ')} {cell}" for (name, _), cell in zip(row.key.extras, cells[5:])]
                label = " ".join([*cells[:4], f"α {cells[4]}", *extras])
                rows_by_reason.setdefault(row.differs, []).append(label)
        # Past a few rows a list of labels is longer than the table it explains: count them instead.
        return [f"No paper values for {'; '.join(rows) if len(rows) <= _NAMED_ROWS else f'{len(rows)} rows'} (not "
                f"the paper's protocol): {', '.join(reason)}." for reason, rows in rows_by_reason.items()]


_NAMED_ROWS = 3  # a note names at most this many rows it keeps from the paper's values


def build_table(records: list[RunRecord], *, source: str = "", epochs_at: EpochsAt = EpochsAt.stop,
                accuracy_at: AccuracyAt = AccuracyAt.best, converged_above: float = 2.0,
                compare: bool = False, patience: int | None = None, max_epochs: int | None = None) -> ResultTable:
    """Group finished runs into Table 1 rows; unfinished ones are only counted. With `patience` or
    `max_epochs`, every run is read as if it had trained with them (`with_stopping`)."""
    if not converged_above > 0:
        raise QagrelError(f"--converged-above must be a positive multiple of chance, got {converged_above!r}")
    finished = [r for r in records if r.summary is not None]
    if not finished:
        raise QagrelError(f"{source or 'these runs'}: no finished runs yet ({len(records)} unfinished); "
                          "qagrel status shows where they are")
    if patience is not None or max_epochs is not None:
        finished = [with_stopping(r, patience=patience, max_epochs=max_epochs) for r in finished]
    fields = row_key_fields(finished)
    groups: dict[RowKey, list[RunRecord]] = {}
    for record in finished:
        groups.setdefault(row_key(record, fields), []).append(record)
    # Alpha is left to `protocol_differences`: a row at another alpha is set beside Table 1 only as a reading.
    paper = {_paper_match(p.key, alpha=False): p for p in paper_table()} if compare else {}
    rows = []
    for key, group in sorted(groups.items(), key=lambda item: item[0].sort_key):
        ok = [r for r in group if is_converged(r.summary, converged_above)]
        epochs = [float(r.summary["stop_epoch" if epochs_at == EpochsAt.stop else "best_epoch"]) for r in ok]
        accuracy = [100 * accuracy_of(r, accuracy_at) for r in ok]
        # A row's runs differ only in seed and device (else row_key would split them), so one run speaks for all.
        differs = tuple(protocol_differences(group[0].config)) if compare else ()
        rows.append(Row(key, Stat.of(epochs), Stat.of(accuracy), len(ok), len(group),
                        None if differs else paper.get(_paper_match(key, alpha=False)), differs))
    return ResultTable(source=source, rows=rows, extra_fields=fields[len(TABLE1_FIELDS):],
                       unfinished=len(records) - len(finished), epochs_at=epochs_at, accuracy_at=accuracy_at,
                       converged_above=converged_above,
                       class_counts=tuple(sorted({int(r.summary["num_classes"]) for r in finished})),
                       compare=compare, ratios=epoch_ratios(rows, list(paper.values())) if compare else [],
                       patience=patience, max_epochs=max_epochs)


def accuracy_of(record: RunRecord, at: AccuracyAt) -> float:
    """A finished run's test accuracy (a fraction) for the Accuracy column: at its best-validation epoch, at its
    last epoch, or the peak of its log up to its stop epoch (read from the log)."""
    if at == AccuracyAt.best:
        return float(record.summary["test_acc_at_best"])
    if at == AccuracyAt.final:
        return float(record.summary["test_acc_at_stop"])
    if not record.log_readable:
        raise QagrelError(f"{record.path}: its log cannot be read, so its peak test accuracy cannot be found")
    log = run_folder.one_row_per_epoch(run_folder.read_log(record.path, needs=("epoch", "test_acc")))
    trained = log[log["epoch"] <= int(record.summary["stop_epoch"])]["test_acc"]
    if trained.empty:
        raise QagrelError(f"{record.path}: its log has no epochs, so its peak test accuracy cannot be found")
    return float(trained.max())


def with_stopping(record: RunRecord, *, patience: int | None = None, max_epochs: int | None = None) -> RunRecord:
    """A finished run as if early stopping had used `patience` and stopped by `max_epochs` (each at most the
    run's own; None keeps it): its summary's stopping fields replayed from its log, its config carrying them,
    so it joins the rows trained with them."""
    if not record.log_readable:
        raise QagrelError(f"{record.path}: its log cannot be read, so its early stopping cannot be replayed")
    sooner = stopped_sooner(record.config, patience=patience, max_epochs=max_epochs)
    log = run_folder.read_log(record.path, needs=("epoch", "train_reward", "val_acc", "test_acc", "epoch_seconds"))
    return RunRecord(record.path, sooner, summary_under_stopping(record.summary, log, sooner))


def is_converged(summary: dict[str, Any], converged_above: float = 2.0) -> bool:
    """Recomputed from the summary with training's rule, at our threshold (the stored flag uses 2x chance)."""
    best = summary.get("best_val_acc")
    if best is None or not math.isfinite(best):
        return False
    return converged(best, summary["num_classes"], bool(summary.get("diverged")), converged_above)


def epoch_ratios(rows: list[Row], paper: list[PaperRow]) -> list[Ratio]:
    """Q-AGREL/BP mean epochs per dataset, first layer and reading, ours and the paper's.

    A Q-AGREL reading is set beside every Error-BP reading that agrees with it in the
    settings both rules read (RULE_SETTINGS they share), so BP with Adam and with plain SGD each get
    a ratio; the ratio's settings are those each rule reads. The paper's ratio is given
    only where every row it is set beside follows the paper's protocol.
    """
    groups: dict[tuple, dict[str, list[Row]]] = {}  # (dataset, arch, extras, rule) -> hidden units -> rows
    for row in rows:
        if row.epochs.mean is not None:
            key = (row.key.dataset, row.key.arch, row.key.extras, row.key.rule)
            groups.setdefault(key, {}).setdefault(row.key.hidden_units, []).append(row)
    paper_epochs = {(p.key.dataset, p.key.arch, p.key.rule, p.key.hidden_units): p.epochs.mean for p in paper}
    ratios = []
    for (dataset, arch, q_extras, q_rule), q_rows in groups.items():
        if q_rule != "qagrel":
            continue
        for (bp_dataset, bp_arch, bp_extras, bp_rule), bp_rows in groups.items():
            if (bp_rule != "bp" or (bp_dataset, bp_arch) != (dataset, arch)
                    or _settings_both_read(q_extras) != _settings_both_read(bp_extras)):
                continue
            common = tuple(sorted(set(q_rows) & set(bp_rows), key=lambda h: (h.count("-"), h)))
            if not common:
                continue
            ours = (statistics.fmean(r.epochs.mean for h in common for r in q_rows[h])
                    / statistics.fmean(r.epochs.mean for h in common for r in bp_rows[h]))
            theirs = [[None if any(r.differs for r in by_units[h]) else paper_epochs.get((dataset, arch, rule, h))
                       for h in common] for rule, by_units in (("qagrel", q_rows), ("bp", bp_rows))]
            ratio = None if None in theirs[0] + theirs[1] else statistics.fmean(theirs[0]) / statistics.fmean(theirs[1])
            extras = tuple((name, dict(bp_extras)[name] if reads(Rule.bp, name) and not reads(Rule.qagrel, name)
                            else value) for name, value in q_extras)
            ratios.append(Ratio(dataset, arch, extras, common, ours, ratio))
    return sorted(ratios, key=lambda r: (table1_order(DATASET_NAMES, r.dataset), table1_order(ARCH_NAMES, r.arch),
                                         readings_order(r.extras)))


def _settings_both_read(extras: tuple[tuple[str, Any], ...]) -> tuple[tuple[str, Any], ...]:
    return tuple((name, value) for name, value in extras if name not in RULE_SETTINGS)


@functools.lru_cache(maxsize=1)
def paper_table() -> tuple[PaperRow, ...]:
    """The paper's Table 1, from the package data file paper/table1.csv."""
    text = importlib.resources.files("qagrel_cli").joinpath("paper/table1.csv").read_text()
    return tuple(PaperRow(RowKey(r["dataset"], r["rule"], r["first_layer"], r["hidden_units"], float(r["lr"])),
                          Stat(float(r["epochs_mean"]), float(r["epochs_sd"]), int(r["seeds_converged"])),
                          Stat(float(r["accuracy_mean"]), float(r["accuracy_sd"]), int(r["seeds_converged"])),
                          int(r["seeds_converged"]), int(r["seeds"]))
                 for r in csv.DictReader(io.StringIO(text)))


def paper_row(key: RowKey, any_alpha: bool = False) -> PaperRow | None:
    """The paper's Table 1 row for `key` (its extra settings ignored), if Table 1 has one; with `any_alpha`
    whatever its alpha (a run of the authors' later recipe, whose alpha is its own)."""
    alpha = not any_alpha
    return {_paper_match(p.key, alpha): p for p in paper_table()}.get(_paper_match(key, alpha))


def _paper_match(key: RowKey, alpha: bool = True) -> tuple:
    """Table 1's part of a key: dataset, rule, first layer, the hidden units of Table 1's network (padding
    ignored) and, with `alpha`, alpha rounded so that 1e-3 == 0.001."""
    return (key.dataset, key.rule, key.arch, key.table1_units or key.hidden_units,
            *([f"{key.lr:.6g}"] if alpha else []))


__all__ = ["Row", "Stat", "PaperRow", "Ratio", "ResultTable", "EpochsAt", "AccuracyAt", "Compare", "build_table",
           "is_converged", "accuracy_of", "with_stopping", "epoch_ratios", "protocol_differences", "paper_table",
           "paper_row"]
