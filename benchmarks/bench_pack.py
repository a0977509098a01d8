"""Seed packing: throughput of K runs packed into one vmapped model against K sequential runs.

    python benchmarks/bench_pack.py [--device cpu|cuda] [--ks 1,2,5,10] [--archs conv,loccon,fc]
                                    [--rules qagrel,bp] [--data mnist|cifar] [--min-seconds 1] [--threads N]
                                    [--json FILE]

For every architecture, rule and pack size K it times one training step of
  seq  : K single-run steps, one after the other (Trainer.step: qagrel_step or bp_step)
  vmap : one VmapPack.step (stacked weights, torch.func.vmap; qagrel_cli/core/packs.py)
on random batches of the right shape (speed does not depend on pixel values), in
one process, and prints samples/second, the vmap/seq ratio and what the pack
actually runs on this device (`auto`: vmap on CUDA, loop = sequential elsewhere).
It also prints the achieved GFLOP/s of the faster step, FLOPs counted from the
layer shapes (forward, weight products and feedback: 3 products per layer, 2 for
the first, which sends no feedback; the same count for BP's forward, weight
gradients and input gradients), against a large matmul measured in the same run
as the practical ceiling. Times are medians of torch.utils.benchmark's
blocked_autorange (CUDA-synchronised); seq and vmap are measured alternately,
best of --rounds, because shared machines are noisy. `--json FILE` also writes
the figures as JSON, rewritten after every row, so a run cut short keeps the rows
it finished.

Targets (issue 5): on a CUDA GPU, vmap at K=10 >= 5x the samples/s of 10
sequential runs; on a CPU, the pack (auto) is never slower than sequential.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch.utils import benchmark

from bench_json import write_json
from qagrel_cli.core.allocator import keep_freed_memory
from qagrel_cli.core.config import TrainConfig
from qagrel_cli.core.data import Splits
from qagrel_cli.core.stopping import RunProgress
from qagrel_cli.core.device import describe_device
from qagrel_cli.core.trainer import Trainer
from qagrel_cli.core.layers import LocallyConnected2d
from qagrel_cli.core.models import QNetwork
from qagrel_cli.core.packs import Member, VmapPack

SHAPES = {"mnist": (1, 28, 28), "cifar": (3, 32, 32)}
CLASSES = 10


def fake_splits(shape: tuple[int, int, int], n: int, device: torch.device, seed: int) -> Splits:
    """Random uint8 images and labels in the layout training keeps on the device."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8).to(device)
    labels = torch.randint(0, CLASSES, (n,), generator=g).to(device)
    return Splits(images, labels, images[:10], labels[:10], images[:10], labels[:10], num_classes=CLASSES)


def make_members(config: TrainConfig, k: int, shape: tuple[int, int, int], device: torch.device) -> list[Member]:
    members = []
    for seed in range(k):
        member_config = TrainConfig(**{**config.to_dict(), "seed": seed})
        trainer = Trainer(member_config, fake_splits(shape, config.batch_size, device, seed), device)
        trainer.net.train()
        members.append(Member(seed, member_config, Path("."), trainer, RunProgress()))
    return members


def step_flops(net: QNetwork, input_shape: tuple[int, int, int]) -> int:
    """FLOPs of one training step per sample: 2 x multiply-adds of every product the rule computes."""
    out_sizes = [s.numel() for s in net.hidden_shapes(input_shape)] + [net.layers[-1].weight.shape[0]]
    total = 0
    for n, (layer, out_size) in enumerate(zip(net.layers, out_sizes)):
        # Inputs seen by one output node: in_features, C_in*k*k (conv), or a position's own patch (loccon).
        fan_in = layer.weight.shape[-1] if isinstance(layer, LocallyConnected2d) else layer.weight[0].numel()
        products = 2 if n == 0 else 3  # forward, weight product, feedback (none below the first layer)
        total += 2 * out_size * fan_in * products
    return total


def median_seconds(fn, min_seconds: float) -> float:
    for _ in range(2):  # warm-up: allocator, kernels, lazy init
        fn()
    return benchmark.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_seconds).median


def matmul_gflops(device: torch.device, min_seconds: float) -> float:
    """The practical ceiling: a large float32 matmul on the same device."""
    n = 4096 if device.type == "cuda" else 2048
    a, b = torch.rand(n, n, device=device), torch.rand(n, n, device=device)
    return 2 * n**3 / median_seconds(lambda: a @ b, min_seconds) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ks", default="1,2,5,10")
    parser.add_argument("--archs", default="conv,loccon,fc")
    parser.add_argument("--rules", default="qagrel,bp")
    parser.add_argument("--data", choices=sorted(SHAPES), default="mnist")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shape = SHAPES[args.data]
    ks = [int(k) for k in args.ks.split(",")]
    auto = "vmap" if device.type == "cuda" else "loop"
    name = describe_device(device)
    # As `qagrel train` runs on a CPU (the Trainers below would set it anyway): see qagrel_cli/core/allocator.py.
    malloc = "keeps freed memory" if device.type == "cpu" and keep_freed_memory() else "default"
    ceiling = matmul_gflops(device, args.min_seconds)
    print(f"device: {name}; torch {torch.__version__}; {args.data} {shape}; batch {args.batch_size}; "
          f"malloc: {malloc}; pack strategy here (auto): {auto}")
    print(f"ceiling: float32 matmul {ceiling:.0f} GFLOP/s")
    header = (f"{'arch':7} {'rule':6} {'K':>3} {'seq ms':>9} {'vmap ms':>9} {'seq smp/s':>10} {'vmap smp/s':>11} "
              f"{'vmap/seq':>9} {'pack/seq':>9} {'GFLOP/s':>8} {'of ceil':>8}")
    print(header)
    results: dict[str, Any] = {"device": name, "torch": torch.__version__, "data": args.data,
                               "batch_size": args.batch_size, "malloc": malloc, "pack_strategy_auto": auto,
                               "ceiling_gflops": ceiling, "rows": []}
    write_json(args.json, results)
    worst_cpu, gpu_k10 = float("inf"), []
    for arch in args.archs.split(","):
        for rule in args.rules.split(","):
            # A small lr keeps random-label training finite: speed must not be measured on NaNs.
            config = TrainConfig(arch=arch, rule=rule, lr=1e-3, batch_size=args.batch_size, device=str(device))
            for k in ks:
                members = make_members(config, k, shape, device)
                pack = VmapPack(members)
                pack.stacked.train()
                x = torch.rand(k, args.batch_size, *shape, device=device)
                y = torch.randint(0, CLASSES, (k, args.batch_size), device=device)

                def sequential() -> None:
                    for i, m in enumerate(members):
                        m.trainer.step(x[i], y[i])

                seq = vmapped = float("inf")
                for _ in range(args.rounds):
                    seq = min(seq, median_seconds(sequential, args.min_seconds))
                    vmapped = min(vmapped, median_seconds(lambda: pack.step(x, y), args.min_seconds))
                packed = vmapped if auto == "vmap" else seq
                samples = k * args.batch_size
                best = min(seq, vmapped)
                gflops = samples * step_flops(members[0].trainer.net, shape) / best / 1e9
                print(f"{arch:7} {rule:6} {k:3d} {1e3 * seq:9.2f} {1e3 * vmapped:9.2f} {samples / seq:10.0f} "
                      f"{samples / vmapped:11.0f} {seq / vmapped:8.2f}x {seq / packed:8.2f}x {gflops:8.1f} "
                      f"{100 * gflops / ceiling:7.1f}%", flush=True)
                results["rows"].append({"arch": arch, "rule": rule, "k": k, "seq_ms": 1e3 * seq,
                                        "vmap_ms": 1e3 * vmapped, "seq_samples_per_s": samples / seq,
                                        "vmap_samples_per_s": samples / vmapped, "vmap_over_seq": seq / vmapped,
                                        "pack_over_seq": seq / packed, "gflops": gflops,
                                        "of_ceiling": gflops / ceiling})
                write_json(args.json, results)
                if device.type == "cuda" and k == 10:
                    gpu_k10.append(seq / vmapped)
                worst_cpu = min(worst_cpu, seq / packed)
    if device.type == "cuda" and gpu_k10:
        print(f"target K=10 vmap >= 5x sequential: worst {min(gpu_k10):.2f}x -> "
              f"{'met' if min(gpu_k10) >= 5 else 'NOT met'}")
    else:
        print(f"pack ({auto}) vs sequential: worst {worst_cpu:.2f}x (loop runs the members' own steps in turn, "
              f"so 1.00x up to timing noise)")


if __name__ == "__main__":
    main()
