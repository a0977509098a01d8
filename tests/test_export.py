"""`qagrel export DIR --tensorboard OUT`: one TensorBoard run per run folder, read back from its event files."""

from __future__ import annotations

import builtins

import pytest
from typer.testing import CliRunner

from conftest import assert_one_line_error
from qagrel_cli.cli import app
from qagrel_cli.core import run_folder
from qagrel_cli.core.config import TrainConfig
from qagrel_cli.core.training import train

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def results(mnist_dir, tmp_path_factory):
    """Two finished tiny runs (seeds 0 and 1, random feedback: angle columns too) in one folder."""
    root = tmp_path_factory.mktemp("results")
    for seed in (0, 1):
        config = TrainConfig(arch="fc", fc="16", train_size=300, max_epochs=3, seed=seed, feedback="random",
                             device="cpu")
        train(config, root / "study" / config.run_id, data_dir=mnist_dir, quiet=True)
    return root


def events(folder):
    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return accumulator


def test_every_run_folder_becomes_one_tensorboard_run_with_every_logged_metric_per_epoch(results, tmp_path):
    result = runner.invoke(app, ["export", str(results), "--tensorboard", str(tmp_path / "tb")])
    assert result.exit_code == 0, result.output
    runs = run_folder.find_run_dirs(results)
    assert sorted(p.name for p in (tmp_path / "tb" / "study").iterdir()) == sorted(r.name for r in runs)
    for run in runs:
        log = run_folder.read_log(run)
        board = events(tmp_path / "tb" / "study" / run.name)
        for column in ("train_reward", "val_acc", "test_acc", "train_loss", "lr", "angle_0", "bp_angle_1"):
            points = board.Scalars(column)
            assert [p.step for p in points] == log["epoch"].tolist()
            assert [p.value for p in points] == pytest.approx(log[column].tolist(), rel=1e-6)


def test_a_finished_run_carries_its_config_as_hparams_and_its_final_accuracy(results, tmp_path):
    runner.invoke(app, ["export", str(results), "--tensorboard", str(tmp_path / "tb")])
    run = run_folder.find_run_dirs(results)[0]
    summary = run_folder.read_summary(run)
    board = events(tmp_path / "tb" / "study" / run.name)
    [final] = board.Scalars("final/test_acc_at_best")
    assert final.value == pytest.approx(summary["test_acc_at_best"])
    content = board.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    session = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert session.hparams["seed"].number_value == summary["config"]["seed"]
    assert session.hparams["feedback"].string_value == "random"


def test_exporting_again_replaces_each_run_instead_of_doubling_its_curves(results, tmp_path):
    for _ in range(2):
        runner.invoke(app, ["export", str(results), "--tensorboard", str(tmp_path / "tb")])
    run = run_folder.find_run_dirs(results)[0]
    assert len(events(tmp_path / "tb" / "study" / run.name).Scalars("val_acc")) == 3
    assert not list((tmp_path / "tb" / "study").glob("_export-*"))


def test_without_tensorboard_the_error_is_one_line_naming_the_extra(results, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith(("torch.utils.tensorboard", "tensorboard")):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    result = runner.invoke(app, ["export", str(results), "--tensorboard", str(tmp_path / "tb")])
    assert_one_line_error(result, "pip install -e '.[tensorboard]'")
    assert not (tmp_path / "tb").exists()


def test_a_folder_without_runs_is_one_line(tmp_path):
    assert_one_line_error(runner.invoke(app, ["export", str(tmp_path), "--tensorboard", str(tmp_path / "tb")]),
                          "no run")
