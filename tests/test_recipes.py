"""Recipes and the training choices of the authors' later code: expansion, overrides, run ids, schedule, stopping."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from qagrel_cli.cli import app
from qagrel_cli.core import run_folder
from qagrel_cli.core.config import QagrelError, TrainConfig
from qagrel_cli.core.recipes import recipe_label, recipe_options, with_recipe
from qagrel_cli.core.stopping import RunProgress, note_validation, replay
from qagrel_cli.reports.table import build_table
from qagrel_cli.sweeps.results import read_results
from qagrel_cli.sweeps.sweep_file import parse_sweep

RESULTS = Path(__file__).resolve().parents[1] / "results"
BRAINPROP_CONV = {"batch_norm": True, "conv_dropout": 0.3, "padding": "same", "init": "normal", "batch_size": 128,
                  "lr": 0.1, "lr_halve_every": 100, "patience": 45, "min_delta": 0.001, "validation": "test"}


def test_brainprop_expands_to_the_documented_values_for_a_conv_net():
    config = TrainConfig.from_dict(with_recipe({"recipe": "brainprop", "dataset": "cifar10", "rule": "bp"}))
    assert {name: config.to_dict()[name] for name in BRAINPROP_CONV} == BRAINPROP_CONV
    assert config.init_sd == 0.005 and config.optimizer.value == "sgd"


def test_brainprop_keeps_valid_padding_and_batch_32_for_loccon_as_the_authors_code_does():
    assert recipe_options("brainprop", "loccon") == {**BRAINPROP_CONV, "padding": "valid", "batch_size": 32}


def test_brainprop_for_a_fully_connected_net_sets_only_what_such_a_net_has():
    config = TrainConfig.from_dict(with_recipe({"recipe": "brainprop", "arch": "fc"}))
    assert (config.init_sd, config.batch_size, config.lr, config.batch_norm) == (0.01, 128, 0.1, False)


def test_an_option_given_beside_a_recipe_overrides_it():
    config = TrainConfig.from_dict(with_recipe({"recipe": "brainprop", "batch_norm": False, "padding": "valid"}))
    assert (config.batch_norm, config.padding.value, config.conv_dropout) == (False, "valid", 0.3)


def test_the_paper_recipe_is_every_default_and_keeps_the_run_id():
    assert TrainConfig.from_dict(with_recipe({"recipe": "paper"})).run_id == TrainConfig().run_id


def test_defaults_of_the_new_options_keep_every_committed_run_id():
    # Every run committed under results/ was recorded before these options existed: its folder is its run id.
    folders = [p.parent for p in RESULTS.glob("*/*/_config.yaml")]
    assert len(folders) > 100
    for folder in folders:
        assert run_folder.read_config(folder).run_id == folder.name


def test_a_recipe_gives_the_same_run_as_its_values_spelled_out():
    spelled = TrainConfig(**BRAINPROP_CONV)
    assert TrainConfig.from_dict(with_recipe({"recipe": "brainprop"})).run_id == spelled.run_id


def test_an_unknown_recipe_is_refused_in_one_line():
    with pytest.raises(QagrelError, match="unknown recipe 'keras'; choose one of: paper, brainprop"):
        with_recipe({"recipe": "keras"})


def test_a_sweep_file_sweeps_over_recipes_and_overrides_them_per_include(tmp_path):
    sweep = parse_sweep("grid: {dataset: cifar10, recipe: [paper, brainprop]}\n"
                        "include:\n  - {recipe: brainprop, batch_norm: false}\n", tmp_path / "r.yaml")
    assert sorted((c.batch_norm, c.batch_size) for c in sweep.configs) == [(False, 100), (False, 128), (True, 128)]


def test_a_sweep_file_refuses_an_unknown_recipe_naming_file_and_key(tmp_path):
    with pytest.raises(QagrelError, match=r"r.yaml: grid.recipe: unknown recipe 'bp'"):
        parse_sweep("grid: {recipe: bp}\n", tmp_path / "r.yaml")


def test_alpha_halves_after_every_lr_halve_every_epochs():
    config = TrainConfig(lr=0.1, lr_halve_every=100)
    assert [config.lr_at(e) for e in (1, 100, 101, 200, 201)] == [0.1, 0.1, 0.05, 0.05, 0.025]
    assert TrainConfig(lr=0.1).lr_at(400) == 0.1


def test_min_delta_counts_an_epoch_as_better_only_when_it_beats_the_best_by_more():
    config, progress = TrainConfig(min_delta=0.001), RunProgress()
    for epoch, val in enumerate([0.9, 0.9005, 0.9011], 1):
        progress.epoch = epoch
        note_validation(config, progress, val, 0.5)
    assert (progress.best_epoch, progress.epochs_since_best) == (3, 0)
    assert progress.best_val_acc == 0.9011


def test_validation_test_stops_on_the_test_accuracy():
    log = pd.DataFrame({"epoch": [1, 2, 3], "val_acc": [0.9, 0.8, 0.7], "test_acc": [0.5, 0.6, 0.55],
                        "epoch_seconds": [1.0] * 3, "train_reward": [0.5] * 3})
    held_out = replay(log, TrainConfig(patience=1))
    test = replay(log, TrainConfig(patience=1, validation="test"))
    assert (held_out.progress.best_epoch, held_out.progress.epoch) == (1, 2)
    assert (test.progress.best_epoch, test.progress.test_acc_at_best, test.progress.epoch) == (2, 0.6, 3)


def recipe_config(**options) -> TrainConfig:
    return TrainConfig.from_dict(with_recipe({"dataset": "cifar10", "arch": "conv", **options}))


def test_a_run_is_labelled_with_the_recipe_it_departs_from_least():
    assert recipe_label(recipe_config()) == "paper"
    assert recipe_label(recipe_config(recipe="brainprop")) == "brainprop"
    # stopped on the held-out set as the paper stops: still the recipe, with that one departure named
    assert recipe_label(recipe_config(recipe="brainprop", validation="held-out", padding="valid")) == \
        "brainprop but padding valid, validation held-out"
    # one component alone is the paper's text with that departure named
    assert recipe_label(recipe_config(batch_norm=True)) == "paper but batch_norm True"


def test_train_recipe_option_shows_in_help_and_refuses_an_unknown_recipe():
    result = CliRunner().invoke(app, ["train", "--recipe", "keras"])
    assert result.exit_code == 2 and "keras" in result.output
    assert "brainprop" in CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output


# ------------------------------------------------------------- in reports

def fabricated_run(root: Path, seed: int = 0, **options) -> None:
    """A finished run folder of `options` (a recipe may be among them) with 99 % test accuracy at epoch 40."""
    config = TrainConfig.from_dict(with_recipe({"dataset": "mnist", "arch": "conv", "seed": seed, **options}))
    folder = root / config.run_id
    run_folder.write_config(folder, config)
    run_folder.write_summary(folder, {
        "run_id": config.run_id, "status": "finished", "stop_epoch": 40, "best_epoch": 20, "best_val_acc": 0.99,
        "test_acc_at_best": 0.99, "test_acc_at_stop": 0.99, "num_classes": 10, "converged": True, "diverged": False,
        "config": config.to_dict()})


def test_the_table_names_each_rows_recipe_and_sets_a_recipe_row_beside_table_1(tmp_path):
    fabricated_run(tmp_path, recipe="brainprop", padding="valid")
    fabricated_run(tmp_path, recipe="brainprop", padding="valid", batch_norm=False)
    fabricated_run(tmp_path)
    table = build_table(read_results(tmp_path).runs, compare=True)
    by_recipe = {dict(row.key.extras)["recipe"]: row for row in table.rows}
    assert set(by_recipe) == {"paper", "brainprop but padding valid", "brainprop but batch_norm False, padding valid"}
    for row in table.rows:  # alpha 0.1, batch 128, patience 45: the recipe's readings, not departures
        assert row.paper is not None and row.paper.accuracy.mean == 99.17 and not row.differs


def test_a_table_with_a_recipe_column_names_the_recipes_settings_in_it_not_in_columns_of_their_own(tmp_path):
    fabricated_run(tmp_path, recipe="brainprop", padding="valid")
    fabricated_run(tmp_path, recipe="brainprop", padding="valid", batch_norm=False)
    fabricated_run(tmp_path, batch_norm=True)
    fabricated_run(tmp_path, optimizer="adam", rule="bp")
    table = build_table(read_results(tmp_path).runs, compare=True)
    columns = {name for row in table.rows for name, _ in row.key.extras}
    assert columns == {"recipe", "optimizer"}
    assert {dict(row.key.extras)["recipe"] for row in table.rows} == {
        "brainprop but padding valid", "brainprop but batch_norm False, padding valid", "paper but batch_norm True",
        "paper"}


def test_within_a_table_1_row_the_papers_recipe_comes_before_the_later_one_whatever_their_alphas(tmp_path):
    fabricated_run(tmp_path, recipe="brainprop", padding="valid")  # alpha 0.1
    fabricated_run(tmp_path, lr=0.01)  # the paper's recipe at an alpha below the later recipe's
    fabricated_run(tmp_path)  # alpha 1.0
    rows = build_table(read_results(tmp_path).runs, compare=True).rows
    assert [(dict(row.key.extras)["recipe"], row.key.lr) for row in rows] == [
        ("paper but lr 0.01", 0.01), ("paper", 1.0), ("brainprop but padding valid", 0.1)]


def test_a_same_padding_row_shows_its_own_hidden_units_and_is_set_beside_table_1s_network(tmp_path):
    fabricated_run(tmp_path, recipe="brainprop")
    (row,) = build_table(read_results(tmp_path).runs, compare=True).rows
    assert row.key.hidden_units == "25088-6272-500" and row.key.table1_units == "21632-5408-500"
    assert row.paper is not None and dict(row.key.extras)["recipe"] == "brainprop"


def test_a_run_at_another_alpha_without_the_recipe_is_still_not_set_beside_table_1(tmp_path):
    fabricated_run(tmp_path, lr=0.1)
    (row,) = build_table(read_results(tmp_path).runs, compare=True).rows
    assert row.paper is None and row.differs == ("α 1e-01 (paper 1e+00)",)
