"""The run ledger: each run's lock and status, and what happened to the runs a sweep gave out.

Both executors (local processes: local_executor.py; Ray tasks: ray_executor.py),
the sweep driver and `qagrel status` use it; it is owned by none of them.

A run's status is decided in one place, `run_status`. A run is locked (flock on
`<run>/_lock`, qagrel_cli/core/run_folder.py) by the process that trains it
(with Ray, the driver, while the run's task is out); the kernel drops the lock
when that process dies, even on kill -9, so a stale lock never blocks a later
sweep.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Sequence

from qagrel_cli.core import run_folder
from qagrel_cli.core.config import TrainConfig
from qagrel_cli.core.run_folder import CHECKPOINT_FILE, ERROR_FILE, LOG_FILE, is_locked, try_lock

# What happened to a run a worker was given (the details are on disk).
EXIT_TRAINED = 0  # trained (or resumed) to the end: _summary.json exists
EXIT_FAILED = 1  # raised: _error.txt holds the traceback
EXIT_LOCKED = 75  # another live process holds the run's lock: not touched
EXIT_ALREADY_DONE = 76  # finished by someone else between the plan and the lock
# A worker gives up on a lock held this long: `qagrel status` probes locks for a
# moment, and that must not make a sweep skip a run.
LOCK_RETRY_SECONDS = 2.0


class RunStatus(str, Enum):
    done = "done"  # _summary.json exists (finished or diverged)
    running = "running"  # a live process holds the lock
    failed = "failed"  # crashed; _error.txt says why
    damaged = "damaged"  # its config or summary cannot be read: left alone until a person looks
    partial = "partial"  # some epochs done: the next sweep resumes it
    pending = "pending"  # nothing done yet


def run_status(run_dir: Path) -> RunStatus:
    """The one place that decides what status a run folder has (it reads the summary and config it finds).
    A folder that cannot be looked into (no permission, an I/O error) is damaged."""
    try:
        return _status(run_dir)
    except OSError:
        return RunStatus.damaged


def _status(run_dir: Path) -> RunStatus:
    if run_folder.is_finished(run_dir):
        return RunStatus.damaged if damaged_file(run_dir) else RunStatus.done
    if is_locked(run_dir):
        return RunStatus.running
    if damaged_file(run_dir):
        return RunStatus.damaged
    if (run_dir / ERROR_FILE).exists():
        return RunStatus.failed
    if (run_dir / LOG_FILE).exists() or (run_dir / CHECKPOINT_FILE).exists():
        return RunStatus.partial
    return RunStatus.pending


def damaged_file(run_dir: Path) -> run_folder.DamagedFile | None:
    """What makes a run damaged, naming the file: its config or (once finished) its summary cannot be read.

    A finished run whose config is unreadable is damaged too: no view can tell which row its
    results belong to. The log and checkpoint are not read here (a damaged log is reported by the
    views; a damaged checkpoint fails the run that resumes from it, naming the file).
    """
    try:
        if run_folder.is_run_dir(run_dir):
            run_folder.read_config(run_dir)
        if run_folder.is_finished(run_dir):
            run_folder.read_summary(run_dir)
    except run_folder.DamagedFile as err:
        return err
    except OSError as err:  # the folder itself cannot be looked into
        return run_folder.DamagedFile(run_dir, f"cannot read the folder: {err.strerror or err}")
    return None


@dataclass
class SweepOutcome:
    """What one invocation did, run ids per outcome."""

    trained: list[str] = field(default_factory=list)
    diverged: list[str] = field(default_factory=list)  # a subset of trained
    failed: list[str] = field(default_factory=list)
    locked: list[str] = field(default_factory=list)  # running in another process: skipped
    already_done: list[str] = field(default_factory=list)
    failed_before: list[str] = field(default_factory=list)  # skipped: run again with retry_failed
    damaged: list[str] = field(default_factory=list)  # skipped: a file of the run cannot be read
    interrupted: bool = False

    def describe(self) -> str:
        """One line for the user: what was trained and what was skipped, and why."""
        diverged = f" ({len(self.diverged)} diverged)" if self.diverged else ""
        text = (f"trained {len(self.trained)} run(s){diverged}, {len(self.failed)} failed; skipped "
                f"{len(self.already_done)} already finished, {len(self.locked)} running in another process")
        if self.failed_before:
            text += f", {len(self.failed_before)} that failed before (--retry-failed runs them again)"
        if self.damaged:
            text += f", {len(self.damaged)} damaged (qagrel status names their files)"
        return text



@dataclass
class Claims:
    """Of a job's runs, those this process took (run id -> lock fd) and those it left (run id -> EXIT_* why)."""

    fds: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)


def claim_runs(root: Path, configs: Sequence[TrainConfig]) -> Claims:
    """Take the lock of each run in `root/<run id>/` for training it, waiting up to LOCK_RETRY_SECONDS in all.

    A run whose lock another live process holds is left (EXIT_LOCKED), as is one
    that was finished between the plan and the lock (EXIT_ALREADY_DONE). A taken
    run loses its old _error.txt (it is being retried).
    """
    deadline = time.monotonic() + LOCK_RETRY_SECONDS
    claims = Claims()
    for config in configs:
        run_dir = root / config.run_id
        while (fd := try_lock(run_dir)) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if fd is None:
            claims.refused[config.run_id] = EXIT_LOCKED
        elif run_folder.is_finished(run_dir):
            os.close(fd)
            claims.refused[config.run_id] = EXIT_ALREADY_DONE
        else:
            (run_dir / ERROR_FILE).unlink(missing_ok=True)
            claims.fds[config.run_id] = fd
    return claims


def record_outcome(code: int, run_dir: Path, run_id: str, outcome: SweepOutcome) -> str:
    """File a run under what happened to it (an EXIT_* code) and say it in one line.

    A failed run's cause is already in its _error.txt.
    """
    if code == EXIT_TRAINED:
        outcome.trained.append(run_id)
        try:
            summary = run_folder.read_summary(run_dir) or {}
        except run_folder.DamagedFile as err:
            return f"[red]damaged[/] {run_id}: {err}"
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
        if not run_folder.is_finished(run_dir):
            run_folder.atomic_write_text(run_dir / ERROR_FILE, text)
    finally:
        if own:
            os.close(fd)


__all__ = ["RunStatus", "run_status", "damaged_file", "SweepOutcome", "Claims", "claim_runs",
           "record_outcome", "write_error", "EXIT_TRAINED", "EXIT_FAILED", "EXIT_LOCKED", "EXIT_ALREADY_DONE"]
