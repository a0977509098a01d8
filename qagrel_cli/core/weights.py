"""A run's weights at its best-validation epoch and at its last: what `qagrel eval` reads back.

Training writes `_weights_best.pt` each time an epoch becomes the run's best (before that epoch's
checkpoint, so a resumed run never holds a checkpoint newer than its best weights: a killed run
redoes the epoch and writes them again), and `_weights_last.pt` when the run ends (before its
summary, which marks it finished). Each holds tensors only, read back with `weights_only=True`:
the epoch and the network's state dict, W and W' and, where the net has batch norm, its scale,
shift and running statistics; the same tensors the checkpoint saves (`Trainer.net_state`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import torch

from qagrel_cli.core import run_folder
from qagrel_cli.core.config import QagrelError
from qagrel_cli.core.stopping import RunProgress
from qagrel_cli.core.trainer import Trainer


class WeightsAt(str, Enum):
    best = "best"  # the best-validation epoch (the epoch Table 1's accuracy is read at)
    last = "last"  # the epoch the run stopped at


WEIGHTS_FILE = {WeightsAt.best: run_folder.WEIGHTS_BEST_FILE, WeightsAt.last: run_folder.WEIGHTS_LAST_FILE}


@dataclass(frozen=True)
class Weights:
    """A run's network tensors as saved at `epoch`."""

    epoch: int
    net: dict[str, torch.Tensor]


def save_weights(out: Path, at: WeightsAt, trainer: Trainer, epoch: int) -> None:
    """Write the trainer's network, as it is after `epoch`, to the run's weights file for `at` (atomically)."""
    state = {"epoch": torch.tensor(epoch), "net": trainer.net_state()}
    run_folder.atomic_write(out / WEIGHTS_FILE[at], lambda tmp: torch.save(state, tmp))


def save_if_best(out: Path, trainer: Trainer, progress: RunProgress) -> None:
    """After an epoch: keep the network as the run's best when this epoch is its best so far."""
    if progress.epoch and progress.best_epoch == progress.epoch:
        save_weights(out, WeightsAt.best, trainer, progress.epoch)


def load_weights(run_dir: Path, at: WeightsAt, device: torch.device | str = "cpu") -> Weights:
    """The run's weights at `at`: QagrelError when it has none (trained before runs kept them, or not finished
    for `last`), DamagedFile when the file cannot be read."""
    path = Path(run_dir) / WEIGHTS_FILE[at]
    if not path.exists():
        if at == WeightsAt.last and not run_folder.is_finished(Path(run_dir)):
            raise QagrelError(f"{run_dir} has no last weights yet: the run is not finished (try --epoch best)")
        raise QagrelError(f"{run_dir} has no saved weights ({path.name}): it was trained before runs kept "
                          "their weights; train it again to evaluate it")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        return Weights(int(state["epoch"]), dict(state["net"]))
    except Exception as err:  # torch raises many kinds for a torn or foreign file
        raise run_folder.DamagedFile(path, f"{' '.join(str(err).split())[:150]}") from None


__all__ = ["WeightsAt", "WEIGHTS_FILE", "Weights", "save_weights", "save_if_best", "load_weights"]
