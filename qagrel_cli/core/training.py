"""Training runs to the end: the one epoch loop, for a single run and a seed pack alike.

`train_runs(configs, run_dirs)` is the library entry point behind `qagrel
train` and every sweep worker. The runs must differ only in seed; one run is a
pack of one. Each epoch, every run trains and is evaluated (qagrel_cli/core/packs.py
says how: one after another on a CPU, vmapped on a GPU), then each is saved or,
when it stops (early stopping, its epoch cap or divergence), finished.

It is resumable: after every epoch each run atomically writes a checkpoint
holding everything that determines the rest of the run (weights, optimizer,
RNG states, early-stopping state and the epoch log so far), so calling it
again with the same folders continues exactly where a killed process stopped,
and a finished run is not redone.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from qagrel_cli.core import run_folder
from qagrel_cli.core.config import QagrelError, TrainConfig
from qagrel_cli.core.data import load_dataset
from qagrel_cli.core.packs import LoopPack, Member, PackStrategy, VmapPack
from qagrel_cli.core.stopping import should_stop
from qagrel_cli.core.device import resolve_device
from qagrel_cli.core.trainer import record_epoch
from qagrel_cli.core.run_lifecycle import check_run_folder, finish_run, open_run, save_progress

RUNS_ROOT = Path("results") / "runs"  # where a run's folder goes by default: RUNS_ROOT / <run id>


def run_folders(configs: Sequence[TrainConfig], out: Path | None = None, *, packed: bool = False) -> list[Path]:
    """Where runs go: a single run in `out` itself; a pack's runs in `out/<run id>` (default RUNS_ROOT/<run id>)."""
    if not packed and out is not None:
        return [Path(out)]
    return [(Path(out) if out is not None else RUNS_ROOT) / c.run_id for c in configs]


def train(config: TrainConfig, out: Path | None = None, **options: Any) -> dict[str, Any]:
    """Train (or resume, or return the finished result of) one run in `out` (default RUNS_ROOT/<run id>)."""
    return train_runs([config], run_folders([config], out), **options)[0]


def train_pack(config: TrainConfig, seeds: Sequence[int], out: Path | None = None, **options: Any
               ) -> list[dict[str, Any]]:
    """Train `config` for every seed as one pack; seed s in `out/<its run id>` (the folder `train` would use)."""
    configs = [replace(config, seed=seed) for seed in seeds]
    return train_runs(configs, run_folders(configs, out, packed=True), **options)


def train_runs(configs: Sequence[TrainConfig], run_dirs: Sequence[Path], *, data_dir: Path | None = None,
               download: bool = False, quiet: bool = False, console: Console | None = None,
               strategy: PackStrategy | str = PackStrategy.auto, lock: bool = True) -> list[dict[str, Any]]:
    """Train (or resume, or return the finished results of) runs that differ only in seed, together.

    Returns the summaries in the order given. Raises QagrelError, before
    training, for anything the user can fix (runs that differ in more than the
    seed, a seed twice, missing data, an unusable or foreign run folder, a run
    another process is training). With `lock` (the default) it holds each
    unfinished run's lock while training it; a sweep worker, which took the
    locks itself (qagrel_cli/sweeps/ledger.py), passes False.
    """
    if not configs or len(configs) != len(run_dirs):
        raise QagrelError("give one run folder for each run (at least one)")
    first = configs[0]
    if any(replace(c, seed=first.seed) != first for c in configs):
        raise QagrelError("runs trained together must differ only in seed")
    seeds = [c.seed for c in configs]
    if len(set(seeds)) != len(seeds):
        raise QagrelError(f"seeds {seeds} name a seed twice")
    strategy = PackStrategy(strategy)
    summaries: dict[int, dict[str, Any]] = {}
    todo = []
    for index, (config, run_dir) in enumerate(zip(configs, run_dirs)):
        finished = check_run_folder(Path(run_dir), config)
        if finished is not None:
            summaries[index] = finished
        else:
            todo.append(index)
    if todo:
        run_folder.check_lock_count(len(todo))  # before the data is fetched and any folder is made
        device = resolve_device(first.device)
        raw = load_dataset(first.dataset, data_dir, download)  # before the locks: a missing dataset leaves no folder
        with run_folder.holding_locks([Path(run_dirs[i]) for i in todo]) if lock else contextlib.nullcontext():
            for i in list(todo):  # finished by another process between the check and the lock
                if (finished := run_folder.read_summary(Path(run_dirs[i]))) is not None:
                    summaries[i] = finished
                    todo.remove(i)
            members = [Member(i, configs[i], Path(run_dirs[i]), *open_run(configs[i], Path(run_dirs[i]), raw, device))
                       for i in todo]
            if members:
                summaries.update(_train_members(members, device, strategy, console or Console(stderr=True), quiet))
    return [summaries[i] for i in range(len(configs))]


def _train_members(members: list[Member], device: torch.device, strategy: PackStrategy, console: Console,
                   quiet: bool) -> dict[int, dict[str, Any]]:
    """The epoch loop: all members train an epoch, then each is saved, or finished and let go."""
    if strategy == PackStrategy.auto:  # a pack of one has nothing to batch
        vmappable = device.type == "cuda" and len(members) > 1 and VmapPack.can_train(members[0].config)
        strategy = PackStrategy.vmap if vmappable else PackStrategy.loop
    pack: LoopPack | VmapPack = (VmapPack if strategy == PackStrategy.vmap else LoopPack)(members)
    alone = len(members) == 1
    if not quiet:
        resumed = [f"{m.config.run_id if alone else f'seed {m.config.seed}'} after epoch {m.progress.epoch}"
                   for m in members if m.progress.epoch]
        said = [] if alone else [f"packing {len(members)} runs ({strategy.value})"]
        said += [f"resuming {', '.join(resumed)}"] if resumed else []
        if said:
            console.print("; ".join(said), highlight=False)
    summaries: dict[int, dict[str, Any]] = {}
    # No terminal (a cluster job's log file): one plain line per epoch as it ends, since a live display
    # would only be printed when it stops.
    say = None if quiet or console.is_terminal else _plain_lines(console)
    with _progress_display(console, quiet) as display:
        while pack.members:
            diverged = _train_epoch(pack, display, say)
            staying = []
            for m, m_diverged in zip(pack.members, diverged):
                if not should_stop(m.config, m.progress, m_diverged):
                    save_progress(m.out, m.trainer, m.progress)
                    staying.append(m)
                    continue
                summaries[m.index] = finish_run(m.out, m.trainer, m.progress, m_diverged, device)
                if not quiet and not alone:
                    console.print(f"seed {m.config.seed}: {summaries[m.index]['status']} at epoch "
                                  f"{m.progress.epoch}, best val {m.progress.best_val_acc:.4f}", highlight=False)
            if len(staying) < len(pack.members):
                pack.set_members(staying)
    return summaries


def _train_epoch(pack: LoopPack | VmapPack, display: Progress | None,
                 say: Callable[[str], None] | None = None) -> list[bool]:
    """Train every member one epoch, evaluate, append each member's log row. Returns who diverged.

    The epoch's line of figures goes to `display`, else (when given) to `say` as the epoch ends."""
    members = pack.members
    for m in members:
        m.progress.epoch += 1
    epochs = "/".join(str(e) for e in sorted({m.progress.epoch for m in members}))
    description = f"epoch {epochs}" + (f" ({len(members)} runs)" if len(members) > 1 else "")
    task = None
    if display is not None:
        task = display.add_task(description, total=pack.batches_per_epoch, rate="")
    start = time.perf_counter()
    rewarded, loss = pack.run_epoch(None if task is None else _live_update(display, task, members))
    rewarded_sums, loss_sums = rewarded.tolist(), loss.tolist()  # waits for the device
    train_seconds = time.perf_counter() - start
    val_acc, test_acc = (acc.tolist() for acc in pack.evaluate())
    # The time columns are the pack's: each member's epoch took the pack's wall time.
    epoch_seconds = time.perf_counter() - start
    diverged = [record_epoch(m.trainer, m.progress, rewarded=rewarded_sums[k], loss=loss_sums[k],
                             val_acc=val_acc[k], test_acc=test_acc[k], train_seconds=train_seconds,
                             epoch_seconds=epoch_seconds)
                for k, m in enumerate(members)]
    if task is not None or say is not None:
        rows = [m.progress.rows[-1] for m in members]
        mean = {c: sum(r[c] for r in rows) / len(rows) for c in ("train_reward", "val_acc", "test_acc")}
        what = "" if len(rows) == 1 else "mean "
        figures = (f"{what}reward {mean['train_reward']:.3f}  val {mean['val_acc']:.4f}  "
                   f"test {mean['test_acc']:.4f}  ({epoch_seconds:.1f}s)")
        if task is not None:
            display.update(task, rate=figures)
            display.stop_task(task)
        else:
            say(f"{description}: {figures}")
    return diverged


def _plain_lines(console: Console) -> Callable[[str], None]:
    """Print a line and flush it at once, so a log file shows each epoch as it ends."""
    def say(text: str) -> None:
        console.print(text, highlight=False, soft_wrap=True, markup=False)
        console.file.flush()
    return say


def _live_update(display: Progress, task: Any, members: list[Member]) -> Any:
    """The in-epoch display update: batches done, and for a single run its reward rate so far."""
    batch_size, n_train = members[0].config.batch_size, members[0].trainer.splits.train_x.shape[0]

    def update(done: int, rewarded: torch.Tensor) -> None:
        if len(members) == 1:  # a pack's members run in turn (or all at once): one rate would mislead
            seen = min(done * batch_size, n_train)
            display.update(task, completed=done, rate=f"reward {float(rewarded) / seen:.3f}")
        else:
            display.update(task, completed=done)
    return update


class _NoDisplay:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _progress_display(console: Console, quiet: bool) -> Any:
    """A rich display of epoch progress on a terminal; None inside `with` when quiet or not on a terminal."""
    if quiet or not console.is_terminal:
        return _NoDisplay()
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.fields[rate]}"), console=console, transient=False)


__all__ = ["RUNS_ROOT", "run_folders", "train", "train_pack", "train_runs"]
