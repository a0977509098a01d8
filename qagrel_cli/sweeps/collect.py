"""`qagrel collect`: the finished runs of a results folder, copied into another one.

A sweep runs where there is room (a scratch disk, a cluster's file system) and its
results are kept somewhere else (the repository's `results/`, a shared drive).
`collect` copies each finished run's result files (config, summary, log) and the
sweep files (with `with_weights`, the run's weights files too), never a checkpoint or a
lock, so an unfinished run stays behind to be resumed where it is. It is safe to repeat
and to run while the sweep runs:

- a run already finished in the destination is kept as it is (with `with_weights`, given the weights
  files it lacks);
- an unfinished one there (partial, failed, damaged) is replaced by the finished run;
- one that a process is training there is left alone and reported;
- each run is staged in a `_collect-*` folder beside it and moved into place whole, so a
  reader (or a process killed mid-copy) never leaves half a run.

A sweep file already in the destination must be the same sweep: a different one is
an error before anything is copied. `place_finished_run` is also how
`benchmarks/gpu_sweep.py unpack` puts runs trained elsewhere into place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from qagrel_cli.core import run_folder
from qagrel_cli.core.config import QagrelError
from qagrel_cli.sweeps.ledger import RunStatus, run_status
from qagrel_cli.sweeps.results import check_results_folder, read_results
from qagrel_cli.sweeps.sweep_file import SWEEP_FILE, refuse_other_sweep

STAGING_PREFIX = "_collect-"  # '_': never read as a run folder


class Placement(str, Enum):
    added = "added"  # now in place (it replaced an unfinished run, if there was one)
    kept = "kept"  # a finished run was there already: left as it was
    running = "running"  # a process is training the run there: left alone


@dataclass
class Collected:
    """What `collect` did, run folders named relative to the source."""

    added: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    running: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)  # not finished in the source (started or not)
    sweep_files: list[str] = field(default_factory=list)  # sweep files copied
    warnings: list[str] = field(default_factory=list)  # one line per damaged file or unreadable folder

    def note(self, name: str, placement: Placement) -> None:
        """File run `name` under what placing it did."""
        {Placement.added: self.added, Placement.kept: self.kept, Placement.running: self.running}[placement] \
            .append(name)


def place_finished_run(staged: Path, dest: Path) -> Placement:
    """Move the finished run `staged` (on `dest`'s file system) to `dest`, unless a finished run is there or
    a process is training one there; what is not placed stays in `staged` for its caller to remove."""
    status = run_status(dest)
    if status == RunStatus.done:
        return Placement.kept
    if status == RunStatus.running:
        return Placement.running
    if dest.exists():  # pending, partial, failed or damaged: the finished run replaces it
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, dest)
    return Placement.added


def collect(source: Path, dest: Path, *, with_weights: bool = False) -> Collected:
    """Copy every finished run below `source` to the same place below `dest`, and the sweep files; with
    `with_weights`, each run's weights at its best and last epoch too (core/weights.py)."""
    source = check_results_folder(source).resolve()
    dest = Path(dest).resolve()
    if dest == source or dest.is_relative_to(source) or source.is_relative_to(dest):
        raise QagrelError(f"{dest} and {source} overlap: collect copies from one results folder into another")
    if dest.exists() and not dest.is_dir():
        raise QagrelError(f"{dest} is a file, not a results folder")
    sweep_files = run_folder.scan_results(source, (SWEEP_FILE,))[0]
    for sweep_file in sweep_files:  # all checked before anything is copied
        try:
            text = sweep_file.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise QagrelError(f"{sweep_file}: cannot read the sweep file ({err})") from None
        refuse_other_sweep(dest / sweep_file.relative_to(source), text, sweep_file,
                           "collect it into another folder")
    done = Collected()
    for sweep_file in sweep_files:
        there = dest / sweep_file.relative_to(source)
        if not there.exists():
            run_folder.atomic_write(there, lambda tmp, src=sweep_file: shutil.copyfile(src, tmp))
            done.sweep_files.append(str(sweep_file.relative_to(source)))
    results = read_results(source)  # the run folders, and the runs of its sweeps not started yet
    done.warnings = results.warnings("its run is still copied")
    done.unfinished = sorted(str(run_dir.relative_to(source)) for run_dir in results.damaged_runs())
    for record in results.runs:
        run_dir, name = record.path, str(record.path.relative_to(source))
        if run_status(run_dir) != RunStatus.done:
            done.unfinished.append(name)
            continue
        files = run_folder.RESULT_FILES + (run_folder.WEIGHTS_FILES if with_weights else ())
        done.note(name, _collect_run(run_dir, dest / name, files))
    return done


def _collect_run(run_dir: Path, target: Path, files: tuple[str, ...]) -> Placement:
    """Unless a finished run is at `target`, stage a copy of the run's `files` beside it, then place it. A
    finished run there gets only the weights files among `files` that it lacks (each written atomically)."""
    try:
        if run_status(target) == RunStatus.done:  # no copy to make
            for name in files:
                if name in run_folder.WEIGHTS_FILES and (run_dir / name).exists() and not (target / name).exists():
                    run_folder.atomic_write(target / name, lambda tmp, src=run_dir / name: shutil.copyfile(src, tmp))
            return Placement.kept
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=STAGING_PREFIX) as staging:
            staged = Path(staging) / run_dir.name
            staged.mkdir()
            for file_name in files:
                if (run_dir / file_name).exists():  # a lost log (the summary holds the results), no weights (older)
                    shutil.copy2(run_dir / file_name, staged / file_name)
            return place_finished_run(staged, target)
    except OSError as err:  # a full disk, a folder not ours: one line, and no half run left behind
        raise QagrelError(f"cannot copy {run_dir} to {target}: {err.strerror or err}") from None


__all__ = ["collect", "Collected", "place_finished_run", "Placement", "STAGING_PREFIX"]
