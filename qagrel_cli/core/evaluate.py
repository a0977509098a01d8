"""A finished run's saved weights evaluated again: `qagrel eval`.

The run is rebuilt from its own config (network, input scaling fitted on its own training split) and
its own data: the validation split is drawn from the run's seed exactly as in training, so `--split val`
is the images early stopping read. Accuracy is computed by the function training logs it with
(`Trainer.accuracy`), so an evaluation of the best or last weights equals the log's accuracy at that
epoch on the same device; the confusion matrix counts the same greedy (argmax) answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import torch

from qagrel_cli.core import run_folder
from qagrel_cli.core.config import QagrelError
from qagrel_cli.core.data import load_dataset, make_splits
from qagrel_cli.core.device import resolve_device
from qagrel_cli.core.trainer import EVAL_BATCH, Trainer
from qagrel_cli.core.weights import WeightsAt, load_weights


class Split(str, Enum):
    test = "test"
    val = "val"  # the run's held-out validation images (drawn per seed)


@dataclass(frozen=True)
class Evaluation:
    """One run's weights at `epoch` on `split`: accuracy, what the log recorded there, and the confusion
    matrix (rows: true class, columns: answer)."""

    run_id: str
    run_dir: Path
    at: WeightsAt
    epoch: int
    split: Split
    accuracy: float
    logged_accuracy: float | None  # the log's accuracy on this split at `epoch` (None: no such row)
    confusion: torch.Tensor  # (classes, classes) int64 counts


def evaluate_run(run_dir: Path, at: WeightsAt = WeightsAt.best, split: Split = Split.test, *,
                 data_dir: Path | None = None, download: bool = False, device: str = "auto") -> Evaluation:
    """Evaluate the run's weights at `at` on `split` with its own config and data."""
    run_dir = Path(run_dir)
    if not run_folder.is_run_dir(run_dir):
        raise QagrelError(f"{run_dir} is not a qagrel run folder (no {run_folder.CONFIG_FILE})")
    config = run_folder.read_config(run_dir)
    where = resolve_device(device)
    weights = load_weights(run_dir, at, where)
    raw = load_dataset(config.dataset, data_dir, download)
    trainer = Trainer(config, make_splits(raw, config.seed, config.val_size, config.train_size, where), where)
    trainer.net.load_state_dict(weights.net)
    x, y = ((trainer.splits.test_x, trainer.splits.test_y) if split == Split.test
            else (trainer.splits.val_x, trainer.splits.val_y))
    if not len(y):
        raise QagrelError(f"{run_dir} has no {split.value} images (val_size 0)")
    return Evaluation(config.run_id, run_dir, at, weights.epoch, split, float(trainer.accuracy(x, y)),
                      _logged(run_dir, weights.epoch, split), confusion_matrix(trainer, x, y))


@torch.no_grad()
def confusion_matrix(trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Counts of (true class, greedy answer) over the images, on the CPU."""
    trainer.net.eval()
    classes = trainer.splits.num_classes
    counts = torch.zeros(classes * classes, dtype=torch.int64, device=x.device)
    for start in range(0, len(y), EVAL_BATCH):
        answers = trainer.net(trainer.scale(x[start:start + EVAL_BATCH]))[0].argmax(dim=-1)
        counts += torch.bincount(y[start:start + EVAL_BATCH] * classes + answers, minlength=classes * classes)
    return counts.reshape(classes, classes).cpu()


def _logged(run_dir: Path, epoch: int, split: Split) -> float | None:
    """The log's accuracy on `split` at `epoch`, if the log has that epoch."""
    log = run_folder.one_row_per_epoch(run_folder.read_log(run_dir))
    rows = log[log["epoch"] == epoch]
    return None if rows.empty else float(rows[f"{split.value}_acc"].iloc[-1])


__all__ = ["Split", "Evaluation", "evaluate_run", "confusion_matrix"]
