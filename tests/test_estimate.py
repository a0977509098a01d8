"""`qagrel sweep FILE --dry-run --estimate`: a row per network, a total, positive times, nothing written."""

from __future__ import annotations

import os
import re

import torch
import yaml
from rich.console import Console
from typer.testing import CliRunner

from qagrel_cli.cli import app
from qagrel_cli.core.config import TrainConfig
from qagrel_cli.core.recipes import with_recipe
from qagrel_cli.core.run_folder import CHECKPOINT_FILE, ERROR_FILE
from qagrel_cli.reports import estimate as estimate_module
from qagrel_cli.reports.estimate import estimate_sweep, expected_epochs, print_estimate, runs_left
from qagrel_cli.reports.rows import format_duration
from qagrel_cli.sweeps.sweep_file import load_sweep

runner = CliRunner()
# Two networks (fc and conv, both with 16 hidden units), two seeds each.
TINY = {"name": "tiny", "grid": {"dataset": "mnist", "arch": ["fc", "conv"], "fc": "16", "rule": "qagrel",
                                 "train_size": 200, "max_epochs": 3, "device": "cpu"}, "seeds": 2}


def test_estimate_prints_a_row_per_network_and_the_totals_and_writes_nothing(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    results = tmp_path / "results"
    result = runner.invoke(app, ["sweep", str(path), "--dry-run", "--estimate", "--workers", "2",
                                 "--results", str(results)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.stdout[result.stdout.index("(--all lists every run)"):]  # the estimate, after the plan
    rows = [line for line in out.splitlines() if line.startswith("│ MNIST")]
    assert len(rows) == 2 and "Full" in rows[0] and "Conv" in rows[1], out
    assert all("3 (max_epochs)" in row for row in rows)
    assert re.search(r"│ total .*│\s+4 │", out), out
    assert "local, 1 worker" in out and "local, --workers 2" in out and "--executor ray" in out
    assert not results.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]


def test_estimated_times_are_positive_and_add_up(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    estimate = estimate_sweep(list(load_sweep(path).configs), workers=2, pack=2)
    assert [n.runs for n in estimate.networks] == [2, 2]
    for n in estimate.networks:
        assert n.cost.step > 0 and n.cost.eval_image > 0
        assert n.run_seconds > 0 and n.run_seconds_shared > 0 and n.epochs == 3
    assert estimate.sequential == sum(2 * n.run_seconds for n in estimate.networks) > 0
    assert estimate.parallel > 0
    assert estimate.packed == estimate.sequential  # on a CPU a pack runs its members one after another


def test_expected_epochs_are_the_papers_mean_for_a_table1_row_capped_at_max_epochs():
    # Table 1: MNIST, Q-AGREL, conv, 21632-5408-500, alpha 1: 44 epochs on average.
    assert expected_epochs(TrainConfig(arch="conv", rule="qagrel")) == (44.0, "paper")
    assert expected_epochs(TrainConfig(arch="conv", rule="qagrel", max_epochs=10)) == (10.0, "max_epochs")
    assert expected_epochs(TrainConfig(arch="conv", rule="qagrel", lr=0.3)) == (500.0, "max_epochs")


def test_a_recipe_run_expects_its_table1_rows_epochs_plus_what_its_longer_patience_waits():
    # Table 1: MNIST, Q-AGREL, conv, 21632-5408-500: 44 epochs at patience 20; the recipe waits 45 (alpha 0.1).
    recipe = TrainConfig.from_dict(with_recipe({"arch": "conv", "rule": "qagrel", "recipe": "brainprop",
                                                "padding": "valid"}))
    assert expected_epochs(recipe) == (44.0 + 25, "paper + 25")
    assert expected_epochs(TrainConfig(arch="conv", rule="qagrel", patience=30)) == (54.0, "paper + 10")


def test_estimate_without_dry_run_is_an_error(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    result = runner.invoke(app, ["sweep", str(path), "--estimate", "--results", str(tmp_path / "results")])
    assert result.exit_code == 2 and "--estimate goes with --dry-run" in result.output
    assert not (tmp_path / "results").exists()


def test_durations_are_in_the_unit_a_reader_plans_in():
    assert [format_duration(s) for s in (4.2, 600, 7200, 3 * 86400, 30 * 86400)] == [
        "4.2 s", "10.0 min", "2.0 h", "3.0 days", "4.3 weeks"]


def test_a_resumed_sweep_prices_only_the_runs_still_to_train(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    sweep = load_sweep(path)
    results = tmp_path / "results"
    failed, started = (sweep.run_dir(results, c) for c in sweep.configs[:2])
    failed.mkdir(parents=True)
    (failed / ERROR_FILE).write_text("RuntimeError: out of memory\n")  # trains again only with --retry-failed
    started.mkdir(parents=True)
    (started / CHECKPOINT_FILE).write_bytes(b"")  # a resumed sweep continues it
    assert runs_left(sweep, results) == list(sweep.configs[1:])


def test_the_estimate_names_the_runs_it_left_out_and_says_when_nothing_is_left(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    configs = list(load_sweep(path).configs)
    console = Console(record=True, width=200)
    print_estimate(estimate_sweep(configs[1:], workers=2), console, not_priced=1)
    out = console.export_text()
    assert "the 3 runs still to train; 1 finished, failed or damaged runs are not priced" in out
    console = Console(record=True, width=200)
    print_estimate(estimate_sweep([], workers=2), console, not_priced=4)
    assert console.export_text().strip() == "nothing left to train: all 4 runs are finished, failed or damaged"


def test_the_estimate_warns_when_the_machine_was_busy_while_timing(tmp_path, monkeypatch):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    configs = list(load_sweep(path).configs)[:1]
    for load, warned in ((2.5, True), (0.2, False)):
        monkeypatch.setattr(estimate_module.os, "getloadavg", lambda: (load, load, load))
        estimate = estimate_sweep(configs, workers=2)
        console = Console(record=True, width=300)
        print_estimate(estimate, console)
        out = console.export_text()
        assert estimate.load == load
        assert ("warning: the machine was busy when timing began (load average 2.5" in out) == warned, out


def test_the_workers_share_is_timed_with_the_threads_the_sweep_would_give_each_worker(tmp_path, monkeypatch):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    configs = list(load_sweep(path).configs)[:1]
    timed_with = []
    real_calibrate = estimate_module.calibrate
    monkeypatch.setattr(estimate_module, "calibrate",
                        lambda config, device: timed_with.append(torch.get_num_threads()) or real_calibrate(config, device))
    before = torch.get_num_threads()
    estimate = estimate_sweep(configs, workers=2, threads=3)  # --workers 2 --threads 3
    assert timed_with == [before, 3] and estimate.shared_threads == 3
    assert torch.get_num_threads() == before
    console = Console(record=True, width=200)
    print_estimate(estimate, console)
    assert "local, --workers 2 (timed with 3 thread(s) per run)" in console.export_text()


def test_without_threads_each_worker_is_timed_with_the_cores_divided_among_the_workers(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    estimate = estimate_sweep(list(load_sweep(path).configs)[:1], workers=2)
    assert estimate.shared_threads == max(1, (os.cpu_count() or 1) // 2)


def test_the_cli_estimate_takes_threads(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    result = runner.invoke(app, ["sweep", str(path), "--dry-run", "--estimate", "--workers", "2", "--threads", "3",
                                 "--results", str(tmp_path / "results")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "local, --workers 2 (timed with 3 thread(s) per run)" in result.stdout


def test_with_workers_each_row_also_gives_one_workers_epoch_and_run_as_status_times_measures_them(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    estimate = estimate_sweep(list(load_sweep(path).configs), workers=2)
    console = Console(record=True, width=250)
    print_estimate(estimate, console)
    out = console.export_text()
    assert "Epoch, 1 of 2" in out and "Run, 1 of 2" in out
    rows = [line for line in out.splitlines() if line.startswith("│ MNIST")]
    for row, n in zip(rows, estimate.networks):
        cells = [cell.strip() for cell in row.strip("│").split("│")]
        assert cells[-2:] == [format_duration(n.run_seconds_shared / n.epochs), format_duration(n.run_seconds_shared)]
        assert cells[-5:-2] == [format_duration(n.run_seconds / n.epochs), format_duration(n.run_seconds),
                                format_duration(2 * n.run_seconds)]
