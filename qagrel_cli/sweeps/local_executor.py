"""The local executor: a sweep's jobs in worker processes on this machine, `workers` at a time.

Each job (one run, or a seed pack) gets a spawned process of its own. The
worker takes its runs' locks (claim_runs), trains them in place (train_job),
and sends the driver one message, {run id: EXIT_* code}. A worker that dies
without a word (killed for memory, kill -9) shows as its process sentinel
firing with nothing sent: its runs that have a summary are finished (nothing
finished is lost), the others get an _error.txt saying the worker died.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for_processes
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console

from qagrel_cli.core.config import TrainConfig
from qagrel_cli.core.run_folder import is_finished, release_lock
from qagrel_cli.sweeps.jobs import Job, error_text, train_job
from qagrel_cli.sweeps.ledger import EXIT_FAILED, EXIT_TRAINED, SweepOutcome, claim_runs, record_outcome, write_error
from qagrel_cli.sweeps.progress import SweepProgress


@dataclass
class _Worker:
    """A live worker process, its job, the GPU it was given and the end of its pipe we read."""

    process: multiprocessing.process.BaseProcess
    job: Job
    gpu: int | None
    report: Connection

    def codes(self) -> dict[str, int]:
        """What the worker sent: run id -> EXIT_* code; empty when it died before saying anything."""
        try:
            return self.report.recv() if self.report.poll() else {}
        except EOFError:
            return {}
        finally:
            self.report.close()


def worker_threads(workers: int, threads: int | None = None) -> int:
    """CPU threads each worker trains with: `threads` if given, else the machine's cores divided among the
    workers (more threads than cores in all would make them wait on each other)."""
    return threads if threads is not None else max(1, (os.cpu_count() or 1) // workers)


def execute(root: Path, jobs: list[Job], workers: int, data_dir: Path, download: bool, outcome: SweepOutcome,
            console: Console, threads: int | None = None) -> None:
    """Keep `workers` processes busy, one job each, until every job ran or the user interrupts; each trains
    with `worker_threads(workers, threads)` CPU threads."""
    import torch

    ctx = multiprocessing.get_context("spawn")  # fork after importing torch is unsafe
    threads = worker_threads(workers, threads)
    gpus = torch.cuda.device_count()
    gpu_load = [0] * gpus
    queue = list(jobs)
    pending = sum(len(job.configs) for job in jobs)
    live: dict[Any, _Worker] = {}

    def running() -> int:
        return sum(len(w.job.configs) for w in live.values())

    progress = SweepProgress(console, pending, outcome)
    try:
        with progress:
            while queue or live:
                while queue and len(live) < workers:
                    job = queue.pop(0)
                    pending -= len(job.configs)
                    gpu = (min(range(gpus), key=gpu_load.__getitem__)
                           if gpus and job.configs[0].device == "auto" else None)
                    if gpu is not None:  # spread jobs over the GPUs; device is not part of the run id
                        gpu_load[gpu] += 1
                        job = job.on_device(f"cuda:{gpu}")
                    report, send = ctx.Pipe(duplex=False)
                    process = ctx.Process(target=_worker, name=f"qagrel-{job.label}", daemon=True,
                                          args=(job.configs, root, data_dir, download, threads, os.getpid(), send))
                    process.start()
                    send.close()  # only the worker's copy stays open, so its death reads as the end of the pipe
                    live[process.sentinel] = _Worker(process, job, gpu, report)
                progress.show(running(), pending)
                for sentinel in wait_for_processes(list(live), timeout=1.0):
                    worker = live.pop(sentinel)
                    worker.process.join()
                    if worker.gpu is not None:
                        gpu_load[worker.gpu] -= 1
                    codes = worker.codes()
                    for config in worker.job.configs:
                        run_dir = root / config.run_id
                        code = codes.get(config.run_id)
                        if code is None:
                            code = _died(run_dir, worker.process.exitcode)
                        progress.ran(record_outcome(code, run_dir, config.run_id, outcome), running(), pending)
    except KeyboardInterrupt:
        outcome.interrupted = True
        for worker in live.values():
            worker.process.terminate()
        for worker in live.values():
            worker.process.join(5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()


def _died(run_dir: Path, exitcode: int | None) -> int:
    """The code of a run whose worker died without reporting: finished if its summary is there, else failed."""
    if is_finished(run_dir):
        return EXIT_TRAINED
    how = f"signal {signal.Signals(-exitcode).name}" if exitcode and exitcode < 0 else f"code {exitcode}"
    write_error(run_dir, f"the worker process died ({how}) while training this run\n")
    return EXIT_FAILED


# ------------------------------------------------------------ worker side

def _worker(configs: Sequence[TrainConfig], root: Path, data_dir: Path, download: bool, threads: int,
            parent_pid: int, report: Connection) -> None:
    """Take, train and release one job's runs in this (spawned) process; send {run id: EXIT_* code}."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the sweep's to handle: it terminates us
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    claims = claim_runs(root, configs)
    codes = dict(claims.refused)
    taken = [c for c in configs if c.run_id in claims.fds]
    if taken:
        import torch

        torch.set_num_threads(threads)
        failure = None
        try:
            train_job(taken, root, data_dir=data_dir, download=download)
        except Exception as err:
            failure = error_text(err)
        for config in taken:
            run_dir, fd = root / config.run_id, claims.fds[config.run_id]
            finished = is_finished(run_dir)  # a pack's members that finished before a failure did
            if not finished:
                write_error(run_dir, failure or "training ended without finishing this run\n", fd)
            release_lock(run_dir, fd)
            codes[config.run_id] = EXIT_TRAINED if finished else EXIT_FAILED
    report.send(codes)


def _exit_with_parent(parent_pid: int) -> None:
    """Die with the sweep (even on kill -9 of it), so no orphan keeps a run locked."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(EXIT_FAILED)


__all__ = ["execute"]
