"""Fault injection: each file of a real run folder, damaged three ways, against every view and a resumed sweep.

A results folder of real runs is trained once for the module (five tiny runs on
MNIST: two seeds of each rule, finished, and a third Q-AGREL seed stopped after
its first epoch, so it holds a checkpoint), together with the `_sweep.yaml` that
names them. Each test copies it, damages one file (cut to half its length,
overwritten with garbage, or emptied), and checks what docs/usage.md and
docs/sweeps.md promise:

- `qagrel table`, `status` and `plot` exit 0, print one warning naming the file
  they could not read, and still show every other run. A checkpoint is read only
  by the run that resumes from it, so the views show that run as unfinished.
- A resumed `qagrel sweep` leaves a run with a damaged config alone, naming the
  file, and trains the partial run; a damaged checkpoint fails that run alone,
  with a one-line `_error.txt` naming the file, and the sweep exits 1 saying
  "failed runs: ...". Finished runs stay finished.
- Nothing prints a traceback.

The sweep is checked for the config and the checkpoint only (each resumed sweep
starts a worker process); the summary and the log are read by the views alone.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from qagrel_cli.cli import app
from qagrel_cli.core import run_folder
from qagrel_cli.core import training as engine
from qagrel_cli.sweeps.ledger import RunStatus, run_status
from qagrel_cli.sweeps.sweep_file import SWEEP_FILE, load_sweep

from conftest import load_with_small_test_set

runner = CliRunner()
NAME = "faults"
GRID = {"dataset": "mnist", "arch": "fc", "fc": "16", "rule": ["qagrel", "bp"], "train_size": 200, "val_size": 100,
        "max_epochs": 2, "patience": 10, "device": "cpu"}
FINISHED = "-qagrel-s0-"  # the finished run damaged for the config, summary and log
PARTIAL = "-qagrel-s2-"  # the run stopped after epoch 1: the only one with a checkpoint
GARBAGE = b"\x00\xff\xfe garbage {[ not what a qagrel file holds\n" * 4


def cut_to_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def fill_with_garbage(path: Path) -> None:
    path.write_bytes(GARBAGE)


def empty(path: Path) -> None:
    path.write_bytes(b"")


DAMAGES = [cut_to_half, fill_with_garbage, empty]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist_dir) -> Path:
    """The results folder: `<root>/faults/` with `_sweep.yaml`, four finished runs and one partial run."""
    root = tmp_path_factory.mktemp("faults")
    sweep = root / "faults.yaml"
    sweep.write_text(yaml.safe_dump({"name": NAME, "grid": GRID, "seeds": [0, 1],
                                     "include": [{"rule": "qagrel", "seed": 2}]}))
    plan = load_sweep(sweep)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "load_dataset", load_with_small_test_set)  # one data load for the five runs
        real_epoch = engine._train_epoch
        for config in plan.configs:
            run_dir = plan.run_dir(root / "results", config)
            if config.seed != 2:
                engine.train(config, run_dir, data_dir=mnist_dir, quiet=True)
                continue
            epochs = []

            def first_epoch_only(*args, **kwargs):  # then the process "dies" in epoch 2
                epochs.append(1)
                if len(epochs) > 1:
                    raise KeyboardInterrupt
                return real_epoch(*args, **kwargs)

            patch.setattr(engine, "_train_epoch", first_epoch_only)
            with pytest.raises(KeyboardInterrupt):
                engine.train(config, run_dir, data_dir=mnist_dir, quiet=True)
            patch.setattr(engine, "_train_epoch", real_epoch)
    run_folder.atomic_write_text(root / "results" / NAME / SWEEP_FILE, plan.text)
    folder = root / "results" / NAME
    assert sorted(run_status(d).value for d in folder.iterdir() if d.is_dir()) == ["done"] * 4 + ["partial"]
    assert len(list(folder.glob(f"*{PARTIAL}*/{run_folder.CHECKPOINT_FILE}"))) == 1
    return root


@pytest.fixture
def damaged_copy(trained, tmp_path, request) -> tuple[Path, Path, Path]:
    """(copy of the results root, its sweep folder, the damaged file) for the test's file and damage."""
    name, how = request.param
    shutil.copytree(trained, tmp_path / "copy")
    folder = tmp_path / "copy" / "results" / NAME
    which = PARTIAL if name == run_folder.CHECKPOINT_FILE else FINISHED
    (run_dir,) = [d for d in folder.iterdir() if which in d.name]
    how(run_dir / name)
    return tmp_path / "copy", folder, run_dir / name


def cases(*names: str) -> list:
    return [pytest.param((name, how), id=f"{name}-{how.__name__}") for name in names for how in DAMAGES]


ALL_FILES = (run_folder.SUMMARY_FILE, run_folder.CONFIG_FILE, run_folder.LOG_FILE, run_folder.CHECKPOINT_FILE)
READ_BY_VIEWS = (run_folder.SUMMARY_FILE, run_folder.CONFIG_FILE, run_folder.LOG_FILE)


def assert_no_traceback(result) -> None:
    assert "Traceback" not in result.output, result.output


def assert_warned_about(result, bad: Path) -> None:
    """One warning line, naming the damaged file (views do not read checkpoints: then none)."""
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    if bad.name == run_folder.CHECKPOINT_FILE:
        assert warnings == [], result.output
    else:
        assert len(warnings) == 1 and str(bad) in warnings[0], result.output


def lost(bad: Path) -> int:
    """How many finished runs a view can no longer count: the one whose config or summary is unreadable."""
    return 1 if bad.name in (run_folder.SUMMARY_FILE, run_folder.CONFIG_FILE) else 0


@pytest.mark.parametrize("damaged_copy", cases(*ALL_FILES), indirect=True)
def test_table_shows_every_other_run_and_names_the_damaged_file(damaged_copy):
    _, folder, bad = damaged_copy
    result = runner.invoke(app, ["table", str(folder), "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert_no_traceback(result)
    assert_warned_about(result, bad)
    seeds = {line.split(",")[1]: line.split(",")[-1] for line in result.stdout.splitlines()[1:]}
    assert seeds == {"qagrel": str(2 - lost(bad)), "bp": "2"}


@pytest.mark.parametrize("damaged_copy", cases(*ALL_FILES), indirect=True)
def test_status_counts_every_run_and_the_damaged_one_as_damaged(damaged_copy):
    _, folder, bad = damaged_copy
    result = runner.invoke(app, ["status", str(folder)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert_no_traceback(result)
    assert_warned_about(result, bad)
    total = next(line for line in result.stdout.splitlines() if line.startswith("│ total"))
    # done, running, failed, damaged, pending (the partial run), total
    assert [c.strip() for c in total.split("│")[-7:-1]] == [str(4 - lost(bad)), "0", "0", str(lost(bad)), "1", "5"]


@pytest.mark.parametrize("damaged_copy", cases(*ALL_FILES), indirect=True)
def test_plot_draws_every_other_run_and_names_the_damaged_file(damaged_copy, tmp_path):
    _, folder, bad = damaged_copy
    result = runner.invoke(app, ["plot", str(folder), "--out", str(tmp_path / "figs")])
    assert result.exit_code == 0, result.output
    assert_no_traceback(result)
    assert_warned_about(result, bad)
    plotted = (tmp_path / "figs" / f"{NAME}_figure3.csv").read_text().splitlines()
    header = plotted[0].split(",")
    n = {}
    for line in plotted[1:]:
        cells = dict(zip(header, line.split(",")))
        n[cells["rule"]] = max(n.get(cells["rule"], 0), int(cells["n"]))
    damaged_run_plotted = bad.name == run_folder.CHECKPOINT_FILE  # the finished runs' files are intact then
    assert n == {"qagrel": 2 if damaged_run_plotted else 1, "bp": 2}


def resume(root: Path, folder: Path, mnist_dir: Path):
    (root / "faults.yaml").write_text((folder / SWEEP_FILE).read_text())
    return runner.invoke(app, ["sweep", str(root / "faults.yaml"), "--results", str(root / "results"),
                               "--data-dir", str(mnist_dir)])


@pytest.mark.parametrize("damaged_copy", cases(run_folder.CONFIG_FILE), indirect=True)
def test_a_resumed_sweep_leaves_a_run_with_a_damaged_config_alone_and_trains_the_rest(damaged_copy, mnist_dir):
    root, folder, bad = damaged_copy
    as_damaged = bad.read_bytes()
    result = resume(root, folder, mnist_dir)
    assert result.exit_code == 0, result.output
    assert_no_traceback(result)
    assert_warned_about(result, bad)
    assert "trained 1 run(s), 0 failed; skipped 3 already finished" in result.output
    assert "1 damaged (qagrel status names their files)" in result.output
    states = {d.name: run_status(d) for d in folder.iterdir() if d.is_dir()}
    assert sorted(s.value for s in states.values()) == ["damaged"] + ["done"] * 4
    assert bad.read_bytes() == as_damaged  # left as it was, for a person to look at


@pytest.mark.parametrize("damaged_copy", cases(run_folder.CHECKPOINT_FILE), indirect=True)
def test_a_resumed_sweep_fails_only_the_run_whose_checkpoint_is_damaged_with_one_line_naming_it(damaged_copy,
                                                                                                 mnist_dir):
    root, folder, bad = damaged_copy
    result = resume(root, folder, mnist_dir)
    assert result.exit_code == 1, result.output
    assert_no_traceback(result)
    error_file = bad.parent / run_folder.ERROR_FILE
    assert f"error: failed runs: {error_file}" in result.output
    error = error_file.read_text().strip()
    assert len(error.splitlines()) == 1 and error.startswith(f"{bad}: unreadable") and "Traceback" not in error
    states = {d.name: run_status(d) for d in folder.iterdir() if d.is_dir()}
    assert states.pop(bad.parent.name) == RunStatus.failed
    assert set(states.values()) == {RunStatus.done}
