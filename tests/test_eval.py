"""`qagrel eval`: a run's saved weights evaluated again with its own config and data give what its log says."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from conftest import assert_one_line_error
from qagrel_cli.cli import app
from qagrel_cli.core import run_folder
from qagrel_cli.core.config import TrainConfig
from qagrel_cli.core.evaluate import Split, evaluate_run
from qagrel_cli.core.training import train
from qagrel_cli.core.weights import WeightsAt

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(mnist_dir, tmp_path_factory):
    """A finished tiny run on the whole MNIST test set whose best epoch is not its last."""
    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(arch="fc", fc="64,32", train_size=600, max_epochs=50, patience=2, lr=1e-9, device="cpu")
    summary = train(config, out, data_dir=mnist_dir, quiet=True)
    assert summary["best_epoch"] < summary["stop_epoch"]
    return out, summary


@pytest.mark.parametrize("at", list(WeightsAt))
@pytest.mark.parametrize("split", list(Split))
def test_eval_equals_the_logged_accuracy_at_that_epoch_exactly(trained, mnist_dir, at, split):
    out, summary = trained
    evaluation = evaluate_run(out, at, split, data_dir=mnist_dir, device="cpu")
    log = run_folder.read_log(out).set_index("epoch")
    assert evaluation.epoch == summary["best_epoch" if at == WeightsAt.best else "stop_epoch"]
    assert evaluation.accuracy == log.loc[evaluation.epoch, f"{split.value}_acc"] == evaluation.logged_accuracy


def test_the_confusion_matrix_counts_every_image_once_and_its_diagonal_is_the_accuracy(trained, mnist_dir):
    out, _ = trained
    evaluation = evaluate_run(out, data_dir=mnist_dir, device="cpu")
    assert int(evaluation.confusion.sum()) == 10_000
    assert int(evaluation.confusion.trace()) == round(evaluation.accuracy * 10_000)


def test_eval_prints_accuracy_and_per_class_accuracy_and_draws_the_confusion_matrix(trained, mnist_dir, tmp_path):
    out, summary = trained
    result = runner.invoke(app, ["eval", str(out), "--confusion", str(tmp_path / "c.png"), "--device", "cpu",
                                 "--data-dir", str(mnist_dir)])
    assert result.exit_code == 0, result.output
    assert summary["run_id"] in result.output and f"best ({summary['best_epoch']})" in result.output
    assert f"{100 * summary['test_acc_at_best']:.2f} %" in result.output
    assert "per-class test accuracy" in result.output
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_a_confusion_file_of_unknown_format_is_one_line_before_anything_is_evaluated(trained, tmp_path):
    out, _ = trained
    result = runner.invoke(app, ["eval", str(out), "--confusion", str(tmp_path / "c.txt")])
    assert_one_line_error(result, "--confusion takes a file name ending in .png")
    assert not (tmp_path / "c.txt").exists()


def test_a_run_trained_before_weights_were_kept_is_said_so_in_one_line(trained, tmp_path):
    out, _ = trained
    old = tmp_path / "old"
    old.mkdir()
    for name in run_folder.RESULT_FILES:
        (old / name).write_bytes((out / name).read_bytes())
    result = runner.invoke(app, ["eval", str(old)])
    assert_one_line_error(result, "trained before runs kept their weights")


def test_a_folder_that_holds_no_run_is_one_line(tmp_path):
    assert_one_line_error(runner.invoke(app, ["eval", str(tmp_path)]), "no run folders")
