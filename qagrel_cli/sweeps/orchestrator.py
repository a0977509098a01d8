"""Running a sweep: decide what is left to train, then hand it to an executor.

`run_sweep` reads each run's status from the ledger, groups what is left into
jobs (one run, or a seed pack) and gives them to the local executor (worker
processes: local_executor.py) or the Ray executor (ray_executor.py). The
executors report back through the ledger; they never import this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from qagrel_cli.core.config import QagrelError, TrainConfig
from qagrel_cli.core.data import default_data_dir, load_dataset
from qagrel_cli.core.interrupts import sigterm_interrupts
from qagrel_cli.core.run_folder import atomic_write_text
from qagrel_cli.sweeps.capacity import cap_workers
from qagrel_cli.sweeps.jobs import make_jobs
from qagrel_cli.sweeps.ledger import RunStatus, SweepOutcome, damaged_file, run_status
from qagrel_cli.sweeps.sweep_file import SWEEP_FILE, Sweep, check_sweep_name

# A sweep this large is more likely a grid written wrong than meant: it asks for --yes first.
BIG_SWEEP = 5000

if TYPE_CHECKING:
    from qagrel_cli.sweeps.ray_executor import RayOptions


def run_sweep(sweep: Sweep, results: Path, *, workers: int = 1, data_dir: Path | None = None,
              download: bool = False, retry_failed: bool = False, console: Console | None = None,
              pack: int | None = None, ray: "RayOptions | None" = None, threads: int | None = None,
              replace: bool = False, confirmed: bool = False) -> SweepOutcome:
    """Train every unfinished run of `sweep`; resume partial runs, skip locked ones.

    Runs go to `workers` local processes, or with `ray` to Ray tasks (see
    ray_executor.py). `threads`: CPU threads per local worker (default: the
    cores divided among them). `pack` (default: the sweep file's `pack:`) trains up to
    that many runs that differ only in seed as one seed pack per worker. A sweep whose name another sweep
    file holds in `results` is refused unless `replace` (then this file becomes that name's sweep), and one
    of more than BIG_SWEEP runs unless `confirmed`. Local workers beyond the cores or the memory are capped
    (sweeps/capacity.py), with a note.
    Ctrl-C and SIGTERM stop the workers at once (every finished epoch is
    already saved) and return with `interrupted` set.
    """
    console = console or Console(stderr=True)
    if workers < 1:
        raise QagrelError(f"--workers must be at least 1, got {workers}")
    if threads is not None and threads < 1:
        raise QagrelError(f"--threads must be at least 1, got {threads}")
    if threads is not None and ray is not None:
        raise QagrelError("--threads is for local workers: a Ray task trains with --cpus-per-run threads")
    if ray is not None:
        from qagrel_cli.sweeps.ray_executor import preflight
        preflight(ray)  # no Ray installed, or no cluster at the address: one line, before anything is written
    if not replace:
        check_sweep_name(sweep, results)
    if len(sweep.configs) > BIG_SWEEP and not confirmed:
        raise QagrelError(f"{sweep.path} expands to {len(sweep.configs)} runs (more than {BIG_SWEEP}): look at them "
                          f"with --dry-run, then give --yes to train them all")
    pack = sweep.pack if pack is None else pack
    # Absolute: workers (a Ray task on another node, too) must find the data whatever their folder.
    data_dir = Path(data_dir if data_dir is not None else default_data_dir()).resolve()
    outcome = SweepOutcome()
    todo: list[TrainConfig] = []
    damage: list[str] = []
    for config in sweep.configs:
        status = run_status(sweep.run_dir(results, config))
        if status == RunStatus.done:
            outcome.already_done.append(config.run_id)
        elif status == RunStatus.running:
            outcome.locked.append(config.run_id)
        elif status == RunStatus.damaged:
            outcome.damaged.append(config.run_id)
            damage.append(f"left damaged run {config.run_id} alone: {damaged_file(sweep.run_dir(results, config))}")
        elif status == RunStatus.failed and not retry_failed:
            outcome.failed_before.append(config.run_id)
        else:
            todo.append(config)
    jobs = make_jobs(todo, pack)
    if ray is None and todo:
        workers, note = cap_workers(workers, todo)
        if note:
            console.print(f"note: {escape(note)}", highlight=False, soft_wrap=True)
    how = "Ray tasks" if ray is not None else f"{workers} worker(s)"
    packs = f" in {len(jobs)} pack(s) of up to {pack}" if pack > 1 else ""
    console.print(f"sweep [bold]{sweep.name}[/]: {len(sweep.configs)} runs in {Path(results) / sweep.name}: "
                  f"{len(outcome.already_done)} done, {len(outcome.locked)} running elsewhere, "
                  f"{len(outcome.failed_before)} failed before, {len(outcome.damaged)} damaged, "
                  f"{len(todo)} to run{packs} with {how}",
                  highlight=False)
    for line in damage:  # one line each, naming the file: a person decides whether to repair or delete it
        console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
    if not todo:
        return outcome
    missing = []
    for dataset in sorted({c.dataset for c in todo}, key=lambda d: d.value):
        try:
            load_dataset(dataset, data_dir, download)  # a missing dataset is one error now, not one per run
        except QagrelError as err:
            missing.append(str(err))
    if missing:  # every dataset the sweep lacks, in one message: one fix before the next try, not one each
        raise QagrelError(" | ".join(missing) if len(missing) > 1 else missing[0])
    root = Path(results) / sweep.name
    sweep_file = root / SWEEP_FILE
    if not sweep_file.exists() or sweep_file.read_text() != sweep.text:
        atomic_write_text(sweep_file, sweep.text)  # a read-only or full folder: one line, before any run starts
    with sigterm_interrupts():
        if ray is not None:
            from qagrel_cli.sweeps.ray_executor import execute as execute_on_ray
            execute_on_ray(root, jobs, data_dir, download, outcome, console, ray)
        else:
            from qagrel_cli.sweeps.local_executor import execute as execute_locally
            execute_locally(root, jobs, workers, data_dir, download, outcome, console, threads)
    return outcome


__all__ = ["run_sweep"]
