"""`qagrel sweep FILE --dry-run --estimate`: how long a sweep takes here, before it starts.

For every distinct network of the sweep (dataset, first layer, hidden sizes,
rule, and what else sets the cost of a step: batch size, optimizer, device)
it times a few training steps, after a warm-up, on random images of the right
shape (speed does not depend on pixel values), and the greedy evaluation of a
batch of images. A run then costs

    epochs x (batches per epoch x step time + (validation + test images) x evaluation time per image)

where epochs is the paper's mean for the matching Table 1 row (a run of the
authors' later recipe matches its row whatever its alpha), plus the epochs a
patience above Table 1's waits longer, capped at the run's max_epochs; else
max_epochs: early stopping ends most runs far sooner, so max_epochs is an upper
bound, and the output says which was used.

The executor choices it prices: one local worker (all cores to one run);
`--workers N` (timed again with the threads each local worker gets: `--threads T`,
else the cores divided among the N; N runs at once); a seed pack of K (on CUDA
one vmapped step of K members, timed; on a CPU the pack runs its members one
after another, qagrel_cli/core/packs.py, so it costs what one worker does); and
Ray, which is the `--workers` figure divided by the number of such machines.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from qagrel_cli.core.config import ARCH_NAMES, DATASET_NAMES, DEFAULTS, RULE_NAMES, Dataset, TrainConfig
from qagrel_cli.core.recipes import follows_brainprop
from qagrel_cli.core.device import resolve_device
from qagrel_cli.core.timing import Cost, calibrate, calibrate_pack, distinct_networks
from qagrel_cli.reports.rows import TABLE1_FIELDS, format_duration, row_key
from qagrel_cli.reports.table import paper_row
from qagrel_cli.sweeps.ledger import RunStatus, run_status
from qagrel_cli.sweeps.local_executor import worker_threads
from qagrel_cli.sweeps.results import RunRecord
from qagrel_cli.sweeps.sweep_file import Sweep

# Training and test images per dataset (the files hold exactly these).
DATASET_SIZES: dict[Dataset, tuple[int, int]] = {
    Dataset.mnist: (60000, 10000), Dataset.fashion_mnist: (60000, 10000),
    Dataset.cifar10: (50000, 10000), Dataset.cifar100: (50000, 10000),
}
# A run the sweep still trains: not started, resumable from its checkpoint, or training in another process now.
LEFT_TO_TRAIN = (RunStatus.pending, RunStatus.partial, RunStatus.running)
# A 1-minute load average from this much up means another process's work shared the cores while timing.
BUSY_LOAD = 1.0


@dataclass(frozen=True)
class NetworkEstimate:
    """One distinct network of the sweep: its runs, their expected epochs, and what they cost."""

    config: TrainConfig  # the first run of this network (seed and the like are any run's)
    runs: int
    epochs: float  # expected epochs per run (mean over the network's runs)
    # 'paper' (Table 1's mean), 'paper + N' (a longer patience), 'max_epochs'; joined by '/' when runs differ
    epochs_source: str
    cost: Cost  # measured with all cores
    run_seconds: float  # one run, all cores
    run_seconds_shared: float  # one run, the cores divided among `workers` runs
    run_seconds_packed: float | None  # one member of a pack of `pack`, when timed


@dataclass(frozen=True)
class SweepEstimate:
    """Every network's estimate and the whole sweep's compute time per executor choice."""

    networks: list[NetworkEstimate]
    workers: int
    pack: int
    device: str
    threads: int  # the one-worker timing's threads: all of them
    shared_threads: int  # each of `workers` workers' threads (local_executor.worker_threads)
    load: float | None = None  # the 1-minute load average when timing began (None where the OS has none)

    @property
    def sequential(self) -> float:
        return sum(n.runs * n.run_seconds for n in self.networks)

    @property
    def parallel(self) -> float:
        return sum(n.runs * n.run_seconds_shared for n in self.networks) / self.workers

    @property
    def packed(self) -> float | None:
        if any(n.run_seconds_packed is None for n in self.networks):
            return None
        return sum(n.runs * n.run_seconds_packed for n in self.networks)


def estimate_sweep(configs: list[TrainConfig], *, workers: int | None = None, pack: int = 1,
                   threads: int | None = None) -> SweepEstimate:
    """Time one calibration per distinct network of `configs` and price the sweep. Writes nothing.

    `workers` runs at once (default: one per core), each with `threads` CPU threads (default: the cores
    divided among them), as `qagrel sweep --workers N --threads T` would train them."""
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # before our own timing adds to it
    workers = workers if workers and workers > 1 else max(1, cores)
    shared_threads = worker_threads(workers, threads)
    all_threads = torch.get_num_threads()
    networks = []
    try:
        for runs in distinct_networks(configs):
            first = runs[0]
            device = resolve_device(first.device)
            torch.set_num_threads(all_threads)
            alone = calibrate(first, device)
            torch.set_num_threads(shared_threads)
            shared = calibrate(first, device) if workers > 1 else alone
            torch.set_num_threads(all_threads)
            packed = calibrate_pack(first, device, pack) if pack > 1 and device.type == "cuda" else None
            if pack > 1 and device.type != "cuda":
                packed = alone  # a CPU pack trains its members one after another (core/packs.py's loop strategy)
            epochs = [expected_epochs(c) for c in runs]
            sources = sorted({source for _, source in epochs})
            mean_epochs = sum(e for e, _ in epochs) / len(epochs)
            networks.append(NetworkEstimate(
                first, len(runs), mean_epochs, "/".join(sources), alone,
                run_seconds=sum(run_seconds(c, alone, e) for c, (e, _) in zip(runs, epochs)) / len(runs),
                run_seconds_shared=sum(run_seconds(c, shared, e) for c, (e, _) in zip(runs, epochs)) / len(runs),
                run_seconds_packed=(None if packed is None else
                                    sum(run_seconds(c, packed, e) for c, (e, _) in zip(runs, epochs)) / len(runs))))
    finally:
        torch.set_num_threads(all_threads)
    device = str(resolve_device(configs[0].device)) if configs else "cpu"
    return SweepEstimate(networks, workers, pack, device, all_threads, shared_threads, load)


def runs_left(sweep: Sweep, results: Path) -> list[TrainConfig]:
    """The sweep's runs still to train (LEFT_TO_TRAIN). Done, failed and damaged runs cost nothing more:
    a failed run trains again only with --retry-failed, a damaged one only once a person has repaired it."""
    return [c for c in sweep.configs if run_status(sweep.run_dir(results, c)) in LEFT_TO_TRAIN]


def expected_epochs(config: TrainConfig) -> tuple[float, str]:
    """Table 1's mean epochs for this run's row (a recipe run's whatever its alpha), plus the epochs a
    longer patience waits past Table 1's, capped at max_epochs; else max_epochs. With where it came from."""
    key = row_key(RunRecord(Path(), config, None), list(TABLE1_FIELDS))
    paper = paper_row(key, any_alpha=follows_brainprop(config))
    if paper is not None and paper.epochs.mean is not None:
        # Table 1 stopped `patience` epochs after the best; a run that waits longer stops that much later.
        extra = max(0, config.patience - DEFAULTS["patience"])
        if paper.epochs.mean + extra <= config.max_epochs:
            return paper.epochs.mean + extra, f"paper + {extra}" if extra else "paper"
    return float(config.max_epochs), "max_epochs"


def run_seconds(config: TrainConfig, cost: Cost, epochs: float) -> float:
    """One run's expected seconds: every epoch trains on its batches and evaluates validation and test sets."""
    n_train_all, n_test = DATASET_SIZES[config.dataset]
    n_train = config.train_size or (n_train_all - config.val_size)
    per_epoch = math.ceil(n_train / config.batch_size) * cost.step + (config.val_size + n_test) * cost.eval_image
    return epochs * per_epoch


def print_estimate(estimate: SweepEstimate, console: Console, *, not_priced: int = 0) -> None:
    """A row per network (runs, epochs and where they came from, step and epoch times, total) and the totals.

    `not_priced`: the sweep's runs left out because they are finished (or failed or damaged), named in a line.
    """
    if not estimate.networks:
        console.print(f"nothing left to train: all {not_priced} runs are finished, failed or damaged",
                      highlight=False)
        return
    table = Table(title=f"expected compute time on this machine ({estimate.device}, {estimate.threads} threads)")
    shared = estimate.workers > 1  # also what one of the workers takes: `qagrel status --times` measures that
    headers = ["Dataset", "1st layer", "fc", "Rule", "Runs", "Epochs/run", "Step", "Epoch", "Run", "All runs"]
    if shared:
        headers += [f"Epoch, 1 of {estimate.workers}", f"Run, 1 of {estimate.workers}"]
    for header in headers:
        table.add_column(header, justify="right" if header not in ("Dataset", "1st layer", "Rule") else "left")
    for n in estimate.networks:
        c = n.config
        epochs = n.epochs or math.inf  # a network of 0 epochs costs 0 s per epoch
        cells = [DATASET_NAMES.get(c.dataset.value, c.dataset.value), ARCH_NAMES.get(c.arch.value, c.arch.value),
                 ",".join(map(str, c.fc)), RULE_NAMES.get(c.rule.value, c.rule.value), str(n.runs),
                 f"{n.epochs:.0f} ({n.epochs_source})", f"{1000 * n.cost.step:.1f} ms",
                 format_duration(n.run_seconds / epochs), format_duration(n.run_seconds),
                 format_duration(n.runs * n.run_seconds)]
        if shared:
            cells += [format_duration(n.run_seconds_shared / epochs), format_duration(n.run_seconds_shared)]
        table.add_row(*cells)
    table.add_section()
    total = ["total", "", "", "", str(sum(n.runs for n in estimate.networks)), "", "", "", "",
             format_duration(estimate.sequential)]
    table.add_row(*total, *[""] * (len(headers) - len(total)))
    console.print(table)
    choices = Table(title="the whole sweep", show_header=True)
    choices.add_column("executor")
    choices.add_column("compute time", justify="right")
    choices.add_row("local, 1 worker (all cores to one run)", format_duration(estimate.sequential))
    if estimate.workers > 1:
        choices.add_row(f"local, --workers {estimate.workers} (timed with {estimate.shared_threads}"
                        " thread(s) per run)", format_duration(estimate.parallel))
    if estimate.packed is not None:
        how = "vmapped, timed" if estimate.device.startswith("cuda") else "on a CPU members run one after another"
        choices.add_row(f"pack {estimate.pack}, 1 worker ({how})", format_duration(estimate.packed))
    best = estimate.parallel if estimate.workers > 1 else estimate.sequential
    choices.add_row("--executor ray on M machines like this one", f"{format_duration(best)} / M")
    console.print(choices)
    console.print("Epochs/run: the paper's mean epochs for the matching Table 1 row (paper; + the epochs a "
                  f"patience above Table 1's {DEFAULTS['patience']} waits longer), else max_epochs (an upper "
                  "bound: early stopping ends most runs sooner).", highlight=False)
    if not_priced:
        console.print(f"Runs: the {sum(n.runs for n in estimate.networks)} runs still to train; {not_priced} "
                      "finished, failed or damaged runs are not priced, and a started run is priced from "
                      "its first epoch.", highlight=False)
    if estimate.load is not None and estimate.load >= BUSY_LOAD:
        console.print(f"[yellow]warning:[/] the machine was busy when timing began (load average "
                      f"{estimate.load:.1f} on {os.cpu_count() or 1} cores): other work shared the cores, so "
                      "every time above is too long; estimate on an idle machine.", highlight=False)


__all__ = ["estimate_sweep", "runs_left", "print_estimate", "SweepEstimate", "NetworkEstimate", "expected_epochs",
           "run_seconds"]
