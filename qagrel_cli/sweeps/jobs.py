"""Jobs: what one sweep worker trains at once, and how it trains it.

A job is one run, or, with a sweep's `pack: K`, up to K runs that differ only
in seed, trained as one seed pack (qagrel_cli/core/packs.py). The local
executor trains a job in a process of its own, the Ray executor in a Ray task;
both call `train_job`.
"""

from __future__ import annotations

import dataclasses
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from qagrel_cli.core.config import QagrelError, TrainConfig


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
        rows.setdefault(dataclasses.replace(config, seed=0), []).append(config)
    jobs = [Job(tuple(members[i:i + pack])) for members in rows.values() for i in range(0, len(members), pack)]
    return sorted(jobs, key=lambda job: position[job.configs[0].run_id])


def train_job(configs: Sequence[TrainConfig], root: Path, *, data_dir: Path, download: bool) -> None:
    """Train (or resume) the runs in `root/<run id>/`: one run, or several as one seed pack."""
    from qagrel_cli.core.training import train_runs  # imports torch: only in the process that trains

    train_runs(configs, [root / c.run_id for c in configs], data_dir=data_dir, download=download, quiet=True,
               lock=False)  # the worker took the runs' locks (ledger.claim_runs): a second flock would refuse


def error_text(err: BaseException) -> str:
    """What a failed run's _error.txt says: a user error's one line, else the traceback."""
    return f"{err}\n" if isinstance(err, QagrelError) else "".join(traceback.format_exception(err))


__all__ = ["Job", "make_jobs", "train_job", "error_text"]
