"""Time one training step of qagrel's training against a plain PyTorch step of the same network.

    python benchmarks/bench_step.py [--device cpu|cuda] [--batch-size 100] [--steps 150] [--malloc keep|default]
                                    [--inputs mnist,cifar] [--json FILE]

For conv and loccon on MNIST-sized (1x28x28) and CIFAR-sized (3x32x32) input,
it measures, side by side in one process:
  plain-bp : nn.Sequential of the same layers, autograd, torch.optim.SGD
  qagrel   : qagrel_cli.core.rules.qagrel_step (forward, selection, RPE, feedback, update)
  bp       : qagrel_cli.core.rules.bp_step (qagrel's BP on its own layers)
and prints ratios: qagrel / plain-bp (target <= 1.1) and loccon / conv (target <= 3).
On a CPU, malloc keeps freed memory for reuse, as `qagrel train` sets it
(qagrel_cli/core/allocator.py; it applies to the whole process, so to all three
contenders); `--malloc default` measures glibc's default instead.
Each time is the median over `--steps` single steps, the contenders taking
turns step by step (a, b, c, a, b, c, ...): on a shared machine, load that
drifts over seconds then lands on all of them alike. Each step is timed
between CUDA synchronisations. `--json FILE` also writes the figures as JSON,
rewritten after every case, so a run cut short keeps the cases it finished.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from bench_json import write_json
from qagrel_cli.core.allocator import keep_freed_memory
from qagrel_cli.core.config import CONV_DROPOUT, Arch, Init
from qagrel_cli.core.layers import LocallyConnected2d
from qagrel_cli.core.models import LAST_HIDDEN_DROPOUT, build_network
from qagrel_cli.core.rules import bp_step, qagrel_step
from qagrel_cli.core.device import describe_device

SHAPES = {"mnist": (1, 28, 28), "cifar": (3, 32, 32)}


def plain_sequential(arch: Arch, shape: tuple[int, int, int], classes: int) -> nn.Sequential:
    """The same network written the ordinary PyTorch way (no feedback weights, no biases)."""
    channels, height, width = shape
    first: nn.Module = (nn.Conv2d(channels, 32, 3, bias=False) if arch == Arch.conv
                        else LocallyConnected2d(channels, 32, 3, (height, width)))
    h2 = (height - 3) // 2 + 1
    return nn.Sequential(first, nn.ReLU(), nn.Conv2d(32, 32, 3, stride=2, padding=1, bias=False), nn.ReLU(),
                         nn.Dropout(CONV_DROPOUT), nn.Flatten(), nn.Linear(32 * h2 * h2, 500, bias=False),
                         nn.ReLU(), nn.Dropout(LAST_HIDDEN_DROPOUT), nn.Linear(500, classes, bias=False))


def time_steps(fns: dict[str, Callable[[], object]], steps: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call of each function, the functions taking turns call by call."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in fns.values():  # warm-up: allocator, kernels, lazy init
        for _ in range(3):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--steps", type=int, default=150, help="timed steps per contender and case (median)")
    parser.add_argument("--malloc", choices=("keep", "default"), default="keep",
                        help="keep: freed CPU memory is kept for reuse, as `qagrel train` runs; default: glibc's")
    parser.add_argument("--inputs", default=",".join(SHAPES), help="input shapes to time, of: " + ", ".join(SHAPES))
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    inputs = args.inputs.split(",")
    if not set(inputs) <= set(SHAPES):
        parser.error(f"--inputs: choose from {', '.join(SHAPES)}, got {args.inputs!r}")
    malloc = "default"
    if args.malloc == "keep" and keep_freed_memory():
        malloc = "keeps freed memory"
    device = torch.device(args.device)
    name = describe_device(device)
    print(f"device: {name}; torch {torch.__version__}; batch {args.batch_size}; malloc: {malloc}")
    print(f"{'input':6} {'arch':7} {'plain-bp ms':>11} {'bp ms':>8} {'qagrel ms':>10} {'qagrel/plain':>13}")
    results: dict[str, Any] = {"device": name, "torch": torch.__version__, "batch_size": args.batch_size,
                               "steps": args.steps, "malloc": malloc, "cases": [], "loccon_over_conv": {}}
    per_arch: dict[tuple[str, str], float] = {}
    for data in inputs:
        shape = SHAPES[data]
        for arch in (Arch.conv, Arch.loccon):
            x = torch.rand(args.batch_size, *shape, device=device)
            y = torch.randint(0, 10, (args.batch_size,), device=device)
            gen = torch.Generator(device=device).manual_seed(0)

            plain = plain_sequential(arch, shape, 10).to(device).train()
            plain_opt = torch.optim.SGD(plain.parameters(), lr=0.01)

            def plain_step() -> None:
                loss = F.cross_entropy(plain(x), y)
                plain_opt.zero_grad(set_to_none=True)
                loss.backward()
                plain_opt.step()

            net = build_network(arch, (500,), shape, 10)
            net.reset_weights(Init.uniform, 0.02, True, torch.Generator().manual_seed(0))
            net.to(device).train()
            opt = torch.optim.SGD(net.parameters(), lr=0.01)
            times = time_steps({
                "plain": plain_step,
                "bp": lambda: bp_step(net, opt, x, y, gen),
                "qagrel": lambda: qagrel_step(net, x, y, 1.0, 0.02, gen),
            }, args.steps, device)
            per_arch[(data, arch.value)] = times["qagrel"]
            print(f"{data:6} {arch.value:7} {1e3 * times['plain']:11.2f} {1e3 * times['bp']:8.2f} "
                  f"{1e3 * times['qagrel']:10.2f} {times['qagrel'] / times['plain']:12.2f}x", flush=True)
            results["cases"].append({"input": data, "arch": arch.value, "plain_ms": 1e3 * times["plain"],
                                     "bp_ms": 1e3 * times["bp"], "qagrel_ms": 1e3 * times["qagrel"],
                                     "qagrel_over_plain": times["qagrel"] / times["plain"]})
            write_json(args.json, results)
    for data in inputs:
        ratio = per_arch[(data, "loccon")] / per_arch[(data, "conv")]
        print(f"{data}: qagrel loccon / conv step = {ratio:.2f}x")
        results["loccon_over_conv"][data] = ratio
    write_json(args.json, results)


if __name__ == "__main__":
    main()
