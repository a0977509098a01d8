"""`qagrel table` and `qagrel status` on fabricated run folders with known numbers."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from qagrel_cli.core import run_folder as runs
from qagrel_cli.cli import app
from qagrel_cli.core.config import TrainConfig
from qagrel_cli.core.run_folder import try_lock
from qagrel_cli.sweeps.results import read_results
from qagrel_cli.sweeps.sweep_file import SWEEP_FILE
from qagrel_cli.reports.rows import format_alpha
from qagrel_cli.reports.status import in_progress_from_log
from qagrel_cli.reports.table import AccuracyAt, EpochsAt, build_table, paper_table
from qagrel_cli.reports.table_formats import TableFormat, render, to_csv, to_latex, to_markdown

runner = CliRunner()
MNIST_CONV = dict(dataset="mnist", arch="conv", fc="500")
HIDDEN = {"conv": "21632-5408-500", "fc": "1500-1000-500"}


def fabricate(root: Path, *, seed: int, stop_epoch: int = 10, best_epoch: int | None = None,
              test_acc_at_best: float = 0.9, test_acc_at_stop: float | None = None, best_val_acc: float = 0.9,
              diverged: bool = False, finished: bool = True, folder: str | None = None, **config) -> Path:
    """A run folder as training leaves it: config, (summary), with the given numbers."""
    cfg = TrainConfig.from_dict({**MNIST_CONV, "rule": "qagrel", **config, "seed": seed})
    run_dir = root / (folder or cfg.run_id)
    runs.write_config(run_dir, cfg)
    if finished:
        runs.write_summary(run_dir, {
            "run_id": cfg.run_id, "status": "diverged" if diverged else "finished", "stop_epoch": stop_epoch,
            "best_epoch": best_epoch or stop_epoch, "best_val_acc": best_val_acc,
            "test_acc_at_best": test_acc_at_best,
            "test_acc_at_stop": test_acc_at_best if test_acc_at_stop is None else test_acc_at_stop,
            "hidden_units": HIDDEN[cfg.arch.value], "num_classes": 100 if cfg.dataset.value == "cifar100" else 10,
            "converged": True, "diverged": diverged, "config": cfg.to_dict()})
    return run_dir


def three_seeds(root: Path, **config) -> None:
    """Epochs 10/20/30 (mean 20, SD 10), accuracy 90/92/94 % (mean 92, SD 2)."""
    for seed, (epochs, acc) in enumerate([(10, 0.90), (20, 0.92), (30, 0.94)]):
        fabricate(root, seed=seed, stop_epoch=epochs, test_acc_at_best=acc, **config)


def table_of(root: Path, **options):
    return build_table(read_results(root).runs, source=str(root), **options)


# ------------------------------------------------------------- statistics

def test_row_mean_and_sample_sd_over_seeds(tmp_path):
    three_seeds(tmp_path)
    (row,) = table_of(tmp_path).rows
    assert (row.epochs.mean, row.epochs.sd) == pytest.approx((20.0, 10.0))
    assert (row.accuracy.mean, row.accuracy.sd) == pytest.approx((92.0, 2.0))
    assert (row.converged, row.finished, row.star) == (3, 3, False)


def test_rows_are_grouped_by_config_not_by_folder_name(tmp_path):
    for seed in range(3):
        fabricate(tmp_path / f"anywhere{seed}", seed=seed, folder="same-name")
    fabricate(tmp_path, seed=0, rule="bp")
    table = table_of(tmp_path)
    assert [(r.key.rule, r.key.hidden_units, r.key.lr, r.finished) for r in table.rows] == [
        ("qagrel", "21632-5408-500", 1.0, 3), ("bp", "21632-5408-500", 0.01, 1)]


def test_a_setting_that_differs_between_runs_splits_rows_and_becomes_a_column(tmp_path):
    fabricate(tmp_path, seed=0, epsilon=0.02)
    fabricate(tmp_path, seed=0, epsilon=0.1)
    table = table_of(tmp_path)
    assert table.extra_fields == ["epsilon"]
    assert [r.key.extras for r in table.rows] == [(("epsilon", 0.02),), (("epsilon", 0.1),)]


def test_star_and_stats_over_converged_seeds_when_one_seed_stays_at_chance(tmp_path):
    three_seeds(tmp_path)
    fabricate(tmp_path, seed=3, stop_epoch=500, test_acc_at_best=0.11, best_val_acc=0.12)
    (row,) = table_of(tmp_path).rows
    assert (row.converged, row.finished, row.star) == (3, 4, True)
    assert row.epochs.mean == pytest.approx(20.0)  # the seed at chance is not averaged in
    assert "92.00 (2.00)*" in to_markdown(table_of(tmp_path)).replace("\\*", "*")


def test_converged_is_recomputed_from_best_val_acc_at_the_chosen_threshold(tmp_path):
    fabricate(tmp_path, seed=0, best_val_acc=0.15)  # the stored flag says converged: it is not, at 2x chance
    assert table_of(tmp_path).rows[0].converged == 0
    assert table_of(tmp_path, converged_above=1.0).rows[0].converged == 1


def test_diverged_seed_never_counts_as_converged(tmp_path):
    three_seeds(tmp_path)
    fabricate(tmp_path, seed=3, diverged=True, best_val_acc=0.95)
    (row,) = table_of(tmp_path).rows
    assert (row.converged, row.finished) == (3, 4)


def test_epochs_best_and_accuracy_final_switch_the_columns(tmp_path):
    fabricate(tmp_path, seed=0, stop_epoch=30, best_epoch=10, test_acc_at_best=0.9, test_acc_at_stop=0.8)
    fabricate(tmp_path, seed=1, stop_epoch=40, best_epoch=20, test_acc_at_best=0.9, test_acc_at_stop=0.7)
    (row,) = table_of(tmp_path, epochs_at=EpochsAt.best, accuracy_at=AccuracyAt.final).rows
    assert row.epochs.mean == pytest.approx(15.0)
    assert row.accuracy.mean == pytest.approx(75.0)


def test_unfinished_runs_are_left_out_and_counted_in_a_note(tmp_path):
    three_seeds(tmp_path)
    fabricate(tmp_path, seed=7, finished=False)
    table = table_of(tmp_path)
    assert table.rows[0].finished == 3
    assert table.unfinished == 1
    assert any("1 unfinished run(s) left out" in note for note in table.notes())


def test_planned_runs_of_a_sweep_that_never_started_count_as_unfinished(tmp_path):
    three_seeds(tmp_path)
    (tmp_path / SWEEP_FILE).write_text("grid: {dataset: mnist, arch: conv, fc: '500'}\nseeds: 5\n")
    assert table_of(tmp_path).unfinished == 2  # seeds 3 and 4


def test_notes_define_converged_and_the_sample_sd(tmp_path):
    three_seeds(tmp_path)
    notes = " ".join(table_of(tmp_path, converged_above=3).notes())
    assert "sample standard deviation (ddof=1)" in notes
    assert "best validation accuracy >= 3x chance (30% with 10 classes)" in notes


# ------------------------------------------------------------------ paper

def test_paper_table_ships_with_the_package_and_has_table1s_26_rows():
    rows = paper_table()
    assert len(rows) == 26
    cifar100 = [r for r in rows if r.key.dataset == "cifar100" and r.seeds_converged < r.seeds]
    assert len(cifar100) == 2  # the two rows the paper marks with *


def test_compare_gives_the_difference_in_paper_sds(tmp_path):
    # Paper, MNIST Q-AGREL Conv 21632-5408-500: 44 (10) epochs, 99.17 (0.05) %.
    for seed, (epochs, acc) in enumerate([(50, 0.9907), (58, 0.9907)]):
        fabricate(tmp_path, seed=seed, stop_epoch=epochs, test_acc_at_best=acc)
    (row,) = table_of(tmp_path, compare=True).rows
    assert (row.paper.epochs.mean, row.paper.accuracy.sd) == (44.0, 0.05)
    assert row.epochs_diff == pytest.approx(1.0)  # (54 - 44) / 10
    assert row.accuracy_diff == pytest.approx(-2.0)  # (99.07 - 99.17) / 0.05


def test_compare_gives_qagrel_over_bp_epoch_ratios_ours_and_the_papers(tmp_path):
    three_seeds(tmp_path)  # Q-AGREL: 20 epochs
    for seed in range(2):
        fabricate(tmp_path, seed=seed, rule="bp", stop_epoch=8)
    (ratio,) = table_of(tmp_path, compare=True).ratios
    assert (ratio.dataset, ratio.arch, ratio.hidden_units) == ("mnist", "conv", ("21632-5408-500",))
    assert ratio.ours == pytest.approx(2.5)
    assert ratio.paper == pytest.approx(44 / 26)


def test_qagrel_gets_an_epoch_ratio_against_each_bp_optimizer(tmp_path):
    three_seeds(tmp_path)  # Q-AGREL: 20 epochs; its runs hold the default optimizer, which it does not read
    fabricate(tmp_path, seed=0, rule="bp", stop_epoch=8)
    fabricate(tmp_path, seed=0, rule="bp", optimizer="adam", stop_epoch=4)
    ratios = table_of(tmp_path, compare=True).ratios
    assert [(r.extras, r.ours) for r in ratios] == [((("optimizer", "sgd"),), pytest.approx(2.5)),
                                                    ((("optimizer", "adam"),), pytest.approx(5.0))]
    assert [r.paper for r in ratios] == [pytest.approx(44 / 26)] * 2


def test_a_row_under_a_non_literal_reading_shows_it_even_when_all_its_runs_share_it(tmp_path):
    three_seeds(tmp_path, rule="bp", optimizer="adam")
    table = table_of(tmp_path)
    assert table.extra_fields == ["optimizer"]
    assert table.rows[0].key.cells()[-1] == "adam"


def test_a_setting_that_is_the_same_for_every_run_gets_no_column(tmp_path):
    three_seeds(tmp_path, epsilon=0.1)  # not a protocol reading: the paper states no epsilon
    assert table_of(tmp_path).extra_fields == []


def test_a_setting_the_rule_does_not_read_shows_as_a_dash(tmp_path):
    three_seeds(tmp_path)
    fabricate(tmp_path, seed=0, rule="bp", optimizer="adam")
    fabricate(tmp_path, seed=0, rule="bp")
    table = table_of(tmp_path)
    assert table.extra_fields == ["optimizer"]
    assert [row.key.cells()[-1] for row in table.rows] == ["–", "sgd", "adam"]


def test_an_epoch_ratio_pairs_only_readings_that_agree_in_settings_both_rules_read(tmp_path):
    three_seeds(tmp_path)  # Q-AGREL, pixels in [0, 1]: 20 epochs
    fabricate(tmp_path, seed=0, stop_epoch=30, input_scaling="standardize")
    fabricate(tmp_path, seed=0, rule="bp", stop_epoch=10, input_scaling="standardize")
    (ratio,) = table_of(tmp_path, compare=True).ratios
    assert (ratio.extras, ratio.ours) == ((("input_scaling", "standardize"),), pytest.approx(3.0))


def test_a_row_with_another_learning_rate_has_no_paper_values(tmp_path):
    fabricate(tmp_path, seed=0, lr=0.3)
    assert table_of(tmp_path, compare=True).rows[0].paper is None


def test_alpha_is_printed_like_the_paper():
    assert [format_alpha(x) for x in (0.5, 1.0, 0.01, 0.001, 0.0015)] == ["5e-01", "1e+00", "1e-02", "1e-03", "0.0015"]


# ---------------------------------------------------------------- formats

@pytest.fixture
def two_rows(tmp_path):
    three_seeds(tmp_path)
    for seed in range(2):
        fabricate(tmp_path, seed=seed, rule="bp", stop_epoch=8, test_acc_at_best=0.95)
    fabricate(tmp_path, seed=0, arch="fc", fc=None, rule="bp", stop_epoch=90, test_acc_at_best=0.98)
    return table_of(tmp_path, compare=True)


def test_markdown_has_the_papers_columns_and_rows(two_rows):
    text = to_markdown(two_rows)
    assert ("| Dataset | Rule | 1st layer | Hidden units | α | Epochs [#] | Paper | Δ [SD] | Accuracy [%] | Paper "
            "| Δ [SD] | Seeds |") in text
    assert ("| MNIST | Q-AGREL | Conv | 21632-5408-500 | 1e+00 | 20 (10) | 44 (10) | -2.4 | 92.00 (2.00) "
            "| 99.17 (0.05) | -143.4 | 3/3 |") in text
    assert "| MNIST | Error-BP | Full | 1500-1000-500 | 1e-01 | 90 (–) | 92 (11) | -0.2 | 98.00 (–) |" in text
    lines = [line for line in text.splitlines() if "| Q-AGREL |" in line or "| Error-BP |" in line]
    assert [line.split(" | ")[2] for line in lines] == ["Full", "Conv", "Conv"]  # Table 1's order


def test_csv_parses_with_the_papers_column_names(two_rows):
    rows = list(csv.DictReader(io.StringIO(to_csv(two_rows))))
    qagrel = next(r for r in rows if r["rule"] == "qagrel")
    assert {k: qagrel[k] for k in ("dataset", "first_layer", "hidden_units", "lr", "epochs_mean", "epochs_sd",
                                   "accuracy_mean", "accuracy_sd", "seeds_converged", "seeds")} == {
        "dataset": "mnist", "first_layer": "conv", "hidden_units": "21632-5408-500", "lr": "1",
        "epochs_mean": "20", "epochs_sd": "10", "accuracy_mean": "92", "accuracy_sd": "2",
        "seeds_converged": "3", "seeds": "3"}
    assert float(qagrel["epochs_diff_sd"]) == pytest.approx(-2.4)


def test_latex_is_booktabs_grouped_by_dataset(two_rows):
    text = to_latex(two_rows)
    for piece in (r"\toprule", r"\bottomrule", r"\multirow{3}{*}{\rotatebox[origin=c]{90}{MNIST}}",
                  r"Accuracy [\%]", r"$\alpha$", "20 (10) & 44 (10) & -2.4 & 92.00 (2.00)", r"$\Delta$ [SD]"):
        assert piece in text
    assert text.count(r"\begin{tabular}") == text.count(r"\end{tabular}") == 2  # the table and the ratios


def test_rich_rendering_holds_the_cells_and_notes(two_rows):
    text = render(two_rows, TableFormat.rich, width=250)
    assert "20 (10)" in text and "92.00 (2.00)" in text and "Q-AGREL / Error-BP epochs" in text
    assert "sample standard deviation" in text


# -------------------------------------------------------------------- CLI

def test_cli_table_csv_goes_to_stdout(tmp_path):
    three_seeds(tmp_path)
    result = runner.invoke(app, ["table", str(tmp_path), "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1].startswith("mnist,qagrel,conv,21632-5408-500,1,20,10,92,2,3,3")


def test_cli_table_out_writes_the_file(tmp_path):
    three_seeds(tmp_path / "runs")
    out = tmp_path / "table.tex"
    result = runner.invoke(app, ["table", str(tmp_path / "runs"), "--format", "latex", "--compare", "paper",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert r"\toprule" in out.read_text()


def test_cli_table_without_finished_runs_is_a_one_line_error(tmp_path):
    fabricate(tmp_path, seed=0, finished=False)
    result = runner.invoke(app, ["table", str(tmp_path)])
    assert result.exit_code == 2
    assert "no finished runs yet (1 unfinished)" in result.output
    assert "Traceback" not in result.output


def fabricate_logged(root: Path, seed: int, val_acc: list[float], test_acc: list[float] | None = None,
                     **config) -> Path:
    """A finished run whose log holds these validation accuracies (and test accuracies, by default 1/10 of
    each), its summary what training with the config's patience left."""
    last = len(val_acc)
    best = val_acc.index(max(val_acc)) + 1
    test_acc = test_acc or [v / 10 for v in val_acc]
    run_dir = fabricate(root, seed=seed, stop_epoch=last, best_epoch=best, best_val_acc=max(val_acc),
                        test_acc_at_best=test_acc[best - 1], test_acc_at_stop=test_acc[-1], **config)
    runs.write_log(run_dir, pd.DataFrame({"epoch": range(1, last + 1), "train_reward": 0.5, "train_loss": 0.1,
                                          "val_acc": val_acc, "test_acc": test_acc,
                                          "epoch_seconds": 1.0, "samples_per_second": 1.0, "lr": 1.0}))
    return run_dir


def test_patience_reads_each_run_as_if_it_had_stopped_that_many_epochs_after_its_best(tmp_path):
    fabricate_logged(tmp_path, 0, [0.5, 0.6, 0.55, 0.55, 0.7, 0.65, 0.65, 0.65, 0.65], patience=4)
    fabricate_logged(tmp_path, 1, [0.5, 0.8, 0.7, 0.7, 0.7, 0.7], patience=4)
    (row,) = table_of(tmp_path, patience=2).rows
    assert row.epochs.mean == pytest.approx((4 + 4) / 2)  # both stop 2 epochs after a best at epoch 2
    assert row.accuracy.mean == pytest.approx(100 * (0.06 + 0.08) / 2)
    (own,) = table_of(tmp_path).rows
    assert own.epochs.mean == pytest.approx((9 + 6) / 2) and own.accuracy.mean == pytest.approx(100 * 0.075)


def test_a_run_read_with_a_shorter_patience_joins_the_row_trained_with_that_patience(tmp_path):
    fabricate_logged(tmp_path, 0, [0.5, 0.6, 0.55, 0.55], patience=2)
    fabricate_logged(tmp_path, 1, [0.5, 0.6, 0.55, 0.55, 0.55, 0.55], patience=4)
    assert [r.finished for r in table_of(tmp_path).rows] == [1, 1]  # two patiences, two rows
    (row,) = table_of(tmp_path, patience=2).rows
    assert (row.finished, row.epochs.mean) == (2, 4.0)


def test_cli_table_patience_says_it_replayed_early_stopping(tmp_path):
    fabricate_logged(tmp_path, 0, [0.5, 0.6, 0.55, 0.55], patience=2)
    result = runner.invoke(app, ["table", str(tmp_path), "--patience", "1", "--format", "markdown"])
    assert result.exit_code == 0, result.output
    assert "| 3 (–) | 6.00 (–) |" in result.stdout
    assert "Early stopping replayed from each run's log with patience 1" in result.stdout


def test_max_epochs_reads_each_run_as_if_it_had_been_capped_there(tmp_path):
    fabricate_logged(tmp_path, 0, [0.5, 0.6, 0.55, 0.7, 0.65], patience=4)
    fabricate_logged(tmp_path, 1, [0.5, 0.4, 0.8, 0.7, 0.7, 0.7], patience=4)
    (row,) = table_of(tmp_path, max_epochs=3).rows
    assert row.epochs.mean == 3.0 and row.accuracy.mean == pytest.approx(100 * (0.06 + 0.08) / 2)


def test_a_run_read_with_a_lower_epoch_cap_joins_the_row_trained_with_that_cap(tmp_path):
    fabricate_logged(tmp_path, 0, [0.5, 0.6, 0.55], max_epochs=3)
    fabricate_logged(tmp_path, 1, [0.5, 0.6, 0.55, 0.7], max_epochs=10)
    (row,) = table_of(tmp_path, max_epochs=3).rows
    assert (row.finished, row.epochs.mean, row.accuracy.mean) == (2, 3.0, pytest.approx(6.0))


def test_cli_table_max_epochs_says_it_replayed_early_stopping_with_that_cap(tmp_path):
    fabricate_logged(tmp_path, 0, [0.5, 0.6, 0.55, 0.7], patience=2)
    result = runner.invoke(app, ["table", str(tmp_path), "--patience", "1", "--max-epochs", "2",
                                 "--format", "markdown"])
    assert result.exit_code == 0, result.output
    assert "| 2 (–) | 6.00 (–) |" in result.stdout
    assert "Early stopping replayed from each run's log with patience 1 and at most 2 epochs" in result.stdout


def test_accuracy_peak_is_the_highest_test_accuracy_of_any_epoch_of_the_run(tmp_path):
    fabricate_logged(tmp_path, 0, [0.5, 0.6, 0.55, 0.55], test_acc=[0.50, 0.58, 0.61, 0.57], patience=2)
    fabricate_logged(tmp_path, 1, [0.5, 0.6, 0.55, 0.55], test_acc=[0.50, 0.63, 0.59, 0.60], patience=2)
    (row,) = table_of(tmp_path, accuracy_at=AccuracyAt.peak).rows
    assert row.accuracy.mean == pytest.approx(100 * (0.61 + 0.63) / 2)
    (at_best,) = table_of(tmp_path).rows
    assert at_best.accuracy.mean == pytest.approx(100 * (0.58 + 0.63) / 2)


def test_accuracy_peak_under_a_shorter_patience_looks_only_up_to_the_replayed_stop(tmp_path):
    fabricate_logged(tmp_path, 0, [0.5, 0.6, 0.55, 0.55], test_acc=[0.50, 0.58, 0.57, 0.61], patience=2)
    (row,) = table_of(tmp_path, accuracy_at=AccuracyAt.peak, patience=1).rows  # stops at epoch 3
    assert row.accuracy.mean == pytest.approx(58.0)


def test_accuracy_peak_reads_an_epoch_logged_twice_as_its_last_row(tmp_path):
    run_dir = fabricate(tmp_path, seed=0, stop_epoch=3, best_epoch=2)
    runs.write_log(run_dir, pd.DataFrame({"epoch": [1, 2, 2, 3], "val_acc": [0.5, 0.6, 0.6, 0.55],
                                          "test_acc": [0.50, 0.70, 0.58, 0.56]}))
    (row,) = table_of(tmp_path, accuracy_at=AccuracyAt.peak).rows
    assert row.accuracy.mean == pytest.approx(58.0)


def test_cli_table_accuracy_peak_says_the_accuracy_was_chosen_on_the_test_set(tmp_path):
    fabricate_logged(tmp_path, 0, [0.5, 0.6, 0.55, 0.55], test_acc=[0.50, 0.58, 0.61, 0.57], patience=2)
    result = runner.invoke(app, ["table", str(tmp_path), "--accuracy", "peak", "--format", "markdown"])
    assert result.exit_code == 0, result.output
    assert "| 61.00 (–) |" in result.stdout
    assert "Accuracy: the highest test accuracy of any epoch up to the stop (chosen on the test set" in result.stdout


def test_cli_table_accuracy_peak_of_a_run_whose_log_is_damaged_is_a_one_line_error(tmp_path):
    run_dir = fabricate_logged(tmp_path, 0, [0.5, 0.6, 0.55, 0.55], patience=2)
    (run_dir / runs.LOG_FILE).write_bytes(b"not parquet")
    result = runner.invoke(app, ["table", str(tmp_path), "--accuracy", "peak"])
    assert result.exit_code == 2
    assert f"{run_dir}: its log cannot be read, so its peak test accuracy cannot be found" in result.output
    assert "Traceback" not in result.output


def test_cli_table_patience_longer_than_a_run_trained_with_is_a_one_line_error(tmp_path):
    run_dir = fabricate_logged(tmp_path, 0, [0.5, 0.6, 0.55, 0.55], patience=2)
    result = runner.invoke(app, ["table", str(tmp_path), "--patience", "3"])
    assert result.exit_code == 2
    assert f"{run_dir.name} trained with patience 2; its log cannot show patience 3" in result.output
    assert "Traceback" not in result.output


def test_cli_status_counts_each_state_per_row(tmp_path):
    fabricate(tmp_path, seed=0)  # done
    failed = fabricate(tmp_path, seed=1, finished=False)
    runs.atomic_write_text(failed / runs.ERROR_FILE, "Traceback ...\nRuntimeError: out of memory\n")
    partial = fabricate(tmp_path, seed=2, finished=False)
    runs.atomic_write_text(partial / runs.LOG_FILE, "")  # any epoch log makes it partial
    running = fabricate(tmp_path, seed=3, finished=False)
    fd = try_lock(running)  # this test process plays the live sweep that holds it
    try:
        result = runner.invoke(app, ["status", str(tmp_path)], env={"COLUMNS": "200"})
    finally:
        os.close(fd)
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "Q-AGREL" in line)
    # done, running, failed, damaged, pending, total
    assert [c.strip() for c in row.split("│")[-7:-1]] == ["1", "1", "1", "0", "1", "4"]
    assert "RuntimeError: out of memory" in result.output


def test_cli_status_counts_planned_runs_that_never_started_as_pending(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / SWEEP_FILE).write_text(json.dumps({"grid": {"rule": ["qagrel", "bp"]}, "seeds": 3}))
    result = runner.invoke(app, ["status", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    total = next(line for line in result.stdout.splitlines() if "total" in line and "│" in line)
    assert [c.strip() for c in total.split("│")[-6:-1]] == ["0", "0", "0", "6", "6"]


def test_cli_status_times_gives_the_done_runs_training_time_per_epoch_per_run_and_in_all(tmp_path):
    for seed, (seconds, epochs) in enumerate([(600.0, 10), (1200.0, 30)]):
        run_dir = fabricate(tmp_path, seed=seed, stop_epoch=epochs)
        runs.write_summary(run_dir, {**runs.read_summary(run_dir), "wall_seconds": seconds})
    fabricate(tmp_path, seed=2, finished=False)  # not done: no time of its own
    result = runner.invoke(app, ["status", str(tmp_path), "--times"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "Q-AGREL" in line)
    # 1800 s over 40 epochs; no logged epochs to take a median of; 2 runs; in all
    assert [c.strip() for c in row.split("│")[-5:-1]] == ["45.0 s", "–", "15.0 min", "30.0 min"]


def test_cli_status_times_gives_the_median_epoch_which_a_paused_epoch_does_not_move(tmp_path):
    for seed, epoch_seconds in enumerate([[20.0, 21.0, 3600.0], [22.0, 19.0, 20.5]]):  # seed 0 paused an hour
        run_dir = fabricate_logged(tmp_path, seed, [0.5, 0.6, 0.7])
        log = runs.read_log(run_dir)
        runs.write_log(run_dir, log.assign(epoch_seconds=epoch_seconds))
        runs.write_summary(run_dir, {**runs.read_summary(run_dir), "wall_seconds": sum(epoch_seconds)})
    result = runner.invoke(app, ["status", str(tmp_path), "--times"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "Q-AGREL" in line)
    # the mean epoch carries the pause (3702.5 s / 6); the median of 19, 20, 20.5, 21, 22, 3600 does not
    assert [c.strip() for c in row.split("│")[-5:-3]] == ["10.3 min", "20.8 s"]


def test_cli_status_times_names_the_machines_the_times_were_measured_on(tmp_path):
    for seed, device in enumerate(["cpu (AMD EPYC, AVX2, 1 thread)", "cpu (AMD EPYC, AVX512, 1 thread)",
                                   "cpu (AMD EPYC, AVX2, 1 thread)"]):
        run_dir = fabricate(tmp_path, seed=seed)
        runs.write_summary(run_dir, {**runs.read_summary(run_dir), "device": device, "wall_seconds": 60.0})
    result = runner.invoke(app, ["status", str(tmp_path), "--times"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert ("times measured on cpu (AMD EPYC, AVX2, 1 thread): 2 runs; cpu (AMD EPYC, AVX512, 1 thread): 1 run"
            in " ".join(result.stdout.split()))


def test_cli_status_shows_no_times_unless_asked(tmp_path):
    fabricate(tmp_path, seed=0)
    result = runner.invoke(app, ["status", str(tmp_path)], env={"COLUMNS": "250"})
    header = next(line for line in result.stdout.splitlines() if "Dataset" in line)
    assert header.split("┃")[-2].strip() == "total"


def test_cli_status_as_markdown_gives_each_row_its_counts_and_times_and_the_total_in_bold(tmp_path):
    for seed, (seconds, epochs) in enumerate([(600.0, 10), (1200.0, 30)]):
        run_dir = fabricate(tmp_path, seed=seed, stop_epoch=epochs)
        runs.write_summary(run_dir, {**runs.read_summary(run_dir), "wall_seconds": seconds,
                                     "device": "cpu (AMD EPYC, AVX2, 1 thread)"})
    fabricate(tmp_path, seed=2, finished=False)
    result = runner.invoke(app, ["status", str(tmp_path), "--times", "--format", "markdown"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    row = next(line for line in lines if line.startswith("| MNIST | Q-AGREL |"))
    # done, running, failed, damaged, pending, total, then the two done runs' 1800 s over 40 epochs
    assert row.split(" | ")[-10:] == ["2", "0", "0", "0", "1", "3", "45.0 s", "–", "15.0 min", "30.0 min |"]
    assert next(line for line in lines if line.startswith("| **total** |")).endswith(
        "| **2** | **0** | **0** | **0** | **1** | **3** | **45.0 s** | **–** | **15.0 min** | **30.0 min** |")
    assert "- times measured on cpu (AMD EPYC, AVX2, 1 thread): 2 runs." in lines


def test_cli_status_as_markdown_lists_the_runs_in_progress_and_the_failures(tmp_path):
    fabricate_partial(tmp_path, [0.5, 0.7, 0.9, 0.8, 0.9, 0.6], [60.0] * 6, patience=20)
    failed = fabricate(tmp_path, seed=1, finished=False)
    runs.atomic_write_text(failed / runs.ERROR_FILE, "Traceback ...\nRuntimeError: out of memory\n")
    result = runner.invoke(app, ["status", str(tmp_path), "--format", "markdown"])
    assert result.exit_code == 0, result.output
    assert "| partial | 6 | 90.00% (epoch 3) | 3/20 | 60.0 s | 17 epochs (17.0 min) |" in result.stdout
    assert f"- failed {failed}: RuntimeError: out of memory" in result.stdout.splitlines()
    assert "│" not in result.stdout  # no terminal box drawing in markdown


def fabricate_partial(root: Path, val_acc: list[float], epoch_seconds: list[float], **config) -> Path:
    """An unfinished run whose log holds one row per epoch with these validation accuracies and times."""
    run_dir = fabricate(root, seed=0, finished=False, **config)
    epochs = range(1, len(val_acc) + 1)
    runs.write_log(run_dir, pd.DataFrame({"epoch": epochs, "train_reward": 0.5, "train_loss": 0.1, "val_acc": val_acc,
                                          "test_acc": val_acc, "epoch_seconds": epoch_seconds,
                                          "samples_per_second": 1.0, "lr": 1.0}))
    return run_dir


def test_an_unfinished_run_stands_at_its_first_best_epoch_and_patience_bounds_the_epochs_left(tmp_path):
    run_dir = fabricate_partial(tmp_path, [0.5, 0.7, 0.9, 0.8, 0.9, 0.6], [10.0, 10.0, 30.0, 20.0, 40.0, 50.0],
                                patience=20)
    where = in_progress_from_log(run_dir, runs.read_config(run_dir))
    assert (where.epoch, where.best_val_acc, where.best_epoch, where.since_best) == (6, 0.9, 3, 3)
    assert where.epochs_left_at_least == 17 and where.seconds_per_epoch == 30.0  # median of the last 5
    assert where.seconds_left_at_least == 17 * 30.0


def test_the_epoch_cap_bounds_the_epochs_left_when_it_comes_before_patience(tmp_path):
    run_dir = fabricate_partial(tmp_path, [0.5, 0.7, 0.9], [1.0, 1.0, 1.0], patience=20, max_epochs=5)
    assert in_progress_from_log(run_dir, runs.read_config(run_dir)).epochs_left_at_least == 2


def test_cli_status_lists_each_run_in_progress_with_where_it_stands(tmp_path):
    fabricate(tmp_path, seed=1)  # done: not listed
    partial = fabricate_partial(tmp_path, [0.5, 0.7, 0.9, 0.8, 0.9, 0.6], [60.0] * 6, patience=20)
    fresh = fabricate(tmp_path, seed=2, finished=False)
    fd = try_lock(fresh)  # this test process plays the sweep that is training its first epoch
    try:
        result = runner.invoke(app, ["status", str(tmp_path)], env={"COLUMNS": "250"})
    finally:
        os.close(fd)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    cells = lambda run_dir: [c.strip() for c in next(line for line in lines if run_dir.name in line).split("│")[1:-1]]
    assert cells(partial) == [partial.name, "partial", "6", "90.00% (epoch 3)", "3/20", "60.0 s",
                              "17 epochs (17.0 min)"]
    assert cells(fresh) == [fresh.name, "running", "0", "–", "–", "–", "–"]
    assert "runs in progress" in result.stdout


def test_cli_status_of_a_missing_folder_is_a_one_line_error(tmp_path):
    result = runner.invoke(app, ["status", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "no such results folder" in result.output


def test_a_reading_that_differs_within_a_row_splits_it_into_labelled_lines(tmp_path):
    three_seeds(tmp_path)
    for seed in range(2):
        fabricate(tmp_path, seed=seed, input_scaling="standardize", test_acc_at_best=0.5)
    table = table_of(tmp_path)
    assert table.extra_fields == ["input_scaling"]
    assert [(r.key.extras, r.finished) for r in table.rows] == [((("input_scaling", "unit"),), 3),
                                                                 ((("input_scaling", "standardize"),), 2)]
    assert "input scaling" in render(table, TableFormat.markdown)


def test_a_row_s_lines_follow_the_setting_s_declared_order_the_paper_s_first(tmp_path):
    for feedback in ("fixed", "random", "symmetric"):
        fabricate(tmp_path, seed=0, feedback=feedback)
    assert [r.key.extras for r in table_of(tmp_path).rows] == [(("feedback", "symmetric"),),
                                                                (("feedback", "random"),),
                                                                (("feedback", "fixed"),)]


def test_paper_columns_go_with_every_reading_of_a_comparable_row(tmp_path):
    for scaling in ("unit", "standardize"):
        for seed in range(2):
            fabricate(tmp_path, seed=seed, input_scaling=scaling)
    table = table_of(tmp_path, compare=True)
    assert [r.paper.accuracy.mean for r in table.rows] == [99.17, 99.17]


def test_an_init_range_that_follows_from_the_init_reading_gets_no_column_of_its_own(tmp_path):
    fabricate(tmp_path, seed=0)  # uniform: 0.02
    fabricate(tmp_path, seed=0, init="he")  # he: no range
    assert table_of(tmp_path).extra_fields == ["init"]
    fabricate(tmp_path, seed=0, init_range=0.1)  # a range chosen by hand is a setting
    assert table_of(tmp_path).extra_fields == ["init", "init_range"]


# ------------------------------------------------- the paper's protocol

def test_the_papers_protocol_is_section_3_with_table_1s_alpha():
    from qagrel_cli.reports.table import protocol_differences
    paper = TrainConfig(arch="fc", rule="bp", seed=7, device="cpu")
    assert (paper.train_size, paper.val_size, paper.batch_size, paper.patience, paper.max_epochs, paper.epsilon,
            paper.feedback.value, paper.lr, paper.init_range) == (None, 1000, 100, 20, 500, 0.02, "symmetric", 0.1,
                                                                 0.05)
    assert protocol_differences(paper) == []
    assert protocol_differences(TrainConfig(arch="fc", rule="bp", lr=0.3, max_epochs=4, train_size=5000)) == [
        "α 3e-01 (paper 1e-01)", "max_epochs 4 (paper 500)", "train_size 5000 (paper all)"]


@pytest.mark.parametrize("setting", [{"train_size": 5000}, {"max_epochs": 4}, {"val_size": 500}, {"batch_size": 10},
                                     {"patience": 2}, {"epsilon": 0.1}, {"feedback": "fixed"}, {"init_range": 0.1}])
def test_compare_gives_no_paper_values_to_a_row_off_the_papers_protocol(tmp_path, setting):
    three_seeds(tmp_path, **setting)
    table = table_of(tmp_path, compare=True)
    (row,) = table.rows
    (name,) = setting
    assert row.paper is None and row.differs and row.differs[0].startswith(f"{name} ")
    (note,) = [n for n in table.notes() if n.startswith("No paper values")]
    assert "MNIST Q-AGREL Conv 21632-5408-500 α 1e+00 (not the paper's protocol)" in note
    assert row.differs[0] in note
    line = next(line for line in to_markdown(table).splitlines() if "| Q-AGREL |" in line)
    assert line.split(" | ")[6:8] == ["–", "–"]  # the paper's epochs and their difference


def test_a_note_counts_the_rows_it_keeps_from_the_paper_where_naming_them_would_outgrow_the_table(tmp_path):
    for dropout in (0.2, 0.3, 0.5, 0.8):  # an open reading: four rows the paper's values would otherwise meet
        three_seeds(tmp_path, max_epochs=4, conv_dropout=dropout)
    table = table_of(tmp_path, compare=True)
    assert [n for n in table.notes() if n.startswith("No paper values")] == [
        "No paper values for 4 rows (not the paper's protocol): max_epochs 4 (paper 500)."]


@pytest.mark.parametrize("reading", [{"input_scaling": "standardize"}, {"init": "he"},
                                     {"rule": "bp", "optimizer": "adam"}, {"conv_dropout": 0.2}])
def test_the_open_readings_of_the_paper_stay_comparable_with_it(tmp_path, reading):
    three_seeds(tmp_path, **reading)
    (row,) = table_of(tmp_path, compare=True).rows
    assert row.paper is not None and row.differs == ()


def test_the_papers_epoch_ratio_is_left_out_when_a_row_it_compares_is_off_protocol(tmp_path):
    three_seeds(tmp_path, max_epochs=30)
    for seed in range(2):
        fabricate(tmp_path, seed=seed, rule="bp", stop_epoch=8, max_epochs=30)
    (ratio,) = table_of(tmp_path, compare=True).ratios
    assert ratio.ours == pytest.approx(2.5) and ratio.paper is None


def test_csv_says_why_a_row_has_no_paper_values(tmp_path):
    three_seeds(tmp_path, train_size=5000)
    (row,) = csv.DictReader(io.StringIO(to_csv(table_of(tmp_path, compare=True))))
    assert row["paper_epochs_mean"] == "" and row["not_paper_protocol"] == "train_size 5000 (paper all)"
