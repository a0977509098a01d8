"""The Ray executor: each job (one run, or a seed pack) is a Ray task; the driver writes every run folder.

Workers need no shared file system for results. The driver:

- takes each run's lock (claim_runs, as a local worker does) and holds it for
  as long as the run's task is out, so `qagrel status` shows the run as
  running and a second sweep, local or Ray, leaves it alone;
- ships a partial run's `_config.yaml` and `_checkpoint.pt` to the task as
  bytes (a new run ships nothing: training writes its config);
- writes what the task streams back with write_run_files, in training's
  order: after every epoch the config, the checkpoint and the log, at the end
  the config, the log and the summary (and the checkpoint goes).

The task (a Ray generator task asking for `cpus_per_run` CPUs and
`gpus_per_run` GPUs, fractions allowed) writes the shipped files into a
scratch folder on its node, trains there with qagrel's training (train_job, so a
shipped checkpoint is resumed exactly as on one machine) and yields one
Shipment per finished epoch and per finished run. Training runs in a thread;
the generator watches the scratch folders and yields a run's checkpoint and log
once both are from the same epoch.

A worker that dies (kill -9, out of memory, its node gone) is noticed by the
driver as a Ray system error on the task's stream. Its job is then sent again,
up to `retries` times, with the checkpoints the driver has received, so the
retry continues after the last epoch shipped back; then its unfinished runs are
recorded as failed. Ray's own `max_retries` is not used: it re-runs a task with
its original arguments, i.e. from the checkpoint it was first sent with.
An exception in training (a bad option, non-recoverable data error) is not
retried: the run fails with the error, as with the local executor. Runs a job
finished before its worker died keep their summaries; nothing finished is lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from rich.console import Console

from qagrel_cli.core.config import QagrelError, TrainConfig
from qagrel_cli.core.run_folder import (CHECKPOINT_FILE, CONFIG_FILE, LOG_FILE, SUMMARY_FILE, WEIGHTS_BEST_FILE,
                                       WEIGHTS_LAST_FILE, atomic_write, epochs_saved, is_finished, release_lock)
from qagrel_cli.sweeps.jobs import Job, error_text, train_job
from qagrel_cli.sweeps.ledger import EXIT_FAILED, EXIT_TRAINED, SweepOutcome, claim_runs, record_outcome, write_error
from qagrel_cli.sweeps.progress import SweepProgress

RAY_MISSING = ("--executor ray needs Ray, an optional extra: pip install 'qagrel[ray]' "
               "(in a checkout: pip install -e '.[ray]')")
CONNECT_TIMEOUT_SECONDS = 10.0
# Training's write order (save_progress, finish_run): the summary says "finished", so it comes last.
SHIPPED_FILES = (CONFIG_FILE, WEIGHTS_BEST_FILE, CHECKPOINT_FILE, LOG_FILE, WEIGHTS_LAST_FILE, SUMMARY_FILE)
# What a task needs to resume a run: its best weights go too, or a retry would lose an earlier best epoch's.
RESUME_FILES = (CONFIG_FILE, WEIGHTS_BEST_FILE, CHECKPOINT_FILE)
# How often a task looks for new epochs in its scratch folders (an epoch takes seconds at least).
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class RayOptions:
    """How a sweep runs on Ray."""

    address: str | None = None  # None: a Ray instance on this machine; 'auto' or HOST:PORT: a running cluster
    cpus_per_run: float = 1.0  # per task: a run, or a whole seed pack
    gpus_per_run: float = 0.0  # fractions share a GPU: 0.25 puts four runs on each
    retries: int = 2  # times a job whose worker died is sent again, from the checkpoints shipped back


def preflight(options: RayOptions) -> Any:
    """The ray module, once Ray is installed, the options make sense and the cluster address answers;
    else a one-line QagrelError. Run before anything is written."""
    ray = import_ray()
    if options.cpus_per_run <= 0 or options.gpus_per_run < 0 or options.retries < 0:
        raise QagrelError("--cpus-per-run must be > 0, --gpus-per-run and --retries >= 0")
    _check_reachable(options.address)
    return ray


def import_ray() -> Any:
    """The ray module, or a one-line QagrelError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise QagrelError(RAY_MISSING) from None
    return ray


# ------------------------------------------------------------ run files

def read_run_files(run_dir: Path, names: Sequence[str] = SHIPPED_FILES) -> dict[str, bytes]:
    """The files among `names` that the run folder holds, as bytes."""
    files = {}
    for name in names:
        try:
            files[name] = (run_dir / name).read_bytes()
        except FileNotFoundError:
            pass
    return files


def write_run_files(run_dir: Path, files: dict[str, bytes]) -> None:
    """Write shipped run files atomically, in training's order; a summary ends the run, so the checkpoint goes."""
    for name in SHIPPED_FILES:
        if name in files:
            atomic_write(run_dir / name, lambda tmp, data=files[name]: tmp.write_bytes(data))
    if SUMMARY_FILE in files:
        (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)


# ------------------------------------------------------------------ driver

def execute(root: Path, jobs: list[Job], data_dir: Path, download: bool, outcome: SweepOutcome, console: Console,
            options: RayOptions) -> None:
    """Train `jobs` as Ray tasks, writing their runs under `root`, until all ran or the user interrupts."""
    ray = preflight(options)
    with _connected(ray, options.address):
        if _slots(ray, options) < 1:
            total = ray.cluster_resources()
            raise QagrelError(f"the Ray cluster has {total.get('CPU', 0):g} CPU(s) and {total.get('GPU', 0):g} "
                              f"GPU(s): no room for a run asking for {options.cpus_per_run:g} CPU(s) and "
                              f"{options.gpus_per_run:g} GPU(s)")
        _Driver(ray, ray.remote(_train_task), root, data_dir, download, outcome, console, options).run(jobs)


@contextlib.contextmanager
def _connected(ray: Any, address: str | None) -> Iterator[None]:
    """Connected to Ray for the block: to the caller's connection if there is one, else a new one."""
    if ray.is_initialized():
        yield
        return
    # 'local' starts a new instance even where a cluster runs (or a stale address file says one does).
    local = {"address": "local", "include_dashboard": False} if address is None else {"address": address}
    try:
        ray.init(log_to_driver=False, logging_level=logging.ERROR, **local)
    except (ConnectionError, RuntimeError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if address is None:
            raise QagrelError(f"cannot start a local Ray instance: {first_line}") from None
        raise QagrelError(f"cannot connect to the Ray cluster at {address}: {first_line} (is `ray start --head` "
                          "running there? A cluster with token authentication needs RAY_AUTH_MODE=token and its "
                          "token here too)") from None
    try:
        yield
    finally:
        ray.shutdown()


def _check_reachable(address: str | None) -> None:
    """Fail at once on a HOST:PORT nothing listens on: ray.init would wait for it forever."""
    host, sep, port = (address or "").rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # None (start Ray here), 'auto' (Ray says at once when it finds none) or a ray:// client address
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_SECONDS).close()
    except OSError as err:
        raise QagrelError(f"cannot connect to the Ray cluster at {address}: {err.strerror or err} "
                          "(is `ray start --head` running there?)") from None


def _slots(ray: Any, options: RayOptions) -> int:
    """How many tasks the cluster runs at once (tasks beyond that would only wait in Ray's queue, locked)."""
    total = ray.cluster_resources()
    cpu = total.get("CPU", 0) / options.cpus_per_run
    gpu = total.get("GPU", 0) / options.gpus_per_run if options.gpus_per_run else math.inf
    return int(min(cpu, gpu) + 1e-9)


@dataclass
class _Flight:
    """A job whose task is out: the runs still training (run id -> our hold on its lock) and its attempt."""

    configs: tuple[TrainConfig, ...]
    fds: dict[str, int]
    attempt: int = 1

    def remaining(self) -> Job:
        return Job(tuple(c for c in self.configs if c.run_id in self.fds))


class _Driver:
    """Sends jobs out as the cluster has room, writes what comes back, resends jobs whose worker died."""

    def __init__(self, ray: Any, task: Any, root: Path, data_dir: Path, download: bool, outcome: SweepOutcome,
                 console: Console, options: RayOptions) -> None:
        self.ray, self.task, self.root = ray, task, root
        self.data_dir, self.download, self.outcome, self.options = data_dir, download, outcome, options
        self.threads = max(1, int(options.cpus_per_run))  # as the local executor divides the cores
        self.console = console
        self.live: dict[Any, _Flight] = {}  # the task's stream -> its job
        self.pending = 0
        self.progress: SweepProgress | None = None

    def run(self, jobs: list[Job]) -> None:
        queue = list(jobs)
        self.pending = sum(len(job.configs) for job in jobs)
        self.progress = SweepProgress(self.console, self.pending, self.outcome)
        try:
            with self.progress:
                while queue or self.live:
                    room = max(1, _slots(self.ray, self.options))  # a cluster may grow or shrink meanwhile
                    while queue and len(self.live) < room:
                        self._start(queue.pop(0))
                    self.progress.show(self._running(), self.pending)
                    ready, _ = self.ray.wait(list(self.live), num_returns=1, timeout=1.0)
                    for stream in ready:
                        self._receive(stream)
        except KeyboardInterrupt:
            self.outcome.interrupted = True
            for stream, flight in self.live.items():
                with contextlib.suppress(Exception):
                    self.ray.cancel(stream, force=True)
                for run_id, fd in flight.fds.items():  # every shipped epoch is already on disk
                    release_lock(self.root / run_id, fd)
            self.live.clear()

    def _running(self) -> int:
        return sum(len(flight.fds) for flight in self.live.values())

    def _start(self, job: Job) -> None:
        """Take the job's runs and send out the ones we got."""
        self.pending -= len(job.configs)
        claims = claim_runs(self.root, job.configs)
        for run_id, code in claims.refused.items():
            self._report(code, run_id)
        if claims.fds:
            self._send(_Flight(tuple(c for c in job.configs if c.run_id in claims.fds), claims.fds))

    def _send(self, flight: _Flight) -> None:
        job = flight.remaining()
        shipped = {c.run_id: read_run_files(self.root / c.run_id, RESUME_FILES)
                   for c in job.configs}
        # Ray's own retries are off: they would resend the first checkpoint, not the latest (see _lost).
        stream = self.task.options(num_cpus=self.options.cpus_per_run, num_gpus=self.options.gpus_per_run,
                                   max_retries=0, num_returns="streaming", name=f"qagrel {job.label}").remote(
            job.configs, shipped, str(self.data_dir), self.download, self.threads)
        self.live[stream] = flight

    def _receive(self, stream: Any) -> None:
        """Handle the next thing the task yielded (or how it ended)."""
        flight = self.live[stream]
        try:
            message = self.ray.get(next(stream))
        except StopIteration:  # the task ended; it reports every run, so this is only a safety net
            del self.live[stream]
            self._fail(flight, list(flight.fds), "the Ray task ended without finishing this run\n")
        except self.ray.exceptions.RayTaskError as err:  # our task code raised (qagrel missing on that node?)
            del self.live[stream]
            self._fail(flight, list(flight.fds), f"the Ray task failed:\n{err}\n")
        except self.ray.exceptions.RayError as err:  # the worker or its node died
            del self.live[stream]
            self._lost(flight, err)
        else:
            if isinstance(message, Failure):
                self._fail(flight, list(message.run_ids), message.text)
            else:
                write_run_files(self.root / message.run_id, message.files)
                if SUMMARY_FILE in message.files:
                    self._finish(flight, message.run_id, EXIT_TRAINED)
            if not flight.fds:
                del self.live[stream]

    def _lost(self, flight: _Flight, err: Exception) -> None:
        """The task's worker died: send its unfinished runs again from their checkpoints, or fail them."""
        cause = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        if flight.attempt <= self.options.retries:
            flight.attempt += 1
            where = ", ".join(f"{run_id} after epoch {epochs_saved(self.root / run_id)}" for run_id in flight.fds)
            self.progress.note(f"[yellow]worker lost[/] ({cause}); attempt {flight.attempt} of "
                               f"{self.options.retries + 1}: {where}")
            self._send(flight)
        else:
            self._fail(flight, list(flight.fds), f"the Ray worker training this run died {flight.attempt} "
                                                 f"time(s); the last time: {cause}\n")

    def _fail(self, flight: _Flight, run_ids: Sequence[str], text: str) -> None:
        for run_id in run_ids:
            write_error(self.root / run_id, text, flight.fds[run_id])
            self._finish(flight, run_id, EXIT_FAILED)

    def _finish(self, flight: _Flight, run_id: str, code: int) -> None:
        release_lock(self.root / run_id, flight.fds.pop(run_id))
        self._report(code, run_id)

    def _report(self, code: int, run_id: str) -> None:
        line = record_outcome(code, self.root / run_id, run_id, self.outcome)
        self.progress.ran(line, self._running(), self.pending)


# ------------------------------------------------------------ worker side

@dataclass(frozen=True)
class Shipment:
    """Run files from a task: checkpoint and log after an epoch; log and summary when the run is finished."""

    run_id: str
    files: dict[str, bytes] = field(repr=False)


@dataclass(frozen=True)
class Failure:
    """Training raised: these runs are unfinished, and why."""

    run_ids: tuple[str, ...]
    text: str


def _train_task(configs: Sequence[TrainConfig], shipped: dict[str, dict[str, bytes]], data_dir: str,
                download: bool, threads: int) -> Iterator[Shipment | Failure]:
    """Ray task: train a job in a scratch folder, yielding each run's files as epochs and runs finish."""
    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="qagrel-") as scratch:
        root = Path(scratch)
        for run_id, files in shipped.items():
            write_run_files(root / run_id, files)
        failure: list[str] = []

        def work() -> None:
            try:
                train_job(configs, root, data_dir=Path(data_dir), download=download)
            except Exception as err:  # reported as the runs' error, as the local executor does
                failure.append(error_text(err))

        watcher = _Watcher(root, [c.run_id for c in configs])
        trainer = threading.Thread(target=work, name="qagrel-train", daemon=True)
        trainer.start()
        while trainer.is_alive():
            trainer.join(POLL_SECONDS)
            yield from watcher.poll()
        yield from watcher.poll()  # the last epochs and summaries
        if watcher.unfinished:
            yield Failure(tuple(watcher.unfinished), failure[0] if failure else "training ended unfinished\n")


class _Watcher:
    """Finds what changed in a task's scratch run folders since the last look."""

    def __init__(self, root: Path, run_ids: list[str]) -> None:
        self.root = root
        self.unfinished = list(run_ids)
        self.seen = {run_id: self._stamp(run_id) for run_id in run_ids}  # the shipped checkpoint is not news
        # The best weights the driver has (tens of MB): sent again only when a new best epoch rewrote them.
        self.best_sent = {run_id: _digest(read_run_files(root / run_id, (WEIGHTS_BEST_FILE,)))
                          for run_id in run_ids}

    def _stamp(self, run_id: str) -> tuple[int, int] | None:
        try:  # every atomic write is a new file: a new inode
            stat = (self.root / run_id / CHECKPOINT_FILE).stat()
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_mtime_ns

    def poll(self) -> Iterator[Shipment]:
        """A Shipment per run that finished, or that saved an epoch, since the last poll."""
        for run_id in list(self.unfinished):
            run_dir = self.root / run_id
            if is_finished(run_dir):  # written after the final log
                self.unfinished.remove(run_id)
                yield Shipment(run_id, read_run_files(run_dir, (CONFIG_FILE, WEIGHTS_BEST_FILE, LOG_FILE,
                                                                WEIGHTS_LAST_FILE, SUMMARY_FILE)))
                continue
            stamp = self._stamp(run_id)
            if stamp is not None and stamp != self.seen[run_id]:
                files = _epoch_snapshot(run_dir)
                if files is not None:
                    self.seen[run_id] = stamp
                    best = _digest(files)
                    if best == self.best_sent[run_id]:
                        files.pop(WEIGHTS_BEST_FILE, None)
                    self.best_sent[run_id] = best
                    yield Shipment(run_id, files)


def _digest(files: dict[str, bytes]) -> str | None:
    """A fingerprint of the best weights among `files` (None without them)."""
    data = files.get(WEIGHTS_BEST_FILE)
    return None if data is None else hashlib.sha256(data).hexdigest()


def _epoch_snapshot(run_dir: Path, tries: int = 5) -> dict[str, bytes] | None:
    """The run's checkpoint, log and best weights from the same epoch (training writes the best weights, the
    checkpoint, then the log), or None."""
    import pyarrow.parquet as pq
    import torch

    def load(data: bytes) -> Any:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)

    for _ in range(tries):
        files = read_run_files(run_dir, (CONFIG_FILE, CHECKPOINT_FILE, LOG_FILE))
        if len(files) < 3:  # just finished: the checkpoint is gone, the summary comes next poll
            return None
        files.update(read_run_files(run_dir, (WEIGHTS_BEST_FILE,)))  # read last: never older than the checkpoint
        state = load(files[CHECKPOINT_FILE])["state"]
        best = load(files[WEIGHTS_BEST_FILE])["epoch"] if WEIGHTS_BEST_FILE in files else None
        same_best = best is None or int(best) == state["best_epoch"]
        if pq.read_metadata(io.BytesIO(files[LOG_FILE])).num_rows == state["epoch"] and same_best:
            return files
        time.sleep(0.01)
    return None


__all__ = ["RayOptions", "execute", "preflight", "import_ray", "RAY_MISSING", "Shipment", "Failure"]
