"""`qagrel train` on the command line: help, one-line errors, nothing half-written."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from qagrel_cli.cli import app

from conftest import REPO, assert_one_line_error

runner = CliRunner()


def test_help_explains_every_option():
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--rule", "--arch", "--fc", "--dataset", "--seed", "--lr", "--optimizer", "--epsilon",
                   "--feedback", "--init-range", "--batch-size", "--max-epochs", "--patience", "--train-size",
                   "--device", "--out", "--data-dir", "--download", "--quiet"):
        assert option in result.output


@pytest.mark.parametrize("option, value", [("--dataset", "svhn"), ("--arch", "resnet"), ("--rule", "hebb")])
def test_unknown_choice_is_a_one_line_error(option, value, tmp_path):
    result = runner.invoke(app, ["train", option, value, "--out", str(tmp_path / "run")])
    assert_one_line_error(result, option, value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("fc", ["1000,x", "0", "-5", ","])
def test_malformed_fc_is_a_one_line_error(fc, tmp_path):
    result = runner.invoke(app, ["train", "--fc", fc, "--out", str(tmp_path / "run")])
    assert_one_line_error(result, "fc")
    assert not (tmp_path / "run").exists()


def test_missing_data_offline_is_a_one_line_error_naming_folder_and_files(tmp_path):
    result = runner.invoke(app, ["train", "--no-download", "--data-dir", str(tmp_path / "empty"),
                                 "--out", str(tmp_path / "run")])
    assert_one_line_error(result, "mnist", str(tmp_path / "empty" / "MNIST" / "raw"), "train-images-idx3-ubyte",
                          "--data-dir")
    assert not (tmp_path / "run").exists() and not (tmp_path / "empty").exists()


def test_unwritable_output_folder_is_a_one_line_error(mnist_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = runner.invoke(app, ["train", "--data-dir", str(mnist_dir), "--out", str(blocker / "run")])
    assert_one_line_error(result, "cannot write", str(blocker))
    assert blocker.read_text() == "not a folder"


def test_unavailable_device_is_a_one_line_error(mnist_dir, tmp_path):
    result = runner.invoke(app, ["train", "--device", "cuda:7", "--data-dir", str(mnist_dir),
                                 "--out", str(tmp_path / "run")])
    assert_one_line_error(result, "cuda:7")
    assert not (tmp_path / "run").exists()


def test_train_prints_a_summary_and_writes_the_run(mnist_dir, tmp_path):
    result = runner.invoke(app, ["train", "--arch", "fc", "--fc", "32", "--train-size", "300", "--max-epochs", "2",
                                 "--data-dir", str(mnist_dir), "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "stop epoch" in result.output and "test accuracy" in result.output
    assert (tmp_path / "run" / "_summary.json").exists()


def test_a_diverged_run_exits_non_zero_with_a_clear_message(mnist_dir, tmp_path):
    result = runner.invoke(app, ["train", "--arch", "fc", "--fc", "32", "--train-size", "300", "--lr", "1e30",
                                 "--data-dir", str(mnist_dir), "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 1
    assert "diverged" in result.output and (tmp_path / "run" / "log.parquet").exists()


def test_python_dash_m_runs_the_same_cli():
    result = subprocess.run([sys.executable, "-m", "qagrel_cli", "train", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--rule" in result.stdout
