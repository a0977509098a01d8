"""Seed packs: K runs that differ only in seed, trained together in one process.

`train_pack(config, seeds)` is the library entry point behind
`qagrel train --seeds 0-9`. Every member is an ordinary run: it has its own
Trainer (initialisation, validation split, data order, dropout and exploration
generators, optimizer), its own RunState (early stopping) and writes the very
run folder `train(config with that seed)` would write, checkpoint included, so
a killed pack resumes each member exactly and finished members are never redone.
A member that stops (patience, epoch limit or divergence) writes its summary and
leaves the pack; the others go on.

Two strategies, chosen by device (`strategy="auto"`; measured with
benchmarks/bench_pack.py, figures in the README):

  vmap  The members' weights are stacked (K, ...) and one training step of all
        of them is `torch.func.vmap` over `functional_call` of the unchanged
        QNetwork and rule functions (`QNetwork.forward`, `qagrel_learn`,
        `bp_loss`): linear layers become batched matmuls, convolutions grouped
        convolutions, the locally connected layer a K-times bigger bmm. The
        random parts stay outside vmap and are drawn per member from the
        member's own generators in the unpacked order (dropout draws layer by
        layer, then the Boltzmann sample, then the exploration coin). Used on
        CUDA for packs of two or more, where one small network leaves the GPU
        mostly idle (not yet measured on a GPU: run the benchmark there).
  loop  Each member trains its epoch with its own Trainer, one after the other.
        Used on CPUs (and MPS, unmeasured). On the 2-core CPU we measured, one
        run's batch of 100 already keeps the cores busy, and vmap ran at
        0.48-1.16x the samples/s of K sequential runs (conv, loccon and fc, both
        rules, K = 1-10; 0.5-0.7x at K = 10 for conv and loccon, whose grouped
        convolutions oneDNN runs slower than K plain ones). On a CPU a pack is
        therefore K runs in turn that share one process and one data load.

In the vmap strategy the members' weights live in the pack's stacked tensors:
each member's Parameters and feedback buffers are views into them, so the
member's checkpoint, accuracy and alignment angles work unchanged, and so does
its own optimizer. One torch.optim optimizer over the stacked (K, ...) weights
would be equivalent for SGD and Adam while all members step together (both are
elementwise; Adam's epsilon is added per element and its bias correction
depends only on the shared step count), but not once members have different
step counts (resumed from different epochs) and not for a member that stopped
(Adam's moments would keep moving its weights). So each member keeps its own
optimizer over its views, and a member that stops leaves the pack (the stacks
are rebuilt from the members left) instead of being masked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from rich.console import Console
from rich.progress import Progress
from torch import nn
from torch.func import functional_call, vmap

from qagrel_cli.config import Feedback, QagrelError, Rule, TrainConfig
from qagrel_cli.data import PixelScaling, default_data_dir, load_dataset
from qagrel_cli.engine import (RUNS_ROOT, RunState, Trainer, check_config, check_run_folder, finish_run,
                               greedy_accuracy, open_run, progress_bar, record_epoch, resolve_device, run_batches,
                               save_progress, should_stop)
from qagrel_cli.models import QNetwork, build_network
from qagrel_cli.rules import BatchStats, apply_weight_changes, bp_loss, qagrel_learn, select_actions


class PackStrategy(str, Enum):
    auto = "auto"  # vmap on CUDA, loop elsewhere
    vmap = "vmap"
    loop = "loop"


def parse_seeds(text: str) -> list[int]:
    """'0-9' -> [0, ..., 9]; '0,3,5'; '0-4,7'. Rejects negatives, reversed ranges and repeats."""
    seeds: list[int] = []
    for part in str(text).split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise QagrelError(f"seeds must look like 0-9 or 0,3,5, got {text!r}") from None
        if first < 0 or last < first:
            raise QagrelError(f"seed range {part.strip()!r} must be ascending and non-negative")
        seeds.extend(range(first, last + 1))
    if len(set(seeds)) != len(seeds):
        raise QagrelError(f"seeds {text!r} name a seed twice")
    return seeds


@dataclass
class Member:
    """One run of the pack: its place in the seed list, config, run folder, trainer and state."""

    index: int
    config: TrainConfig
    out: Path
    trainer: Trainer
    state: RunState


def train_pack(config: TrainConfig, seeds: Sequence[int], out: Path | None = None, *,
               data_dir: Path | None = None, download: bool = False, quiet: bool = False,
               console: Console | None = None, strategy: PackStrategy | str = PackStrategy.auto
               ) -> list[dict[str, Any]]:
    """Train (or resume, or return the finished results of) `config` for every seed; summaries in seed order.

    Member `s` uses `config` with `seed=s` and the run folder `out/<its run id>`
    (default `results/runs/<run id>`, the same folder `qagrel train --seed s`
    uses). `config.seed` is ignored. Raises QagrelError, before training, for
    anything the user can fix.
    """
    if not seeds:
        raise QagrelError("a pack needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise QagrelError(f"seeds {list(seeds)} name a seed twice")
    strategy = PackStrategy(strategy)
    root = Path(out) if out is not None else RUNS_ROOT
    configs = [check_config(replace(config, seed=seed)) for seed in seeds]
    summaries: dict[int, dict[str, Any]] = {}
    todo: list[int] = []
    for index, member_config in enumerate(configs):
        finished = check_run_folder(root / member_config.run_id, member_config)
        if finished is not None:
            summaries[index] = finished
        else:
            todo.append(index)
    if todo:
        device = resolve_device(configs[0].device)
        raw = load_dataset(configs[0].dataset, Path(data_dir) if data_dir else default_data_dir(), download)
        members = []
        for i in todo:
            run_dir = root / configs[i].run_id
            members.append(Member(i, configs[i], run_dir, *open_run(configs[i], run_dir, raw, device)))
        console = console or Console(stderr=True)
        summaries.update(_train_members(members, device, strategy, console, quiet))
    return [summaries[i] for i in range(len(configs))]


def _train_members(members: list[Member], device: torch.device, strategy: PackStrategy, console: Console,
                   quiet: bool) -> dict[int, dict[str, Any]]:
    """The pack's epoch loop: all members train an epoch, then each is saved, or finished and let go."""
    if strategy == PackStrategy.auto:  # a pack of one has nothing to batch
        strategy = PackStrategy.vmap if device.type == "cuda" and len(members) > 1 else PackStrategy.loop
    pack: LoopPack | VmapPack = (VmapPack if strategy == PackStrategy.vmap else LoopPack)(members)
    if not quiet:
        resumed = [f"seed {m.config.seed} after epoch {m.state.epoch}" for m in members if m.state.epoch]
        console.print(f"packing {len(members)} runs ({strategy.value})"
                      + (f"; resuming {', '.join(resumed)}" if resumed else ""), highlight=False)
    summaries: dict[int, dict[str, Any]] = {}
    with progress_bar(console, quiet) as progress:
        while pack.members:
            diverged = _pack_epoch(pack, progress)
            staying = []
            for m, m_diverged in zip(pack.members, diverged):
                if not should_stop(m.config, m.state, m_diverged):
                    save_progress(m.out, m.trainer, m.state)
                    staying.append(m)
                    continue
                summaries[m.index] = finish_run(m.out, m.trainer, m.state, m_diverged, device)
                if not quiet:
                    console.print(f"seed {m.config.seed}: {summaries[m.index]['status']} at epoch {m.state.epoch}, "
                                  f"best val {m.state.best_val_acc:.4f}", highlight=False)
            if len(staying) < len(pack.members):
                pack.set_members(staying)
    return summaries


def _pack_epoch(pack: LoopPack | VmapPack, progress: Progress | None) -> list[bool]:
    """Train every member one epoch, evaluate, append each member's log row. Returns who diverged."""
    for m in pack.members:
        m.state.epoch += 1
    task = None
    if progress is not None:
        epochs = "/".join(str(e) for e in sorted({m.state.epoch for m in pack.members}))
        task = progress.add_task(f"epoch {epochs} ({len(pack.members)} runs)", total=pack.batches_per_epoch,
                                 rate="")
    start = time.perf_counter()
    rewarded, loss = pack.run_epoch(None if task is None else lambda done, _: progress.update(task, completed=done))
    rewarded_sums, loss_sums = rewarded.tolist(), loss.tolist()  # waits for the device
    train_seconds = time.perf_counter() - start
    val_acc, test_acc = (acc.tolist() for acc in pack.evaluate())
    # The time columns are the pack's: each member's epoch took the pack's wall time.
    epoch_seconds = time.perf_counter() - start
    diverged = [record_epoch(m.trainer, m.state, rewarded=rewarded_sums[k], loss=loss_sums[k], val_acc=val_acc[k],
                             test_acc=test_acc[k], train_seconds=train_seconds, epoch_seconds=epoch_seconds)
                for k, m in enumerate(pack.members)]
    if task is not None:
        rows = [m.state.rows[-1] for m in pack.members]
        progress.update(task, rate=f"mean reward {sum(r['train_reward'] for r in rows) / len(rows):.3f}  "
                                   f"val {sum(r['val_acc'] for r in rows) / len(rows):.4f}  ({epoch_seconds:.1f}s)")
        progress.stop_task(task)
    return diverged


class LoopPack:
    """Members train one after another, each with its own Trainer: the CPU strategy."""

    def __init__(self, members: list[Member]) -> None:
        self.set_members(members)

    def set_members(self, members: list[Member]) -> None:
        """The members still training."""
        self.members = members

    @property
    def batches_per_epoch(self) -> int:
        return sum(m.trainer.batches_per_epoch for m in self.members)

    def run_epoch(self, on_batch: Callable[[int, torch.Tensor], None] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """One epoch of every member; per-member summed reward and loss, shape (K,)."""
        sums, done = [], 0
        for m in self.members:
            offset = done
            sums.append(m.trainer.run_epoch(None if on_batch is None else
                                            lambda i, r, offset=offset: on_batch(offset + i, r)))
            done += m.trainer.batches_per_epoch
        return torch.stack([s[0] for s in sums]), torch.stack([s[1] for s in sums])

    def evaluate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-member validation and test accuracy, shape (K,)."""
        val = [m.trainer.accuracy(m.trainer.splits.val_x, m.trainer.splits.val_y) for m in self.members]
        test = [m.trainer.accuracy(m.trainer.splits.test_x, m.trainer.splits.test_y) for m in self.members]
        return torch.stack(val), torch.stack(test)


class _Bound(nn.Module):
    """`fn(net, *args)` as a module's forward, so `functional_call` can run it on one member's tensors."""

    def __init__(self, net: QNetwork, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.net, self.fn = net, fn

    def forward(self, *args: Any) -> Any:
        return self.fn(self.net, *args)


class VmapPack:
    """Members' weights stacked (K, ...); one vmapped step trains them all: the CUDA strategy."""

    def __init__(self, members: list[Member]) -> None:
        first = members[0].trainer
        self.config, self.device = first.config, first.device
        self.hidden_shapes = first.net.hidden_shapes(first.splits.input_shape)
        # The members' architecture holding the stacked tensors; functional_call gives it one member's slices.
        self.stacked = build_network(self.config.arch, self.config.fc, first.splits.input_shape,
                                     first.splits.num_classes).to(self.device)
        self._member_forward = self._per_member(lambda net, x, noise: net(x, noise=noise))
        self._qagrel_learn = vmap(self._per_member(_qagrel_learn_tuple), in_dims=(0, 0, 0, 0, 0, None))
        self._bp_loss = vmap(_bp_loss_tuple)
        self.set_members(members)

    def _per_member(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """fn(net, *args) as a function of (member tensors, *args), for vmap."""
        bound = _Bound(self.stacked, fn)
        return lambda tensors, *args: functional_call(bound, tensors, args)

    def _forward(self, tensors: dict[str, torch.Tensor], x: torch.Tensor, noise: list[torch.Tensor | None] | None,
                 shared_x: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Every member's forward pass; x is (K, B, ...) or, with `shared_x`, one (B, ...) batch for all."""
        noise_dims = None if noise is None else [None if u is None else 0 for u in noise]
        return vmap(self._member_forward, in_dims=(0, None if shared_x else 0, noise_dims))(tensors, x, noise)

    def _tensors(self) -> dict[str, torch.Tensor]:
        """The stacked weights and feedback weights, named as `_Bound` sees them."""
        return {f"net.{name}": t for name, t in [*self.stacked.named_parameters(), *self.stacked.named_buffers()]}

    def set_members(self, members: list[Member]) -> None:
        """Stack the members' weights and data; make each member's tensors views into the stacks."""
        self.members = members
        if not members:
            return
        trainable = self.config.rule == Rule.bp
        for n, layer in enumerate(self.stacked.layers):
            nets = [m.trainer.net.layers[n] for m in members]
            layer.weight = nn.Parameter(torch.stack([l.weight.detach() for l in nets]), requires_grad=trainable)
            layer.feedback_weight = torch.stack([l.feedback_weight for l in nets])
            for k, member_layer in enumerate(nets):
                # .data keeps the Parameter object, so the member's optimizer state still refers to it.
                member_layer.weight.data = layer.weight.data[k]
                member_layer.feedback_weight = layer.feedback_weight[k]
        splits = [m.trainer.splits for m in members]
        self.train_x, self.train_y = torch.stack([s.train_x for s in splits]), torch.stack([s.train_y for s in splits])
        self.val_x, self.val_y = torch.stack([s.val_x for s in splits]), torch.stack([s.val_y for s in splits])
        for k, m in enumerate(members):  # the members' own copies become views: one copy of the data in memory
            m.trainer.splits = replace(m.trainer.splits, train_x=self.train_x[k], train_y=self.train_y[k],
                                       val_x=self.val_x[k], val_y=self.val_y[k])
        self.test_x, self.test_y = splits[0].test_x, splits[0].test_y  # the same test set for every seed
        self.scale = PixelScaling.stack([m.trainer.scale for m in members])

    @property
    def batches_per_epoch(self) -> int:
        return self.members[0].trainer.batches_per_epoch

    def run_epoch(self, on_batch: Callable[[int, torch.Tensor], None] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """One epoch of every member, in each member's own order; summed reward and loss, shape (K,)."""
        self.stacked.train()
        order = torch.stack([m.trainer.epoch_order() for m in self.members])
        rows = torch.arange(len(self.members), device=self.device)[:, None]
        return run_batches(order, self.config.batch_size,
                           lambda idx: self.step(self.scale(self.train_x[rows, idx]), self.train_y[rows, idx]),
                           on_batch)

    def step(self, x: torch.Tensor, labels: torch.Tensor) -> BatchStats:
        """One weight update of every member on its own batch: x (K, B, C, H, W), labels (K, B)."""
        # Each member's dropout draws first, from its own generator, as its forward pass would make them.
        noise = self.stacked.dropout_noise(x.shape[1], self.hidden_shapes, self._generators())
        if self.config.rule == Rule.bp:
            return self._bp_step(x, labels, noise)
        return self._qagrel_step(x, labels, noise)

    def _generators(self) -> list[torch.Generator]:
        return [m.trainer.trial_rng for m in self.members]

    @torch.no_grad()
    def _qagrel_step(self, x: torch.Tensor, labels: torch.Tensor, noise: list[torch.Tensor | None]) -> BatchStats:
        tensors = self._tensors()
        q, activities = self._forward(tensors, x, noise)
        # The exploration draws come after the dropout draws, as in qagrel_step.
        action = select_actions(q, self.config.epsilon, self._generators())
        changes, rewarded, loss = self._qagrel_learn(tensors, q, activities, action, labels, self.config.lr)
        apply_weight_changes(self.stacked, changes, self.config.feedback != Feedback.fixed)
        return BatchStats(rewarded=rewarded, loss=loss)

    def _bp_step(self, x: torch.Tensor, labels: torch.Tensor, noise: list[torch.Tensor | None]) -> BatchStats:
        q, _ = self._forward(self._tensors(), x, noise)
        loss, rewarded, loss_sum = self._bp_loss(q, labels)
        weights = [layer.weight for layer in self.stacked.layers]
        for w in weights:
            w.grad = None
        # Members are independent, so the gradient of the summed losses is every member's own gradient.
        loss.sum().backward()
        for k, m in enumerate(self.members):
            for w, member_layer in zip(weights, m.trainer.net.layers):
                member_layer.weight.grad = w.grad[k]
            m.trainer.optimizer.step()  # the member's own optimizer, as in bp_step
            m.trainer.optimizer.zero_grad(set_to_none=True)
        return BatchStats(rewarded=rewarded, loss=loss_sum)

    @torch.no_grad()
    def evaluate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-member validation and test accuracy, shape (K,); the test images are shared, not copied."""
        self.stacked.eval()
        tensors = self._tensors()
        val = greedy_accuracy(lambda images: self._forward(tensors, images, None)[0], self.val_x, self.val_y,
                              self.scale)
        # Unit-scaled test images are the same for every member; standardised ones differ per member.
        test = greedy_accuracy(lambda images: self._forward(tensors, images, None, shared_x=images.dim() == 4)[0],
                               self.test_x, self.test_y, self.scale)
        return val, test


def _qagrel_learn_tuple(net: QNetwork, q: torch.Tensor, activities: list[torch.Tensor], action: torch.Tensor,
                        labels: torch.Tensor, lr: float) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """qagrel_learn with its stats as a tuple: vmap returns tensors, not dataclasses."""
    changes, stats = qagrel_learn(net, q, activities, action, labels, lr)
    return changes, stats.rewarded, stats.loss


def _bp_loss_tuple(q: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """bp_loss with its stats as a tuple: vmap returns tensors, not dataclasses."""
    loss, stats = bp_loss(q, labels)
    return loss, stats.rewarded, stats.loss


__all__ = ["PackStrategy", "parse_seeds", "train_pack", "Member", "LoopPack", "VmapPack"]
