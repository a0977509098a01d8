"""`qagrel collect`: a sweep's finished runs copied into another results folder, never a checkpoint or a lock,
nothing finished overwritten, nothing half-copied."""

from __future__ import annotations

import os

import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import assert_one_line_error
from qagrel_cli.cli import app
from qagrel_cli.core import run_folder
from qagrel_cli.core.config import TrainConfig
from qagrel_cli.sweeps.collect import collect
from qagrel_cli.sweeps.ledger import RunStatus, run_status
from qagrel_cli.sweeps.sweep_file import SWEEP_FILE

runner = CliRunner()
SWEEP_TEXT = "grid: {dataset: mnist, arch: fc, fc: '16', rule: qagrel}\nseeds: 3\n"


def run_dir(root, seed: int, *, finished: bool = True, stop_epoch: int = 2):
    """A run folder of the sweep 's' as training leaves it: finished (summary, log) or partial (log, checkpoint)."""
    config = TrainConfig.from_dict({"dataset": "mnist", "arch": "fc", "fc": "16", "rule": "qagrel", "seed": seed})
    path = root / "s" / config.run_id
    run_folder.write_config(path, config)
    run_folder.write_log(path, pd.DataFrame({"epoch": range(1, stop_epoch + 1), "train_reward": 0.5,
                                             "train_loss": 0.1, "val_acc": 0.9, "test_acc": 0.9,
                                             "epoch_seconds": 1.0, "samples_per_second": 1.0, "lr": 1.0}))
    if finished:
        run_folder.write_summary(path, {"run_id": config.run_id, "status": "finished", "stop_epoch": stop_epoch})
    else:
        (path / run_folder.CHECKPOINT_FILE).write_bytes(b"weights")
    return path


@pytest.fixture
def scratch(tmp_path):
    """A sweep's scratch results: seed 0 finished (with a leftover checkpoint and lock file), seed 1 partial,
    seed 2 never started; the sweep file beside them."""
    source = tmp_path / "scratch"
    done = run_dir(source, 0)
    (done / run_folder.CHECKPOINT_FILE).write_bytes(b"stale")
    (done / run_folder.LOCK_FILE).write_bytes(b"")
    run_dir(source, 1, finished=False)
    (source / "s" / SWEEP_FILE).write_text(SWEEP_TEXT)
    return source


def test_a_finished_run_arrives_with_its_config_summary_and_log_and_nothing_else(scratch, tmp_path):
    done = collect(scratch, tmp_path / "repo")
    [name] = done.added
    assert sorted(p.name for p in (tmp_path / "repo" / name).iterdir()) == sorted(run_folder.RESULT_FILES)
    assert run_status(tmp_path / "repo" / name) == RunStatus.done


def test_unfinished_runs_stay_behind_and_are_counted_with_those_not_started(scratch, tmp_path):
    done = collect(scratch, tmp_path / "repo")
    partial = next(p for p in (scratch / "s").iterdir() if (p / run_folder.CHECKPOINT_FILE).exists()
                   and not run_folder.is_finished(p))
    assert len(done.unfinished) == 2 and f"s/{partial.name}" in done.unfinished  # seed 2 never started
    assert not (tmp_path / "repo" / "s" / partial.name).exists()
    assert (partial / run_folder.CHECKPOINT_FILE).exists()  # still there to be resumed


def test_the_sweep_file_comes_along_so_the_destination_knows_the_runs_still_to_come(scratch, tmp_path):
    collect(scratch, tmp_path / "repo")
    assert (tmp_path / "repo" / "s" / SWEEP_FILE).read_text() == SWEEP_TEXT


def test_collecting_again_adds_nothing_and_keeps_what_is_there(scratch, tmp_path):
    first = collect(scratch, tmp_path / "repo")
    again = collect(scratch, tmp_path / "repo")
    assert (again.added, again.kept, again.sweep_files) == ([], first.added, [])


def test_a_run_finished_in_the_destination_is_never_overwritten(scratch, tmp_path):
    dest = tmp_path / "repo"
    theirs = run_dir(dest, 0, stop_epoch=5)  # the same run, finished there with another result
    summary = (theirs / run_folder.SUMMARY_FILE).read_bytes()
    assert collect(scratch, dest).kept == [f"s/{theirs.name}"]
    assert (theirs / run_folder.SUMMARY_FILE).read_bytes() == summary


def test_an_unfinished_run_in_the_destination_is_replaced_by_the_finished_one(scratch, tmp_path):
    dest = tmp_path / "repo"
    stale = run_dir(dest, 0, finished=False)
    assert collect(scratch, dest).added == [f"s/{stale.name}"]
    assert run_status(stale) == RunStatus.done and not (stale / run_folder.CHECKPOINT_FILE).exists()


def test_a_run_being_trained_in_the_destination_is_left_alone_and_the_command_says_so(scratch, tmp_path):
    dest = tmp_path / "repo"
    live = run_dir(dest, 0, finished=False)
    fd = run_folder.try_lock(live)  # this test process plays the process training it
    try:
        result = runner.invoke(app, ["collect", str(scratch), str(dest)])
    finally:
        os.close(fd)
    said, error = result.output.strip().splitlines()  # what it did, then why it did not do all
    assert said.startswith("collected 0 finished run(s)")
    assert error == f"error: not replaced, being trained in {dest}: s/{live.name}; stop that process and collect again"
    assert result.exit_code == 1 and not run_folder.is_finished(live)


def test_a_different_sweep_file_in_the_destination_stops_collect_before_it_copies_anything(scratch, tmp_path):
    dest = tmp_path / "repo"
    (dest / "s").mkdir(parents=True)
    (dest / "s" / SWEEP_FILE).write_text(SWEEP_TEXT.replace("seeds: 3", "seeds: 10"))
    result = runner.invoke(app, ["collect", str(scratch), str(dest)])
    assert_one_line_error(result, "a different sweep is there")
    assert sorted(p.name for p in (dest / "s").iterdir()) == [SWEEP_FILE]


@pytest.mark.parametrize("where", ["inside", "around", "same"])
def test_folders_that_overlap_are_refused(scratch, where):
    dest = {"inside": scratch / "copy", "around": scratch.parent, "same": scratch}[where]
    assert_one_line_error(runner.invoke(app, ["collect", str(scratch), str(dest)]), "overlap")


def test_a_missing_source_is_a_one_line_error(tmp_path):
    assert_one_line_error(runner.invoke(app, ["collect", str(tmp_path / "nowhere"), str(tmp_path / "repo")]),
                          "no such results folder")
    assert not (tmp_path / "repo").exists()


def test_the_command_counts_what_it_collected_kept_and_left_in_one_line(scratch, tmp_path):
    result = runner.invoke(app, ["collect", str(scratch), str(tmp_path / "repo")])
    assert result.exit_code == 0, result.output
    assert " ".join(result.output.split()) == (
        f"collected 1 finished run(s) into {tmp_path / 'repo'}; 0 already finished there (kept); "
        f"2 not finished in {scratch}; 1 sweep file(s) copied")


def test_a_run_staged_in_a_hidden_folder_is_not_a_run_of_the_results(tmp_path):
    staged = run_dir(tmp_path / "results" / "_collect-abc", 0)  # results/_collect-abc/s/<run id>
    assert run_folder.find_run_dirs(tmp_path / "results") == []
    assert run_folder.find_run_dirs(staged) == [staged]  # named itself, it is a run


def test_a_run_that_cannot_be_copied_is_a_one_line_error_and_leaves_no_half_run(scratch, tmp_path):
    (scratch / "s" / SWEEP_FILE).unlink()
    dest = tmp_path / "repo"
    dest.mkdir()
    (dest / "s").write_text("a file where the sweep's folder would go")
    assert_one_line_error(runner.invoke(app, ["collect", str(scratch), str(dest)]), "cannot copy")
    assert sorted(p.name for p in dest.iterdir()) == ["s"]


def with_weights(path):
    """The run folder with both weights files, as training since issue 31 leaves it."""
    for name in run_folder.WEIGHTS_FILES:
        (path / name).write_bytes(name.encode())
    return path


def test_weights_stay_behind_unless_asked_for(tmp_path):
    source = tmp_path / "scratch"
    name = with_weights(run_dir(source, 0)).relative_to(source)
    collect(source, tmp_path / "repo")
    assert not any((tmp_path / "repo" / name / w).exists() for w in run_folder.WEIGHTS_FILES)


def test_with_weights_a_run_arrives_with_its_weights(tmp_path):
    source = tmp_path / "scratch"
    name = with_weights(run_dir(source, 0)).relative_to(source)
    result = runner.invoke(app, ["collect", str(source), str(tmp_path / "repo"), "--with-weights"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "repo" / name).iterdir()) == sorted(run_folder.RESULT_FILES
                                                                                 + run_folder.WEIGHTS_FILES)


def test_with_weights_a_run_collected_before_gets_the_weights_it_lacks(tmp_path):
    source = tmp_path / "scratch"
    name = with_weights(run_dir(source, 0)).relative_to(source)
    collect(source, tmp_path / "repo")
    done = collect(source, tmp_path / "repo", with_weights=True)
    assert done.kept == [str(name)]
    assert all((tmp_path / "repo" / name / w).read_bytes() == w.encode() for w in run_folder.WEIGHTS_FILES)
