"""A run's folder through its life: checked before training, opened (fresh or from its checkpoint), saved
after every epoch, and finished (final log, last weights, summary).

The epoch loop (core/training.py) calls these in that order; what each file holds is core/run_folder.py's.
The write order is the crash-safety argument: best weights, then checkpoint, then log after each epoch, and
the summary last, since it alone marks the run finished.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch

import qagrel_cli
from qagrel_cli.core import run_folder
from qagrel_cli.core.config import QagrelError, TrainConfig
from qagrel_cli.core.data import RawData, make_splits
from qagrel_cli.core.device import describe_device, machine_record
from qagrel_cli.core.provenance import git_commit
from qagrel_cli.core.stopping import CONVERGED_RULE, RunProgress, stopping_summary
from qagrel_cli.core.trainer import Trainer
from qagrel_cli.core.weights import WeightsAt, save_if_best, save_weights


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


__all__ = ["check_run_folder", "open_run", "save_progress", "finish_run"]
