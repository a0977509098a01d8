"""Early stopping: training's rule, replayed over logs with the run's own or a shorter patience."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from qagrel_cli.core import run_folder
from qagrel_cli.core.config import QagrelError, TrainConfig
from qagrel_cli.core.stopping import replay, stopped_sooner, summary_under_stopping
from qagrel_cli.sweeps.results import read_results

ROOT = Path(__file__).resolve().parents[1]
# Every committed study whose runs were recorded by the current training code. results/protocol is left out: one
# of its runs was recorded before a diverged first epoch could count as the best epoch.
STUDIES = ("table1-cpu", "feedback", "bp-step", "patience", "smoke", "dropout")
STOPPING_FIELDS = ("status", "stop_epoch", "best_epoch", "best_val_acc", "test_acc_at_best", "test_acc_at_stop",
                   "final_train_reward", "diverged", "converged", "wall_seconds")


def log_of(val_acc: list[float], epochs: list[int] | None = None) -> pd.DataFrame:
    """A log whose test accuracy is 1/10 of the validation accuracy, so each test value names its epoch's."""
    epochs = epochs or list(range(1, len(val_acc) + 1))
    return pd.DataFrame({"epoch": epochs, "val_acc": val_acc, "test_acc": [v / 10 for v in val_acc],
                         "epoch_seconds": [2.0] * len(val_acc), "train_reward": [0.5] * len(val_acc)})


def summary_of(config: TrainConfig, log: pd.DataFrame, diverged: bool = False) -> dict:
    return {"run_id": config.run_id, "stop_epoch": int(log["epoch"].max()), "num_classes": 10, "diverged": diverged}


@pytest.mark.parametrize("study", STUDIES)
def test_replay_with_a_runs_own_patience_reproduces_every_stopping_field_of_its_summary(study):
    finished = [r for r in read_results(ROOT / "results" / study).runs if r.summary is not None]
    assert finished
    for record in finished:
        replayed = summary_under_stopping(record.summary, run_folder.read_log(record.path),
                                          stopped_sooner(record.config, patience=record.config.patience))
        for field in STOPPING_FIELDS:
            ours, recorded = replayed[field], record.summary[field]
            assert ours == recorded or (isinstance(ours, float) and math.isclose(ours, recorded, rel_tol=1e-9)), \
                f"{record.path.name}: {field} {ours!r} replayed, {recorded!r} recorded"


def test_a_shorter_patience_stops_that_many_epochs_after_the_best_so_far():
    log = log_of([0.5, 0.6, 0.58, 0.59, 0.7, 0.65, 0.66, 0.67])
    two = replay(log, TrainConfig(patience=2)).progress
    assert (two.epoch, two.best_epoch, two.test_acc_at_best) == (4, 2, pytest.approx(0.06))
    three = replay(log, TrainConfig(patience=3)).progress
    assert (three.epoch, three.best_epoch) == (8, 5)


def test_an_equal_validation_accuracy_is_no_improvement_and_keeps_the_earlier_best_epoch():
    result = replay(log_of([0.5, 0.6, 0.6, 0.6]), TrainConfig(patience=2))
    assert result.stopped and (result.progress.epoch, result.progress.best_epoch) == (4, 2)


def test_a_log_that_ends_before_patience_runs_out_is_not_stopped():
    result = replay(log_of([0.5, 0.6, 0.55]), TrainConfig(patience=2))
    assert not result.stopped and result.progress.epoch == 3 and result.progress.epochs_since_best == 1


def test_an_epoch_logged_twice_by_a_resume_counts_once_as_its_last_row():
    log = log_of([0.5, 0.4, 0.6, 0.55], epochs=[1, 2, 2, 3])
    result = replay(log, TrainConfig(patience=5)).progress
    assert (result.epoch, result.best_epoch, result.wall_seconds) == (3, 2, 6.0)


def test_a_patience_longer_than_the_run_trained_with_is_refused():
    config = TrainConfig(patience=20)
    log = log_of([0.5, 0.6])
    with pytest.raises(QagrelError, match="trained with patience 20; its log cannot show patience 21"):
        summary_under_stopping(summary_of(config, log), log, stopped_sooner(config, patience=21))


def test_a_lower_epoch_cap_stops_there_with_the_best_epoch_up_to_it():
    config = TrainConfig(patience=5)
    log = log_of([0.5, 0.6, 0.55, 0.7, 0.65])
    capped = summary_under_stopping(summary_of(config, log), log, stopped_sooner(config, max_epochs=3))
    assert (capped["stop_epoch"], capped["best_epoch"], capped["best_val_acc"]) == (3, 2, 0.6)


def test_an_epoch_cap_above_the_one_the_run_trained_with_is_refused():
    config = TrainConfig(max_epochs=4)
    log = log_of([0.5, 0.6, 0.7, 0.8])
    with pytest.raises(QagrelError, match="trained with max_epochs 4; its log cannot show max_epochs 5"):
        summary_under_stopping(summary_of(config, log), log, stopped_sooner(config, max_epochs=5))


def test_a_run_that_diverged_is_diverged_under_a_shorter_patience_only_if_it_gets_as_far():
    config = TrainConfig(patience=5)
    log = log_of([0.5, 0.6, 0.4, 0.4, 0.1])  # diverged in its 5th epoch
    summary = summary_of(config, log, diverged=True)
    assert summary_under_stopping(summary, log, stopped_sooner(config, patience=5))["diverged"]
    shorter = summary_under_stopping(summary, log, stopped_sooner(config, patience=2))
    assert (shorter["diverged"], shorter["status"], shorter["stop_epoch"], shorter["converged"]) == \
        (False, "finished", 4, True)
    assert shorter["test_acc_at_stop"] == pytest.approx(0.04) and shorter["wall_seconds"] == 8.0
