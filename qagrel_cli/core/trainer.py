"""One run's network, rule, data and random streams, and what an epoch records.

The Trainer trains over its data once per `run_epoch` and evaluates greedily;
`record_epoch` appends an epoch's log row and keeps the early-stopping state in
`RunProgress` (qagrel_cli/core/stopping.py). The loop that drives runs epoch by epoch, one run or a seed pack
alike, is qagrel_cli/core/training.py.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Callable

import torch

from qagrel_cli.core.allocator import keep_freed_memory
from qagrel_cli.core.catalog import FeedbackSource, rule_info
from qagrel_cli.core.run_folder import ANGLE_PREFIX, BP_ANGLE_PREFIX
from qagrel_cli.core.config import Feedback, Init, Optimizer, TrainConfig
from qagrel_cli.core.data import PixelScaling, Splits
from qagrel_cli.core.models import QNetwork, network_for
from qagrel_cli.core.rules import (RULE_UPDATES, BatchStats, StepSettings, alignment_angles, angles_to_bp,
                                   apply_weight_changes, optimizer_step)
from qagrel_cli.core.stopping import RunProgress, note_validation

EVAL_BATCH = 1000
LIVE_UPDATES_PER_EPOCH = 10  # a live display reads device metrics this often, never per batch
# The fixed probe batch on which every epoch's update angles to Error-BP's gradient are measured: the first
# images of the run's validation set (never trained on), and the seed of Q-AGREL's action draws there.
ANGLE_PROBE_SIZE = 100
ANGLE_PROBE_SEED = 0

def feedback_drawn_apart(config: TrainConfig) -> bool:
    """Whether the run's feedback weights W' start apart from W: Q-AGREL with random or fixed feedback, and
    feedback alignment (whose W' is fixed random). Their runs log the angle between W and W'^T."""
    source = rule_info(config.rule).feedback
    return source == FeedbackSource.fixed or (source == FeedbackSource.setting and config.feedback != Feedback.symmetric)


def stream_seed(seed: int, stream: str) -> int:
    """Independent 63-bit seeds per random stream (init, data order, trial draws) from one run seed."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{stream}".encode()).digest()[:8], "little") >> 1


class Trainer:
    """One run's network, rule, data and random streams; `run_epoch` trains over the data once."""

    def __init__(self, config: TrainConfig, splits: Splits, device: torch.device) -> None:
        self.config = config
        self.splits, self.device = splits, device
        if device.type == "cpu":
            keep_freed_memory()  # process-wide: every step reuses the last step's memory (allocator.py)
        self.rule = rule_info(config.rule)
        self.net: QNetwork = network_for(config, splits.input_shape, splits.num_classes)
        self.net.reset_weights(config.init, config.init_sd if config.init == Init.normal else config.init_range,
                               not feedback_drawn_apart(config),
                               torch.Generator().manual_seed(stream_seed(config.seed, "init")))
        self.net.to(device)
        self.scale = PixelScaling.fit(config.input_scaling, splits.train_x)
        self.hidden_units = self.net.hidden_units(splits.input_shape)
        # Data order is drawn on the CPU so it is the same on every device; dropout and
        # exploration draws happen where the data lives.
        self.order_rng = torch.Generator().manual_seed(stream_seed(config.seed, "order"))
        self.trial_rng = torch.Generator(device=device).manual_seed(stream_seed(config.seed, "trials"))
        self.lr = config.lr  # alpha in the epoch being trained (config.lr_at)
        self.optimizer: torch.optim.Optimizer | None = None
        if self.rule.uses_optimizer:
            opt_class = torch.optim.Adam if config.optimizer == Optimizer.adam else torch.optim.SGD
            self.optimizer = opt_class(self.net.parameters(), lr=config.lr)

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.splits.train_x.shape[0] / self.config.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Alpha for epoch `epoch` (1-based), as the run's learning-rate schedule gives it."""
        self.lr = self.config.lr_at(epoch)
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr

    def step(self, x: torch.Tensor, y: torch.Tensor) -> BatchStats:
        """One weight update on a batch of trials: the rule's updates, applied by its optimizer or by itself."""
        updates, stats = RULE_UPDATES[self.config.rule](self.net, x, y, StepSettings(self.lr, self.config.epsilon,
                                                                                      self.trial_rng))
        if self.optimizer is not None:
            return optimizer_step(self.net, self.optimizer, updates, stats)
        apply_weight_changes(self.net, updates, learn_feedback=self.config.feedback != Feedback.fixed)
        return stats

    def angles_to_bp(self) -> list[float]:
        """Per layer, the angle between this rule's update and Error-BP's gradient on the fixed probe batch."""
        x = self.scale(self.splits.val_x[:ANGLE_PROBE_SIZE])
        generator = torch.Generator(device=self.device).manual_seed(ANGLE_PROBE_SEED)
        return angles_to_bp(self.net, self.config.rule, x, self.splits.val_y[:ANGLE_PROBE_SIZE],
                            StepSettings(self.lr, self.config.epsilon, generator))

    def run_epoch(self, epoch: int, on_batch: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Train epoch `epoch` (1-based): every training sample once, in a fresh random order.

        Returns the summed reward (or BP correct count) and loss as device
        tensors; nothing here waits for the device. `on_batch(i, rewarded)` is
        called a few times per epoch for a live display.
        """
        data = self.splits
        self.set_epoch(epoch)
        self.net.train()
        order = self.epoch_order()
        return run_batches(order, self.config.batch_size,
                           lambda idx: self.step(self.scale(data.train_x[idx]), data.train_y[idx]), on_batch)

    def epoch_order(self) -> torch.Tensor:
        """This epoch's random order of the training samples, on the device (drawn on the CPU)."""
        return torch.randperm(self.splits.train_x.shape[0], generator=self.order_rng).to(self.device)

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Greedy (argmax) accuracy without dropout or exploration, as a device scalar."""
        self.net.eval()
        return greedy_accuracy(lambda images: self.net(images)[0], x, y, self.scale)

    def weights_finite(self) -> torch.Tensor:
        return torch.stack([torch.isfinite(layer.weight).all() for layer in self.net.layers]).all()

    def net_state(self) -> dict[str, torch.Tensor]:
        """The network's tensors (W, W', batch-norm scale, shift and running statistics), as the checkpoint and
        the weights files save them. Cloned: a packed run's weights are views into the pack's stacked tensors,
        and torch.save would write the whole stack."""
        return {name: t.detach().clone() for name, t in self.net.state_dict().items()}

    def state_dict(self, progress: RunProgress) -> dict[str, Any]:
        return {
            "net": self.net_state(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "order_rng": self.order_rng.get_state(),
            "trial_rng": self.trial_rng.get_state(),
            "state": vars(progress),
        }

    def load_state_dict(self, checkpoint: dict[str, Any]) -> RunProgress:
        self.net.load_state_dict(checkpoint["net"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.order_rng.set_state(checkpoint["order_rng"])
        self.trial_rng.set_state(checkpoint["trial_rng"])
        return RunProgress(**checkpoint["state"])


def run_batches(order: torch.Tensor, batch_size: int, step: Callable[[torch.Tensor], BatchStats],
                on_batch: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Call `step(indices)` on consecutive batches of `order` (..., N); sum the stats it returns.

    Leading dimensions of `order` (a seed pack's members) give one sum each.
    """
    n_batches = math.ceil(order.shape[-1] / batch_size)
    rewarded = torch.zeros(order.shape[:-1], device=order.device)
    loss = torch.zeros(order.shape[:-1], device=order.device)
    live_every = max(1, n_batches // LIVE_UPDATES_PER_EPOCH)
    for i in range(n_batches):
        stats = step(order[..., i * batch_size:(i + 1) * batch_size])
        rewarded += stats.rewarded
        loss += stats.loss
        if on_batch is not None and ((i + 1) % live_every == 0 or i + 1 == n_batches):
            on_batch(i + 1, rewarded)
    return rewarded, loss


@torch.no_grad()
def greedy_accuracy(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                    scale: PixelScaling) -> torch.Tensor:
    """Fraction of images whose largest output is the label, as device tensor(s).

    x is uint8 images (..., N, C, H, W) (the whole dataset stays uint8 on the
    device), `scale` turns them into the network's input, and y is labels
    (..., N); `forward` maps inputs to outputs (..., n, classes). Leading
    dimensions (a seed pack's members) give one accuracy each.
    """
    n = x.shape[-4]
    correct = torch.zeros(x.shape[:-4], device=x.device)
    for start in range(0, n, EVAL_BATCH):
        q = forward(scale(x[..., start:start + EVAL_BATCH, :, :, :]))
        # Out of place: images shared by a pack (no leading dims) still give one count per member.
        correct = correct + (q.argmax(dim=-1) == y[..., start:start + EVAL_BATCH]).sum(dim=-1)
    return correct / n


def record_epoch(trainer: Trainer, progress: RunProgress, *, rewarded: float, loss: float, val_acc: float,
                 test_acc: float, train_seconds: float, epoch_seconds: float) -> bool:
    """Append the epoch's log row and update early stopping. Returns True when the run diverged.

    `rewarded` and `loss` are the epoch's sums over training trials.
    """
    config = trainer.config
    n_train = trainer.splits.train_x.shape[0]
    train_loss = loss / n_train
    finite = math.isfinite(train_loss) and bool(trainer.weights_finite())
    row = {
        "epoch": progress.epoch,
        "train_reward": rewarded / n_train,
        "train_loss": train_loss,
        "val_acc": val_acc,
        "test_acc": test_acc,
        "epoch_seconds": epoch_seconds,
        "samples_per_second": n_train / train_seconds,
        "lr": config.lr_at(progress.epoch),
    }
    if feedback_drawn_apart(config):
        row.update({f"{ANGLE_PREFIX}{n}": a for n, a in enumerate(alignment_angles(trainer.net))})
    if trainer.splits.val_x.shape[0]:
        row.update({f"{BP_ANGLE_PREFIX}{n}": a for n, a in enumerate(trainer.angles_to_bp())})
    progress.rows.append(row)
    progress.wall_seconds += epoch_seconds
    note_validation(config, progress, val_acc, test_acc)
    return not finite
