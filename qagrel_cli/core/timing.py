"""What one training step and one evaluated image cost here: measured on random images, as `qagrel sweep
--dry-run --estimate` (reports/estimate.py) and the benchmarks price a sweep.

Speed does not depend on pixel values, so a network is timed on random images of its dataset's shape: a
few training steps after a warm-up, and the greedy evaluation of a batch of images. Runs that share what
sets a step's cost (STEP_FIELDS) share one measurement.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from qagrel_cli.core.config import TrainConfig
from qagrel_cli.core.data import Splits, input_shape, num_classes
from qagrel_cli.core.stopping import RunProgress
from qagrel_cli.core.trainer import EVAL_BATCH, Trainer

# The settings that decide what one step costs; runs that share them share a calibration.
STEP_FIELDS = ("dataset", "arch", "fc", "rule", "optimizer", "batch_size", "padding", "batch_norm", "device")
# Timing: a few warm-up calls (lazy allocations, kernel selection, the first touch of fresh memory), then
# the best of a few rounds of at least ROUND_SECONDS each. A slow network's step takes longer than a
# round: then a round is one call.
WARMUP_CALLS = 3
TIMING_ROUNDS = 3
ROUND_SECONDS = 0.1
EVAL_IMAGES = min(EVAL_BATCH, 200)  # per-image evaluation cost is flat from a few hundred images up

@dataclass(frozen=True)
class Cost:
    """Measured seconds for one network: a training step, and evaluating one image."""

    step: float
    eval_image: float


def distinct_networks(configs: list[TrainConfig]) -> list[list[TrainConfig]]:
    """`configs` grouped by network (STEP_FIELDS: what sets the cost of a step), in order of first appearance."""
    groups: dict[tuple, list[TrainConfig]] = {}
    for config in configs:
        resolved = config.to_dict()
        groups.setdefault(tuple(str(resolved[f]) for f in STEP_FIELDS), []).append(config)
    return list(groups.values())


def fake_splits(config: TrainConfig, n: int, device: torch.device, seed: int = 0) -> Splits:
    """Random uint8 images and labels of the config's dataset shape, n of each split, on `device`."""
    classes = num_classes(config.dataset)
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *input_shape(config.dataset)), generator=g,
                           dtype=torch.uint8).to(device)
    labels = torch.randint(0, classes, (n,), generator=g).to(device)
    return Splits(images, labels, images, labels, images, labels, num_classes=classes)


def step_on_random_images(config: TrainConfig, device: torch.device) -> tuple[Trainer, Callable[[], object]]:
    """A trainer of `config`'s network on random images (fake_splits: EVAL_IMAGES or a batch of each split,
    whichever is more), and one training step on its first batch, to call again and again."""
    n = max(config.batch_size, EVAL_IMAGES)
    trainer = Trainer(config, fake_splits(config, n, device), device)
    x, y = trainer.scale(trainer.splits.train_x[:config.batch_size]), trainer.splits.train_y[:config.batch_size]
    trainer.net.train()
    return trainer, lambda: trainer.step(x, y)


def calibrate(config: TrainConfig, device: torch.device) -> Cost:
    """Time a training step and the evaluation of one image for `config`'s network on `device`."""
    trainer, step_once = step_on_random_images(config, device)
    step = seconds_per_call(step_once, device)
    images, labels = trainer.splits.test_x[:EVAL_IMAGES], trainer.splits.test_y[:EVAL_IMAGES]
    evaluate = seconds_per_call(lambda: trainer.accuracy(images, labels), device)
    return Cost(step, evaluate / EVAL_IMAGES)


def calibrate_pack(config: TrainConfig, device: torch.device, k: int) -> Cost:
    """Per-member cost in a vmapped pack of k (qagrel_cli/core/packs.py's CUDA strategy)."""
    from qagrel_cli.core.packs import Member, VmapPack

    n = max(config.batch_size, EVAL_IMAGES)
    members = [Member(s, dataclasses.replace(config, seed=s), Path("."),
                      Trainer(dataclasses.replace(config, seed=s), fake_splits(config, n, device, s), device),
                      RunProgress()) for s in range(k)]
    pack = VmapPack(members)
    x = pack.scale(pack.train_x[:, :config.batch_size])
    y = pack.train_y[:, :config.batch_size]
    step = seconds_per_call(lambda: pack.step(x, y), device)
    evaluate = seconds_per_call(pack.evaluate, device)  # validation and test: 2 n images per member
    return Cost(step / k, evaluate / (2 * n * k))


def seconds_per_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds per call after a warm-up: the best of TIMING_ROUNDS rounds (shared machines are noisy),
    each as many calls as fill ROUND_SECONDS."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(WARMUP_CALLS):
        fn()
    sync()
    best = math.inf
    for _ in range(TIMING_ROUNDS):
        calls, start = 0, time.perf_counter()
        while calls < 1 or time.perf_counter() - start < ROUND_SECONDS:
            fn()
            calls += 1
        sync()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


__all__ = ["Cost", "STEP_FIELDS", "EVAL_IMAGES", "distinct_networks", "fake_splits", "step_on_random_images",
           "calibrate", "calibrate_pack", "seconds_per_call"]
