"""Sweeps: a YAML grid of training runs, expanded, validated, run in parallel and resumed.

A sweep file (see README, "Sweeps") lists TrainConfig fields under `grid:`;
lists are swept, scalars are fixed. `seeds: 10` is seeds 0-9. Each `include:`
entry is a copy of the grid with some keys replaced; `exclude:` entries drop
every run that matches all their keys. `pack: K` trains up to K runs that
differ only in seed as one seed pack (qagrel_cli/pack.py). Runs live in
`<results>/<sweep-name>/<run-id>/`, named by their resolved config, so a run is
the same run in every sweep that contains it and is never trained twice.

Run state is decided in one place, `run_state`, for the dry run, both
executors (local processes: local_executor.py; Ray tasks: ray_executor.py)
and `qagrel status`. A run is locked (flock on `<run>/_lock`) by the process
that trains it (with Ray, the driver, while the run's task is out); the
kernel drops the lock when that process dies, even on kill -9, so a stale
lock never blocks a later sweep.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import re
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import yaml
from rich.console import Console
from rich.table import Table

from qagrel_cli.config import CONFIG_FIELDS, QagrelError, TrainConfig
from qagrel_cli.jobs import make_jobs
from qagrel_cli.runs import (CHECKPOINT_FILE, ERROR_FILE, LOCK_FILE, LOG_FILE, SUMMARY_FILE, atomic_write_text,
                             find_run_dirs, is_run_dir, read_config, read_summary, write_config)
from qagrel_cli.table import RowKey, RunRecord, format_setting, row_key, row_key_fields

if TYPE_CHECKING:
    from qagrel_cli.ray_executor import RayOptions

SWEEP_KEYS = ("name", "grid", "seeds", "pack", "include", "exclude")
# The sweep file as it was run, kept in its results folder so that `qagrel status`
# knows the runs that have not started yet. '_' keeps it out of pd.read_parquet.
SWEEP_FILE = "_sweep.yaml"

# What happened to a run a worker was given (the details are on disk).
EXIT_TRAINED = 0  # trained (or resumed) to the end: _summary.json exists
EXIT_FAILED = 1  # raised: _error.txt holds the traceback
EXIT_LOCKED = 75  # another live process holds the run's lock: not touched
EXIT_ALREADY_DONE = 76  # finished by someone else between the plan and the lock
# A worker gives up on a lock held this long: `qagrel status` probes locks for a
# moment, and that must not make a sweep skip a run.
LOCK_RETRY_SECONDS = 2.0


# --------------------------------------------------------------------- files

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

    from qagrel_cli.engine import check_config  # the engine's checks of combinations (imports torch)

    configs: dict[str, TrainConfig] = {}
    for where, combo in combos:
        try:
            config = TrainConfig.from_dict(combo)
            check_config(config)
        except QagrelError as err:  # a combination the single values did not reveal
            raise QagrelError(f"{path}: {where}: {err} (in {combo})") from None
        if not any(_matches(config, ex) for ex in excludes):
            configs.setdefault(config.run_id, config)  # an include may repeat a grid run
    if not configs:
        raise QagrelError(f"{path}: the sweep expands to no runs (every combination is excluded)")
    # Seed 0 of every row first: an early look at the whole table, not all seeds of one row.
    ordered = sorted(configs.values(), key=lambda c: c.seed)
    return Sweep(name=name, path=path, text=text, configs=tuple(ordered), pack=pack)


def _axes(path: Path, where: str, mapping: Any) -> dict[str, list[Any]]:
    """A grid-like mapping as key -> non-empty list of values, each value checked by TrainConfig."""
    if not isinstance(mapping, dict) or not mapping:
        hint = "TrainConfig options with a value or a list of values, e.g. {rule: [qagrel, bp]}"
        raise QagrelError(f"{path}: {where}: an empty grid; give {hint}" if not mapping
                          else f"{path}: {where}: must be a mapping of {hint}, got {mapping!r}")
    axes: dict[str, list[Any]] = {}
    for key, value in mapping.items():
        if key not in CONFIG_FIELDS:
            raise QagrelError(f"{path}: {where}: unknown key {key!r}; known: {', '.join(CONFIG_FIELDS)}")
        values = value if isinstance(value, list) else [value]
        if not values:
            raise QagrelError(f"{path}: {where}.{key}: an empty list sweeps over nothing")
        for v in values:
            try:  # TrainConfig owns every check of a value; repeat none of them here
                TrainConfig.from_dict({key: v})
            except QagrelError as err:
                raise QagrelError(f"{path}: {where}.{key}: {err}") from None
        axes[key] = values
    return axes


def _seeds(path: Path, seeds: Any) -> list[int] | None:
    """`seeds: 10` -> [0..9]; a list is taken as given (each checked as a seed)."""
    if seeds is None:
        return None
    if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1:
        return list(range(seeds))
    if isinstance(seeds, list) and seeds:
        return _axes(path, "seeds", {"seed": seeds})["seed"]
    raise QagrelError(f"{path}: seeds: give a number of seeds (10 = seeds 0-9) or a list of seeds, got {seeds!r}")


def _entries(path: Path, key: str, data: dict[str, Any]) -> list[Any]:
    entries = data.get(key) or []
    if not isinstance(entries, list):
        raise QagrelError(f"{path}: {key}: must be a list of mappings like - {{dataset: mnist, arch: fc}}, "
                          f"got {entries!r}")
    return entries


def _matches(config: TrainConfig, exclude: dict[str, list[Any]]) -> bool:
    """True when every key of the exclude entry holds one of its values (compared after resolving defaults)."""
    resolved = config.resolved()
    return all(getattr(resolved, key) in [getattr(TrainConfig.from_dict({key: v}), key) for v in values]
               for key, values in exclude.items())


# --------------------------------------------------------------- run state

class RunState(str, Enum):
    done = "done"  # _summary.json exists (finished or diverged)
    running = "running"  # a live process holds the lock
    failed = "failed"  # crashed; _error.txt says why
    partial = "partial"  # some epochs done: the next sweep resumes it
    pending = "pending"  # nothing done yet


def run_state(run_dir: Path) -> RunState:
    """The one place that decides what state a run folder is in."""
    if (run_dir / SUMMARY_FILE).exists():
        return RunState.done
    if is_locked(run_dir):
        return RunState.running
    if (run_dir / ERROR_FILE).exists():
        return RunState.failed
    if (run_dir / LOG_FILE).exists() or (run_dir / CHECKPOINT_FILE).exists():
        return RunState.partial
    return RunState.pending


def try_lock(run_dir: Path) -> int | None:
    """Take the run's lock without waiting: the open fd (keep it to hold the lock), or None if held elsewhere."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def is_locked(run_dir: Path) -> bool:
    """True while a live process holds the run's lock. Writes nothing."""
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:  # a shared probe: it can only fail against an exclusive holder
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def load_run_config(run_dir: Path) -> TrainConfig:
    """The TrainConfig a run folder was started with."""
    data = read_config(run_dir)
    return TrainConfig.from_dict({k: v for k, v in data.items() if k in CONFIG_FIELDS})


def discover_runs(root: Path) -> list[RunRecord]:
    """Every run under `root`: the run folders on disk plus the not-yet-started runs of its sweeps."""
    root = Path(root)
    if not root.is_dir():
        raise QagrelError(f"{root}: no such results folder")
    records: dict[Path, RunRecord] = {}
    for run_dir in find_run_dirs(root):
        records[run_dir] = RunRecord(run_dir, load_run_config(run_dir).resolved(), read_summary(run_dir))
    for sweep_file in sorted(root.rglob(SWEEP_FILE)):
        stored = parse_sweep(sweep_file.read_text(), sweep_file, default_name=sweep_file.parent.name)
        for config in stored.configs:
            run_dir = sweep_file.parent / config.run_id
            records.setdefault(run_dir, RunRecord(run_dir, config.resolved(), read_summary(run_dir)))
    return sorted(records.values(), key=lambda r: str(r.path))


# ----------------------------------------------------------------- dry run

def print_plan(sweep: Sweep, results: Path, console: Console) -> None:
    """The expanded runs as a table (run id, the settings that vary, lr, state). Writes nothing."""
    states = [run_state(sweep.run_dir(results, c)) for c in sweep.configs]
    settings = [c.resolved().to_dict() for c in sweep.configs]
    in_run_id = {"dataset", "arch", "fc", "rule", "seed", "device"}
    varying = [f for f in CONFIG_FIELDS
               if f not in in_run_id | {"lr"} and len({json.dumps(s[f]) for s in settings}) > 1]
    table = Table(title=f"sweep {sweep.name}: {len(sweep.configs)} runs in {Path(results) / sweep.name}",
                  caption=", ".join(f"{Counter(states).get(s, 0)} {s.value}" for s in RunState))
    table.add_column("#", justify="right")
    table.add_column("run id", no_wrap=True, min_width=max(len(c.run_id) for c in sweep.configs))
    for column in [*varying, "lr", "state"]:
        table.add_column(column)
    for i, (config, setting, state) in enumerate(zip(sweep.configs, settings, states), 1):
        table.add_row(str(i), config.run_id, *[format_setting(setting[f]) for f in varying],
                      format_setting(setting["lr"]), state.value)
    console.print(table)


# ---------------------------------------------------------------- executor

@dataclass
class SweepOutcome:
    """What one invocation did, run ids per outcome."""

    trained: list[str] = field(default_factory=list)
    diverged: list[str] = field(default_factory=list)  # a subset of trained
    failed: list[str] = field(default_factory=list)
    locked: list[str] = field(default_factory=list)  # running in another process: skipped
    already_done: list[str] = field(default_factory=list)
    failed_before: list[str] = field(default_factory=list)  # skipped: run again with retry_failed
    interrupted: bool = False

    def describe(self) -> str:
        """One line for the user: what was trained and what was skipped, and why."""
        diverged = f" ({len(self.diverged)} diverged)" if self.diverged else ""
        text = (f"trained {len(self.trained)} run(s){diverged}, {len(self.failed)} failed; skipped "
                f"{len(self.already_done)} already finished, {len(self.locked)} running in another process")
        if self.failed_before:
            text += f", {len(self.failed_before)} that failed before (--retry-failed runs them again)"
        return text


def run_sweep(sweep: Sweep, results: Path, *, workers: int = 1, data_dir: Path | None = None,
              download: bool = False, retry_failed: bool = False, console: Console | None = None,
              pack: int | None = None, ray: "RayOptions | None" = None) -> SweepOutcome:
    """Train every unfinished run of `sweep`; resume partial runs, skip locked ones.

    Runs go to `workers` local processes, or with `ray` to Ray tasks (see
    ray_executor.py). `pack` (default: the sweep file's `pack:`) trains up to
    that many runs that differ only in seed as one seed pack per worker.
    Ctrl-C and SIGTERM stop the workers at once (every finished epoch is
    already saved) and return with `interrupted` set.
    """
    from qagrel_cli.data import default_data_dir, load_dataset

    console = console or Console(stderr=True)
    if workers < 1:
        raise QagrelError(f"--workers must be at least 1, got {workers}")
    if ray is not None:
        from qagrel_cli.ray_executor import preflight
        preflight(ray)  # no Ray installed, or no cluster at the address: one line, before anything is written
    pack = sweep.pack if pack is None else pack
    data_dir = (Path(data_dir) if data_dir is not None else default_data_dir()).resolve()
    outcome = SweepOutcome()
    todo: list[TrainConfig] = []
    for config in sweep.configs:
        state = run_state(sweep.run_dir(results, config))
        if state == RunState.done:
            outcome.already_done.append(config.run_id)
        elif state == RunState.running:
            outcome.locked.append(config.run_id)
        elif state == RunState.failed and not retry_failed:
            outcome.failed_before.append(config.run_id)
        else:
            todo.append(config)
    jobs = make_jobs(todo, pack)
    how = "Ray tasks" if ray is not None else f"{workers} worker(s)"
    packs = f" in {len(jobs)} pack(s) of up to {pack}" if pack > 1 else ""
    console.print(f"sweep [bold]{sweep.name}[/]: {len(sweep.configs)} runs in {Path(results) / sweep.name}: "
                  f"{len(outcome.already_done)} done, {len(outcome.locked)} running elsewhere, "
                  f"{len(outcome.failed_before)} failed before, {len(todo)} to run{packs} with {how}",
                  highlight=False)
    if not todo:
        return outcome
    for dataset in sorted({c.dataset for c in todo}, key=lambda d: d.value):
        load_dataset(dataset, data_dir, download)  # a missing dataset is one error now, not one per run
    root = Path(results) / sweep.name
    sweep_file = root / SWEEP_FILE
    if not sweep_file.exists() or sweep_file.read_text() != sweep.text:
        atomic_write_text(sweep_file, sweep.text)
    with _sigterm_interrupts():
        if ray is not None:
            from qagrel_cli.ray_executor import execute as execute_on_ray
            execute_on_ray(root, jobs, data_dir, download, outcome, console, ray)
        else:
            from qagrel_cli.local_executor import execute as execute_locally
            execute_locally(root, jobs, workers, data_dir, download, outcome, console)
    return outcome


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a scheduler ending the job) stops the sweep as Ctrl-C does: the executor catches KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():  # signals go to the main thread only
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@dataclass
class Claims:
    """Of a job's runs, those this process took (run id -> lock fd) and those it left (run id -> EXIT_* why)."""

    fds: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)


def claim_runs(root: Path, configs: Sequence[TrainConfig]) -> Claims:
    """Take the lock of each run in `root/<run id>/` for training it, waiting up to LOCK_RETRY_SECONDS in all.

    A run whose lock another live process holds is left (EXIT_LOCKED), as is one
    that was finished between the plan and the lock (EXIT_ALREADY_DONE). A taken
    run loses its old _error.txt (it is being retried) and, when new, gets the
    config the engine would write first: its folder already holds _lock, and the
    engine refuses a non-empty folder that is not a run folder.
    """
    deadline = time.monotonic() + LOCK_RETRY_SECONDS
    claims = Claims()
    for config in configs:
        run_dir = root / config.run_id
        while (fd := try_lock(run_dir)) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if fd is None:
            claims.refused[config.run_id] = EXIT_LOCKED
        elif (run_dir / SUMMARY_FILE).exists():
            os.close(fd)
            claims.refused[config.run_id] = EXIT_ALREADY_DONE
        else:
            (run_dir / ERROR_FILE).unlink(missing_ok=True)
            if not is_run_dir(run_dir):
                write_config(run_dir, config.resolved().to_dict())
            claims.fds[config.run_id] = fd
    return claims


def release_run(run_dir: Path, fd: int) -> None:
    """Give a run's lock back. A finished run's lock file goes too: done is final, and a process that
    opened the file before the unlink gets the lock after us, sees the summary and leaves."""
    if (run_dir / SUMMARY_FILE).exists():
        (run_dir / LOCK_FILE).unlink(missing_ok=True)
    os.close(fd)


def record_outcome(code: int, run_dir: Path, run_id: str, outcome: SweepOutcome) -> str:
    """File a run under what happened to it (an EXIT_* code) and say it in one line.

    A failed run's cause is already in its _error.txt.
    """
    if code == EXIT_TRAINED:
        outcome.trained.append(run_id)
        summary = read_summary(run_dir) or {}
        if summary.get("diverged"):
            outcome.diverged.append(run_id)
        return (f"{summary.get('status', 'finished')} {run_id}: stop epoch {summary.get('stop_epoch')}, "
                f"test accuracy at best {100 * float(summary.get('test_acc_at_best', float('nan'))):.2f}%")
    if code == EXIT_LOCKED:
        outcome.locked.append(run_id)
        return f"skipped {run_id}: another process is training it"
    if code == EXIT_ALREADY_DONE:
        outcome.already_done.append(run_id)
        return f"skipped {run_id}: another process finished it"
    outcome.failed.append(run_id)
    return f"[red]failed[/] {run_id}: see {run_dir / ERROR_FILE}"


def write_error(run_dir: Path, text: str, fd: int | None = None) -> None:
    """Record why a run failed, unless it is finished. Without `fd` (our hold on its lock) the lock is taken
    first, so that a run another process has taken since is left alone."""
    own = fd is None
    if own and (fd := try_lock(run_dir)) is None:
        return
    try:
        if not (run_dir / SUMMARY_FILE).exists():
            atomic_write_text(run_dir / ERROR_FILE, text)
    finally:
        if own:
            os.close(fd)


# ------------------------------------------------------------------ status

def print_status(root: Path, console: Console) -> None:
    """Per Table 1 row: done / running / failed / pending (partial included) counts, then totals."""
    records = discover_runs(root)
    if not records:
        raise QagrelError(f"{root}: no runs found (a sweep writes results/<sweep-name>/<run-id>/)")
    fields = row_key_fields(records)
    rows: dict[RowKey, Counter] = {}
    totals: Counter = Counter()
    failures: list[tuple[Path, str]] = []
    for record in records:
        state = run_state(record.path)
        rows.setdefault(row_key(record, fields), Counter())[state] += 1
        totals[state] += 1
        if state == RunState.failed:
            lines = (record.path / ERROR_FILE).read_text().strip().splitlines() or ["(empty)"]
            failures.append((record.path, lines[-1]))
    table = Table(title=f"{root}: {len(records)} runs",
                  caption=f"pending includes {totals[RunState.partial]} partial run(s), resumed by the next sweep")
    for header in ["Dataset", "Rule", "1st layer", "Hidden units", "α", *[f.replace("_", " ") for f in fields[5:]]]:
        table.add_column(header, overflow="fold")
    for header in ("done", "running", "failed", "pending", "total"):
        table.add_column(header, justify="right")

    def numbers(c: Counter) -> list[str]:
        return [str(c[RunState.done]), str(c[RunState.running]), str(c[RunState.failed]),
                str(c[RunState.partial] + c[RunState.pending]), str(sum(c.values()))]

    for key in sorted(rows, key=lambda k: k.sort_key):
        table.add_row(*key.cells(), *numbers(rows[key]))
    table.add_section()
    table.add_row("total", *[""] * (len(fields) - 1), *numbers(totals))
    console.print(table)
    for path, line in failures:
        console.print(f"[red]failed[/] {path}: {line}", highlight=False, soft_wrap=True)


__all__ = ["Sweep", "load_sweep", "parse_sweep", "RunState", "run_state", "try_lock", "is_locked",
           "discover_runs", "load_run_config", "print_plan", "run_sweep", "SweepOutcome", "print_status",
           "SWEEP_FILE", "Claims", "claim_runs", "release_run", "record_outcome", "write_error"]
