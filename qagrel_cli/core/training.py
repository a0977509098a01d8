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
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import qagrel_cli
from qagrel_cli.core import run_folder
from qagrel_cli.core.config import QagrelError, TrainConfig
from qagrel_cli.core.data import RawData, load_dataset, make_splits
from qagrel_cli.core.provenance import git_commit
from qagrel_cli.core.packs import LoopPack, Member, PackStrategy, VmapPack
from qagrel_cli.core.stopping import CONVERGED_RULE, RunProgress, should_stop, stopping_summary
from qagrel_cli.core.device import describe_device, machine_record, resolve_device
from qagrel_cli.core.trainer import Trainer, record_epoch
from qagrel_cli.core.weights import WeightsAt, save_if_best, save_weights

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


# ---- a run's folder: opened, checked, saved after each epoch, finished

def check_run_folder(out: Path, config: TrainConfig) -> dict[str, Any] | None:
    """Refuse folders we cannot write or that hold another run; return the summary of a finished run."""
    if run_folder.is_run_dir(out):
        stored = run_folder.read_config(out)
        if stored.run_id != config.run_id:
            if replace(stored, max_epochs=config.max_epochs) == config:
                raise QagrelError(f"{out} holds this run with max_epochs {stored.max_epochs}; the epoch cap is part "
                                  f"of a run's id, so max_epochs {config.max_epochs} is another run: choose another "
                                  "--out")
            raise QagrelError(f"{out} holds a different run ({stored.run_id}); choose another --out")
        summary = run_folder.read_summary(out)
        if summary is not None:
            return summary
    elif out.exists() and (not out.is_dir() or any(p.name not in run_folder.LEDGER_FILES for p in out.iterdir())):
        raise QagrelError(f"{out} exists and is not a qagrel run folder; choose another --out")
    ancestor = out
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK):
        raise QagrelError(f"cannot write the run folder {out}: {ancestor} is not a writable folder")
    return None


def open_run(config: TrainConfig, out: Path, raw: RawData, device: torch.device) -> tuple[Trainer, RunProgress]:
    """The run's trainer and progress: from its checkpoint if there is one, else fresh (writing its config)."""
    splits = make_splits(raw, config.seed, config.val_size, config.train_size, device)
    trainer = Trainer(config, splits, device)
    checkpoint_path = out / run_folder.CHECKPOINT_FILE
    if checkpoint_path.exists():
        try:
            checkpoint = torch.load(checkpoint_path, map_location=device, weights_only=True)
            return trainer, trainer.load_state_dict(checkpoint)
        except Exception as err:  # torch raises many kinds for a torn or foreign file
            raise run_folder.DamagedFile(checkpoint_path, f"{' '.join(str(err).split())[:150]}; delete it to "
                                         "train this run again from its first epoch") from None
    run_folder.write_config(out, config)
    return trainer, RunProgress()


def save_progress(out: Path, trainer: Trainer, progress: RunProgress) -> None:
    """Best weights (if this epoch is the best), checkpoint, then log: the checkpoint holds the log rows too, so
    the two can never disagree, and it is never newer than the best weights."""
    save_if_best(out, trainer, progress)
    run_folder.atomic_write(out / run_folder.CHECKPOINT_FILE,
                            lambda tmp: torch.save(trainer.state_dict(progress), tmp))
    run_folder.write_log(out, _log_frame(progress.rows, trainer.config, trainer.hidden_units))


def finish_run(out: Path, trainer: Trainer, progress: RunProgress, diverged: bool, device: torch.device
               ) -> dict[str, Any]:
    """Write the best and last weights, the final log and the summary, drop the checkpoint; returns the summary."""
    save_if_best(out, trainer, progress)
    run_folder.write_log(out, _log_frame(progress.rows, trainer.config, trainer.hidden_units))
    save_weights(out, WeightsAt.last, trainer, progress.epoch)
    summary = _summary(trainer.config, trainer, progress, diverged, device)
    run_folder.write_summary(out, summary)
    (out / run_folder.CHECKPOINT_FILE).unlink(missing_ok=True)  # finished: the summary and log are the record
    return run_folder.read_summary(out)  # as stored: what a later call returns for this finished run


def _log_frame(rows: list[dict[str, Any]], config: TrainConfig, hidden_units: str) -> pd.DataFrame:
    """The epoch log with the run's config on every row, so many runs' logs concatenate cleanly."""
    frame = pd.DataFrame(rows)
    constants = {k: v for k, v in config.to_dict().items() if k not in ("lr", "fc", "train_size", "device")}
    for key, value in constants.items():
        frame[key] = value
    frame["fc"] = "-".join(str(s) for s in config.fc)
    frame["train_size"] = pd.array([config.train_size] * len(frame), dtype="Int64")
    frame["hidden_units"] = hidden_units
    frame["run_id"] = config.run_id
    return frame


def _summary(config: TrainConfig, trainer: Trainer, progress: RunProgress, diverged: bool,
             device: torch.device) -> dict[str, Any]:
    num_classes = trainer.splits.num_classes
    return {
        "run_id": config.run_id,
        **stopping_summary(progress, progress.rows[-1], diverged, num_classes),
        "converged_rule": CONVERGED_RULE,
        "hidden_units": trainer.hidden_units,
        "num_classes": num_classes,
        "device": describe_device(device),
        "machine": machine_record(device),
        "torch_version": torch.__version__,
        "qagrel_version": qagrel_cli.__version__,
        "git_commit": git_commit(),
        "config": config.to_dict(),
    }

