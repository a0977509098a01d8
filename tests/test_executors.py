"""What every executor must do alike: seed packs in sweeps give the runs' own folders; Ray is optional.

The helpers here (a tiny sweep, running it, comparing two results folders) are
shared with test_ray.py.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from rich.console import Console
from typer.testing import CliRunner

from qagrel_cli.core import run_folder as runs
from qagrel_cli.cli import app
from qagrel_cli.core.config import QagrelError
from qagrel_cli.core.training import train
from qagrel_cli.core.weights import WeightsAt, load_weights
from qagrel_cli.sweeps.jobs import make_jobs
from qagrel_cli.core.run_folder import try_lock
from qagrel_cli.sweeps.ledger import SweepOutcome
from qagrel_cli.sweeps.local_executor import worker_threads
from qagrel_cli.sweeps.orchestrator import run_sweep
from qagrel_cli.sweeps.sweep_file import load_sweep

from conftest import MNIST_DATA

DATA = MNIST_DATA
# device cpu: a pack then trains its members one after another (core/packs.py's loop strategy), which is
# bitwise what the runs alone do; a CUDA pack is vmapped and agrees only to rtol 1e-5 (test_pack.py).
TINY = {"dataset": "mnist", "arch": "fc", "fc": "16", "rule": ["qagrel", "bp"], "train_size": 300,
        "val_size": 200, "max_epochs": 2, "patience": 10, "device": "cpu"}
DETERMINISTIC = ["epoch", "train_reward", "train_loss", "val_acc", "test_acc"]
NOT_DETERMINISTIC = {"wall_seconds", "device", "machine"}  # timing, and where it ran
runner = CliRunner()


def write_sweep(folder: Path, name: str, grid: dict, seeds: int, **top) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "grid": grid, "seeds": seeds, **top}))
    return path


def sweep_with(path: Path, results: Path, **kwargs) -> tuple[SweepOutcome, str]:
    """Run the sweep; its outcome and everything it printed."""
    out = io.StringIO()
    outcome = run_sweep(load_sweep(path), results, data_dir=DATA, console=Console(file=out, width=200), **kwargs)
    return outcome, out.getvalue()


def assert_same_results(ours: Path, theirs: Path, runs_expected: int = 4) -> None:
    """The same finished run folders with the same files; equal configs, deterministic log columns, summaries
    and weights."""
    run_ids = sorted(p.name for p in ours.iterdir() if p.is_dir())
    assert run_ids == sorted(p.name for p in theirs.iterdir() if p.is_dir())
    assert len(run_ids) == runs_expected
    for run_id in run_ids:
        a, b = ours / run_id, theirs / run_id
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir()) == sorted(
            [runs.CONFIG_FILE, runs.SUMMARY_FILE, runs.LOG_FILE, *runs.WEIGHTS_FILES])
        for at in WeightsAt:
            weights_a, weights_b = load_weights(a, at), load_weights(b, at)
            assert weights_a.epoch == weights_b.epoch
            assert all(torch.equal(weights_a.net[n], weights_b.net[n]) for n in weights_a.net)
        assert (a / runs.CONFIG_FILE).read_text() == (b / runs.CONFIG_FILE).read_text()
        log_a, log_b = runs.read_log(a), runs.read_log(b)
        assert list(log_a.columns) == list(log_b.columns)
        pd.testing.assert_frame_equal(log_a[DETERMINISTIC], log_b[DETERMINISTIC], check_exact=True)
        summary_a, summary_b = runs.read_summary(a), runs.read_summary(b)
        assert {k: v for k, v in summary_a.items() if k not in NOT_DETERMINISTIC} == \
               {k: v for k, v in summary_b.items() if k not in NOT_DETERMINISTIC}


@pytest.fixture
def data(mnist_dir) -> Path:
    return mnist_dir


# ------------------------------------------------------------ packs

def test_jobs_pack_runs_that_differ_only_in_seed_in_sweep_order(tmp_path):
    configs = load_sweep(write_sweep(tmp_path, "s", {"rule": ["qagrel", "bp"]}, seeds=3)).configs
    jobs = make_jobs(configs, pack=2)
    assert [[(c.rule.value, c.seed) for c in job.configs] for job in jobs] == [
        [("qagrel", 0), ("qagrel", 1)], [("bp", 0), ("bp", 1)], [("qagrel", 2)], [("bp", 2)]]
    assert [len(job.configs) for job in make_jobs(configs, pack=1)] == [1] * 6


@pytest.mark.parametrize("pack", [0, -1, "ten", True])
def test_pack_must_be_a_positive_whole_number(tmp_path, pack):
    with pytest.raises(QagrelError, match="pack: give how many runs"):
        load_sweep(write_sweep(tmp_path, "s", {"rule": "bp"}, seeds=2, pack=pack))


def train_each_alone(path: Path, results: Path) -> None:
    """The sweep's runs trained one by one in this process, with one thread as a worker of --workers 2 has."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plan = load_sweep(path)
        for config in plan.configs:
            train(config, plan.run_dir(results, config), data_dir=DATA, quiet=True)
    finally:
        torch.set_num_threads(threads)


def test_packed_sweep_writes_the_same_run_folders_as_runs_trained_alone(tmp_path, data):
    path = write_sweep(tmp_path, "tiny", TINY, seeds=2, pack=2)
    packed, output = sweep_with(path, tmp_path / "packed", workers=2)
    assert "in 2 pack(s) of up to 2" in output and len(packed.trained) == 4, output
    train_each_alone(path, tmp_path / "alone")
    assert_same_results(tmp_path / "packed" / "tiny", tmp_path / "alone" / "tiny")
    assert not list((tmp_path / "packed").rglob(runs.LOCK_FILE))


def test_a_pack_member_another_process_holds_is_skipped_and_the_rest_trained(tmp_path, data):
    path = write_sweep(tmp_path, "held", {**TINY, "rule": "qagrel"}, seeds=2, pack=2)
    held, free = (tmp_path / "results" / "held" / c.run_id for c in load_sweep(path).configs)
    fd = try_lock(held)  # this test process plays another sweep that is training seed 0
    try:
        outcome, output = sweep_with(path, tmp_path / "results")
    finally:
        os.close(fd)
    assert (outcome.trained, outcome.locked) == ([free.name], [held.name]), output
    assert runs.read_summary(free) is not None
    assert sorted(p.name for p in held.iterdir()) == [runs.LOCK_FILE]


# ------------------------------------------------------------ threads

def test_workers_divide_the_cores_among_them_by_default(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert (worker_threads(1), worker_threads(3), worker_threads(16)) == (8, 2, 1)


def test_threads_given_are_what_each_worker_gets(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert worker_threads(4, threads=1) == 1 and worker_threads(1, threads=3) == 3


def test_a_sweep_with_threads_trains_each_run_with_that_many(tmp_path, data):
    path = write_sweep(tmp_path, "tiny", {**TINY, "rule": "qagrel", "max_epochs": 1}, seeds=1)
    outcome, output = sweep_with(path, tmp_path / "results", threads=3)
    (run_id,) = outcome.trained
    assert runs.read_summary(tmp_path / "results" / "tiny" / run_id)["device"].endswith(", 3 threads)"), output


def test_threads_with_the_ray_executor_is_refused(tmp_path):
    from qagrel_cli.sweeps.ray_executor import RayOptions

    path = write_sweep(tmp_path, "tiny", TINY, seeds=1)
    with pytest.raises(QagrelError, match="--threads is for local workers"):
        sweep_with(path, tmp_path / "results", ray=RayOptions(), threads=2)
    assert not (tmp_path / "results").exists()


# ------------------------------------------------------------ Ray is optional

def test_ray_executor_without_ray_says_how_to_install_it_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    path = write_sweep(tmp_path, "tiny", TINY, seeds=1)
    result = runner.invoke(app, ["sweep", str(path), "--executor", "ray", "--results", str(tmp_path / "results")])
    assert result.exit_code == 2
    assert "pip install 'qagrel[ray]'" in result.output and "pip install -e '.[ray]'" in result.output
    assert result.output.strip().count("\n") == 0 and "Traceback" not in result.output
    assert not (tmp_path / "results").exists()
