"""`qagrel milestones`: short runs measured against the paper at points their budget reaches."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from qagrel_cli.cli import app
from qagrel_cli.core import run_folder
from qagrel_cli.core.config import TrainConfig
from qagrel_cli.reports.milestones import MilestoneFormat, milestone_rows, render
from qagrel_cli.sweeps.results import read_results

# MNIST conv-500 Q-AGREL in Table 1: stop epoch 44 (so E* = 24), accuracy 99.17 %.
PAPER_STOP, PAPER_ACC = 44, 99.17


def fabricate(root: Path, seed: int, epochs: int, offset: float = 0.0, diverged: bool = False, **config) -> None:
    """A finished run whose test accuracy at epoch e is e / 100 + offset (validation 0.01 below)."""
    cfg = TrainConfig(seed=seed, max_epochs=100, **config)  # one cap: logs of different lengths, one row
    run_dir = root / cfg.run_id
    run_folder.write_config(run_dir, cfg)
    epoch = pd.Series(range(1, epochs + 1))
    run_folder.write_log(run_dir, pd.DataFrame({"epoch": epoch, "test_acc": epoch / 100 + offset,
                                                "val_acc": epoch / 100 + offset - 0.01, "epoch_seconds": 1.0}))
    run_folder.write_summary(run_dir, {"run_id": cfg.run_id, "stop_epoch": epochs, "diverged": diverged})


def rows(root: Path):
    return milestone_rows(read_results(root))


def test_test_accuracy_at_the_papers_implied_best_epoch_is_averaged_over_seeds(tmp_path):
    fabricate(tmp_path, 0, 30)
    fabricate(tmp_path, 1, 30, offset=0.02)
    (row,) = rows(tmp_path)
    assert row.implied_best_epoch == PAPER_STOP - 20
    assert row.accuracy_at_implied_best.mean == pytest.approx(25.0)
    assert row.accuracy_at_implied_best.sd == pytest.approx(2 ** 0.5)


def test_a_budget_short_of_the_implied_best_epoch_says_so(tmp_path):
    fabricate(tmp_path, 0, 10)
    (row,) = rows(tmp_path)
    assert row.accuracy_at_implied_best.n == 0 and row.budget == 10
    assert "beyond 10 epochs" in render([row], MilestoneFormat.markdown)


def test_the_accuracy_at_the_implied_best_epoch_says_how_many_seeds_ran_that_far(tmp_path):
    fabricate(tmp_path, 0, 30)
    fabricate(tmp_path, 1, 21)  # early-stopped before E* = 24
    (row,) = rows(tmp_path)
    assert (row.accuracy_at_implied_best.n, row.budget, row.longest) == (1, 21, 30)
    line = render([row], MilestoneFormat.markdown).splitlines()[2]
    assert "| 21–30 |" in line and "| 24.00 [1/2] |" in line


def test_epochs_to_a_fraction_of_the_papers_accuracy_count_only_the_seeds_that_got_there(tmp_path):
    fabricate(tmp_path, 0, 60)  # reaches 50 % of 99.17 (49.585 %) at epoch 50
    fabricate(tmp_path, 1, 40)  # never does
    (row,) = rows(tmp_path)
    half, ninety = row.reached
    assert (half.seeds, half.of, half.epochs.mean) == (1, 2, 50.0)
    assert (ninety.seeds, ninety.epochs.mean) == (0, None)


def test_the_test_accuracy_at_the_best_validation_epoch_within_the_budget(tmp_path):
    fabricate(tmp_path, 0, 30)
    (row,) = rows(tmp_path)
    assert row.best_within_budget.mean == pytest.approx(30.0)


def test_each_reading_is_its_own_row_and_diverged_seeds_are_counted(tmp_path):
    fabricate(tmp_path, 0, 30)
    fabricate(tmp_path, 0, 12, diverged=True, input_scaling="standardize")
    unit, standardized = rows(tmp_path)
    assert unit.key.extras == (("input_scaling", "unit"),) and unit.diverged == 0
    assert standardized.key.extras == (("input_scaling", "standardize"),) and standardized.diverged == 1


def test_a_row_table_1_lacks_has_no_paper_milestones(tmp_path):
    fabricate(tmp_path, 0, 30, lr=0.3)
    (row,) = rows(tmp_path)
    assert row.paper is None and row.implied_best_epoch is None and row.reached == ()


def test_cli_writes_markdown_and_refuses_a_folder_without_finished_runs(tmp_path):
    fabricate(tmp_path / "runs", 0, 30)
    result = CliRunner().invoke(app, ["milestones", str(tmp_path / "runs"), "--format", "markdown"])
    assert result.exit_code == 0, result.output
    assert "| MNIST | Q-AGREL | Conv | 21632-5408-500 |" in result.stdout
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["milestones", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "no finished runs" in result.output


def test_at_epochs_gives_the_test_accuracy_there_over_the_seeds_whose_logs_reach_it(tmp_path):
    fabricate(tmp_path, 0, 30)
    fabricate(tmp_path, 1, 30, offset=0.02)
    fabricate(tmp_path, 2, 8)
    (row,) = milestone_rows(read_results(tmp_path), at_epochs=[5, 10])
    (five, at_five), (ten, at_ten) = row.at_epochs
    assert (five, at_five.mean, at_five.n) == (5, pytest.approx(5 + 2 / 3), 3)
    assert (ten, at_ten.mean, at_ten.n) == (10, pytest.approx(11.0), 2)


def test_cli_at_epochs_adds_a_column_per_epoch_and_refuses_a_bad_list(tmp_path):
    fabricate(tmp_path, 0, 30)
    result = CliRunner().invoke(app, ["milestones", str(tmp_path), "--at-epochs", "10,30", "--format", "csv"])
    header = result.output.splitlines()[0]
    assert "Test acc. at epoch 10 [%]" in header and "Test acc. at epoch 30 [%]" in header
    bad = CliRunner().invoke(app, ["milestones", str(tmp_path), "--at-epochs", "0,x"])
    assert bad.exit_code == 2 and "--at-epochs" in bad.output
