"""Reading a results folder: the one reader behind `qagrel table`, `status`, `plot` and a sweep's resume.

A results folder holds run folders (at any depth) and the `_sweep.yaml` of each
sweep that wrote there, which names the runs that have not started yet. Real
folders get damaged over months (a half-copied file, a full disk, a shared
file system): `read_results` returns the runs it can read and, beside them,
each damaged file with the reason, so every view reports them and goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qagrel_cli.core import run_folder
from qagrel_cli.core.config import QagrelError, TrainConfig
from qagrel_cli.sweeps.sweep_file import SWEEP_FILE, parse_sweep


@dataclass(frozen=True)
class RunRecord:
    """One run as found on disk (or planned by a sweep): its config and summary (None if unfinished)."""

    path: Path
    config: TrainConfig
    summary: dict[str, Any] | None
    log_readable: bool = True  # False: the log is damaged (the summary, if any, still holds the results)

    @property
    def hidden_units(self) -> str:
        """Table 1's hidden units, e.g. '21632-5408-500'."""
        from qagrel_cli.core.data import input_shape  # torch: only when a view needs the sizes
        from qagrel_cli.core.models import hidden_units

        return hidden_units(self.config.arch, self.config.fc, input_shape(self.config.dataset), self.config.padding)

    @property
    def table1_units(self) -> str:
        """The hidden units of the network Table 1 names for this run: its own, with the paper's padding."""
        from qagrel_cli.core.data import input_shape
        from qagrel_cli.core.models import hidden_units

        return hidden_units(self.config.arch, self.config.fc, input_shape(self.config.dataset))


@dataclass(frozen=True)
class Damage:
    """A file of a results folder that cannot be read, and why."""

    file: Path
    reason: str
    folder: bool = False  # a folder that cannot be listed: whatever runs it holds are left out

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


@dataclass
class Results:
    """The runs of a results folder that could be read, and the damaged files."""

    runs: list[RunRecord] = field(default_factory=list)
    damaged: list[Damage] = field(default_factory=list)

    def damaged_runs(self) -> set[Path]:
        """The run folders left out because their config or summary cannot be read (a damaged log keeps its
        run; a damaged sweep file is no run)."""
        return {d.file if d.folder else d.file.parent for d in self.damaged
                if d.folder or d.file.name not in (run_folder.LOG_FILE, SWEEP_FILE)}

    def warnings(self, log_note: str = "its run's summary is still used") -> list[str]:
        """One line per damaged file, for a view to print before its output; `log_note` says what the view
        does with a run whose log alone is damaged."""
        return [f"skipped unreadable folder {d}" if d.folder
                else f"skipped damaged file {d}" if d.file.name != run_folder.LOG_FILE
                else f"unreadable log ({log_note}) {d}" for d in self.damaged]


def check_results_folder(root: Path) -> Path:
    """`root` as a Path, or a one-line QagrelError when it is missing or a file."""
    root = Path(root)
    if root.is_file():
        raise QagrelError(f"{root} is a file, not a results folder")
    if not root.is_dir():
        raise QagrelError(f"{root}: no such results folder")
    return root


def read_results(root: Path) -> Results:
    """Every run under `root`: the run folders on disk plus the not-yet-started runs of its sweeps.

    A run whose config or summary cannot be read is left out and listed as
    damaged; a run whose log cannot be read is kept (its summary holds the
    results) with `log_readable=False`, and the log is listed as damaged.
    """
    root = check_results_folder(root)
    results = Results()
    records: dict[Path, RunRecord] = {}
    damaged_runs: set[Path] = set()
    if run_folder.is_run_dir(root):
        files, unreadable = [root / run_folder.CONFIG_FILE], []
    else:
        files, unreadable = run_folder.scan_results(root, (run_folder.CONFIG_FILE, SWEEP_FILE))
    results.damaged += [Damage(err.path, err.reason, folder=True) for err in unreadable]
    damaged_runs.update(err.path for err in unreadable)  # not also a pending run of its sweep
    for run_dir in [f.parent for f in files if f.name == run_folder.CONFIG_FILE]:
        try:
            record = RunRecord(run_dir, run_folder.read_config(run_dir), run_folder.read_summary(run_dir))
        except run_folder.DamagedFile as err:
            results.damaged.append(Damage(err.path, err.reason))
            damaged_runs.add(run_dir)
            continue
        damage = _log_damage(run_dir)
        if damage is not None:
            results.damaged.append(damage)
            record = RunRecord(record.path, record.config, record.summary, log_readable=False)
        records[run_dir] = record
    for sweep_file in [f for f in files if f.name == SWEEP_FILE]:
        try:
            stored = parse_sweep(sweep_file.read_text(), sweep_file, default_name=sweep_file.parent.name)
        except (OSError, UnicodeDecodeError, QagrelError) as err:
            results.damaged.append(Damage(sweep_file, " ".join(str(err).split())))
            continue
        for config in stored.configs:
            run_dir = sweep_file.parent / config.run_id
            if run_dir not in records and run_dir not in damaged_runs:
                records[run_dir] = RunRecord(run_dir, config, None)
    results.runs = sorted(records.values(), key=lambda r: str(r.path))
    return results


def _log_damage(run_dir: Path) -> Damage | None:
    """The log's damage, if it exists and its footer cannot be read or lacks a needed column (the body is
    read only to plot)."""
    try:
        run_folder.check_log(run_dir)
    except run_folder.DamagedFile as err:
        return Damage(err.path, err.reason)
    return None


__all__ = ["RunRecord", "Damage", "Results", "read_results", "check_results_folder"]
