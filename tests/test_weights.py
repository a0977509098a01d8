"""A run keeps its weights at its best-validation epoch and at its last, and a resumed run keeps them too."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from qagrel_cli.core import run_folder as runs
from qagrel_cli.core import training
from qagrel_cli.core.config import QagrelError, TrainConfig
from qagrel_cli.core.trainer import Trainer
from qagrel_cli.core.training import train, train_pack
from qagrel_cli.core.weights import WEIGHTS_FILE, WeightsAt, load_weights, save_weights

from conftest import random_splits


def tiny(**overrides) -> TrainConfig:
    """A run of a second or two on a CPU; alpha so small that validation accuracy soon stops rising."""
    settings = dict(arch="fc", fc="64,32", train_size=600, max_epochs=50, patience=2, lr=1e-9, device="cpu")
    settings.update(overrides)
    return TrainConfig(**settings)


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_saved_weights_loaded_into_a_fresh_network_give_the_same_outputs(tmp_path):
    config = TrainConfig(arch="conv", fc="16", batch_norm=True, feedback="random", device="cpu")
    trainer = Trainer(config, random_splits(), torch.device("cpu"))
    trainer.run_epoch(1)
    save_weights(tmp_path, WeightsAt.last, trainer, 1)
    fresh = Trainer(replace(config, seed=7), random_splits(), torch.device("cpu"))
    fresh.net.load_state_dict(load_weights(tmp_path, WeightsAt.last).net)
    x = trainer.scale(trainer.splits.val_x)
    trainer.net.eval(), fresh.net.eval()
    assert torch.equal(trainer.net(x)[0], fresh.net(x)[0])
    assert_same_tensors(fresh.net.state_dict(), trainer.net.state_dict())  # W', batch-norm statistics too


def test_a_finished_run_keeps_its_best_and_last_weights_with_their_epochs(small_mnist, tmp_path):
    summary = train(tiny(), tmp_path, data_dir=small_mnist, quiet=True)
    assert summary["stop_epoch"] > summary["best_epoch"]  # patience ran out: the two differ
    assert load_weights(tmp_path, WeightsAt.best).epoch == summary["best_epoch"]
    assert load_weights(tmp_path, WeightsAt.last).epoch == summary["stop_epoch"]


def test_the_best_weights_are_the_network_after_the_best_validation_epoch(small_mnist, tmp_path):
    summary = train(tiny(), tmp_path / "run", data_dir=small_mnist, quiet=True)
    # The same run stopped at its best epoch: its last weights are what the best weights must be.
    train(tiny(max_epochs=summary["best_epoch"]), tmp_path / "cut", data_dir=small_mnist, quiet=True)
    assert_same_tensors(load_weights(tmp_path / "run", WeightsAt.best).net,
                        load_weights(tmp_path / "cut", WeightsAt.last).net)


def test_a_resumed_run_keeps_the_weights_of_an_uninterrupted_one(small_mnist, tmp_path, monkeypatch):
    whole = train(tiny(), tmp_path / "whole", data_dir=small_mnist, quiet=True)
    stop_after = whole["best_epoch"] + 1  # killed after its best epoch, before it stops
    assert stop_after < whole["stop_epoch"]
    save_progress = training.save_progress

    def killed(out, trainer, progress):
        save_progress(out, trainer, progress)
        if progress.epoch == stop_after:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "save_progress", killed)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(), tmp_path / "resumed", data_dir=small_mnist, quiet=True)
    assert not runs.is_finished(tmp_path / "resumed")
    monkeypatch.setattr(training, "save_progress", save_progress)
    train(tiny(), tmp_path / "resumed", data_dir=small_mnist, quiet=True)
    for at in WeightsAt:
        resumed, uninterrupted = load_weights(tmp_path / "resumed", at), load_weights(tmp_path / "whole", at)
        assert resumed.epoch == uninterrupted.epoch
        assert_same_tensors(resumed.net, uninterrupted.net)


def test_every_member_of_a_seed_pack_keeps_its_own_weights(small_mnist, tmp_path):
    summaries = train_pack(tiny(max_epochs=3, patience=20, lr=None), [0, 1], tmp_path, data_dir=small_mnist,
                           quiet=True)
    folders = [tmp_path / s["run_id"] for s in summaries]
    for folder, summary in zip(folders, summaries):
        assert load_weights(folder, WeightsAt.best).epoch == summary["best_epoch"]
        assert load_weights(folder, WeightsAt.last).epoch == 3
    first, second = (load_weights(f, WeightsAt.last).net for f in folders)
    assert not torch.equal(first["layers.0.weight"], second["layers.0.weight"])


def test_a_run_without_weights_is_said_to_predate_them_in_one_line(small_mnist, tmp_path):
    train(tiny(max_epochs=1), tmp_path, data_dir=small_mnist, quiet=True)
    for at in WeightsAt:
        (tmp_path / WEIGHTS_FILE[at]).unlink()
        with pytest.raises(QagrelError, match="trained before runs kept their weights"):
            load_weights(tmp_path, at)
