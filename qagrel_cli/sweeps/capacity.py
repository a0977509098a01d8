"""How many local workers a sweep can run at once: at most one per core, and as many as memory holds.

More workers than cores only make them wait on each other; more than memory holds get
killed for it half-way (a worker that dies loses no finished epoch, but the sweep then
fails those runs). `--workers` above either is capped, with a one-line note.
`QAGREL_WORKERS_UNCAPPED=1` turns the cap off (the tests use it, so that a test of two
workers means two workers on a one-core machine too).
"""

from __future__ import annotations

import os
from typing import Sequence

from qagrel_cli.core.config import TrainConfig, dataset_family

# Memory a worker holds beside its network and data: the interpreter, torch's libraries, its allocator's pools.
WORKER_BASE_BYTES = 1 << 30
# Copies of each weight a run keeps: W, W', their changes, an optimizer's state.
WEIGHT_COPIES = 4
# A run's images, held twice (the loaded dataset and the run's split of it).
DATA_COPIES = 2


def cores() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes of memory available for new processes (MemAvailable of /proc/meminfo), None where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def worker_bytes(config: TrainConfig) -> int:
    """A rough upper estimate of the memory one worker training `config` holds."""
    from qagrel_cli.core.data import input_shape, num_classes
    from qagrel_cli.core.models import network_for

    shape = input_shape(config.dataset)
    weights = sum(p.numel() for p in network_for(config, shape, num_classes(config.dataset)).parameters())
    images = 70_000 if dataset_family(config.dataset) == "mnist" else 60_000  # training and test images
    data = images * shape[0] * shape[1] * shape[2]  # uint8
    return WORKER_BASE_BYTES + DATA_COPIES * data + WEIGHT_COPIES * 4 * weights


def cap_workers(workers: int, configs: Sequence[TrainConfig]) -> tuple[int, str | None]:
    """`workers`, capped at the cores and at what memory holds for the largest network of `configs`; the
    note saying so when it was capped, else None."""
    if os.environ.get("QAGREL_WORKERS_UNCAPPED") == "1" or workers <= 1:
        return workers, None
    capped, why = workers, []
    if workers > cores():
        capped, why = cores(), [f"this machine has {cores()} core(s)"]
    memory = available_memory()
    if memory is not None and configs:
        networks = {(c.dataset, c.arch, c.fc, c.padding, c.batch_norm, c.rule): c for c in configs}.values()
        need, largest = max((worker_bytes(c), c.run_id) for c in networks)
        fits = max(1, memory // need)
        if fits < capped:
            capped = fits
            why.append(f"{memory / 2**30:.1f} GiB of memory available holds {fits} worker(s) of the sweep's "
                       f"largest network (about {need / 2**30:.1f} GiB each, as in {largest})")
    if capped == workers:
        return workers, None
    return capped, f"--workers {workers} capped at {capped}: {'; '.join(why)}"


__all__ = ["cap_workers", "cores", "available_memory", "worker_bytes"]
