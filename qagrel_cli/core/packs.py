"""Seed packs: K runs that differ only in seed, trained together in one process.

The epoch loop (qagrel_cli/core/training.py) trains every run as a member of a
pack; a single run is a pack of one. Every member is an ordinary run: it has
its own Trainer (initialisation, validation split, data order, dropout and
exploration generators, optimizer), its own RunProgress (early stopping) and
its own run folder, checkpoint included, so a killed pack resumes each member
exactly and finished members are never redone. A member that stops (patience,
epoch limit or divergence) writes its summary and leaves the pack; the others
go on.

Two strategies, chosen by device (`strategy="auto"`; measured with
benchmarks/bench_pack.py, figures in docs/performance.md):

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
        run's batch of 100 already keeps the cores busy, and vmap ran slower
        than K sequential runs in almost every case (conv, loccon and fc, both
        rules, K = 1-10; grouped convolutions run slower in oneDNN than K plain
        ones). On a CPU a pack is therefore K runs in turn that share one
        process and one data load.

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

from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.func import functional_call, vmap

from qagrel_cli.core.catalog import rule_info
from qagrel_cli.core.config import Feedback, QagrelError, Rule, TrainConfig
from qagrel_cli.core.data import PixelScaling
from qagrel_cli.core.models import QNetwork, network_for
from qagrel_cli.core.rules import BatchStats, apply_weight_changes, bp_loss, qagrel_learn, select_action_per_member
from qagrel_cli.core.stopping import RunProgress
from qagrel_cli.core.trainer import Trainer, greedy_accuracy, run_batches


class PackStrategy(str, Enum):
    auto = "auto"  # vmap on CUDA, loop elsewhere
    vmap = "vmap"
    loop = "loop"


@dataclass
class Member:
    """One run of the pack: its place in the list of runs, config, run folder, trainer and progress."""

    index: int
    config: TrainConfig
    out: Path
    trainer: Trainer
    progress: RunProgress


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
            sums.append(m.trainer.run_epoch(m.progress.epoch, None if on_batch is None else
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
        if self.config.batch_norm:
            # Each member would need its own running statistics, updated inside vmap: not built.
            raise QagrelError("a vmapped seed pack cannot train batch_norm (each member would need its own running "
                              "statistics): use strategy loop, which trains the members in turn")
        if not rule_info(self.config.rule).vmappable:
            raise QagrelError(f"a vmapped seed pack cannot train rule {self.config.rule.value}: use strategy loop, "
                              "which trains the members in turn")
        self.hidden_shapes = first.net.hidden_shapes(first.splits.input_shape)
        # The members' architecture holding the stacked tensors; functional_call gives it one member's slices.
        self.stacked = network_for(self.config, first.splits.input_shape, first.splits.num_classes).to(self.device)
        self._member_forward = self._per_member(lambda net, x, noise: net(x, noise=noise))
        self._qagrel_learn = vmap(self._per_member(_qagrel_learn_tuple), in_dims=(0, 0, 0, 0, 0, 0))
        self._bp_loss = vmap(_bp_loss_tuple)
        self.set_members(members)

    @staticmethod
    def can_train(config: TrainConfig) -> bool:
        """Whether a vmapped pack can train runs of `config` (its rule vmaps, and it has no batch norm)."""
        return rule_info(config.rule).vmappable and not config.batch_norm

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
        self._stack_lr()

    def _stack_lr(self) -> None:
        # Each member's alpha: members resumed from different epochs may be at different points of a schedule.
        self.lr = torch.tensor([m.trainer.lr for m in self.members], device=self.device)

    @property
    def batches_per_epoch(self) -> int:
        return self.members[0].trainer.batches_per_epoch

    def run_epoch(self, on_batch: Callable[[int, torch.Tensor], None] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """One epoch of every member, in each member's own order; summed reward and loss, shape (K,)."""
        self.stacked.train()
        for m in self.members:
            m.trainer.set_epoch(m.progress.epoch)
        self._stack_lr()
        order = torch.stack([m.trainer.epoch_order() for m in self.members])
        rows = torch.arange(len(self.members), device=self.device)[:, None]
        return run_batches(order, self.config.batch_size,
                           lambda idx: self.step(self.scale(self.train_x[rows, idx]), self.train_y[rows, idx]),
                           on_batch)

    def step(self, x: torch.Tensor, labels: torch.Tensor) -> BatchStats:
        """One weight update of every member on its own batch: x (K, B, C, H, W), labels (K, B)."""
        # Each member's dropout draws first, from its own generator, as its forward pass would make them.
        noise = self.stacked.dropout_noise(x.shape[1], self.hidden_shapes, self._generators())
        match self.config.rule:
            case Rule.qagrel:
                return self._qagrel_step(x, labels, noise)
            case Rule.bp:
                return self._bp_step(x, labels, noise)
            case _:  # refused when the pack was made (RuleInfo.vmappable)
                raise AssertionError(f"no vmapped step for rule {self.config.rule.value}")

    def _generators(self) -> list[torch.Generator]:
        return [m.trainer.trial_rng for m in self.members]

    @torch.no_grad()
    def _qagrel_step(self, x: torch.Tensor, labels: torch.Tensor, noise: list[torch.Tensor | None]) -> BatchStats:
        tensors = self._tensors()
        q, activities = self._forward(tensors, x, noise)
        # The exploration draws come after the dropout draws, as in qagrel_step.
        action = select_action_per_member(q, self.config.epsilon, self._generators())
        changes, rewarded, loss = self._qagrel_learn(tensors, q, activities, action, labels, self.lr)
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
                        labels: torch.Tensor, lr: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """qagrel_learn with its stats as a tuple: vmap returns tensors, not dataclasses."""
    changes, stats = qagrel_learn(net, q, activities, action, labels, lr)
    return changes, stats.rewarded, stats.loss


def _bp_loss_tuple(q: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """bp_loss with its stats as a tuple: vmap returns tensors, not dataclasses."""
    loss, stats = bp_loss(q, labels)
    return loss, stats.rewarded, stats.loss


__all__ = ["PackStrategy", "Member", "LoopPack", "VmapPack"]
