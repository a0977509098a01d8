"""`qagrel plot`: Figure 3 and per-run figures from fabricated run folders with known curves.

Every curve is a straight line train_reward = a + b * epoch, stopped at a chosen epoch, so the
means, SDs and +/- 2 SD bands the CSV must hold are computed here independently with numpy.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from qagrel_cli.cli import app
from qagrel_cli.core.config import Arch, QagrelError, TrainConfig
from qagrel_cli.core.recipes import with_recipe
from qagrel_cli.reports.plot import BP_ANGLES, AfterStop, Metric, PlotFormat, aggregate, figure3_title, plot
from qagrel_cli.core.run_folder import read_log, write_config, write_log, write_summary

# (a, b, stop epoch) per seed: different slopes and different early-stopping epochs.
QAGREL_SEEDS = [(0.10, 0.050, 6), (0.20, 0.030, 9), (0.15, 0.040, 12)]
BP_SEEDS = [(0.30, 0.050, 5), (0.35, 0.040, 8)]
VAL_OFFSET, TEST_OFFSET = -0.02, -0.03  # val/test curves sit a known distance below the train curve


# ----------------------------------------------------------------- helpers

def make_run(root: Path, rule: str, seed: int, a: float, b: float, stop: int, *, dataset: str = "cifar10",
             arch: str = "conv", finished: bool = True, diverged: bool = False, **overrides) -> Path:
    """A run folder as training leaves it: _config.yaml, log.parquet (config columns on every row), _summary.json."""
    config = TrainConfig(dataset=dataset, arch=arch, rule=rule, seed=seed, **overrides)
    run_dir = root / config.run_id
    write_config(run_dir, config)
    epochs = np.arange(1, stop + 1)
    reward = a + b * epochs
    log = pd.DataFrame({"epoch": epochs, "train_reward": reward, "train_loss": 1 - reward,
                        "val_acc": reward + VAL_OFFSET, "test_acc": reward + TEST_OFFSET,
                        "epoch_seconds": 1.0, "samples_per_second": 1000.0, "lr": config.lr})
    for key, value in config.to_dict().items():
        if key not in ("lr", "fc"):
            log[key] = value
    log["fc"] = "-".join(map(str, config.fc))
    log["hidden_units"] = "28800-7200-" + log["fc"]
    log["run_id"] = config.run_id
    write_log(run_dir, log)
    if finished:
        write_summary(run_dir, {"run_id": config.run_id, "diverged": diverged, "stop_epoch": stop,
                                "best_epoch": stop, "status": "diverged" if diverged else "finished"})
    return run_dir


def make_sweep(root: Path, **kwargs) -> Path:
    for seed, (a, b, stop) in enumerate(QAGREL_SEEDS):
        make_run(root, "qagrel", seed, a, b, stop, **kwargs)
    for seed, (a, b, stop) in enumerate(BP_SEEDS):
        make_run(root, "bp", seed, a, b, stop, **kwargs)
    return root


def expected(seeds: list[tuple[float, float, int]], after_stop: str, offset: float = 0.0) -> dict[str, np.ndarray]:
    """The statistics of straight-line curves, independently of the code under test."""
    last = max(stop for _, _, stop in seeds)
    epochs = np.arange(1, last + 1)
    values = np.full((len(seeds), last), np.nan)
    for i, (a, b, stop) in enumerate(seeds):
        values[i, :stop] = a + b * epochs[:stop] + offset
        if after_stop == "hold":
            values[i, stop:] = values[i, stop - 1]
    n = np.sum(~np.isnan(values), axis=0)
    mean = np.nanmean(values, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.array([np.std(col[~np.isnan(col)], ddof=1) if k > 1 else np.nan for col, k in zip(values.T, n)])
    return {"epoch": epochs, "n": n, "mean": mean, "sd": sd, "lower": mean - 2 * sd, "upper": mean + 2 * sd}


def assert_csv_curve(table: pd.DataFrame, rule: str, want: dict[str, np.ndarray]) -> None:
    got = table[table["rule"] == rule].sort_values("epoch")
    np.testing.assert_array_equal(got["epoch"], want["epoch"])
    np.testing.assert_array_equal(got["n"], want["n"])
    for column in ("mean", "sd", "lower", "upper"):
        np.testing.assert_allclose(got[column], want[column], rtol=1e-9, atol=1e-12, equal_nan=True,
                                   err_msg=f"{rule} {column}")


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (after checking the signature)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


# ----------------------------------------------------------------- Figure 3

def test_figure3_writes_a_valid_png_of_sane_size(tmp_path):
    result = plot(make_sweep(tmp_path / "sweep"), tmp_path / "figs")
    assert result.figure == tmp_path / "figs" / "sweep_figure3.png"
    width, height = png_size(result.figure)
    assert 500 <= width <= 4000 and 400 <= height <= 4000
    assert result.figure.stat().st_size > 10_000


def test_hold_csv_holds_the_means_sds_and_bands_the_curves_imply(tmp_path):
    result = plot(make_sweep(tmp_path / "sweep"), tmp_path / "figs", after_stop=AfterStop.hold)
    table = pd.read_csv(result.csv)
    assert_csv_curve(table, "qagrel", expected(QAGREL_SEEDS, "hold"))
    assert_csv_curve(table, "bp", expected(BP_SEEDS, "hold"))


def test_drop_csv_holds_the_means_sds_and_bands_of_the_seeds_still_running(tmp_path):
    result = plot(make_sweep(tmp_path / "sweep"), tmp_path / "figs", after_stop=AfterStop.drop)
    table = pd.read_csv(result.csv)
    assert_csv_curve(table, "qagrel", expected(QAGREL_SEEDS, "drop"))
    assert_csv_curve(table, "bp", expected(BP_SEEDS, "drop"))
    assert result.figure.name == "sweep_figure3_drop.png"  # does not overwrite the hold figure


def test_metric_test_plots_test_accuracy(tmp_path):
    result = plot(make_sweep(tmp_path / "sweep"), tmp_path / "figs", metric=Metric.test)
    table = pd.read_csv(result.csv)
    assert_csv_curve(table, "qagrel", expected(QAGREL_SEEDS, "hold", offset=TEST_OFFSET))
    assert result.figure.name == "sweep_figure3_test.png"


def test_one_panel_per_dataset(tmp_path):
    root = make_sweep(tmp_path / "sweep", dataset="cifar10")
    make_sweep(root, dataset="cifar100")
    table = pd.read_csv(plot(root, tmp_path / "figs").csv)
    assert sorted(table["panel"].unique()) == ["cifar10-conv-500", "cifar100-conv-500"]
    assert_csv_curve(table[table["dataset"] == "cifar100"], "bp", expected(BP_SEEDS, "hold"))


def test_arch_option_keeps_only_the_chosen_architecture(tmp_path):
    root = make_sweep(tmp_path / "sweep", arch="conv")
    make_sweep(root, arch="loccon")
    table = pd.read_csv(plot(root, tmp_path / "figs", archs=[Arch.loccon]).csv)
    assert set(table["arch"]) == {"loccon"}


def test_runs_differing_in_more_than_the_seed_get_separate_curves(tmp_path):
    root = make_sweep(tmp_path / "sweep")
    make_run(root, "bp", 0, 0.5, 0.01, 4, lr=0.1)
    table = pd.read_csv(plot(root, tmp_path / "figs").csv)
    assert sorted(table.loc[table["rule"] == "bp", "variant"].unique()) == ["lr=0.001", "lr=0.1"]
    assert_csv_curve(table[table["variant"] == "lr=0.001"], "bp", expected(BP_SEEDS, "hold"))


def test_a_reading_keeps_its_label_in_every_panel_even_where_it_is_the_only_one(tmp_path):
    root = make_sweep(tmp_path / "sweep", dataset="cifar10")
    make_sweep(root, dataset="cifar100")
    make_run(root, "bp", 0, 0.5, 0.01, 4, optimizer="adam")  # CIFAR-10 only
    table = pd.read_csv(plot(root, tmp_path / "figs").csv)
    bp = table[table["rule"] == "bp"].drop_duplicates(["dataset", "variant"])
    assert bp[["dataset", "variant"]].values.tolist() == [  # the default (literal) reading first
        ["cifar10", "optimizer=sgd"], ["cifar10", "optimizer=adam"], ["cifar100", "optimizer=sgd"]]


def test_runs_of_another_padding_get_their_own_panel_named_for_their_hidden_units(tmp_path):
    root = make_sweep(tmp_path / "sweep")
    make_run(root, "bp", 0, 0.5, 0.01, 4, padding="same")
    table = pd.read_csv(plot(root, tmp_path / "figs").csv)
    same = table[table["panel"] == "cifar10-conv-500-same"]
    assert set(same["hidden_units"]) == {"32768-8192-500"} and set(same["rule"]) == {"bp"}
    assert set(table.loc[table["panel"] == "cifar10-conv-500", "hidden_units"]) == {"28800-7200-500"}


def test_a_recipe_run_s_curve_is_named_by_its_recipe_and_departures(tmp_path):
    recipe = with_recipe({"recipe": "brainprop"})
    make_run(tmp_path, "qagrel", 0, 0.2, 0.01, 4, **recipe)
    make_run(tmp_path, "qagrel", 0, 0.1, 0.01, 4, **{**recipe, "batch_norm": False})
    make_run(tmp_path, "qagrel", 0, 0.1, 0.01, 4, **{**recipe, "max_epochs": 30})
    table = pd.read_csv(plot(tmp_path, tmp_path / "figs").csv)
    assert sorted(table["variant"].unique()) == ["brainprop but batch_norm False, max_epochs=500",
                                                 "brainprop, max_epochs=30", "brainprop, max_epochs=500"]


def test_beside_a_recipe_run_a_run_of_the_papers_text_is_named_paper_not_by_every_setting_it_differs_in(tmp_path):
    recipe = with_recipe({"recipe": "brainprop", "padding": "valid"})
    make_run(tmp_path, "qagrel", 0, 0.2, 0.01, 4, **recipe)
    make_run(tmp_path, "qagrel", 0, 0.1, 0.01, 4)
    make_run(tmp_path, "qagrel", 1, 0.1, 0.01, 4, conv_dropout=0.5)
    table = pd.read_csv(plot(tmp_path, tmp_path / "figs").csv)
    assert sorted(table["variant"].unique()) == ["brainprop but padding valid", "paper",
                                                 "paper but conv_dropout 0.5"]


def test_recipe_runs_that_differ_only_in_padding_are_each_named_in_their_own_panel(tmp_path):
    recipe = with_recipe({"recipe": "brainprop"})
    make_run(tmp_path, "bp", 0, 0.2, 0.01, 4, **recipe)
    make_run(tmp_path, "bp", 0, 0.1, 0.01, 4, **{**recipe, "padding": "valid"})
    make_run(tmp_path, "bp", 0, 0.1, 0.01, 4, **{**recipe, "batch_norm": False})
    table = pd.read_csv(plot(tmp_path, tmp_path / "figs").csv)
    assert table.drop_duplicates("variant").set_index("variant")["panel"].to_dict() == {
        "brainprop": "cifar10-conv-500-same", "brainprop but batch_norm False": "cifar10-conv-500-same",
        "brainprop but padding valid": "cifar10-conv-500"}


def test_a_reading_both_rules_ran_has_one_label_though_only_one_rule_ran_others(tmp_path):
    recipe = with_recipe({"recipe": "brainprop"})
    make_run(tmp_path, "qagrel", 0, 0.2, 0.01, 4, **recipe)
    make_run(tmp_path, "qagrel", 0, 0.1, 0.01, 4, **{**recipe, "max_epochs": 30})
    make_run(tmp_path, "bp", 0, 0.3, 0.01, 4, **recipe)
    table = pd.read_csv(plot(tmp_path, tmp_path / "figs").csv)
    labels = table.drop_duplicates(["rule", "variant"]).groupby("rule")["variant"].apply(sorted).to_dict()
    assert labels == {"bp": ["brainprop, max_epochs=500"],
                      "qagrel": ["brainprop, max_epochs=30", "brainprop, max_epochs=500"]}


def test_an_init_range_that_follows_from_the_init_is_no_reading_of_its_own(tmp_path):
    root = make_sweep(tmp_path / "sweep")
    for seed, (a, b, stop) in enumerate(BP_SEEDS):
        make_run(root, "bp", seed, a + 0.1, b, stop, init="he")
    table = pd.read_csv(plot(root, tmp_path / "figs").csv)
    assert sorted(table.loc[table["rule"] == "bp", "variant"].unique()) == ["init=he", "init=uniform"]


def test_unfinished_and_diverged_runs_are_left_out_and_noted(tmp_path):
    root = make_sweep(tmp_path / "sweep")
    make_run(root, "qagrel", 7, 0.9, 0.0, 3, finished=False)
    make_run(root, "qagrel", 8, 0.9, 0.0, 3, diverged=True)
    result = plot(root, tmp_path / "figs")
    assert_csv_curve(pd.read_csv(result.csv), "qagrel", expected(QAGREL_SEEDS, "hold"))
    assert result.notes == ["1 unfinished run not shown.", "1 diverged run not shown."]


def test_a_filtered_figure_notes_only_the_left_out_runs_it_selects(tmp_path):
    root = make_sweep(tmp_path / "sweep", arch="conv")
    make_run(root, "qagrel", 7, 0.9, 0.0, 3, arch="conv", finished=False)
    make_run(root, "qagrel", 8, 0.9, 0.0, 3, arch="loccon", finished=False)
    make_run(root, "qagrel", 9, 0.9, 0.0, 3, arch="loccon", diverged=True)
    result = plot(root, tmp_path / "figs", archs=[Arch.conv])
    assert result.notes == ["1 unfinished run not shown."]


def test_a_filter_that_selects_only_unfinished_runs_is_an_error(tmp_path):
    root = make_sweep(tmp_path / "sweep", arch="conv")
    make_run(root, "qagrel", 8, 0.9, 0.0, 3, arch="loccon", finished=False)
    with pytest.raises(QagrelError, match="match the chosen"):
        plot(root, tmp_path / "figs", archs=[Arch.loccon])


def test_aggregate_band_is_empty_where_only_one_seed_remains():
    stats = aggregate([pd.Series([0.1, 0.2], index=[1, 2]), pd.Series([0.3], index=[1])], AfterStop.drop)
    assert stats["n"].tolist() == [2, 1]
    assert np.isnan(stats.loc[1, "sd"]) and np.isnan(stats.loc[1, "upper"]) and stats.loc[1, "mean"] == 0.2


# ----------------------------------------------------------------- one run

def test_one_run_folder_gives_its_learning_curves_with_the_best_val_epoch_marked(tmp_path):
    run_dir = make_run(tmp_path / "sweep", "qagrel", 0, 0.1, 0.05, 6)
    result = plot(run_dir, tmp_path / "figs")
    assert result.figure == tmp_path / "figs" / f"{run_dir.name}.png"
    png_size(result.figure)
    table = pd.read_csv(result.csv)
    assert table.columns.tolist() == ["epoch", "train_reward", "val_acc", "test_acc", "best_val"]
    np.testing.assert_allclose(table["val_acc"], 0.1 + 0.05 * np.arange(1, 7) + VAL_OFFSET)
    assert table.loc[table["best_val"], "epoch"].tolist() == [6]


# ----------------------------------------------------------------- formats

@pytest.mark.parametrize("suffix, magic", [(".pdf", b"%PDF"), (".svg", b"<svg")])
def test_out_file_extension_chooses_the_format(tmp_path, suffix, magic):
    out = tmp_path / f"fig3{suffix}"
    result = plot(make_sweep(tmp_path / "sweep"), out)
    assert result.figure == out and result.csv == out.with_suffix(".csv")
    assert magic in out.read_bytes()[:2000]


def test_format_option_writes_that_format_into_the_out_folder(tmp_path):
    result = plot(make_sweep(tmp_path / "sweep"), tmp_path / "figs", fmt=PlotFormat.svg)
    assert result.figure == tmp_path / "figs" / "sweep_figure3.svg"


# ----------------------------------------------------------------- the command line

def test_cli_writes_figure3_and_csv_beside_the_runs_by_default(tmp_path, monkeypatch):
    make_sweep(tmp_path / "smoke")
    monkeypatch.chdir(tmp_path)
    result = invoke("plot", "smoke")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "smoke" / "_figures" / "smoke_figure3.png").is_file()
    assert (tmp_path / "smoke" / "_figures" / "smoke_figure3.csv").is_file()


def test_cli_names_one_run_s_figure_after_its_run_id_beside_its_folder(tmp_path):
    run_dir = make_run(tmp_path, "qagrel", 0, 0.2, 0.01, 5)
    result = invoke("plot", run_dir, "--out", tmp_path / "figs")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "figs" / f"{run_dir.name}.png").is_file()
    assert invoke("plot", run_dir).exit_code == 0
    assert (tmp_path / "_figures" / f"{run_dir.name}.png").is_file()


def test_cli_error_for_a_path_that_does_not_exist(tmp_path):
    result = invoke("plot", tmp_path / "nope")
    assert result.exit_code == 2 and "does not exist" in result.output


def test_cli_error_for_a_folder_with_no_runs(tmp_path):
    result = invoke("plot", tmp_path)
    assert result.exit_code == 2 and "no runs in" in result.output


def test_a_folder_of_one_rules_runs_gets_their_curves(tmp_path):
    for seed, (a, b, stop) in enumerate(QAGREL_SEEDS):
        make_run(tmp_path, "qagrel", seed, a, b, stop)
    result = invoke("plot", tmp_path, "--out", tmp_path / "figs")
    assert result.exit_code == 0, result.output
    [figure] = (tmp_path / "figs").glob("*.png")
    table = pd.read_csv(figure.with_suffix(".csv"))
    assert set(table["rule"]) == {"qagrel"} and set(table["n"]) == {len(QAGREL_SEEDS)}
    assert table["epoch"].max() == max(stop for _, _, stop in QAGREL_SEEDS)


def test_figure3_of_q_agrel_and_error_bp_has_the_paper_s_title():
    assert figure3_title(["qagrel", "bp"], []) == "Q-AGREL (trial and error) vs error-backpropagation"


def test_figure3_of_more_rules_names_every_rule_it_draws():
    assert figure3_title(["qagrel", "bp", "fa", "dfa"], ["max_epochs"]) == "Q-AGREL, Error-BP, FA and DFA"


def test_figure3_of_one_rule_names_the_settings_its_curves_differ_in():
    assert figure3_title(["qagrel"], ["feedback"]) == "Q-AGREL by feedback"
    assert figure3_title(["bp"], []) == "Error-BP: learning curves"


def test_cli_error_for_an_out_file_of_an_unknown_format(tmp_path):
    result = invoke("plot", make_sweep(tmp_path / "sweep"), "--out", tmp_path / "fig.jpg")
    assert result.exit_code == 2 and ".png, .pdf or .svg" in result.output


def test_each_protocol_reading_gets_its_own_curve_and_runs_of_old_configs_count_as_the_default(tmp_path):
    root = make_sweep(tmp_path / "sweep")
    for seed, (a, b, stop) in enumerate(BP_SEEDS):
        make_run(root, "bp", seed, a + 0.1, b, stop, input_scaling="standardize")
    # A run folder written before the option existed: its config lacks the key.
    old = next(root.glob("*-qagrel-s0-*")) / "_config.yaml"
    old.write_text("".join(line for line in old.read_text().splitlines(True) if not line.startswith("input_scaling")))
    table = pd.read_csv(plot(root, tmp_path / "figs").csv)
    assert sorted(table.loc[table["rule"] == "bp", "variant"].unique()) == ["input_scaling=standardize",
                                                                            "input_scaling=unit"]
    # one Q-AGREL reading, one curve, named as Error-BP's curve of the same reading is
    assert set(table.loc[table["rule"] == "qagrel", "variant"]) == {"input_scaling=unit"}
    assert_csv_curve(table[table["variant"] == "input_scaling=unit"], "bp", expected(BP_SEEDS, "hold"))


# ----------------------------------------------------------------- --angles

# Per feedback mode, per seed: (start angle, change per epoch, stop epoch); layer n's angle is that line
# plus ANGLE_LAYER_STEP * n, so every (mode, layer) curve is known.
ANGLE_SEEDS = {"fixed": [(88.0, -1.5, 6), (90.0, -1.0, 8), (89.0, -2.0, 5)],
               "random": [(90.0, -4.0, 7), (91.0, -3.0, 4)]}
ANGLE_LAYER_STEP = 2.5
ANGLE_LAYERS = 4  # the fc network: three hidden layers and the output layer


def make_angle_run(root: Path, feedback: str, seed: int, start: float, slope: float, stop: int, **kwargs) -> Path:
    """A finished fc MNIST run whose log also holds angle_0..angle_3 = start + slope * epoch + step * layer."""
    run_dir = make_run(root, "qagrel", seed, 0.1, 0.05, stop, dataset="mnist", arch="fc", feedback=feedback, **kwargs)
    log = read_log(run_dir)
    for layer in range(ANGLE_LAYERS):
        log[f"angle_{layer}"] = start + slope * log["epoch"] + ANGLE_LAYER_STEP * layer
    write_log(run_dir, log)
    return run_dir


def make_feedback_study(root: Path) -> Path:
    """The feedback study in small: fixed and random runs with angles, and symmetric runs without."""
    for feedback, seeds in ANGLE_SEEDS.items():
        for seed, (start, slope, stop) in enumerate(seeds):
            make_angle_run(root, feedback, seed, start, slope, stop)
    for seed, (a, b, stop) in enumerate(QAGREL_SEEDS):
        make_run(root, "qagrel", seed, a, b, stop, dataset="mnist", arch="fc")  # symmetric: no angle columns
    return root


def assert_csv_angles(table: pd.DataFrame, feedback: str, layer: int, after_stop: str) -> None:
    lines = [(start + ANGLE_LAYER_STEP * layer, slope, stop) for start, slope, stop in ANGLE_SEEDS[feedback]]
    got = table[(table["feedback"] == feedback) & (table["layer"] == layer)].assign(rule=feedback)
    assert_csv_curve(got, feedback, expected(lines, after_stop))


def test_angles_csv_holds_each_layer_and_mode_s_means_sds_and_bands(tmp_path):
    result = plot(make_feedback_study(tmp_path / "study"), tmp_path / "figs", angles=True)
    table = pd.read_csv(result.csv)
    assert table.columns.tolist() == ["panel", "dataset", "arch", "hidden_units", "feedback", "variant", "layer",
                                      "epoch", "n", "mean", "sd", "lower", "upper"]
    assert set(table["panel"]) == {"mnist-fc-1500-1000-500"} and table["variant"].isna().all()
    assert sorted(set(zip(table["feedback"], table["layer"]))) == [(f, n) for f in ("fixed", "random")
                                                                   for n in range(ANGLE_LAYERS)]
    for feedback in ANGLE_SEEDS:
        for layer in range(ANGLE_LAYERS):
            assert_csv_angles(table, feedback, layer, "hold")


def test_angles_after_stop_drop_averages_the_seeds_still_running(tmp_path):
    result = plot(make_feedback_study(tmp_path / "study"), tmp_path / "figs", angles=True, after_stop=AfterStop.drop)
    assert_csv_angles(pd.read_csv(result.csv), "fixed", 3, "drop")
    assert result.figure.name == "study_angles_drop.png"


def test_angles_leave_out_symmetric_runs_and_say_so(tmp_path):
    result = plot(make_feedback_study(tmp_path / "study"), tmp_path / "figs", angles=True)
    assert "symmetric" not in set(pd.read_csv(result.csv)["feedback"])
    assert result.notes == ["3 runs with symmetric feedback (0° throughout) not shown."]


def make_diverged_angle_run(root: Path, seed: int, stop: int) -> Path:
    """A fixed-feedback run that diverged in epoch `stop`: angles 70 - 2 * epoch before it, NaN in it."""
    run_dir = make_angle_run(root, "fixed", seed, 70.0, -2.0, stop, diverged=True)
    log = read_log(run_dir)
    log.loc[log["epoch"] == stop, [f"angle_{layer}" for layer in range(ANGLE_LAYERS)]] = float("nan")
    write_log(run_dir, log)
    return run_dir


def test_angles_draw_a_diverged_run_up_to_the_epoch_before_it_diverged_and_never_hold_it(tmp_path):
    root = make_feedback_study(tmp_path / "study")
    make_diverged_angle_run(root, seed=3, stop=4)
    result = plot(root, tmp_path / "figs", angles=True)
    got = pd.read_csv(result.csv).query("feedback == 'fixed' and layer == 0").sort_values("epoch")
    epochs = np.arange(1, 9)
    finished = [start + slope * np.minimum(epochs, stop) for start, slope, stop in ANGLE_SEEDS["fixed"]]  # held
    diverged = np.where(epochs <= 3, 70.0 - 2.0 * epochs, np.nan)
    np.testing.assert_array_equal(got["n"], [4, 4, 4, 3, 3, 3, 3, 3])
    np.testing.assert_allclose(got["mean"], np.nanmean(np.vstack([*finished, diverged]), axis=0))
    assert not any("diverged" in note for note in result.notes)


def test_angles_leave_out_a_run_that_diverged_in_its_first_epoch_and_say_so(tmp_path):
    root = make_feedback_study(tmp_path / "study")
    make_diverged_angle_run(root, seed=3, stop=1)
    result = plot(root, tmp_path / "figs", angles=True)
    assert_csv_angles(pd.read_csv(result.csv), "fixed", 2, "hold")
    assert "1 run that diverged in the first epoch not shown (no finite weights to measure)." in result.notes


def test_angles_write_a_valid_png_named_after_the_folder_beside_figure3(tmp_path):
    root = make_feedback_study(tmp_path / "study")
    result = plot(root, angles=True)
    assert result.figure == root / "_figures" / "study_angles.png"
    assert result.csv == root / "_figures" / "study_angles.csv"
    width, height = png_size(result.figure)
    assert 500 <= width <= 4000 and 400 <= height <= 4000


def test_angles_of_one_run_folder_are_its_own_curves(tmp_path):
    run_dir = make_angle_run(tmp_path / "study", "fixed", 0, 80.0, -1.0, 5)
    result = plot(run_dir, angles=True)
    assert result.figure == tmp_path / "study" / "_figures" / f"{run_dir.name}_angles.png"
    table = pd.read_csv(result.csv)
    layer_2 = table[table["layer"] == 2]
    np.testing.assert_allclose(layer_2["mean"], 80.0 - np.arange(1, 6) + 2 * ANGLE_LAYER_STEP)
    assert (layer_2["n"] == 1).all() and layer_2["sd"].isna().all()


def test_angles_keep_runs_differing_in_another_setting_apart(tmp_path):
    root = make_feedback_study(tmp_path / "study")
    make_angle_run(root, "fixed", 0, 30.0, 0.0, 3, epsilon=0.1)
    table = pd.read_csv(plot(root, tmp_path / "figs", angles=True).csv)
    fixed = table[table["feedback"] == "fixed"]
    assert sorted(fixed["variant"].unique()) == ["epsilon=0.02", "epsilon=0.1"]
    assert_csv_angles(fixed[fixed["variant"] == "epsilon=0.02"], "fixed", 1, "hold")


def test_cli_angles_writes_figure_and_csv(tmp_path):
    root = make_feedback_study(tmp_path / "study")
    result = invoke("plot", root, "--angles")
    assert result.exit_code == 0, result.output
    assert (root / "_figures" / "study_angles.png").is_file() and (root / "_figures" / "study_angles.csv").is_file()


def test_cli_angles_error_when_no_run_logged_angles(tmp_path):
    result = invoke("plot", make_sweep(tmp_path / "sweep"), "--angles")
    assert result.exit_code == 2 and "--feedback random or fixed" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_figure3_of_one_rule_in_several_feedback_modes_has_a_curve_per_mode(tmp_path):
    table = pd.read_csv(plot(make_feedback_study(tmp_path / "study"), tmp_path / "figs").csv)
    assert sorted(table["variant"].unique()) == ["feedback=fixed", "feedback=random", "feedback=symmetric"]
    assert_csv_curve(table[table["variant"] == "feedback=symmetric"], "qagrel", expected(QAGREL_SEEDS, "hold"))


# ----------------------------------------------------------------- --angles-to-bp

def make_rules_study(root: Path) -> Path:
    """Runs of three rules whose logs hold bp_angle_0..bp_angle_3 = 10 * (rule's index + 1) + layer, and one
    older run without them."""
    for k, rule in enumerate(("qagrel", "bp", "fa")):
        for seed in (0, 1):
            run_dir = make_run(root, rule, seed, 0.1, 0.05, 4, dataset="mnist", arch="fc")
            log = read_log(run_dir)
            for layer in range(ANGLE_LAYERS):
                log[f"bp_angle_{layer}"] = 10.0 * (k + 1) + layer
            write_log(run_dir, log)
    make_run(root, "dfa", 0, 0.1, 0.05, 4, dataset="mnist", arch="fc")
    return root


def test_angles_to_bp_give_one_curve_per_rule_and_layer(tmp_path):
    result = plot(make_rules_study(tmp_path / "study"), tmp_path / "figs", angles=True, angle_kind=BP_ANGLES)
    table = pd.read_csv(result.csv)
    assert sorted(table["rule"].unique()) == ["bp", "fa", "qagrel"]
    fa_layer_2 = table[(table["rule"] == "fa") & (table["layer"] == 2)]
    assert (fa_layer_2["mean"] == 32.0).all() and (fa_layer_2["n"] == 2).all()
    assert result.notes == ["1 run without these angles in their logs not shown."]


def test_cli_angles_to_bp_writes_its_figure_beside_the_runs(tmp_path):
    root = make_rules_study(tmp_path / "study")
    result = invoke("plot", root, "--angles-to-bp")
    assert result.exit_code == 0, result.output
    assert (root / "_figures" / "study_angles_to_bp.png").is_file()


def test_cli_angles_to_bp_error_when_no_run_logged_them(tmp_path):
    result = invoke("plot", make_feedback_study(tmp_path / "study"), "--angles-to-bp")
    assert result.exit_code == 2 and "bp_angle_<layer>" in result.output and "Traceback" not in result.output


def make_five_rule_readings(root: Path) -> Path:
    """The rules study's conv panel in small: Q-AGREL with symmetric and fixed feedback, Error-BP, FA and DFA,
    each run logging bp_angle_0..3."""
    for rule, feedback in (("qagrel", "symmetric"), ("qagrel", "fixed"), ("bp", "symmetric"), ("fa", "symmetric"),
                           ("dfa", "symmetric")):
        run_dir = make_run(root, rule, 0, 0.1, 0.05, 4, dataset="mnist", arch="fc", feedback=feedback)
        log = read_log(run_dir)
        for layer in range(ANGLE_LAYERS):
            log[f"bp_angle_{layer}"] = 45.0
        write_log(run_dir, log)
    return root


def test_angles_to_bp_name_a_rules_curves_only_by_the_settings_it_reads(tmp_path):
    # Q-AGREL in two feedback modes beside FA, which has none: the feedback mode names Q-AGREL's curves only.
    root = make_five_rule_readings(tmp_path / "study")
    table = pd.read_csv(plot(root, tmp_path / "figs", angles=True, angle_kind=BP_ANGLES).csv)
    variants = table[["rule", "variant"]].fillna("").drop_duplicates()
    assert sorted(map(tuple, variants.values)) == [("bp", ""), ("dfa", ""), ("fa", ""), ("qagrel", "feedback=fixed"),
                                                   ("qagrel", "feedback=symmetric")]


def saved_figures(monkeypatch) -> list:
    """Keep every figure `plot` saves, as laid out for saving."""
    from matplotlib.figure import Figure

    saved, save = [], Figure.savefig

    def keep(fig, *args, **kwargs):
        save(fig, *args, **kwargs)
        saved.append(fig)
    monkeypatch.setattr(Figure, "savefig", keep)
    return saved


def test_a_long_legend_ends_above_the_caption(tmp_path, monkeypatch):
    saved = saved_figures(monkeypatch)
    plot(make_five_rule_readings(tmp_path / "study"), tmp_path / "figs", angles=True, angle_kind=BP_ANGLES)
    fig = saved[0]
    legend = fig.axes[0].get_legend().get_window_extent()
    caption = next(t for t in fig.texts if t.get_text().startswith("Per layer")).get_window_extent()
    assert len(fig.axes[0].get_legend().get_texts()) == 20 and legend.y0 > caption.y1

