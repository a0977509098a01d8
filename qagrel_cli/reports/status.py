"""`qagrel status` and `qagrel sweep --dry-run`: where every run of a results folder or sweep stands.

`qagrel status` counts runs per Table 1 row, then lists the runs in progress (running, or partial
and waiting for the next sweep) with where each stands against early stopping, read from its log.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from qagrel_cli.core.config import CONFIG_FIELDS, QagrelError, TrainConfig
from qagrel_cli.core.run_folder import ERROR_FILE, DamagedFile, one_row_per_epoch, read_log
from qagrel_cli.core.stopping import replay
from qagrel_cli.reports.console import fit
from qagrel_cli.reports.rows import RowKey, format_duration, format_setting, row_key, row_key_fields, setting_cell
from qagrel_cli.reports.table_formats import markdown_table
from qagrel_cli.sweeps.ledger import RunStatus, damaged_file, run_status
from qagrel_cli.sweeps.results import RunRecord, read_results
from qagrel_cli.sweeps.sweep_file import Sweep


# The count columns of `qagrel status`, and the short headers they take on a narrow terminal.
_COUNT_HEADERS = {"done": "done", "running": "run", "failed": "fail", "damaged": "dmg", "pending": "pend",
                  "total": "all"}
# The measured time columns: the done runs' training time (their epochs' wall time, summed) per epoch,
# per run and in all, to set beside `qagrel sweep --dry-run --estimate`; and the median epoch, which an
# epoch slowed by a paused worker or a third process on the cores does not move.
_TIME_HEADERS = {"time/epoch": "t/ep", "median epoch": "med ep", "time/run": "t/run", "time": "time"}


def print_plan(sweep: Sweep, results: Path, console: Console, *, every_run: bool = False) -> None:
    """What a sweep would do, writing nothing: one line per Table 1 row with its runs' states, or with
    `every_run` one line per run (run id, the settings that vary, lr, state)."""
    states = [run_status(sweep.run_dir(results, c)) for c in sweep.configs]
    if every_run:
        _print_every_run(sweep, results, console, states)
    else:
        _print_rows(sweep, results, console, states)
    for config, state in zip(sweep.configs, states):  # as the sweep would say it: one line each, naming the file
        if state == RunStatus.damaged:
            said = f"would leave damaged run {config.run_id} alone: {damaged_file(sweep.run_dir(results, config))}"
            console.print(f"[yellow]warning:[/] {escape(said)}", highlight=False, soft_wrap=True)


def _plan_title(sweep: Sweep, results: Path) -> str:
    return f"sweep {sweep.name}: {len(sweep.configs)} runs in {Path(results) / sweep.name}"


def _plan_caption(states: list[RunStatus]) -> str:
    return ", ".join(f"{Counter(states).get(s, 0)} {s.value}" for s in RunStatus)


def _print_rows(sweep: Sweep, results: Path, console: Console, states: list[RunStatus]) -> None:
    """The plan grouped by Table 1 row, drawn as `qagrel status` draws a results folder."""
    records = [RunRecord(sweep.run_dir(results, c), c, None) for c in sweep.configs]
    fields = row_key_fields(records)
    rows: dict[RowKey, Counter] = {}
    for record, state in zip(records, states):
        rows.setdefault(row_key(record, fields), Counter())[state] += 1
    named = _named_headers(fields)
    print_status(StatusReport(
        title=_plan_title(sweep, results), caption=f"{_plan_caption(states)} (--all lists every run)",
        headers=[*named, *_COUNT_HEADERS], named_by=len(named),
        rows=[[*key.cells(), *_counts(rows[key])] for key in sorted(rows, key=lambda k: k.sort_key)],
        total=["total", *[""] * (len(named) - 1), *_counts(Counter(states))],
        timed_on=[], in_progress=[], warnings=[], failures=[]), console)


def _print_every_run(sweep: Sweep, results: Path, console: Console, states: list[RunStatus]) -> None:
    settings = [c.to_dict() for c in sweep.configs]
    in_run_id = {"dataset", "arch", "fc", "rule", "seed", "device"}
    varying = [f for f in CONFIG_FIELDS
               if f not in in_run_id | {"lr"} and len({json.dumps(s[f]) for s in settings}) > 1]
    table = Table(title=_plan_title(sweep, results), caption=_plan_caption(states))
    table.add_column("#", justify="right")
    # A run id names the run's folder: kept whole (fit never goes below min_width), the settings give way.
    table.add_column("run id", no_wrap=True, min_width=max(len(c.run_id) for c in sweep.configs))
    for column in [*varying, "lr", "state"]:
        table.add_column(column.replace("_", " "))  # input scaling: a header that can wrap at its space
    for i, (config, setting, state) in enumerate(zip(sweep.configs, settings, states), 1):
        table.add_row(str(i), config.run_id, *[setting_cell(f, setting[f], config.rule.value) for f in varying],
                      format_setting(setting["lr"]), state.value)
    console.print(fit(table, console))


class StatusFormat(str, Enum):
    rich = "rich"
    markdown = "markdown"


@dataclass
class StatusReport:
    """What `qagrel status` shows, before it is drawn: the count table (one line per Table 1 row, then the
    total), the devices the times were measured on, the runs in progress, and what went wrong."""

    title: str
    caption: str
    headers: list[str]
    named_by: int  # the first `named_by` columns name the row; the rest are numbers
    rows: list[list[str]]
    total: list[str]
    timed_on: list[tuple[str, int]]  # (device, done runs timed on it), most runs first
    in_progress: list[tuple[Path, RunStatus, InProgress | None]]
    warnings: list[str]
    failures: list[tuple[Path, str]]  # (run folder, last line of its error file)

    @property
    def timed_on_line(self) -> str:
        return "times measured on " + "; ".join(f"{device}: {n} run{'' if n == 1 else 's'}"
                                                for device, n in self.timed_on)


def status_report(root: Path, *, times: bool = False) -> StatusReport:
    """Per Table 1 row: done / running / failed / pending (partial included) counts, with `times` the done
    runs' measured training time (per epoch, per run, in all), then totals."""
    results = read_results(root)
    records = results.runs
    if not records and not results.damaged:
        raise QagrelError(f"{root}: no runs found (a sweep writes results/<sweep-name>/<run-id>/)")
    fields = row_key_fields(records)
    rows: dict[RowKey, Counter] = {}
    totals: Counter = Counter()
    spent_by_row: dict[RowKey, list[tuple[float, int]]] = {}  # (seconds, epochs) of each done run
    epochs_by_row: dict[RowKey, list[float]] = {}  # the seconds of every logged epoch of the done runs
    timed_on: Counter = Counter()  # the device each timed run names: times from different machines differ
    failures: list[tuple[Path, str]] = []
    in_progress: list[tuple[Path, RunStatus, InProgress | None]] = []
    for record in records:
        state = run_status(record.path)
        if state in (RunStatus.running, RunStatus.partial):
            try:
                in_progress.append((record.path, state, in_progress_from_log(record.path, record.config)))
            except DamagedFile:  # the warnings name the file
                pass
        key = row_key(record, fields)
        rows.setdefault(key, Counter())[state] += 1
        totals[state] += 1
        if state == RunStatus.done and record.summary and record.summary.get("wall_seconds") is not None:
            spent_by_row.setdefault(key, []).append((float(record.summary["wall_seconds"]),
                                                     int(record.summary["stop_epoch"])))
            timed_on[str(record.summary.get("device", "unknown device"))] += 1
            if times and record.log_readable:  # a log read per done run: only when the times are asked for
                epochs_by_row.setdefault(key, []).extend(_epoch_seconds(record.path))
        if state == RunStatus.failed:
            lines = (record.path / ERROR_FILE).read_text(errors="replace").strip().splitlines() or ["(empty)"]
            failures.append((record.path, lines[-1]))
    totals[RunStatus.damaged] += len(results.damaged_runs())

    def numbers(c: Counter, spent: list[tuple[float, int]], epoch_seconds: list[float]) -> list[str]:
        seconds, epochs = sum(s for s, _ in spent), sum(e for _, e in spent)
        counts = _counts(c)
        if not times:
            return counts
        median = format_duration(statistics.median(epoch_seconds)) if epoch_seconds else "–"
        return counts + ([format_duration(seconds / epochs) if epochs else "–", median,
                          format_duration(seconds / len(spent)), format_duration(seconds)] if spent else ["–"] * 4)

    named = _named_headers(fields)
    every_done_run = [spent for row_spent in spent_by_row.values() for spent in row_spent]
    return StatusReport(
        title=f"{root}: {len(records)} runs",
        caption=f"pending includes {totals[RunStatus.partial]} partial run(s), resumed by the next sweep",
        headers=[*named, *_COUNT_HEADERS, *(_TIME_HEADERS if times else [])], named_by=len(named),
        rows=[[*key.cells(), *numbers(rows[key], spent_by_row.get(key, []), epochs_by_row.get(key, []))]
              for key in sorted(rows, key=lambda k: k.sort_key)],
        total=["total", *[""] * (len(named) - 1),
               *numbers(totals, every_done_run, [s for row_seconds in epochs_by_row.values() for s in row_seconds])],
        timed_on=timed_on.most_common() if times else [], in_progress=sorted(in_progress, key=lambda r: r[0].name),
        warnings=results.warnings(), failures=failures)


def _epoch_seconds(run_dir: Path) -> list[float]:
    """The wall time of each logged epoch of a run; none where it has no log or the log cannot be read (the
    summary's total still counts)."""
    try:
        return one_row_per_epoch(read_log(run_dir, needs=("epoch", "epoch_seconds")))["epoch_seconds"] \
            .astype(float).tolist()
    except DamagedFile:
        return []


def _counts(c: Counter) -> list[str]:
    """A row's count cells: done, running, failed, damaged, pending (partial included), total."""
    return [str(c[RunStatus.done]), str(c[RunStatus.running]), str(c[RunStatus.failed]),
            str(c[RunStatus.damaged]), str(c[RunStatus.partial] + c[RunStatus.pending]), str(sum(c.values()))]


def _named_headers(fields: list[str]) -> list[str]:
    """The headers of the cells that name a Table 1 row (`RowKey.cells`)."""
    return ["Dataset", "Rule", "1st layer", "Hidden units", "α", *[f.replace("_", " ") for f in fields[5:]]]


def print_status(report: StatusReport, console: Console) -> None:
    """The report for a terminal: tables fitted to `console`'s width, warnings and failures in colour."""
    table = Table(title=report.title, caption=report.caption)
    for i, header in enumerate(report.headers):
        if i < report.named_by:
            table.add_column(header, no_wrap=True)  # names: shortened (…) only when nothing else can give way
        else:
            table.add_column(header, justify="right")
    for row in report.rows:
        table.add_row(*row)
    table.add_section()
    table.add_row(*report.total)
    console.print(fit(table, console, short_headers={**_COUNT_HEADERS, **_TIME_HEADERS}))
    if report.timed_on:
        console.print(escape(report.timed_on_line), highlight=False)
    if report.in_progress:
        headers, cells = _in_progress_grid(report.in_progress)
        progress = Table(title=_IN_PROGRESS_TITLE, caption=_IN_PROGRESS_CAPTION)
        for header in headers:
            progress.add_column(header, justify="left" if header in ("run id", "state") else "right",
                                no_wrap=header == "run id")
        for line in cells:
            progress.add_row(*line)
        console.print(fit(progress, console))
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    for path, line in report.failures:
        console.print(f"[red]failed[/] {escape(str(path))}: {escape(line)}", highlight=False, soft_wrap=True)


def status_markdown(report: StatusReport) -> str:
    """The report as GitHub-flavoured markdown: the count table (total in bold), then the rest as lists."""
    lines = [f"Status: `{report.title}`", ""]
    total = [f"**{cell}**" if cell else "" for cell in report.total]
    lines += markdown_table(report.headers, [*report.rows, total], report.named_by) + [""]
    lines += [f"- {report.caption}."] + ([f"- {report.timed_on_line}."] if report.timed_on else [])
    if report.in_progress:
        headers, cells = _in_progress_grid(report.in_progress)
        lines += ["", f"{_IN_PROGRESS_TITLE.capitalize()}:", "", *markdown_table(headers, cells, 2), "",
                  f"- {_IN_PROGRESS_CAPTION}."]
    lines += [f"- warning: {w}" for w in report.warnings]
    lines += [f"- failed {path}: {line}" for path, line in report.failures]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class InProgress:
    """Where an unfinished run stands, from its log: the early-stopping state training keeps, replayed
    (core/stopping.py)."""

    epoch: int  # epochs done
    best_val_acc: float
    best_epoch: int
    since_best: int  # epochs without a higher validation accuracy
    patience: int
    epochs_left_at_least: int  # if validation accuracy never rises again: patience or the epoch cap ends it
    seconds_per_epoch: float  # the median of the last 5 epochs: the pace now, not at the start

    @property
    def seconds_left_at_least(self) -> float:
        return self.epochs_left_at_least * self.seconds_per_epoch


def in_progress_from_log(run_dir: Path, config: TrainConfig) -> InProgress | None:
    """The unfinished run's state after its last logged epoch; None before its first. Raises DamagedFile
    for a log that cannot be read."""
    log = one_row_per_epoch(read_log(run_dir, needs=("epoch", "val_acc", "epoch_seconds")))
    if log.empty:
        return None
    state = replay(log, config).progress
    return InProgress(epoch=state.epoch, best_val_acc=state.best_val_acc, best_epoch=state.best_epoch,
                      since_best=state.epochs_since_best, patience=config.patience,
                      epochs_left_at_least=max(0, min(config.patience - state.epochs_since_best,
                                                      config.max_epochs - state.epoch)),
                      seconds_per_epoch=float(log["epoch_seconds"].tail(5).median()))


_IN_PROGRESS_TITLE = "runs in progress"
_IN_PROGRESS_CAPTION = ("stops in at least: if validation accuracy never rises again (early stopping or the epoch "
                        "cap), at the pace of its last 5 epochs")


def _in_progress_grid(runs: list[tuple[Path, RunStatus, InProgress | None]]) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the runs-in-progress table, shared by the terminal and markdown."""
    headers = ["run id", "state", "epoch", "best val", "since best", "per epoch", "stops in at least"]
    cells = []
    for path, state, where in runs:
        if where is None:
            cells.append([path.name, state.value, "0", *["–"] * 4])  # in its first epoch
            continue
        cells.append([path.name, state.value, str(where.epoch),
                      f"{100 * where.best_val_acc:.2f}% (epoch {where.best_epoch})",
                      f"{where.since_best}/{where.patience}", format_duration(where.seconds_per_epoch),
                      f"{where.epochs_left_at_least} epochs ({format_duration(where.seconds_left_at_least)})"])
    return headers, cells


__all__ = ["print_plan", "status_report", "print_status", "status_markdown", "StatusReport", "StatusFormat",
           "InProgress", "in_progress_from_log"]
