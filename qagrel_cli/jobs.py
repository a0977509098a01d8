"""What both sweep executors share: jobs, training a job in a folder, shipped run files, the progress bar.

A job is what one worker trains at once: one run, or, with a sweep's `pack: K`,
up to K runs that differ only in seed, trained as one seed pack
(qagrel_cli/pack.py). The local executor trains a job in a process of its own,
the Ray executor in a Ray task; both call `train_job`.

The Ray executor trains in a scratch folder on the worker and ships the run's
files to the driver as bytes. `write_run_files` writes them in the engine's own
order (checkpoint before the log it matches, summary last, then the checkpoint
goes), so a run folder written from shipped files is the folder the engine
would have written, and `run_state` reads it the same way.
"""

from __future__ import annotations

import dataclasses
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from qagrel_cli.config import QagrelError, TrainConfig
from qagrel_cli.runs import CHECKPOINT_FILE, CONFIG_FILE, LOG_FILE, SUMMARY_FILE, atomic_write

if TYPE_CHECKING:  # sweep.py imports this module
    from qagrel_cli.sweep import SweepOutcome

# The engine's write order (save_progress, finish_run): the summary says "finished", so it comes last.
SHIPPED_FILES = (CONFIG_FILE, CHECKPOINT_FILE, LOG_FILE, SUMMARY_FILE)


@dataclass(frozen=True)
class Job:
    """Runs one worker trains together: one run, or a seed pack (runs that differ only in seed)."""

    configs: tuple[TrainConfig, ...]

    @property
    def label(self) -> str:
        """The run id, or for a pack its first run id and size: for progress lines and Ray task names."""
        first = self.configs[0].run_id
        return first if len(self.configs) == 1 else f"{first} +{len(self.configs) - 1} seeds"

    def on_device(self, device: str) -> "Job":
        """The same runs on `device` (device is not part of a run id)."""
        return Job(tuple(dataclasses.replace(c, device=device) for c in self.configs))


def make_jobs(configs: Sequence[TrainConfig], pack: int = 1) -> list[Job]:
    """Group runs that differ only in seed into jobs of at most `pack` runs.

    Jobs keep the sweep's order (seed 0 of every row first): a job comes where
    its first run came.
    """
    if isinstance(pack, bool) or not isinstance(pack, int) or pack < 1:
        raise QagrelError(f"pack must be a whole number of runs >= 1, got {pack!r}")
    position = {c.run_id: i for i, c in enumerate(configs)}
    rows: dict[TrainConfig, list[TrainConfig]] = {}
    for config in configs:
        rows.setdefault(dataclasses.replace(config.resolved(), seed=0), []).append(config)
    jobs = [Job(tuple(members[i:i + pack])) for members in rows.values() for i in range(0, len(members), pack)]
    return sorted(jobs, key=lambda job: position[job.configs[0].run_id])


def train_job(configs: Sequence[TrainConfig], root: Path, *, data_dir: Path, download: bool) -> None:
    """Train (or resume) the runs in `root/<run id>/`: one run alone, several as one seed pack."""
    if len(configs) == 1:  # alone, not a pack of one: a pack on CUDA is vmapped, a run alone bitwise the engine's
        from qagrel_cli.engine import train

        train(configs[0], root / configs[0].run_id, data_dir=data_dir, download=download, quiet=True)
    else:
        from qagrel_cli.pack import train_pack

        train_pack(configs[0], [c.seed for c in configs], root, data_dir=data_dir, download=download, quiet=True)


def error_text(err: BaseException) -> str:
    """What a failed run's _error.txt says: a user error's one line, else the traceback."""
    return f"{err}\n" if isinstance(err, QagrelError) else "".join(traceback.format_exception(err))


def read_run_files(run_dir: Path, names: Sequence[str] = SHIPPED_FILES) -> dict[str, bytes]:
    """The files among `names` that the run folder holds, as bytes."""
    files = {}
    for name in names:
        try:
            files[name] = (run_dir / name).read_bytes()
        except FileNotFoundError:
            pass
    return files


def write_run_files(run_dir: Path, files: dict[str, bytes]) -> None:
    """Write shipped run files atomically, in the engine's order; a summary ends the run, so the checkpoint goes."""
    for name in SHIPPED_FILES:
        if name in files:
            atomic_write(run_dir / name, lambda tmp, data=files[name]: tmp.write_bytes(data))
    if SUMMARY_FILE in files:
        (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)


class SweepProgress:
    """The sweep's live bar (runs done / running / failed / pending, elapsed, ETA) and a line per finished run."""

    def __init__(self, console: Console, total: int, outcome: "SweepOutcome") -> None:
        self.outcome = outcome
        self.progress = Progress(SpinnerColumn(), TextColumn("runs"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), console=console,
                                 speed_estimate_period=7 * 24 * 3600)  # runs take hours: average over the sweep
        self.task = self.progress.add_task("runs", total=total, counts="")

    def __enter__(self) -> "SweepProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def show(self, running: int, pending: int) -> None:
        """Refresh the counts."""
        self.progress.update(self.task, counts=(f"done {len(self.outcome.trained)}  running {running}  "
                                                f"failed {len(self.outcome.failed)}  pending {pending}"))

    def note(self, line: str) -> None:
        """A log line above the bar (readable off a terminal too)."""
        self.progress.console.print(line, highlight=False, soft_wrap=True)

    def ran(self, line: str, running: int, pending: int) -> None:
        """One run is over: say how, and advance the bar."""
        self.note(line)
        self.progress.update(self.task, advance=1)
        self.show(running, pending)


__all__ = ["Job", "make_jobs", "train_job", "error_text", "read_run_files", "write_run_files", "SweepProgress",
           "SHIPPED_FILES"]
