"""`qagrel milestones`: how far runs with an epoch budget got along the paper's path.

A protocol study runs each reading for a few dozen epochs, far fewer than
Table 1's runs took. Its runs are compared with the paper at points that a
short budget can reach, per Table 1 row and reading:

- the paper's implied best epoch, E* = its mean stop epoch - 20 (early stopping
  ends a run 20 epochs after its best validation accuracy): the test accuracy
  there, where the budget reaches it;
- the first epoch whose test accuracy reaches 50 % and 90 % of the paper's
  final accuracy (how many of the seeds got there, and when);
- the best validation accuracy within the budget and the test accuracy at that
  epoch (Table 1's measure, truncated to the budget).

Accuracies are in %; epochs are means over the seeds that reached the point.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from enum import Enum
from typing import Sequence

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from qagrel_cli.core import run_folder
from qagrel_cli.core.config import DEFAULTS
from qagrel_cli.core.recipes import follows_brainprop
from qagrel_cli.core.stopping import replay
from qagrel_cli.reports.rows import TABLE1_FIELDS, RowKey, row_key, row_key_fields
from qagrel_cli.reports.table import PaperRow, Stat, paper_row
from qagrel_cli.reports.table_formats import markdown_table
from qagrel_cli.sweeps.results import Damage, Results, RunRecord

PATIENCE = DEFAULTS["patience"]  # Table 1's early stopping: the best epoch is this many before the stop epoch
FRACTIONS = (0.5, 0.9)  # of the paper's final accuracy


class MilestoneFormat(str, Enum):
    rich = "rich"
    markdown = "markdown"
    csv = "csv"


@dataclass(frozen=True)
class Reached:
    """How many seeds reached an accuracy, and the epochs at which they first did."""

    seeds: int
    of: int
    epochs: Stat


@dataclass(frozen=True)
class MilestoneRow:
    """One Table 1 row under one reading: its seeds' logs measured against the paper's."""

    key: RowKey
    seeds: int
    diverged: int  # seeds whose weights became non-finite (their logs stop there)
    budget: int  # the fewest epochs any of its seeds ran
    longest: int  # the most epochs any of its seeds ran
    paper: PaperRow | None
    implied_best_epoch: int | None
    accuracy_at_implied_best: Stat  # n = seeds whose log reaches it
    reached: tuple[Reached, ...]  # one per FRACTIONS
    best_within_budget: Stat  # test accuracy at the best-validation epoch within the budget
    at_epochs: tuple[tuple[int, Stat], ...] = ()  # test accuracy at each epoch asked for; n = seeds whose log reaches it


def milestone_rows(results: Results, at_epochs: Sequence[int] = ()) -> list[MilestoneRow]:
    """The milestones of every row of finished runs with a readable log (logs are read here); with `at_epochs`,
    also each row's test accuracy at those epochs. A log without the columns read here joins `results.damaged`."""
    finished = [r for r in results.runs if r.summary is not None and r.log_readable]
    fields = row_key_fields(finished)
    groups: dict[RowKey, list[tuple[pd.DataFrame, RunRecord]]] = {}
    for record in finished:
        try:
            log = run_folder.read_log(record.path, needs=("epoch", "val_acc", "test_acc"))
        except run_folder.DamagedFile as err:  # lacks a column read here: named with the other damage
            results.damaged.append(Damage(err.path, err.reason))
            continue
        log = run_folder.one_row_per_epoch(log).set_index("epoch")
        if not log.empty:
            groups.setdefault(row_key(record, fields), []).append((log, record))
    return [_row(key, [log for log, _ in runs], [record for _, record in runs], at_epochs)
            for key, runs in sorted(groups.items(), key=lambda item: item[0].sort_key)]


def _row(key: RowKey, logs: list[pd.DataFrame], records: list[RunRecord], at_epochs: Sequence[int] = ()
         ) -> MilestoneRow:
    paper = paper_row(key, any_alpha=follows_brainprop(records[0].config))
    budget, longest = min(int(log.index.max()) for log in logs), max(int(log.index.max()) for log in logs)
    implied = None if paper is None or paper.epochs.mean is None else round(paper.epochs.mean) - PATIENCE
    at_implied = [100 * float(log.at[implied, "test_acc"]) for log in logs if implied in log.index]
    reached = []
    for fraction in FRACTIONS if paper is not None else ():
        goal = fraction * paper.accuracy.mean / 100
        firsts = [int(log.index[log["test_acc"] >= goal].min()) for log in logs if (log["test_acc"] >= goal).any()]
        reached.append(Reached(len(firsts), len(logs), Stat.of([float(e) for e in firsts])))
    # Early stopping replayed over the whole log (the run's own patience, so its last epoch at the latest):
    # training's best epoch, also for runs recorded before a diverged epoch could be the best.
    best = [100 * replay(log.reset_index(), record.config).progress.test_acc_at_best
            for log, record in zip(logs, records)]
    diverged = sum(bool(record.summary.get("diverged")) for record in records)
    at = tuple((epoch, Stat.of([100 * float(log.at[epoch, "test_acc"]) for log in logs if epoch in log.index]))
               for epoch in at_epochs)
    return MilestoneRow(key, len(logs), diverged, budget, longest, paper, implied, Stat.of(at_implied), tuple(reached),
                        Stat.of(best), at)


def _stat(stat: Stat, decimals: int) -> str:
    if stat.mean is None:
        return "–"
    return f"{stat.mean:.{decimals}f}" + ("" if stat.sd is None else f" ({stat.sd:.{decimals}f})")


def grid(rows: Sequence[MilestoneRow]) -> tuple[list[str], list[list[str]], int]:
    """Headers, display cells and the index of the first numeric column."""
    extra_fields = [name for name, _ in rows[0].key.extras] if rows else []
    at_epochs = [epoch for epoch, _ in rows[0].at_epochs] if rows else []
    headers = ["Dataset", "Rule", "1st layer", "Hidden units", "α", *[f.replace("_", " ") for f in extra_fields],
               "Seeds", "Diverged", "Epochs run", "Paper acc. [%]", "E* = paper stop − 20", "Test acc. at E* [%]",
               *[f"Test acc. at epoch {epoch} [%]" for epoch in at_epochs],
               *[f"Epochs to {100 * f:.0f}% of paper" for f in FRACTIONS], "Test acc. at best val. [%]"]
    cells = []
    for row in rows:
        paper = "–" if row.paper is None else _stat(row.paper.accuracy, 2)
        if row.implied_best_epoch is None:
            implied, at_implied = "–", "–"
        else:
            implied = str(row.implied_best_epoch)
            n = row.accuracy_at_implied_best.n
            beyond = f"beyond {row.longest} epoch{'' if row.longest == 1 else 's'}"
            at_implied = (beyond if n == 0 else _stat(row.accuracy_at_implied_best, 2)
                          + ("" if n == row.seeds else f" [{n}/{row.seeds}]"))
        reached = [("–" if r.seeds == 0 else _stat(r.epochs, 1)) + f" [{r.seeds}/{r.of}]" for r in row.reached]
        reached += ["–"] * (len(FRACTIONS) - len(reached))
        epochs_run = str(row.budget) if row.budget == row.longest else f"{row.budget}–{row.longest}"
        at = [("–" if stat.n == 0 else _stat(stat, 2) + ("" if stat.n == row.seeds else f" [{stat.n}/{row.seeds}]"))
              for _, stat in row.at_epochs]
        cells.append([*row.key.cells(), str(row.seeds), str(row.diverged), epochs_run, paper, implied, at_implied,
                      *at, *reached, _stat(row.best_within_budget, 2)])
    return headers, cells, len(TABLE1_FIELDS) + len(extra_fields)


NOTES = ("Diverged: seeds whose weights became non-finite; their logs end there. "
         "Epochs run: fewest–most over the seeds. "
         "E*: the paper's mean stop epoch minus the 20 epochs of patience, i.e. its implied best epoch; the test "
         "accuracy there is over the seeds whose logs reach it [seeds that did / seeds, when not all]; so is the "
         "test accuracy at an epoch asked for with --at-epochs. "
         "Epochs to x% of paper: the first epoch whose test accuracy reached x% of the paper's accuracy, mean (SD) "
         "over the seeds that reached it [seeds that did / seeds]. Test acc. at best val.: test accuracy at the "
         "epoch of the best validation accuracy within the epochs run. Means (sample SD) over seeds.")


def render(rows: Sequence[MilestoneRow], fmt: MilestoneFormat, source: str = "", width: int = 200) -> str:
    """The milestones as text in `fmt` (rich is rendered without colours)."""
    headers, cells, numeric = grid(rows)
    if fmt == MilestoneFormat.csv:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows([headers, *cells])
        return buffer.getvalue()
    if fmt == MilestoneFormat.markdown:
        title = [f"Milestones: `{source}`", ""] if source else []
        return "\n".join(title + markdown_table(headers, cells, numeric) + ["", NOTES]) + "\n"
    table = Table(title=f"Milestones: {source}" if source else None, caption=escape(NOTES), caption_justify="left")
    for i, header in enumerate(headers):
        table.add_column(header, justify="right" if i >= numeric else "left")
    for line in cells:
        table.add_row(*line)
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(table)
    return console.file.getvalue()


__all__ = ["MilestoneFormat", "MilestoneRow", "Reached", "milestone_rows", "render", "grid", "PATIENCE", "FRACTIONS"]
