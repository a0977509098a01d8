"""The committed studies: every run of a study's sweep file is committed finished under results/<study>/,
and `qagrel table` over that folder renders every row of the sweep, with all its seeds; and git keeps a run's
working files (checkpoint, lock) out of any commit.

A study joins COMPLETE_STUDIES in the commit that adds its last run.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qagrel_cli.cli import app
from qagrel_cli.core.config import TrainConfig
from qagrel_cli.core.recipes import recipe_label
from qagrel_cli.core.run_folder import CHECKPOINT_FILE, CONFIG_FILE, LOCK_FILE, LOG_FILE, SUMMARY_FILE
from qagrel_cli.reports.table import paper_table
from qagrel_cli.sweeps.ledger import RunStatus, run_status
from qagrel_cli.sweeps.results import RunRecord
from qagrel_cli.sweeps.sweep_file import SWEEP_FILE, load_sweep

REPO = Path(__file__).resolve().parent.parent
COMPLETE_STUDIES = ["bp-step", "dropout", "feedback", "patience", "protocol", "recipe", "rules", "smoke", "table1-cpu"]
# The studies whose progress README and docs/ count in words ("N of M runs are in"), if any.
IN_PROGRESS: tuple[str, ...] = ()
PROGRESS_WORDS = re.compile(r"(\d+) of (\d+) runs are (?:in|finished)")
runner = CliRunner()


def _table_value(config: TrainConfig, column: str) -> str:
    """What `qagrel table --format csv` writes in `column` for a run of `config`."""
    if column == "first_layer":
        return config.arch.value
    if column == "hidden_units":
        return RunRecord(Path(), config, None).hidden_units
    if column == "recipe":
        return recipe_label(config)
    value = getattr(config, column)
    return getattr(value, "value", value)


def _matches(row: dict[str, str], config: TrainConfig, columns: list[str]) -> bool:
    for column in columns:
        value = _table_value(config, column)
        if isinstance(value, float):
            if float(row[column]) != value:
                return False
        elif row[column] != str(value):
            return False
    return True


@pytest.mark.parametrize("study", COMPLETE_STUDIES)
def test_every_run_of_the_study_is_committed_finished(study):
    sweep = load_sweep(REPO / "sweeps" / f"{study}.yaml")
    states = Counter(run_status(sweep.run_dir(REPO / "results", c)) for c in sweep.configs)
    assert states == Counter({RunStatus.done: len(sweep.configs)})


@pytest.mark.parametrize("study", COMPLETE_STUDIES)
def test_table_of_the_committed_study_renders_every_row_of_its_sweep_with_all_its_seeds(study):
    sweep = load_sweep(REPO / "sweeps" / f"{study}.yaml")
    result = runner.invoke(app, ["table", str(REPO / "results" / study), "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    settings = [c for c in rows[0] if c not in ("epochs_mean", "epochs_sd", "accuracy_mean", "accuracy_sd",
                                                 "seeds_converged", "seeds")]
    row_configs = Counter(replace(c, seed=0) for c in sweep.configs)
    assert len(rows) == len(row_configs)  # one table row per row of the sweep, none merged, none missing
    for config, seeds in row_configs.items():
        matching = [row for row in rows if _matches(row, config, settings)]
        assert len(matching) == 1, f"{config.run_id}: {len(matching)} table rows"
        assert int(matching[0]["seeds"]) == seeds


def test_table1_cpu_renders_all_18_mnist_and_cifar10_rows_of_table_1_beside_the_paper_with_3_or_more_seeds():
    result = runner.invoke(app, ["table", str(REPO / "results" / "table1-cpu"), "--compare", "paper", "--format", "csv"])
    assert result.exit_code == 0, result.output
    rendered = list(csv.DictReader(io.StringIO(result.stdout)))
    wanted = [p for p in paper_table() if p.key.dataset in ("mnist", "cifar10")]
    assert len(wanted) == 18
    for paper in wanted:
        key = paper.key
        rows = [r for r in rendered if (r["dataset"], r["rule"], r["first_layer"], r["hidden_units"])
                == (key.dataset, key.rule, key.arch, key.hidden_units) and r["paper_accuracy_mean"]]
        assert any(float(r["paper_accuracy_mean"]) == paper.accuracy.mean and int(r["seeds"]) >= 3
                   and r["seeds_converged"] == r["seeds"] for r in rows), key


def test_the_docs_count_the_runs_of_the_study_in_progress_that_are_committed():
    counts = [(doc.name, int(counted), int(total))
              for doc in (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))
              for counted, total in PROGRESS_WORDS.findall(doc.read_text(encoding="utf-8"))]
    progress = set()
    for study in IN_PROGRESS:
        sweep = load_sweep(REPO / "sweeps" / f"{study}.yaml")
        done = sum(run_status(sweep.run_dir(REPO / "results", c)) == RunStatus.done for c in sweep.configs)
        progress.add((done, len(sweep.configs)))
    for name, counted, total in counts:  # every count is some study's, and no study's count is stale
        assert (counted, total) in progress, f"{name}: {counted} of {total}"
    assert progress <= {(counted, total) for _, counted, total in counts}  # each study in progress is counted


@pytest.mark.parametrize("study", IN_PROGRESS)
def test_a_study_in_progress_has_its_sweep_file_in_its_results_folder(study):
    # `qagrel collect` refuses a stored sweep file that differs: the committed one must be the grown one
    stored = REPO / "results" / study / SWEEP_FILE
    assert stored.read_text(encoding="utf-8") == (REPO / "sweeps" / f"{study}.yaml").read_text(encoding="utf-8")


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout")
def test_git_ignores_a_run_folders_checkpoint_and_lock_but_not_its_results():
    run = Path("results") / "any-sweep" / "any-run"
    files = [run / name for name in (CHECKPOINT_FILE, LOCK_FILE, CONFIG_FILE, SUMMARY_FILE, LOG_FILE)]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *map(str, files)], cwd=REPO,
                             capture_output=True, text=True).stdout.split()
    assert ignored == [str(run / CHECKPOINT_FILE), str(run / LOCK_FILE)]
