"""Time one worker's training step alone, and beside N-1 workers training the same network, as
`qagrel sweep FILE --workers N` runs them.

    python benchmarks/bench_workers.py sweeps/table1-cpu.yaml [--workers 2] [--steps 30] [--rounds 2]
                                       [--json FILE]

`qagrel sweep --dry-run --estimate --workers N` times one worker's step with the threads it gets
(`Epoch, 1 of N`) while the rest of the machine is idle. In the sweep, N workers train at once and
share the caches and the memory bus. For every distinct network of the sweep file (as the estimate
groups them), on the CPU, this measures side by side in one process:
  alone  : the step on the worker's threads, the other cores idle
  beside : the same step while N-1 other processes train the same network on their own threads
and prints beside / alone, the factor by which the estimate's `Epoch, 1 of N` falls short of what
`qagrel status --times` measures. Each time is the median of `--steps` single steps; the two cases
take turns, `--rounds` blocks each, so load that drifts over seconds lands on both alike. Run it on
an otherwise idle machine. `--json FILE` also writes the figures, rewritten after every network.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from bench_json import write_json
from qagrel_cli.core.config import ARCH_NAMES, DATASET_NAMES, RULE_NAMES, QagrelError, Rule, TrainConfig
from qagrel_cli.core.device import describe_device
from qagrel_cli.core.timing import distinct_networks, step_on_random_images
from qagrel_cli.sweeps.local_executor import worker_threads
from qagrel_cli.sweeps.sweep_file import load_sweep

WARMUP_STEPS = 3
IDLE, BUSY, EXIT = 0, 1, -1  # what the other workers are told to do


def other_worker(config: dict[str, Any], threads: int, state, ready) -> None:
    """One of the N-1 other workers: train `config`'s network step after step while `state` is BUSY."""
    torch.set_num_threads(threads)
    _, step_once = step_on_random_images(TrainConfig.from_dict(config), torch.device("cpu"))
    for _ in range(WARMUP_STEPS):
        step_once()
    with ready.get_lock():
        ready.value += 1
    while state.value != EXIT:
        if state.value == BUSY:
            step_once()
        else:
            time.sleep(0.01)


def median_step(step_once: Callable[[], object], steps: int) -> float:
    """Median seconds of `steps` single calls."""
    samples = []
    for _ in range(steps):
        start = time.perf_counter()
        step_once()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def time_network(config: TrainConfig, workers: int, threads: int, steps: int, rounds: int) -> tuple[float, float]:
    """Median step seconds of `config`'s network alone and beside `workers - 1` others."""
    ctx = multiprocessing.get_context("spawn")  # as the sweep's workers start
    state, ready = ctx.Value("i", IDLE), ctx.Value("i", 0)
    others = [ctx.Process(target=other_worker, args=(config.to_dict(), threads, state, ready), daemon=True)
              for _ in range(workers - 1)]
    for process in others:
        process.start()
    try:
        _, step_once = step_on_random_images(config, torch.device("cpu"))
        for _ in range(WARMUP_STEPS):
            step_once()
        while ready.value < len(others):
            if not all(p.is_alive() for p in others):
                raise RuntimeError("another worker died while building its network")
            time.sleep(0.05)
        alone: list[float] = []
        beside: list[float] = []
        for _ in range(rounds):
            state.value = IDLE
            time.sleep(0.2)  # the others finish the step they are in
            alone.append(median_step(step_once, steps))
            state.value = BUSY
            time.sleep(0.2)  # the others are stepping
            beside.append(median_step(step_once, steps))
        return statistics.median(alone), statistics.median(beside)
    finally:
        state.value = EXIT
        for process in others:
            process.join(timeout=30)


def network_label(config: TrainConfig) -> str:
    """The network as the estimate's table names it, with BP's optimizer: 'MNIST Conv 500 Error-BP adam'."""
    words = [DATASET_NAMES[config.dataset.value], ARCH_NAMES[config.arch.value], ",".join(map(str, config.fc)),
             RULE_NAMES[config.rule.value]]
    return " ".join(words + ([config.optimizer.value] if config.rule == Rule.bp else []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="sweep file whose networks to time, e.g. sweeps/table1-cpu.yaml")
    parser.add_argument("--workers", type=int, default=2, help="N: the sweep's --workers (default 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per worker (default: the cores divided among the workers, as the sweep)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per case and round (median)")
    parser.add_argument("--rounds", type=int, default=2, help="blocks of each case, taking turns")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.workers < 2:
        parser.error("--workers: at least 2 (one worker beside no other is the estimate's own timing)")
    try:
        networks = [runs[0] for runs in distinct_networks(load_sweep(args.sweep).configs)]
    except QagrelError as err:
        sys.exit(f"error: {err}")
    threads = worker_threads(args.workers, args.threads)
    torch.set_num_threads(threads)
    device = describe_device(torch.device("cpu"))
    print(f"device: {device}; torch {torch.__version__}; {args.workers} workers, {threads} thread(s) each")
    print(f"{'network':48} {'alone ms':>9} {'beside ms':>10} {'beside/alone':>13}")
    results: dict[str, Any] = {"device": device, "torch": torch.__version__, "workers": args.workers,
                               "threads": threads, "steps": args.steps, "rounds": args.rounds, "networks": []}
    for config in networks:
        alone, beside = time_network(config, args.workers, threads, args.steps, args.rounds)
        label = network_label(config)
        print(f"{label:48} {1e3 * alone:9.2f} {1e3 * beside:10.2f} {beside / alone:12.2f}x", flush=True)
        results["networks"].append({"network": label, "alone_ms": 1e3 * alone, "beside_ms": 1e3 * beside,
                                    "beside_over_alone": beside / alone})
        write_json(args.json, results)


if __name__ == "__main__":
    main()
