"""Train one run: data on the device, epochs of batches, early stopping, checkpoints, logs.

`train()` is the library entry point behind `qagrel train`. It is resumable:
after every epoch it atomically writes a checkpoint holding everything that
determines the rest of the run (weights, optimizer, RNG states, early-stopping
state and the epoch log so far), so calling it again with the same folder
continues exactly where a killed process stopped, and a finished run is not
redone.
"""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import qagrel_cli
from qagrel_cli import runs
from qagrel_cli.allocator import keep_freed_memory
from qagrel_cli.config import Feedback, Init, Optimizer, QagrelError, Rule, TrainConfig
from qagrel_cli.data import PixelScaling, RawData, Splits, default_data_dir, load_dataset, make_splits
from qagrel_cli.models import QNetwork, build_network
from qagrel_cli.rules import BatchStats, alignment_angles, bp_step, qagrel_step

EVAL_BATCH = 1000
RUNS_ROOT = Path("results") / "runs"  # where a run's folder goes by default: RUNS_ROOT / <run id>
LIVE_UPDATES_PER_EPOCH = 10  # the progress bar reads device metrics this often, never per batch


def converged(best_val_acc: float, num_classes: int, diverged: bool, chance_multiple: float = 2.0) -> bool:
    """A run converged when it did not diverge and its best validation accuracy is >= k x chance."""
    return not diverged and best_val_acc >= chance_multiple / num_classes


def resolve_device(spec: str) -> torch.device:
    """'auto' -> CUDA if present, else MPS if present, else CPU; explicit devices are checked."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise QagrelError(f"unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise QagrelError(f"device {spec!r} is not available here (CUDA devices: {torch.cuda.device_count()})")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise QagrelError("device 'mps' is not available here")
    return device


def stream_seed(seed: int, stream: str) -> int:
    """Independent 63-bit seeds per random stream (init, data order, trial draws) from one run seed."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{stream}".encode()).digest()[:8], "little") >> 1


@dataclass
class RunState:
    """Everything besides the network that a resumed run needs to continue exactly."""

    epoch: int = 0
    best_val_acc: float = -1.0
    best_epoch: int = 0
    test_acc_at_best: float = float("nan")
    epochs_since_best: int = 0
    wall_seconds: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """One run's network, rule, data and random streams; `run_epoch` trains over the data once."""

    def __init__(self, config: TrainConfig, splits: Splits, device: torch.device) -> None:
        self.config = config = config.resolved()
        self.splits, self.device = splits, device
        if device.type == "cpu":
            keep_freed_memory()  # process-wide: every step reuses the last step's memory (allocator.py)
        self.net: QNetwork = build_network(config.arch, config.fc, splits.input_shape, splits.num_classes)
        self.net.reset_weights(config.init_range, config.feedback == Feedback.symmetric,
                               torch.Generator().manual_seed(stream_seed(config.seed, "init")))
        self.net.to(device)
        self.scale = PixelScaling.fit(config.input_scaling, splits.train_x)
        self.hidden_units = self.net.hidden_units(splits.input_shape)
        # Data order is drawn on the CPU so it is the same on every device; dropout and
        # exploration draws happen where the data lives.
        self.order_rng = torch.Generator().manual_seed(stream_seed(config.seed, "order"))
        self.trial_rng = torch.Generator(device=device).manual_seed(stream_seed(config.seed, "trials"))
        self.optimizer: torch.optim.Optimizer | None = None
        if config.rule == Rule.bp:
            opt_class = torch.optim.Adam if config.optimizer == Optimizer.adam else torch.optim.SGD
            self.optimizer = opt_class(self.net.parameters(), lr=config.lr)

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.splits.train_x.shape[0] / self.config.batch_size)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> BatchStats:
        """One weight update on a batch of trials."""
        if self.optimizer is None:
            return qagrel_step(self.net, x, y, self.config.lr, self.config.epsilon, self.trial_rng,
                               learn_feedback=self.config.feedback != Feedback.fixed)
        return bp_step(self.net, self.optimizer, x, y, self.trial_rng)

    def run_epoch(self, on_batch: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Train on every training sample once, in a fresh random order.

        Returns the summed reward (or BP correct count) and loss as device
        tensors; nothing here waits for the device. `on_batch(i, rewarded)` is
        called a few times per epoch for a live display.
        """
        data = self.splits
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

    def state_dict(self, state: RunState) -> dict[str, Any]:
        return {
            # Cloned: a packed run's weights are views into the pack's stacked tensors,
            # and torch.save would write the whole stack.
            "net": {name: t.detach().clone() for name, t in self.net.state_dict().items()},
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "order_rng": self.order_rng.get_state(),
            "trial_rng": self.trial_rng.get_state(),
            "state": vars(state),
        }

    def load_state_dict(self, checkpoint: dict[str, Any]) -> RunState:
        self.net.load_state_dict(checkpoint["net"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.order_rng.set_state(checkpoint["order_rng"])
        self.trial_rng.set_state(checkpoint["trial_rng"])
        return RunState(**checkpoint["state"])


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


def train(config: TrainConfig, out: Path | None = None, *, data_dir: Path | None = None, download: bool = False,
          quiet: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Train (or resume, or return the finished result of) one run; returns its summary.

    Raises QagrelError for anything the user can fix (bad option combination,
    missing data, unusable output folder) before writing anything.
    """
    config = check_config(config)
    out = Path(out) if out is not None else RUNS_ROOT / config.run_id
    existing = check_run_folder(out, config)
    if existing is not None:
        return existing
    device = resolve_device(config.device)
    raw = load_dataset(config.dataset, Path(data_dir) if data_dir else default_data_dir(), download)
    trainer, state = open_run(config, out, raw, device)
    console = console or Console(stderr=True)
    if state.epoch and not quiet:
        console.print(f"resuming {config.run_id} after epoch {state.epoch}")

    diverged = False
    with progress_bar(console, quiet) as progress:
        while True:
            state.epoch += 1
            diverged = _train_one_epoch(trainer, state, progress)
            if should_stop(config, state, diverged):
                break
            save_progress(out, trainer, state)
    return finish_run(out, trainer, state, diverged, device)


# ---- the steps of a run, shared with seed packs (pack.py), which drive many runs at once

def check_config(config: TrainConfig) -> TrainConfig:
    """The resolved config, or QagrelError for an option combination that makes no sense."""
    if config.init != Init.uniform and config.init_range is not None:
        raise QagrelError(f"--init-range applies to --init uniform only: --init {config.init.value} sets its own scale")
    config = config.resolved()
    if config.rule == Rule.qagrel and config.optimizer != Optimizer.sgd:
        raise QagrelError("--optimizer applies to --rule bp only: Q-AGREL applies its four-factor update directly")
    return config


def open_run(config: TrainConfig, out: Path, raw: RawData, device: torch.device) -> tuple[Trainer, RunState]:
    """The run's trainer and state: from its checkpoint if there is one, else fresh (writing its config)."""
    splits = make_splits(raw, config.seed, config.val_size, config.train_size, device)
    trainer = Trainer(config, splits, device)
    checkpoint_path = out / runs.CHECKPOINT_FILE
    if checkpoint_path.exists():
        return trainer, trainer.load_state_dict(torch.load(checkpoint_path, map_location=device, weights_only=True))
    runs.write_config(out, config.to_dict())
    return trainer, RunState()


def record_epoch(trainer: Trainer, state: RunState, *, rewarded: float, loss: float, val_acc: float,
                 test_acc: float, train_seconds: float, epoch_seconds: float) -> bool:
    """Append the epoch's log row and update early stopping. Returns True when the run diverged.

    `rewarded` and `loss` are the epoch's sums over training trials.
    """
    config = trainer.config
    n_train = trainer.splits.train_x.shape[0]
    train_loss = loss / n_train
    finite = math.isfinite(train_loss) and bool(trainer.weights_finite())
    row = {
        "epoch": state.epoch,
        "train_reward": rewarded / n_train,
        "train_loss": train_loss,
        "val_acc": val_acc,
        "test_acc": test_acc,
        "epoch_seconds": epoch_seconds,
        "samples_per_second": n_train / train_seconds,
        "lr": config.lr,
    }
    if config.feedback != Feedback.symmetric:
        row.update({f"angle_{n}": a for n, a in enumerate(alignment_angles(trainer.net))})
    state.rows.append(row)
    state.wall_seconds += epoch_seconds
    if finite and row["val_acc"] > state.best_val_acc:
        state.best_val_acc, state.best_epoch, state.test_acc_at_best = row["val_acc"], state.epoch, row["test_acc"]
        state.epochs_since_best = 0
    else:
        state.epochs_since_best += 1
    return not finite


def should_stop(config: TrainConfig, state: RunState, diverged: bool) -> bool:
    """Diverged, out of patience (early stopping) or at the epoch limit."""
    return diverged or state.epochs_since_best >= config.patience or state.epoch >= config.max_epochs


def save_progress(out: Path, trainer: Trainer, state: RunState) -> None:
    """Checkpoint, then log: the checkpoint holds the log rows too, so the two can never disagree."""
    runs.atomic_write(out / runs.CHECKPOINT_FILE, lambda tmp: torch.save(trainer.state_dict(state), tmp))
    runs.write_log(out, _log_frame(state.rows, trainer.config, trainer.hidden_units))


def finish_run(out: Path, trainer: Trainer, state: RunState, diverged: bool, device: torch.device
               ) -> dict[str, Any]:
    """Write the final log and the summary, drop the checkpoint; returns the summary."""
    runs.write_log(out, _log_frame(state.rows, trainer.config, trainer.hidden_units))
    summary = _summary(trainer.config, trainer, state, diverged, device)
    runs.write_summary(out, summary)
    (out / runs.CHECKPOINT_FILE).unlink(missing_ok=True)  # the run is finished; the summary and log are the record
    return summary


def _train_one_epoch(trainer: Trainer, state: RunState, progress: Progress | None) -> bool:
    """Train one epoch, evaluate, update early stopping and append the log row. Returns diverged."""
    config, splits = trainer.config, trainer.splits
    n_train = splits.train_x.shape[0]
    task = None
    if progress is not None:
        task = progress.add_task(f"epoch {state.epoch}", total=trainer.batches_per_epoch, rate="")

    def on_batch(done: int, rewarded: torch.Tensor) -> None:
        seen = min(done * config.batch_size, n_train)
        progress.update(task, completed=done, rate=f"reward {float(rewarded) / seen:.3f}")

    start = time.perf_counter()
    rewarded, loss = trainer.run_epoch(on_batch if progress is not None else None)
    rewarded_sum, loss_sum = float(rewarded), float(loss)  # waits for the device
    train_seconds = time.perf_counter() - start
    val_acc, test_acc = trainer.accuracy(splits.val_x, splits.val_y), trainer.accuracy(splits.test_x, splits.test_y)
    diverged = record_epoch(trainer, state, rewarded=rewarded_sum, loss=loss_sum, val_acc=float(val_acc),
                            test_acc=float(test_acc), train_seconds=train_seconds,
                            epoch_seconds=time.perf_counter() - start)
    if progress is not None:
        row = state.rows[-1]
        progress.update(task, rate=f"reward {row['train_reward']:.3f}  val {row['val_acc']:.4f}  "
                                   f"test {row['test_acc']:.4f}  ({row['epoch_seconds']:.1f}s)")
        progress.stop_task(task)
    return diverged


class _NoProgress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def progress_bar(console: Console, quiet: bool) -> Any:
    """A rich display of epoch progress; None inside `with` when quiet."""
    if quiet:
        return _NoProgress()
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.fields[rate]}"), console=console, transient=False)


def check_run_folder(out: Path, config: TrainConfig) -> dict[str, Any] | None:
    """Refuse folders we cannot write or that hold another run; return the summary of a finished run."""
    if runs.is_run_dir(out):
        stored = TrainConfig.from_dict(runs.read_config(out))
        if stored.run_id != config.run_id:
            raise QagrelError(f"{out} holds a different run ({stored.run_id}); choose another --out")
        summary = runs.read_summary(out)
        if summary is not None:
            return summary
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise QagrelError(f"{out} exists and is not a qagrel run folder; choose another --out")
    ancestor = out
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK):
        raise QagrelError(f"cannot write the run folder {out}: {ancestor} is not a writable folder")
    return None


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


def _summary(config: TrainConfig, trainer: Trainer, state: RunState, diverged: bool,
             device: torch.device) -> dict[str, Any]:
    last = state.rows[-1]
    num_classes = trainer.splits.num_classes
    best_val = max(state.best_val_acc, 0.0)
    return {
        "run_id": config.run_id,
        "status": "diverged" if diverged else "finished",
        "stop_epoch": state.epoch,
        "best_epoch": state.best_epoch,
        "best_val_acc": best_val,
        "test_acc_at_best": state.test_acc_at_best,
        "test_acc_at_stop": last["test_acc"],
        "final_train_reward": last["train_reward"],
        "hidden_units": trainer.hidden_units,
        "num_classes": num_classes,
        "converged": converged(best_val, num_classes, diverged),
        "converged_rule": "not diverged and best validation accuracy >= 2 x chance",
        "diverged": diverged,
        "wall_seconds": state.wall_seconds,
        "device": _device_name(device),
        "torch_version": torch.__version__,
        "qagrel_version": qagrel_cli.__version__,
        "git_commit": _git_commit(),
        "config": config.to_dict(),
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def _git_commit() -> str | None:
    """The source tree's commit, when the package runs from a git checkout."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                                capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None
