"""Issue 10, hardening: damaged results never crash a report, every bad input gets one line, a fresh clone
runs every test. One test per row of the issue's table (tests/test_fault_injection.py damages real runs
file by file; tests/test_table.py holds the --compare rule's details; tests/test_plot.py where a run's
figure goes)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pandas as pd
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

import conftest
from qagrel_cli.cli import app
from qagrel_cli.core import run_folder
from qagrel_cli.core import training
from qagrel_cli.core.catalog import Rule
from qagrel_cli.core.config import TrainConfig
from qagrel_cli.core.data import MNIST_FILES, load_dataset
from qagrel_cli.reports.status import print_plan, print_status, status_report
from qagrel_cli.reports.summary import print_summary
from qagrel_cli.reports.table import build_table
from qagrel_cli.reports.table_formats import rich_view
from qagrel_cli.sweeps.results import read_results
from qagrel_cli.sweeps.sweep_file import load_sweep

from conftest import FULL_MNIST, MNIST_FIXTURE, MNIST_FIXTURE_SIZES, REPO, assert_one_line_error

runner = CliRunner()
GARBAGE = b"\x00\xff\xfe garbage {[ not what a qagrel file holds\n"
TINY_TRAIN = ["train", "--arch", "fc", "--fc", "32", "--train-size", "300", "--device", "cpu", "--quiet"]


# ----------------------------------------------------------------- helpers

def fabricate_run(root: Path, rule: str, seed: int, epochs: int = 3) -> Path:
    """A finished MNIST conv run (hidden units 21632-5408-500) as training leaves it: config, log, summary."""
    config = TrainConfig(rule=rule, seed=seed)
    run_dir = root / config.run_id
    run_folder.write_config(run_dir, config)
    acc = [0.5 + 0.1 * e + 0.01 * seed for e in range(epochs)]
    run_folder.write_log(run_dir, pd.DataFrame({
        "epoch": range(1, epochs + 1), "train_reward": acc, "train_loss": [1 - a for a in acc], "val_acc": acc,
        "test_acc": acc, "epoch_seconds": 1.0, "samples_per_second": 100.0, "lr": config.lr}))
    run_folder.write_summary(run_dir, {
        "run_id": config.run_id, "status": "finished", "stop_epoch": epochs, "best_epoch": epochs,
        "best_val_acc": acc[-1], "test_acc_at_best": acc[-1], "test_acc_at_stop": acc[-1],
        "hidden_units": "21632-5408-500", "num_classes": 10, "converged": True, "diverged": False,
        "config": config.to_dict()})
    return run_dir


@pytest.fixture
def results(tmp_path) -> Path:
    """results/sweep1/: two Q-AGREL and two Error-BP runs, all finished."""
    for rule in ("qagrel", "bp"):
        for seed in range(2):
            fabricate_run(tmp_path / "results" / "sweep1", rule, seed)
    return tmp_path / "results" / "sweep1"


def damage(results: Path, name: str) -> Path:
    """Replace file `name` of the first Q-AGREL run with garbage; returns the file."""
    (run_dir,) = [d for d in sorted(results.iterdir()) if "-qagrel-s0-" in d.name]
    (run_dir / name).write_bytes(GARBAGE)
    return run_dir / name


def strict_json(path: Path) -> dict:
    """The file parsed as JSON proper: NaN and Infinity, which Python's json accepts, are refused."""
    def refuse(constant: str):
        raise AssertionError(f"{constant} in {path} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def warnings(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("warning:")]


def row(result, label: str) -> list[str]:
    """The cells of the table line holding `label` (the rich table's │ columns)."""
    line = next(line for line in result.stdout.splitlines() if label in line and "│" in line)
    return [cell.strip() for cell in line.split("│")[1:-1]]


# --------------------------------------------- a damaged summary or config

@pytest.mark.parametrize("name", [run_folder.SUMMARY_FILE, run_folder.CONFIG_FILE])
def test_table_shows_the_other_runs_and_one_warning_naming_a_garbage_file(results, name):
    bad = damage(results, name)
    result = runner.invoke(app, ["table", str(results)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert len(warnings(result)) == 1 and str(bad) in warnings(result)[0]
    assert row(result, "Q-AGREL")[-1] == "1/1" and row(result, "Error-BP")[-1] == "2/2"
    assert "Traceback" not in result.output


@pytest.mark.parametrize("name", [run_folder.SUMMARY_FILE, run_folder.CONFIG_FILE])
def test_status_counts_a_run_with_a_garbage_file_as_damaged_and_names_the_file(results, name):
    bad = damage(results, name)
    result = runner.invoke(app, ["status", str(results)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert len(warnings(result)) == 1 and str(bad) in warnings(result)[0]
    # done, running, failed, damaged, pending, total
    assert row(result, "total")[-6:] == ["3", "0", "0", "1", "0", "4"]


def test_status_on_the_parent_folder_counts_a_run_with_a_garbage_config_as_damaged(results):
    bad = damage(results, run_folder.CONFIG_FILE)
    result = runner.invoke(app, ["status", str(results.parent)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert len(warnings(result)) == 1 and str(bad) in warnings(result)[0]
    assert row(result, "total")[-6:] == ["3", "0", "0", "1", "0", "4"]


def test_a_config_cut_short_at_a_line_break_is_damaged_not_read_with_defaults(tmp_path):
    run_folder.write_config(tmp_path, TrainConfig(arch="fc", fc="16", max_epochs=7))
    lines = (tmp_path / run_folder.CONFIG_FILE).read_text().splitlines(keepends=True)
    (tmp_path / run_folder.CONFIG_FILE).write_text("".join(lines[:len(lines) // 2]))  # still valid YAML
    with pytest.raises(run_folder.DamagedFile, match="lacks .*max_epochs"):
        run_folder.read_config(tmp_path)


def test_a_config_written_before_the_protocol_options_is_read_with_their_defaults(tmp_path):
    run_folder.write_config(tmp_path, TrainConfig())
    text = (tmp_path / run_folder.CONFIG_FILE).read_text()
    (tmp_path / run_folder.CONFIG_FILE).write_text(
        "".join(line for line in text.splitlines(keepends=True) if not line.startswith(("input_scaling", "init:"))))
    assert run_folder.read_config(tmp_path) == TrainConfig()


# ------------------------------------------------------------ a damaged log

def test_plot_draws_the_other_runs_and_warns_once_about_a_garbage_log(results, tmp_path):
    bad = damage(results, run_folder.LOG_FILE)
    result = runner.invoke(app, ["plot", str(results), "--out", str(tmp_path / "figs")])
    assert result.exit_code == 0, result.output
    assert len(warnings(result)) == 1 and str(bad) in warnings(result)[0]
    assert "1 damaged run not shown" in result.output
    plotted = pd.read_csv(tmp_path / "figs" / "sweep1_figure3.csv")
    assert plotted.groupby("rule")["n"].max().to_dict() == {"bp": 2, "qagrel": 1}


def test_table_with_a_garbage_log_exits_0_says_the_log_is_unreadable_and_still_counts_the_run(results):
    bad = damage(results, run_folder.LOG_FILE)
    result = runner.invoke(app, ["table", str(results)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    (line,) = warnings(result)
    assert line.startswith("warning: unreadable log") and str(bad) in line
    assert row(result, "Q-AGREL")[-1] == "2/2"  # its summary holds the results


# ------------------------------------------------------- read-only folders

@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """Make `folder` refuse new entries for real: chmod 0555, or as root (where chmod stops nothing) chattr +i."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        undo = ["chmod", "755", str(folder)]
    elif shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        undo = ["chattr", "-i", str(folder)]
    else:
        pytest.skip("running as root, where chmod 0555 does not stop writes, and chattr +i is not available")
    try:
        try:
            (folder / "probe").touch()
        except OSError:
            pass
        else:
            pytest.skip(f"{folder} still takes new files: this file system ignores the read-only setting")
        yield
    finally:
        subprocess.run(undo, check=True)


def test_a_sweep_into_a_read_only_results_folder_is_one_line_and_writes_nothing(tmp_path, mnist_dir):
    sweep = tmp_path / "tiny.yaml"
    sweep.write_text("grid: {arch: fc, fc: '16', train_size: 100, max_epochs: 1, device: cpu}\n")
    with read_only(tmp_path / "results"):
        result = runner.invoke(app, ["sweep", str(sweep), "--results", str(tmp_path / "results"),
                                     "--data-dir", str(mnist_dir)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert lines == [lines[0]] and "Traceback" not in result.output
    assert lines[0].startswith(f"error: cannot write {tmp_path / 'results'}")
    assert not list((tmp_path / "results").iterdir())


def test_train_into_a_read_only_folder_is_one_line(tmp_path, mnist_dir):
    with read_only(tmp_path / "ro"):
        result = runner.invoke(app, [*TINY_TRAIN, "--data-dir", str(mnist_dir), "--out", str(tmp_path / "ro" / "run")])
    assert_one_line_error(result, "cannot write the run folder", str(tmp_path / "ro"))


# --------------------------------------------------------------- bad input

@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_train_refuses_a_learning_rate_that_is_not_finite(value, tmp_path):
    result = runner.invoke(app, ["train", "--lr", value, "--out", str(tmp_path / "run")])
    assert_one_line_error(result, "lr must be a positive finite number")
    assert result.exit_code == 2 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", [".inf", ".nan"])
def test_a_sweep_file_with_a_learning_rate_that_is_not_finite_is_refused(value, tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"grid: {{lr: {value}}}\n")
    result = runner.invoke(app, ["sweep", str(sweep), "--results", str(tmp_path / "results")])
    assert_one_line_error(result, str(sweep), "lr must be a positive finite number")
    assert not (tmp_path / "results").exists()


def test_seed_and_seeds_together_is_a_one_line_error(tmp_path):
    result = runner.invoke(app, ["train", "--seed", "3", "--seeds", "0-1", "--out", str(tmp_path / "run")])
    assert_one_line_error(result, "give either --seed or --seeds, not both")
    assert not (tmp_path / "run").exists()


def test_an_unknown_choice_names_the_choices_without_the_validation_librarys_prefix():
    result = runner.invoke(app, ["train", "--rule", "foo"])
    assert_one_line_error(result)
    choices = ", ".join(repr(rule.value) for rule in Rule)
    assert result.output.strip() == (f"error: Invalid value for '--rule': 'foo' is not one of {choices}. "
                                     "(see 'qagrel train --help')")


@pytest.mark.parametrize("command", ["table", "status", "plot"])
def test_a_file_given_as_the_results_folder_is_one_line(command):
    result = runner.invoke(app, [command, "/etc/passwd"])
    assert_one_line_error(result, "/etc/passwd is a file, not a results folder")


@pytest.mark.parametrize("command, usage", [
    ([], "Usage: qagrel [OPTIONS] COMMAND [ARGS]..."), (["train"], "Usage: qagrel train [OPTIONS]"),
    (["sweep"], "Usage: qagrel sweep [OPTIONS] FILE"), (["status"], "Usage: qagrel status [OPTIONS] [DIRECTORY]"),
    (["table"], "Usage: qagrel table [OPTIONS] DIRECTORY"),
    (["milestones"], "Usage: qagrel milestones [OPTIONS] DIRECTORY"),
    (["plot"], "Usage: qagrel plot [OPTIONS] DIRECTORY"), (["collect"], "Usage: qagrel collect [OPTIONS] SOURCE DEST")])
def test_help_shows_flags_without_a_type_and_arguments_in_capitals(command, usage):
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert usage in result.output
    assert "<bool>" not in result.output and "{" not in result.output


def test_the_command_list_gives_each_command_its_one_line_summary_unbroken():
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "250"})  # wide: only the docstring could break a line
    listed = result.output[result.output.index("Commands"):]
    for command in app.registered_commands:
        summary = command.callback.__doc__.split("\n\n")[0]
        assert "\n" not in summary, f"{command.callback.__name__}: the first paragraph of its docstring is the summary"
        name = command.name or command.callback.__name__.replace("_", "-")  # `eval` is a builtin's name
        assert f"{name}  " in listed and summary in listed


# --------------------------------------------------------- runs and records

def test_a_run_diverging_in_epoch_1_has_a_strict_json_summary_with_that_epoch_as_its_best(tmp_path, mnist_dir):
    out = tmp_path / "run"
    result = runner.invoke(app, [*TINY_TRAIN, "--lr", "1e30", "--data-dir", str(mnist_dir), "--out", str(out)])
    assert result.exit_code == 1 and "diverged" in result.output
    summary = strict_json(out / run_folder.SUMMARY_FILE)
    log = run_folder.read_log(out)
    assert summary["diverged"] and summary["stop_epoch"] == 1 and summary["best_epoch"] == 1
    assert summary["best_val_acc"] == log["val_acc"].iloc[0]
    assert summary["test_acc_at_best"] == log["test_acc"].iloc[0]


def test_a_number_that_is_not_finite_is_written_to_the_summary_as_null(tmp_path):
    run_folder.write_summary(tmp_path, {"run_id": "r", "stop_epoch": 1, "final_train_reward": float("nan"),
                                        "losses": [float("inf"), 0.5]})
    summary = strict_json(tmp_path / run_folder.SUMMARY_FILE)
    assert summary["final_train_reward"] is None and summary["losses"] == [None, 0.5]


def test_rerunning_a_run_with_a_higher_max_epochs_explains_the_epoch_cap(tmp_path, mnist_dir):
    args = [*TINY_TRAIN, "--data-dir", str(mnist_dir), "--out", str(tmp_path / "run")]
    assert runner.invoke(app, [*args, "--max-epochs", "6"]).exit_code == 0
    result = runner.invoke(app, [*args, "--max-epochs", "20"])
    assert_one_line_error(result, "holds this run with max_epochs 6", "the epoch cap is part of a run's id",
                          "choose another --out")
    assert run_folder.read_summary(tmp_path / "run")["stop_epoch"] == 6


def test_training_a_run_another_process_is_training_is_refused_in_one_line_and_writes_nothing(tmp_path, mnist_dir):
    out = tmp_path / "run"
    fd = run_folder.try_lock(out)  # this test process plays a sweep worker that is training the run
    try:
        result = runner.invoke(app, [*TINY_TRAIN, "--data-dir", str(mnist_dir), "--out", str(out)])
    finally:
        os.close(fd)
    assert_one_line_error(result, str(out), "is being trained by another process")
    assert [p.name for p in out.iterdir()] == [run_folder.LOCK_FILE]


def test_train_holds_the_runs_lock_while_training_and_a_finished_run_drops_its_lock_file(tmp_path, mnist_dir,
                                                                                        monkeypatch):
    out = tmp_path / "run"
    locked_while_training = []
    train_members = training._train_members

    def spy(members, *args):
        locked_while_training.append(run_folder.is_locked(out))
        return train_members(members, *args)

    monkeypatch.setattr(training, "_train_members", spy)
    assert runner.invoke(app, [*TINY_TRAIN, "--max-epochs", "1", "--data-dir", str(mnist_dir),
                               "--out", str(out)]).exit_code == 0
    assert locked_while_training == [True]
    assert run_folder.is_finished(out) and not (out / run_folder.LOCK_FILE).exists()


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir() if p.is_file()}


def test_a_trained_run_folder_is_readable_by_all_under_umask_022(tmp_path, mnist_dir):
    with umask(0o022):
        result = runner.invoke(app, [*TINY_TRAIN, "--max-epochs", "1", "--data-dir", str(mnist_dir),
                                     "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert modes(tmp_path / "run") == {run_folder.CONFIG_FILE: 0o644, run_folder.LOG_FILE: 0o644,
                                       run_folder.SUMMARY_FILE: 0o644, run_folder.WEIGHTS_BEST_FILE: 0o644,
                                       run_folder.WEIGHTS_LAST_FILE: 0o644}


def test_a_figure_and_its_csv_are_readable_by_all_under_umask_022(results, tmp_path):
    with umask(0o022):
        result = runner.invoke(app, ["plot", str(results), "--out", str(tmp_path / "figs")])
    assert result.exit_code == 0, result.output
    assert modes(tmp_path / "figs") == {"sweep1_figure3.png": 0o644, "sweep1_figure3.csv": 0o644}


def test_ctrl_c_before_the_first_epoch_ends_says_nothing_was_saved(tmp_path, mnist_dir, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # as Ctrl-C would, in the middle of the first epoch

    monkeypatch.setattr(training, "_train_epoch", interrupted)
    result = runner.invoke(app, [*TINY_TRAIN, "--data-dir", str(mnist_dir), "--out", str(tmp_path / "run")])
    assert result.exit_code == 130
    assert_one_line_error(result, "interrupted before the first epoch ended: nothing was saved")
    assert not (tmp_path / "run" / run_folder.LOG_FILE).exists()


def test_ctrl_c_after_an_epoch_says_the_finished_epochs_are_saved(tmp_path, mnist_dir, monkeypatch):
    real_epoch = training._train_epoch
    calls = []

    def second_epoch_interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(training, "_train_epoch", second_epoch_interrupted)
    result = runner.invoke(app, [*TINY_TRAIN, "--data-dir", str(mnist_dir), "--out", str(tmp_path / "run")])
    assert result.exit_code == 130
    assert_one_line_error(result, "every finished epoch is saved: run the same command again to resume")
    assert len(run_folder.read_log(tmp_path / "run")) == 1


# ------------------------------------------------- the paper beside ours

def test_table_compare_paper_of_the_committed_smoke_runs_gives_no_paper_values_and_says_why():
    result = runner.invoke(app, ["table", str(REPO / "results" / "smoke"), "--compare", "paper",
                                 "--format", "markdown"])
    assert result.exit_code == 0, result.output
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in result.stdout.splitlines()
            if line.startswith("| MNIST |")]
    assert [cells[1] for cells in rows[:2]] == ["Q-AGREL", "Error-BP"]
    for cells in rows[:2]:
        assert cells[6:8] == ["–", "–"] and cells[9:11] == ["–", "–"], cells  # Paper and Δ [SD], twice
    assert rows[2][-1] == "–"  # and no paper value beside our Q-AGREL / Error-BP epoch ratio
    assert ("No paper values for MNIST Q-AGREL Conv 21632-5408-500 α 1e+00 (not the paper's protocol): "
            "max_epochs 4 (paper 500), patience 2 (paper 20), train_size 5000 (paper all).") in result.stdout


# ------------------------------------------------- narrow terminals, pipes

NAMES = ("Q-AGREL", "Error-BP", "21632-5408-500")


def assert_names_whole(text: str) -> None:
    """Every name appears whole on some line, and wherever part of one appears, it is whole or ends in '…'."""
    for name in NAMES:
        assert name in text, text
    for piece in re.findall(r"Q-AG\S*|Error-\S*|21632\S*", text):
        assert piece in NAMES or piece.endswith("…") or piece.rstrip("…") in NAMES, (piece, text)


def terminal(width: int = 80) -> Console:
    return Console(file=io.StringIO(), width=width, force_terminal=True, color_system=None)


def test_status_on_an_80_column_terminal_keeps_every_name_whole(results):
    console = terminal()
    print_status(status_report(results), console)
    text = console.file.getvalue()
    assert_names_whole(text)
    assert max(len(line) for line in text.splitlines()) <= 80


def test_table_on_an_80_column_terminal_keeps_every_name_whole(results):
    console = terminal()
    console.print(rich_view(build_table(read_results(results).runs, source=str(results)), console))
    text = console.file.getvalue()
    assert_names_whole(text)
    assert max(len(line) for line in text.splitlines()) <= 80


def test_the_sweep_plan_of_every_run_on_an_80_column_terminal_keeps_every_run_id_whole(tmp_path):
    plan = load_sweep(REPO / "sweeps" / "protocol.yaml")
    console = terminal()
    print_plan(plan, tmp_path, console, every_run=True)
    text = console.file.getvalue()
    assert all(config.run_id in text for config in plan.configs)


def test_the_train_summary_on_an_80_column_terminal_keeps_names_whole(results):
    (run_dir,) = [d for d in results.iterdir() if "-qagrel-s0-" in d.name]
    console = terminal()
    print_summary({**run_folder.read_summary(run_dir), "wall_seconds": 1.0, "device": "cpu"}, console)
    assert "21632-5408-500" in console.file.getvalue() and run_dir.name in console.file.getvalue()


def test_status_into_a_pipe_is_never_wrapped_even_with_columns_80(results):
    result = runner.invoke(app, ["status", str(results)], env={"COLUMNS": "80"})  # CliRunner's output is no tty
    assert result.exit_code == 0, result.output
    assert_names_whole(result.stdout)
    (line,) = [line for line in result.stdout.splitlines() if "Q-AGREL" in line]
    assert "21632-5408-500" in line and "1e+00" in line  # the whole row on one line


# ---------------------------------------- every test runs on a fresh clone

def test_tests_fall_back_to_the_committed_mnist_subset_on_a_fresh_clone(tmp_path, monkeypatch):
    monkeypatch.setattr(conftest, "REPO", tmp_path / "clone")  # no ../shared beside it
    monkeypatch.setenv("QAGREL_DATA", str(tmp_path / "empty"))
    monkeypatch.delenv("QAGREL_TEST_FIXTURE_ONLY", raising=False)
    assert conftest.find_mnist() == MNIST_FIXTURE


def fake_mnist(folder: Path) -> Path:
    """A folder that holds MNIST as far as conftest looks (the four file names)."""
    raw = folder / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        (raw / f"{name}.gz").touch()
    return folder


def test_a_qagrel_data_without_mnist_does_not_hide_the_shared_copy(tmp_path, monkeypatch):
    shared = fake_mnist(tmp_path / "shared" / "data")
    monkeypatch.setattr(conftest, "REPO", tmp_path / "clone")
    monkeypatch.setenv("QAGREL_DATA", "/nonexistent-folder")
    monkeypatch.delenv("QAGREL_TEST_FIXTURE_ONLY", raising=False)
    assert conftest.find_mnist() == shared


def test_qagrel_data_holding_mnist_comes_before_the_shared_copy(tmp_path, monkeypatch):
    fake_mnist(tmp_path / "shared" / "data")
    mine = fake_mnist(tmp_path / "mine")
    monkeypatch.setattr(conftest, "REPO", tmp_path / "clone")
    monkeypatch.setenv("QAGREL_DATA", str(mine))
    monkeypatch.delenv("QAGREL_TEST_FIXTURE_ONLY", raising=False)
    assert conftest.find_mnist() == mine


def test_qagrel_test_fixture_only_forces_the_committed_subset(tmp_path, monkeypatch):
    monkeypatch.setenv("QAGREL_DATA", str(fake_mnist(tmp_path / "mine")))
    monkeypatch.setenv("QAGREL_TEST_FIXTURE_ONLY", "1")
    assert conftest.find_mnist() == MNIST_FIXTURE


def test_the_committed_subset_is_the_first_2000_training_and_500_test_images_of_mnist():
    files = list((MNIST_FIXTURE / "MNIST" / "raw").glob("*-idx?-ubyte.gz"))
    assert len(files) == 4 and sum(f.stat().st_size for f in files) < 2_000_000
    subset = load_dataset("mnist", MNIST_FIXTURE)
    assert (len(subset.train_y), len(subset.test_y)) == MNIST_FIXTURE_SIZES
    assert subset.train_y[:5].tolist() == [5, 0, 4, 1, 9]  # MNIST's well-known first labels
    if FULL_MNIST:
        full = load_dataset("mnist", conftest.MNIST_DATA)
        assert torch.equal(subset.train_x, full.train_x[:2000]) and torch.equal(subset.test_x, full.test_x[:500])
        assert torch.equal(subset.train_y, full.train_y[:2000]) and torch.equal(subset.test_y, full.test_y[:500])


# ------------------------------------------ issue 32: a scheduler's stop, log files

def sigterm_in_epoch(monkeypatch, which: int) -> None:
    """Make epoch `which` of the next training receive SIGTERM, as a scheduler ending the job sends it."""
    real_epoch = training._train_epoch
    calls = []

    def epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == which:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here, long before this ends
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(training, "_train_epoch", epoch)


def test_sigterm_in_train_is_ctrl_c_one_line_exit_130_and_the_finished_epochs_are_kept(tmp_path, mnist_dir,
                                                                                      monkeypatch):
    handler = signal.getsignal(signal.SIGTERM)
    sigterm_in_epoch(monkeypatch, 2)
    args = [*TINY_TRAIN, "--max-epochs", "3", "--patience", "10", "--data-dir", str(mnist_dir),
            "--out", str(tmp_path / "run")]
    result = runner.invoke(app, args)
    assert result.exit_code == 130
    assert_one_line_error(result, "every finished epoch is saved: run the same command again to resume")
    assert len(run_folder.read_log(tmp_path / "run")) == 1
    assert signal.getsignal(signal.SIGTERM) == handler  # given back once train ends
    monkeypatch.undo()
    assert runner.invoke(app, args).exit_code == 0  # the resume continues from the kept epoch
    assert run_folder.read_log(tmp_path / "run")["epoch"].tolist() == [1, 2, 3]


def tiny_config(**options) -> TrainConfig:
    return TrainConfig(arch="fc", fc="16", train_size=200, val_size=100, device="cpu", **options)


def test_sigterm_in_train_shows_the_terminals_cursor_again(tmp_path, mnist_dir, monkeypatch):
    from qagrel_cli.core.interrupts import sigterm_interrupts

    screen = Console(file=io.StringIO(), force_terminal=True, width=100)
    sigterm_in_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt), sigterm_interrupts():
        training.train(tiny_config(), tmp_path / "run", data_dir=mnist_dir, console=screen)
    text = screen.file.getvalue()
    assert "\x1b[?25l" in text and text.rindex("\x1b[?25h") > text.rindex("\x1b[?25l")  # hidden, then shown


class FlushRecorder(io.StringIO):
    """A log file that remembers what it held at each flush."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []

    def flush(self) -> None:
        self.flushed.append(self.getvalue())


def test_train_off_a_terminal_writes_and_flushes_one_plain_line_per_epoch_as_it_ends(tmp_path, mnist_dir,
                                                                                     monkeypatch):
    log_file = FlushRecorder()
    real_epoch = training._train_epoch
    flushed_before_epoch = []

    def epoch(*args, **kwargs):
        flushed_before_epoch.append(log_file.flushed[-1] if log_file.flushed else "")
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(training, "_train_epoch", epoch)
    training.train(tiny_config(max_epochs=3, patience=10), tmp_path / "run", data_dir=mnist_dir,
                   console=Console(file=log_file, width=100))
    lines = log_file.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1", "epoch 2", "epoch 3"]
    assert all("reward" in line and "val" in line and "test" in line and "\x1b" not in line for line in lines)
    assert flushed_before_epoch[1].splitlines() == lines[:1] and flushed_before_epoch[2].splitlines() == lines[:2]


# ------------------------------------------ issue 32: one sweep per name in a results root

TINY_SWEEP = "name: s\ngrid: {arch: fc, fc: '16', train_size: 100, val_size: 100, max_epochs: 1, device: cpu}\n"


def stored_sweep(results: Path, text: str) -> Path:
    """results/s/_sweep.yaml holding `text`, as an earlier sweep named s left it."""
    stored = results / "s" / "_sweep.yaml"
    stored.parent.mkdir(parents=True)
    stored.write_text(text)
    return stored


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_a_sweep_name_another_sweep_file_used_in_the_results_root_is_refused_naming_both_files(tmp_path, dry_run):
    stored = stored_sweep(tmp_path / "results", TINY_SWEEP.replace("max_epochs: 1", "max_epochs: 2"))
    given = tmp_path / "mine.yaml"
    given.write_text(TINY_SWEEP)
    result = runner.invoke(app, ["sweep", str(given), "--results", str(tmp_path / "results"), *dry_run])
    assert_one_line_error(result, str(stored), str(given), "--replace")
    assert [p.name for p in stored.parent.iterdir()] == ["_sweep.yaml"]
    assert "max_epochs: 2" in stored.read_text()


def test_replace_lets_a_sweep_file_take_over_a_name_used_by_another(tmp_path, mnist_dir):
    stored = stored_sweep(tmp_path / "results", TINY_SWEEP.replace("max_epochs: 1", "max_epochs: 2"))
    given = tmp_path / "mine.yaml"
    given.write_text(TINY_SWEEP)
    result = runner.invoke(app, ["sweep", str(given), "--results", str(tmp_path / "results"), "--replace",
                                 "--data-dir", str(mnist_dir)])
    assert result.exit_code == 0, result.output
    assert stored.read_text() == TINY_SWEEP


def test_rerunning_the_same_sweep_file_is_not_a_name_conflict(tmp_path):
    stored_sweep(tmp_path / "results", TINY_SWEEP)
    given = tmp_path / "s.yaml"
    given.write_text(TINY_SWEEP)
    assert runner.invoke(app, ["sweep", str(given), "--results", str(tmp_path / "results"), "--dry-run"]
                         ).exit_code == 0


# ------------------------------------------ issue 32: one damaged-file path for every reader

def denied(path: Path) -> PermissionError:
    return PermissionError(13, "Permission denied", str(path))


def make_unreadable(monkeypatch, target: Path) -> None:
    """Act as chmod 000 on `target` does for a user other than root (as root chmod denies nothing): opening
    it fails, and for a folder, listing it and looking at anything inside fail too."""
    import builtins

    target = Path(target)

    def inside(path) -> bool:
        return isinstance(path, (str, os.PathLike)) and target in Path(os.fspath(path)).parents

    def guard(real, check):
        def call(path, *args, **kwargs):
            if check(path):
                raise denied(path)
            return real(path, *args, **kwargs)
        return call

    def hit(path) -> bool:
        return isinstance(path, (str, os.PathLike)) and (Path(os.fspath(path)) == target or inside(path))

    for module in (builtins, io):
        monkeypatch.setattr(module, "open", guard(builtins.open, hit))
    monkeypatch.setattr(os, "open", guard(os.open, hit))
    if target.is_dir():
        monkeypatch.setattr(os, "scandir", guard(os.scandir, hit))
        monkeypatch.setattr(os, "listdir", guard(os.listdir, hit))
        monkeypatch.setattr(os, "stat", guard(os.stat, inside))


def set_summary_field(run_dir: Path, field: str, raw: str) -> None:
    """Put `raw` (JSON text) as the summary's value of `field`."""
    path = run_dir / run_folder.SUMMARY_FILE
    text = path.read_text()
    path.write_text(re.sub(rf'"{field}": [^,\n]+', f'"{field}": {raw}', text, count=1))


def first_qagrel_run(results: Path) -> Path:
    (run_dir,) = [d for d in sorted(results.iterdir()) if "-qagrel-s0-" in d.name]
    return run_dir


SUMMARY_TYPE_DAMAGE = [("stop_epoch", "null"), ("stop_epoch", '"abc"'), ("stop_epoch", "1e400"),
                       ("stop_epoch", "-5"), ("best_val_acc", '"abc"')]
DAMAGE_KINDS = [*(f"summary {field}={raw}" for field, raw in SUMMARY_TYPE_DAMAGE), "log without its columns",
                "unreadable summary", "unreadable folder"]


def apply_damage(kind: str, results: Path, monkeypatch) -> Path:
    """Damage the first Q-AGREL run of `results` the way `kind` says; returns the file or folder a warning
    must name."""
    run_dir = first_qagrel_run(results)
    if kind.startswith("summary "):
        field, raw = kind.removeprefix("summary ").split("=", 1)
        set_summary_field(run_dir, field, raw)
        return run_dir / run_folder.SUMMARY_FILE
    if kind == "log without its columns":
        run_folder.write_log(run_dir, pd.DataFrame({"epoch_seconds": [1.0, 1.0]}))
        return run_dir / run_folder.LOG_FILE
    target = run_dir / run_folder.SUMMARY_FILE if kind == "unreadable summary" else run_dir
    make_unreadable(monkeypatch, target)
    return target


@pytest.mark.parametrize("field, raw", SUMMARY_TYPE_DAMAGE)
def test_the_summary_reader_names_a_summary_holding_a_wrong_type_as_damaged(results, field, raw):
    run_dir = first_qagrel_run(results)
    set_summary_field(run_dir, field, raw)
    with pytest.raises(run_folder.DamagedFile, match=f"{field} is"):
        run_folder.read_summary(run_dir)


def test_the_log_reader_names_a_log_without_the_columns_it_needs_as_damaged(tmp_path):
    run_folder.write_log(tmp_path, pd.DataFrame({"epoch": [1], "lr": [0.1]}))
    with pytest.raises(run_folder.DamagedFile, match="lacks the columns train_reward, test_acc"):
        run_folder.read_log(tmp_path, needs=("epoch", "train_reward", "test_acc"))
    assert run_folder.read_log(tmp_path, needs=("epoch",))["lr"].tolist() == [0.1]


def assert_warned_once_naming(result, what: Path) -> None:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    lines = warnings(result)
    assert len(lines) == 1 and str(what) in lines[0], result.output


@pytest.mark.parametrize("kind", DAMAGE_KINDS)
def test_table_names_the_damage_leaves_the_run_out_and_shows_the_rest(results, kind, monkeypatch):
    bad = apply_damage(kind, results, monkeypatch)
    result = runner.invoke(app, ["table", str(results), "--format", "csv"])
    assert_warned_once_naming(result, bad)
    seeds = {line.split(",")[1]: line.split(",")[-1] for line in result.stdout.splitlines()[1:]}
    assert seeds == {"qagrel": "2" if bad.name == run_folder.LOG_FILE else "1", "bp": "2"}


@pytest.mark.parametrize("kind", DAMAGE_KINDS)
def test_status_names_the_damage_and_counts_the_run_as_damaged(results, kind, monkeypatch):
    bad = apply_damage(kind, results, monkeypatch)
    result = runner.invoke(app, ["status", str(results)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    if bad.name == run_folder.LOG_FILE:  # status reads logs only for --times and runs in progress
        assert row(result, "total")[-6:] == ["4", "0", "0", "0", "0", "4"]
        return
    assert_warned_once_naming(result, bad)
    assert row(result, "total")[-6:] == ["3", "0", "0", "1", "0", "4"]


@pytest.mark.parametrize("kind", DAMAGE_KINDS)
def test_plot_names_the_damage_and_draws_the_rest(results, kind, monkeypatch, tmp_path):
    bad = apply_damage(kind, results, monkeypatch)
    result = runner.invoke(app, ["plot", str(results), "--out", str(tmp_path / "figs")])
    assert_warned_once_naming(result, bad)
    plotted = pd.read_csv(tmp_path / "figs" / "sweep1_figure3.csv")
    assert plotted.groupby("rule")["n"].max().to_dict() == {"bp": 2, "qagrel": 1}


@pytest.mark.parametrize("kind", DAMAGE_KINDS)
def test_milestones_names_the_damage_and_shows_the_rest(results, kind, monkeypatch):
    bad = apply_damage(kind, results, monkeypatch)
    result = runner.invoke(app, ["milestones", str(results), "--format", "csv"])
    assert_warned_once_naming(result, bad)
    assert "Q-AGREL" in result.stdout or "qagrel" in result.stdout


@pytest.mark.parametrize("kind", DAMAGE_KINDS)
def test_collect_names_the_damage_and_copies_the_rest(results, kind, monkeypatch, tmp_path):
    bad = apply_damage(kind, results, monkeypatch)
    result = runner.invoke(app, ["collect", str(results), str(tmp_path / "dest")])
    assert_warned_once_naming(result, bad)
    copied = 4 if bad.name == run_folder.LOG_FILE else 3  # a run whose summary holds its results is copied
    assert f"collected {copied} finished run(s)" in result.output


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
@pytest.mark.parametrize("kind", [k for k in DAMAGE_KINDS if "log" not in k])  # a sweep reads no log
def test_a_sweep_names_the_damaged_run_leaves_it_alone_and_goes_on(results, kind, dry_run, monkeypatch, tmp_path):
    sweep = tmp_path / "sweep1.yaml"
    sweep.write_text("name: sweep1\ngrid: {rule: [qagrel, bp]}\nseeds: 2\n")
    bad = apply_damage(kind, results, monkeypatch)
    result = runner.invoke(app, ["sweep", str(sweep), "--results", str(results.parent), *dry_run],
                           env={"COLUMNS": "300"})
    assert_warned_once_naming(result, bad)
    assert "damaged run" in warnings(result)[0]


# ------------------------------------------ issue 32: bad sizes

def test_a_val_size_of_0_is_refused_in_one_line_saying_early_stopping_needs_validation_images(tmp_path):
    result = runner.invoke(app, ["train", "--val-size", "0", "--out", str(tmp_path / "run")])
    assert_one_line_error(result, "val_size must be an integer >= 1", "early stopping needs validation images")
    assert not (tmp_path / "run").exists()


# ------------------------------------------ issue 32: data errors say what is missing, here

@pytest.mark.parametrize("download", ["--download", "--no-download"])
def test_a_data_dir_that_is_a_file_is_named_in_one_line_without_blaming_the_internet(tmp_path, download):
    not_a_folder = tmp_path / "data.txt"
    not_a_folder.write_text("not a folder")
    result = runner.invoke(app, [*TINY_TRAIN, "--data-dir", str(not_a_folder), download,
                                 "--out", str(tmp_path / "run")])
    assert_one_line_error(result, str(not_a_folder), "is a file, not a folder")
    assert "internet" not in result.output and not (tmp_path / "run").exists()


@pytest.mark.parametrize("download", ["--download", "--no-download"])
def test_a_cifar_folder_missing_one_batch_file_names_that_file_without_blaming_the_internet(tmp_path, download):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_4", "data_batch_5", "test_batch", "batches.meta"):
        (folder / name).write_bytes(b"")
    result = runner.invoke(app, [*TINY_TRAIN, "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"),
                                 download, "--out", str(tmp_path / "run")])
    assert_one_line_error(result, str(folder), "lacks data_batch_3,")
    assert "internet" not in result.output and not (tmp_path / "run").exists()
    assert sorted(p.name for p in folder.iterdir())[:2] == ["batches.meta", "data_batch_1"]  # nothing fetched


def test_a_sweep_names_every_dataset_it_lacks_in_one_message_before_its_first_run(tmp_path):
    sweep = tmp_path / "two.yaml"
    sweep.write_text("grid: {dataset: [mnist, cifar10], arch: fc, fc: '16', train_size: 100, max_epochs: 1}\n")
    result = runner.invoke(app, ["sweep", str(sweep), "--results", str(tmp_path / "results"),
                                 "--data-dir", str(tmp_path / "empty"), "--no-download"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    (error,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "mnist data not found" in error and "cifar10 data not found" in error
    assert not (tmp_path / "results").exists()


# ------------------------------------------ issue 32: a pack's size, a refused run's lock

@contextlib.contextmanager
def open_file_limit(soft: int) -> Iterator[None]:
    """This process's open-file limit lowered to `soft` (ulimit -n) for the block, whatever the machine's is."""
    import resource

    old_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard) if hard != resource.RLIM_INFINITY else soft, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (old_soft, hard))


def test_a_pack_of_more_runs_than_the_process_can_lock_is_refused_before_anything_is_written(tmp_path, mnist_dir):
    with open_file_limit(1024):
        result = runner.invoke(app, [*TINY_TRAIN, "--seeds", "0-99999", "--data-dir", str(mnist_dir),
                                     "--out", str(tmp_path / "pack")])
    assert_one_line_error(result, "100000 runs to train together", "ulimit -n", "train fewer seeds at a time")
    assert not (tmp_path / "pack").exists()


def test_a_run_refused_after_taking_its_lock_leaves_no_lock_behind(tmp_path, mnist_dir):
    result = runner.invoke(app, [*TINY_TRAIN, "--train-size", "100000", "--data-dir", str(mnist_dir),
                                 "--out", str(tmp_path / "run")])
    assert_one_line_error(result, "train_size 100000")
    assert not (tmp_path / "run" / run_folder.LOCK_FILE).exists()



# ------------------------------------------ issue 32: symlinked run folders

def linked_results(results: Path, tmp_path: Path) -> Path:
    """A folder `linked/sweep1/` whose run folders are symlinks to the runs of `results`."""
    linked = tmp_path / "linked" / "sweep1"
    linked.mkdir(parents=True)
    for run_dir in results.iterdir():
        (linked / run_dir.name).symlink_to(run_dir.resolve(), target_is_directory=True)
    return linked


def test_table_reads_run_folders_that_are_symlinks(results, tmp_path):
    result = runner.invoke(app, ["table", str(linked_results(results, tmp_path))], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert row(result, "Q-AGREL")[-1] == "2/2" and row(result, "Error-BP")[-1] == "2/2"


def test_plot_draws_run_folders_that_are_symlinks(results, tmp_path):
    result = runner.invoke(app, ["plot", str(linked_results(results, tmp_path)), "--out", str(tmp_path / "figs")])
    assert result.exit_code == 0, result.output
    plotted = pd.read_csv(tmp_path / "figs" / "sweep1_figure3.csv")
    assert plotted.groupby("rule")["n"].max().to_dict() == {"bp": 2, "qagrel": 2}


def test_a_symlink_to_a_run_folder_that_is_gone_is_named_and_the_rest_shown(results, tmp_path):
    linked = linked_results(results, tmp_path)
    gone = tmp_path / "gone"
    (linked / "a-run-moved-away").symlink_to(gone, target_is_directory=True)
    result = runner.invoke(app, ["table", str(linked)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    (line,) = warnings(result)
    assert str(linked / "a-run-moved-away") in line and "does not exist" in line
    assert row(result, "Q-AGREL")[-1] == "2/2"


# ------------------------------------------ issue 32: what a result's repeatability depends on

def test_a_runs_summary_records_the_cpu_model_its_instruction_set_the_gpu_and_torchs_threads(tmp_path, mnist_dir):
    from qagrel_cli.core.device import ISA_LEVELS

    training.train(tiny_config(max_epochs=1), tmp_path / "run", data_dir=mnist_dir, quiet=True)
    machine = run_folder.read_summary(tmp_path / "run")["machine"]
    assert machine["cpu_model"] and machine["torch_threads"] == torch.get_num_threads()
    assert machine["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert machine["gpu"] is None  # trained on the CPU
    if Path("/proc/cpuinfo").exists() and "flags" in Path("/proc/cpuinfo").read_text():
        assert machine["cpu_isa"] in (*ISA_LEVELS, "below sse4_2")


# ------------------------------------------ issue 32: big sweeps, many workers

def test_a_dry_run_shows_one_line_per_table_1_row_and_every_run_only_with_all(tmp_path):
    table1 = REPO / "sweeps" / "table1.yaml"
    grouped = runner.invoke(app, ["sweep", str(table1), "--dry-run", "--results", str(tmp_path)],
                            env={"COLUMNS": "200"})
    assert grouped.exit_code == 0, grouped.output
    rows = [line for line in grouped.stdout.splitlines() if "│" in line and ("Q-AGREL" in line or "Error-BP" in line)]
    assert len(rows) == 26 and "-s9-" not in grouped.stdout  # Table 1's 26 rows of 10 seeds, no run ids
    assert all(line.split("│")[-2].strip() == "10" for line in rows)
    every = runner.invoke(app, ["sweep", str(table1), "--dry-run", "--all", "--results", str(tmp_path)],
                          env={"COLUMNS": "200"})
    assert sum("-s9-" in line for line in every.stdout.splitlines()) == 26


def test_a_sweep_of_more_than_5000_runs_is_refused_without_yes(tmp_path):
    sweep = tmp_path / "huge.yaml"
    sweep.write_text("grid: {arch: fc, fc: '16', train_size: 100, max_epochs: 1}\nseeds: 5001\n")
    result = runner.invoke(app, ["sweep", str(sweep), "--results", str(tmp_path / "results")])
    assert_one_line_error(result, "5001 runs (more than 5000)", "--dry-run", "--yes")
    assert not (tmp_path / "results").exists()


def test_workers_above_the_cores_are_capped_with_a_one_line_note(monkeypatch):
    from qagrel_cli.sweeps import capacity

    monkeypatch.delenv("QAGREL_WORKERS_UNCAPPED")
    monkeypatch.setattr(capacity, "cores", lambda: 2)
    monkeypatch.setattr(capacity, "available_memory", lambda: 1 << 40)
    workers, note = capacity.cap_workers(8, [tiny_config()])
    assert workers == 2 and note == "--workers 8 capped at 2: this machine has 2 core(s)"
    assert capacity.cap_workers(2, [tiny_config()]) == (2, None)


def test_workers_above_what_memory_holds_for_the_largest_network_are_capped(monkeypatch):
    from qagrel_cli.sweeps import capacity

    monkeypatch.delenv("QAGREL_WORKERS_UNCAPPED")
    monkeypatch.setattr(capacity, "cores", lambda: 64)
    big = TrainConfig(dataset="cifar10", arch="loccon")
    monkeypatch.setattr(capacity, "available_memory", lambda: 3 * capacity.worker_bytes(big) + 1)
    workers, note = capacity.cap_workers(16, [tiny_config(), big])
    assert workers == 3 and "largest network" in note and big.run_id in note


def test_the_sweep_prints_the_workers_cap_note_before_training(tmp_path, mnist_dir, monkeypatch):
    from qagrel_cli.sweeps import capacity

    monkeypatch.delenv("QAGREL_WORKERS_UNCAPPED")
    monkeypatch.setattr(capacity, "cores", lambda: 1)
    sweep = tmp_path / "s.yaml"
    sweep.write_text(TINY_SWEEP)
    result = runner.invoke(app, ["sweep", str(sweep), "--workers", "4", "--results", str(tmp_path / "results"),
                                 "--data-dir", str(mnist_dir)])
    assert result.exit_code == 0, result.output
    assert "note: --workers 4 capped at 1: this machine has 1 core(s)" in result.output


def test_plot_names_a_log_without_the_plotted_column_and_draws_the_rest(results, tmp_path):
    run_dir = first_qagrel_run(results)
    run_folder.write_log(run_dir, run_folder.read_log(run_dir).drop(columns=["train_reward"]))
    result = runner.invoke(app, ["plot", str(results), "--out", str(tmp_path / "figs")])
    assert_warned_once_naming(result, run_dir / run_folder.LOG_FILE)
    assert "lacks the column train_reward" in warnings(result)[0]
    plotted = pd.read_csv(tmp_path / "figs" / "sweep1_figure3.csv")
    assert plotted.groupby("rule")["n"].max().to_dict() == {"bp": 2, "qagrel": 1}


def test_milestones_names_a_log_without_its_validation_accuracy_and_shows_the_rest(results):
    run_dir = first_qagrel_run(results)
    run_folder.write_log(run_dir, run_folder.read_log(run_dir).drop(columns=["val_acc"]))
    result = runner.invoke(app, ["milestones", str(results), "--format", "csv"])
    assert_warned_once_naming(result, run_dir / run_folder.LOG_FILE)
    assert "lacks the column val_acc" in warnings(result)[0]


def test_table_replaying_early_stopping_on_a_log_without_its_validation_accuracy_is_one_line(results):
    run_dir = first_qagrel_run(results)
    run_folder.write_log(run_dir, run_folder.read_log(run_dir).drop(columns=["val_acc"]))
    result = runner.invoke(app, ["table", str(results), "--patience", "1"])
    assert_one_line_error(result, str(run_dir / run_folder.LOG_FILE), "lacks the column val_acc")


def test_an_unreadable_run_folder_of_a_sweep_counts_once_as_damaged_not_also_pending(results, monkeypatch):
    (results / "_sweep.yaml").write_text("name: sweep1\ngrid: {rule: [qagrel, bp]}\nseeds: 2\n")
    bad = apply_damage("unreadable folder", results, monkeypatch)
    result = runner.invoke(app, ["status", str(results)], env={"COLUMNS": "200"})
    assert_warned_once_naming(result, bad)
    assert row(result, "total")[-6:] == ["3", "0", "0", "1", "0", "4"]


def test_sigterm_interrupts_is_the_one_handler_train_and_sweep_share():
    from qagrel_cli.core import interrupts
    from qagrel_cli.sweeps import orchestrator

    assert orchestrator.sigterm_interrupts is interrupts.sigterm_interrupts
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), interrupts.sigterm_interrupts():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) == before
