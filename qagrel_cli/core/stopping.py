"""Early stopping and convergence: the one definition of each, for training and for reading logs back.

The paper stops a run "if for 20 consecutive times the validation accuracy had not increased": the
best epoch is the first with the highest validation accuracy, and a run stops once `patience` epochs
have passed without a strictly higher one, when it diverges, or at `max_epochs`. Two choices of the
authors' later code generalise it (as Keras' EarlyStopping has them): `min_delta`, by which an epoch must
beat the best to count as better, and `validation: test`, which reads the test set as validation set. Training keeps this
state epoch by epoch (`note_validation`, `should_stop`); `replay` runs the same rule over a finished
run's log under another patience or epoch cap, which is exact for any patience and cap up to the ones
the run trained with, since training itself reads neither except to stop.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

from qagrel_cli.core.config import QagrelError, TrainConfig, Validation
from qagrel_cli.core.run_folder import one_row_per_epoch

CONVERGED_RULE = "not diverged and best validation accuracy >= 2 x chance"


def converged(best_val_acc: float, num_classes: int, diverged: bool, chance_multiple: float = 2.0) -> bool:
    """A run converged when it did not diverge and its best validation accuracy is >= k x chance."""
    return not diverged and best_val_acc >= chance_multiple / num_classes


@dataclass
class RunProgress:
    """Everything besides the network that a resumed run needs to continue exactly: the epoch, the
    early-stopping state (best validation accuracy, its epoch and test accuracy, epochs since) and the log."""

    epoch: int = 0
    best_val_acc: float = -1.0
    best_epoch: int = 0
    test_acc_at_best: float = float("nan")
    epochs_since_best: int = 0
    wall_seconds: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)


def monitored(config: TrainConfig, val_acc: float, test_acc: float) -> float:
    """The accuracy early stopping reads: held-out validation (the paper's), or the test set with `validation:
    test` (the authors' later code)."""
    return test_acc if config.validation == Validation.test else val_acc


def note_validation(config: TrainConfig, progress: RunProgress, val_acc: float, test_acc: float) -> None:
    """Early stopping's bookkeeping for the epoch `progress.epoch`: a monitored accuracy (`monitored`) above
    the best by more than `config.min_delta` is the new best (ties keep the earlier epoch), anything else is
    one more epoch without improvement."""
    # A diverged epoch was still evaluated (a network with non-finite outputs picks class 0), so it can be
    # the best only when no earlier epoch was better: the summary then reports what the log shows.
    watched = monitored(config, val_acc, test_acc)
    if watched - config.min_delta > progress.best_val_acc:
        progress.best_val_acc, progress.best_epoch = watched, progress.epoch
        progress.test_acc_at_best = test_acc
        progress.epochs_since_best = 0
    else:
        progress.epochs_since_best += 1


def should_stop(config: TrainConfig, progress: RunProgress, diverged: bool) -> bool:
    """Diverged, out of patience (early stopping) or at the epoch limit."""
    return diverged or progress.epochs_since_best >= config.patience or progress.epoch >= config.max_epochs


@dataclass(frozen=True)
class Replay:
    """Early stopping run over a log: the state after the last epoch it reached (its log row in `last`), and
    whether it stopped there."""

    progress: RunProgress
    stopped: bool
    last: dict[str, Any]


def replay(log: pd.DataFrame, config: TrainConfig, diverged: bool = False) -> Replay:
    """Early stopping under `config`'s patience and epoch cap, epoch by epoch over a non-empty `log` (an epoch
    logged twice by a resume counts once, as its last row), up to the epoch where it stops or the log ends.
    `diverged`: the run diverged in the log's last epoch. `progress.rows` stays empty."""
    rows = one_row_per_epoch(log).to_dict("records")
    if not rows:
        raise QagrelError(f"{config.run_id}: its log has no epochs")
    progress = RunProgress()
    for n, row in enumerate(rows, 1):
        progress.epoch = int(row["epoch"])
        progress.wall_seconds += float(row["epoch_seconds"])
        note_validation(config, progress, float(row["val_acc"]), float(row["test_acc"]))
        if should_stop(config, progress, diverged and n == len(rows)):
            return Replay(progress, True, row)
    return Replay(progress, False, rows[-1])


def stopped_sooner(config: TrainConfig, *, patience: int | None = None, max_epochs: int | None = None
                   ) -> TrainConfig:
    """`config` with another `patience` or epoch cap `max_epochs` (None keeps its own), each at most its own:
    the most that a run's log can show."""
    limits = {name: value for name, value in {"patience": patience, "max_epochs": max_epochs}.items()
              if value is not None}
    for name, value in limits.items():
        if value < 1:
            raise QagrelError(f"{name} must be at least 1, got {value}")
        if value > getattr(config, name):
            raise QagrelError(f"{config.run_id} trained with {name} {getattr(config, name)}; its log cannot show "
                              f"{name} {value}")
    return replace(config, **limits)


def summary_under_stopping(summary: dict[str, Any], log: pd.DataFrame, sooner: TrainConfig) -> dict[str, Any]:
    """A finished run's summary as if it had trained with the patience and epoch cap of `sooner` (from
    `stopped_sooner`): the stopping fields replayed from its log, the rest as recorded."""
    shorter = replay(log, sooner, diverged=bool(summary.get("diverged")))
    diverged = bool(summary.get("diverged")) and shorter.progress.epoch == int(summary["stop_epoch"])
    return {**summary, **stopping_summary(shorter.progress, shorter.last, diverged, int(summary["num_classes"]))}


def stopping_summary(progress: RunProgress, last: dict[str, Any], diverged: bool, num_classes: int) -> dict[str, Any]:
    """The summary's fields that early stopping decides, from the state after the last epoch and its log row:
    what training writes, and what a replay under another patience rewrites."""
    best_val = max(progress.best_val_acc, 0.0)  # -1 only before any epoch
    return {"status": "diverged" if diverged else "finished", "stop_epoch": progress.epoch,
            "best_epoch": progress.best_epoch, "best_val_acc": best_val, "test_acc_at_best": progress.test_acc_at_best,
            "test_acc_at_stop": float(last["test_acc"]), "final_train_reward": float(last["train_reward"]),
            "converged": converged(best_val, num_classes, diverged), "diverged": diverged,
            "wall_seconds": progress.wall_seconds}


__all__ = ["CONVERGED_RULE", "converged", "RunProgress", "monitored", "note_validation", "should_stop", "Replay",
           "replay",
           "stopped_sooner", "summary_under_stopping", "stopping_summary"]
