"""The command line as a whole: every command is in README's table, `--version` says what is running, and
`train` says where its run went."""

from __future__ import annotations

import re

import typer
from typer.testing import CliRunner

import qagrel_cli
from qagrel_cli.cli import app
from qagrel_cli.core.provenance import git_commit

from conftest import REPO

runner = CliRunner()


def readme_commands() -> set[str]:
    """The commands README's command table lists (`| \\`qagrel NAME ...\\` | ... |` rows)."""
    return set(re.findall(r"^\| `qagrel ([a-z][a-z-]*)", (REPO / "README.md").read_text(), re.MULTILINE))


def test_every_command_of_the_app_is_in_readme_command_table():
    registered = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    assert registered - readme_commands() == set()


def test_version_prints_the_version_and_the_git_commit():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith(f"qagrel {qagrel_cli.__version__} (")
    commit = git_commit()
    assert (commit[:12] if commit else "not a git checkout") in result.output


def test_version_is_a_flag_in_the_help_without_a_type():
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    [line] = [line for line in result.output.splitlines() if "--version" in line]
    assert "<bool>" not in line


def test_train_summary_names_the_run_folder(mnist_dir, tmp_path):
    out = tmp_path / "my-run"
    result = runner.invoke(app, ["train", "--arch", "fc", "--fc", "16", "--train-size", "200", "--max-epochs", "1",
                                 "--device", "cpu", "--data-dir", str(mnist_dir), "--quiet", "--out", str(out)],
                           env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert any("run folder" in line and str(out) in line for line in result.output.splitlines()), result.output
