"""The Ray executor on a real local Ray instance: the same run folders as the local executor, and killed workers.

One Ray instance (2 CPUs) serves the module; starting it takes about ten
seconds. The sweeps are tiny fully connected networks on a few hundred MNIST
images; the kill tests use the paper's 1500-1000-500 network, whose epochs
(about a second each, mostly evaluation) leave time to kill a worker mid-run.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

ray = pytest.importorskip("ray")

from qagrel_cli.core import run_folder as runs  # noqa: E402
from qagrel_cli.cli import app  # noqa: E402
from qagrel_cli.sweeps.ray_executor import RayOptions  # noqa: E402
from qagrel_cli.sweeps.ledger import RunStatus, SweepOutcome, run_status  # noqa: E402
from qagrel_cli.sweeps.sweep_file import load_sweep  # noqa: E402
from test_executors import DATA, TINY, assert_same_results, sweep_with, write_sweep  # noqa: E402

from conftest import holds_mnist  # noqa: E402

# Per epoch ~1 s on one core: long enough to kill the worker between two epochs.
SLOW = {"dataset": "mnist", "arch": "fc", "rule": "qagrel", "train_size": 1000, "val_size": 200, "max_epochs": 4,
        "patience": 10, "device": "cpu"}


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    if not holds_mnist(DATA):
        pytest.skip(f"real MNIST not found under {DATA}")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_results(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny sweep (2 seeds x 2 rules) trained by the local executor: (sweep file, its results folder)."""
    folder = tmp_path_factory.mktemp("local")
    path = write_sweep(folder, "tiny", TINY, seeds=2)
    outcome, output = sweep_with(path, folder / "results", workers=2)
    assert len(outcome.trained) == 4 and not outcome.failed, output
    return path, folder / "results" / "tiny"


def test_ray_sweep_writes_the_same_run_folders_as_the_local_executor(tmp_path, local_results):
    path, local = local_results
    outcome, output = sweep_with(path, tmp_path, ray=RayOptions())
    assert len(outcome.trained) == 4 and not outcome.failed, output
    assert_same_results(tmp_path / "tiny", local)
    assert not list((tmp_path / "tiny").rglob(runs.LOCK_FILE))  # every lock given back
    again, output = sweep_with(path, tmp_path, ray=RayOptions())  # a rerun trains nothing
    assert (len(again.trained), len(again.already_done)) == (0, 4), output


def test_ray_sweep_with_seed_packs_writes_the_same_run_folders(tmp_path, local_results):
    path, local = local_results
    outcome, output = sweep_with(path, tmp_path, ray=RayOptions(), pack=2)
    assert "in 2 pack(s) of up to 2" in output
    assert len(outcome.trained) == 4 and not outcome.failed, output
    assert_same_results(tmp_path / "tiny", local)


# ------------------------------------------------------------ killed workers

def worker_pid(run_id: str) -> int | None:
    """The Ray worker training `run_id`: Ray titles a worker process 'ray::<task name>' while it runs a task."""
    for proc in Path("/proc").iterdir():
        try:
            title = (proc / "cmdline").read_bytes().split(b"\0")[0].decode()
        except (OSError, ValueError):
            continue
        if title == f"ray::qagrel {run_id}":
            return int(proc.name)
    return None


# Guards against a hang, not speed limits: a run of SLOW takes seconds alone, but minutes on two cores
# shared with a running sweep (seen: over 120 s for the retried run).
FIRST_EPOCH_WITHIN_S = 300
SWEEP_ENDS_WITHIN_S = 900


def kill_mid_run(path: Path, results: Path, **kwargs) -> tuple[SweepOutcome, str, pd.DataFrame]:
    """Start the one-run sweep on Ray, SIGKILL its worker once an epoch is back on disk; the outcome,
    the output and the log as it was when the worker was killed."""
    (config,) = load_sweep(path).configs
    run_dir = results / load_sweep(path).name / config.run_id
    done: dict = {}
    driver = threading.Thread(target=lambda: done.update(result=sweep_with(path, results, **kwargs)))
    driver.start()
    deadline = time.monotonic() + FIRST_EPOCH_WITHIN_S
    while not (run_dir / runs.LOG_FILE).exists():  # the first epoch, shipped back by the task
        assert driver.is_alive() and time.monotonic() < deadline, done
        time.sleep(0.02)
    assert run_status(run_dir) == RunStatus.running  # the driver holds the run's lock while its task is out
    before = runs.read_log(run_dir)
    pid = worker_pid(config.run_id)
    assert pid is not None and runs.read_summary(run_dir) is None, "the run ended before it could be killed"
    os.kill(pid, signal.SIGKILL)
    driver.join(SWEEP_ENDS_WITHIN_S)
    assert not driver.is_alive()
    return (*done["result"], before)


def test_killed_worker_is_retried_from_the_checkpoint_it_shipped_back(tmp_path):
    path = write_sweep(tmp_path, "slow", SLOW, seeds=1)
    outcome, output, before = kill_mid_run(path, tmp_path / "results", ray=RayOptions(retries=1))
    (run_dir,) = [p for p in (tmp_path / "results" / "slow").iterdir() if p.is_dir()]
    assert len(outcome.trained) == 1 and not outcome.failed, output
    assert "worker lost (WorkerCrashedError" in output and "attempt 2 of 2" in output, output
    summary, log = runs.read_summary(run_dir), runs.read_log(run_dir)
    assert list(log["epoch"]) == list(range(1, summary["stop_epoch"] + 1))
    # The epochs before the kill come from the shipped checkpoint, not from training them again:
    # even their timings are the first attempt's.
    pd.testing.assert_frame_equal(log.iloc[:len(before)], before, check_exact=True)
    assert not (run_dir / runs.CHECKPOINT_FILE).exists() and not (run_dir / runs.LOCK_FILE).exists()


def test_killed_worker_without_retries_is_recorded_failed_then_resumed_by_retry_failed(tmp_path):
    path = write_sweep(tmp_path, "slow", SLOW, seeds=1)
    results = tmp_path / "results"
    outcome, output, before = kill_mid_run(path, results, ray=RayOptions(retries=0))
    (run_dir,) = [p for p in (results / "slow").iterdir() if p.is_dir()]
    assert len(outcome.failed) == 1 and not outcome.trained, output
    assert run_status(run_dir) == RunStatus.failed  # not finished, and not marked finished
    assert "the Ray worker training this run died 1 time(s)" in (run_dir / runs.ERROR_FILE).read_text()
    assert runs.read_summary(run_dir) is None and (run_dir / runs.CHECKPOINT_FILE).exists()

    skipped, output = sweep_with(path, results, ray=RayOptions())
    assert skipped.failed_before == [run_dir.name] and not skipped.trained, output
    retried, output = sweep_with(path, results, ray=RayOptions(), retry_failed=True)
    assert len(retried.trained) == 1, output
    log = runs.read_log(run_dir)
    assert list(log["epoch"]) == list(range(1, runs.read_summary(run_dir)["stop_epoch"] + 1))
    pd.testing.assert_frame_equal(log.iloc[:len(before)], before, check_exact=True)
    assert not (run_dir / runs.ERROR_FILE).exists()


def test_an_address_where_no_cluster_answers_is_one_error_before_anything_is_written(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = write_sweep(tmp_path, "tiny", TINY, seeds=1)
    result = CliRunner().invoke(app, ["sweep", str(path), "--executor", "ray", "--address", f"127.0.0.1:{port}",
                                      "--results", str(tmp_path / "results"), "--data-dir", str(DATA)])
    assert result.exit_code == 2
    assert f"cannot connect to the Ray cluster at 127.0.0.1:{port}" in result.output
    assert not (tmp_path / "results").exists()
