"""Seed packs: K seeds trained as one pack leave exactly the run folders of K runs trained one by one.

Tolerance: the vmap strategy computes the same equations on stacked weights
(batched matmuls, grouped convolutions), so float sums may round differently:
train_loss and the alignment angles are compared to rtol 1e-5 (measured
differences: below 5e-7 absolute on losses near 2.3, 2e-6 degrees). Rewards and accuracies are counts divided by
the sample count and must be equal exactly; so must every non-timing value
of the summary. The angle of each update to Error-BP's gradient is measured
on a probe batch from a first-layer update that is a long sum of small products,
which the pack's rounding moves most: it is compared to 0.05 degrees (measured:
up to 0.006). The loop strategy runs the members' own steps, so it must be
bitwise equal.

The vmap cases run on the CPU and, marked `cuda`, on a CUDA device, where the
pack is compared with runs trained one by one on that device. There TF32 is
turned off for the test: by default CUDA convolutions may round their inputs to
TF32 (10-bit mantissa), and the pack's grouped convolutions and the runs' plain
ones could then differ by more than the 1e-5 checked here. These tests check
that vmap computes the same equations; benchmarks/gpu_check.py compares a real
CUDA run at the default precision with CPU runs.
"""

from __future__ import annotations

import dataclasses
from io import StringIO
from pathlib import Path
from typing import Iterator

import pandas as pd
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from qagrel_cli.core import run_folder as runs, training
from qagrel_cli.cli import app
from qagrel_cli.core.config import QagrelError, TrainConfig
from qagrel_cli.core.config import parse_seeds
from qagrel_cli.core.training import train_pack

from conftest import load_with_small_test_set

COUNTS = ["epoch", "train_reward", "val_acc", "test_acc"]
TIMING = ["epoch_seconds", "samples_per_second"]
SEEDS = [0, 1, 2]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.fixture
def data(small_mnist, monkeypatch) -> Iterator[Path]:
    monkeypatch.setattr(training, "load_dataset", load_with_small_test_set)
    # One thread: on a busy 2-core machine oneDNN's grouped convolutions (the vmap strategy's) stall
    # for seconds waiting for a second thread; the pack and the runs it is compared with share the setting.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # see the module docstring
    yield small_mnist
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.set_num_threads(threads)


def tiny(**overrides) -> TrainConfig:
    settings = dict(arch="conv", fc="16", train_size=200, val_size=200, max_epochs=2, device="cpu")
    settings.update(overrides)
    return TrainConfig(**settings)


UPDATE_ANGLE_ATOL = 0.05  # degrees


def one_by_one(config: TrainConfig, seeds: list[int], root: Path, data_dir: Path) -> list[dict]:
    return [training.train(dataclasses.replace(config, seed=s), root / dataclasses.replace(config, seed=s).run_id,
                         data_dir=data_dir, quiet=True) for s in seeds]


def assert_same_run_folders(packed: Path, alone: Path, exact: bool) -> None:
    assert sorted(p.name for p in packed.iterdir()) == sorted(p.name for p in alone.iterdir())
    assert (packed / runs.CONFIG_FILE).read_text() == (alone / runs.CONFIG_FILE).read_text()
    a, b = runs.read_log(packed), runs.read_log(alone)
    assert list(a.columns) == list(b.columns)
    rounded = ["train_loss"] + [c for c in a.columns if c.startswith("angle_")]  # sums of products of floats
    update_angles = [c for c in a.columns if c.startswith(runs.BP_ANGLE_PREFIX)]
    others = [c for c in a.columns if c not in TIMING and c not in rounded + update_angles]
    pd.testing.assert_frame_equal(a[others], b[others], check_exact=True)
    pd.testing.assert_frame_equal(a[rounded], b[rounded], check_exact=exact, rtol=1e-5, atol=0)
    pd.testing.assert_frame_equal(a[update_angles], b[update_angles], check_exact=exact, rtol=0, atol=UPDATE_ANGLE_ATOL)
    summary_a, summary_b = runs.read_summary(packed), runs.read_summary(alone)
    assert summary_a.keys() == summary_b.keys()
    assert {k: v for k, v in summary_a.items() if k != "wall_seconds"} == \
           {k: v for k, v in summary_b.items() if k != "wall_seconds"}


def assert_pack_equals_one_by_one(config: TrainConfig, tmp_path: Path, data_dir: Path, strategy: str,
                                  seeds: list[int] = SEEDS) -> list[dict]:
    summaries = train_pack(config, seeds, tmp_path / "pack", data_dir=data_dir, quiet=True, strategy=strategy)
    alone = one_by_one(config, seeds, tmp_path / "alone", data_dir)
    assert [s["run_id"] for s in summaries] == [s["run_id"] for s in alone]
    for summary in summaries:
        assert_same_run_folders(tmp_path / "pack" / summary["run_id"], tmp_path / "alone" / summary["run_id"],
                                exact=strategy == "loop")
    return summaries


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch, rule", [("conv", "qagrel"), ("loccon", "qagrel"), ("conv", "bp"), ("loccon", "bp")])
def test_a_vmapped_pack_gives_the_epoch_logs_of_the_runs_one_by_one(arch, rule, device, data, tmp_path):
    assert_pack_equals_one_by_one(tiny(arch=arch, rule=rule, device=device), tmp_path, data, "vmap")


@pytest.mark.parametrize("device", DEVICES)
def test_a_vmapped_pack_keeps_adam_per_member(device, data, tmp_path):
    assert_pack_equals_one_by_one(tiny(arch="fc", rule="bp", optimizer="adam", lr=1e-3, max_epochs=3, device=device),
                                  tmp_path, data, "vmap")


@pytest.mark.cuda
def test_a_pack_on_cuda_is_vmapped_by_default(data, tmp_path):
    out = StringIO()
    train_pack(tiny(device="cuda", max_epochs=1), SEEDS, tmp_path, data_dir=data, console=Console(file=out))
    assert f"packing {len(SEEDS)} runs (vmap)" in out.getvalue()


def test_the_loop_strategy_is_bitwise_the_runs_one_by_one(data, tmp_path):
    assert_pack_equals_one_by_one(tiny(), tmp_path, data, "loop")


@pytest.mark.parametrize("device", DEVICES)
def test_members_stop_at_their_own_epochs_and_the_others_go_on(device, data, tmp_path):
    # Measured on these seeds (on the CPU): patience 1 stops them at different epochs, so the pack shrinks
    # twice, and the members left keep their Adam moments across each repacking.
    config = tiny(arch="fc", rule="bp", optimizer="adam", lr=3e-3, patience=1, max_epochs=8, device=device)
    summaries = assert_pack_equals_one_by_one(config, tmp_path, data, "vmap", seeds=[0, 1, 2, 3])
    assert len({s["stop_epoch"] for s in summaries}) >= 2, "the seeds must stop at different epochs"


@pytest.mark.parametrize("device", DEVICES)
def test_a_killed_pack_resumes_every_member_exactly(device, data, tmp_path, monkeypatch):
    # random W': the feedback buffers must resume too; on CUDA so must the members' device generators.
    config = tiny(arch="fc", feedback="random", max_epochs=4, device=device)
    saves = {"n": 0}
    real_save = training.save_progress

    def save_then_die(*args):
        if saves["n"] == len(SEEDS) + 1:  # killed in epoch 2, after one member saved it: members at epochs 2, 1, 1
            raise KeyboardInterrupt
        saves["n"] += 1
        real_save(*args)

    monkeypatch.setattr(training, "save_progress", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_pack(config, SEEDS, tmp_path / "pack", data_dir=data, quiet=True, strategy="vmap")
    monkeypatch.setattr(training, "save_progress", real_save)
    folders = sorted((tmp_path / "pack").iterdir())
    assert sorted(len(runs.read_log(f)) for f in folders) == [1, 1, 2]
    assert not any((f / runs.SUMMARY_FILE).exists() for f in folders)

    summaries = train_pack(config, SEEDS, tmp_path / "pack", data_dir=data, quiet=True, strategy="vmap")
    alone = one_by_one(config, SEEDS, tmp_path / "alone", data)
    for summary, reference in zip(summaries, alone):
        assert_same_run_folders(tmp_path / "pack" / summary["run_id"], tmp_path / "alone" / reference["run_id"],
                                exact=False)
    assert any(c.startswith("angle_") for c in runs.read_log(tmp_path / "pack" / summaries[0]["run_id"]).columns)

    stamps = [(tmp_path / "pack" / s["run_id"] / runs.LOG_FILE).stat().st_mtime_ns for s in summaries]
    assert train_pack(config, SEEDS, tmp_path / "pack", data_dir=data, quiet=True) == summaries  # not redone
    assert stamps == [(tmp_path / "pack" / s["run_id"] / runs.LOG_FILE).stat().st_mtime_ns for s in summaries]


def test_qagrel_train_seeds_writes_one_run_folder_per_seed(data, tmp_path):
    result = CliRunner().invoke(app, ["train", "--seeds", "3,5", "--arch", "fc", "--fc", "16", "--train-size", "200",
                                      "--max-epochs", "1", "--device", "cpu", "--data-dir", str(data),
                                      "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    ids = [tiny(arch="fc", seed=s, val_size=1000, max_epochs=1).run_id for s in (3, 5)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(ids)
    assert all(runs.read_summary(tmp_path / i)["status"] == "finished" for i in ids)


@pytest.mark.parametrize("text, seeds", [("0-9", list(range(10))), ("0,3,5", [0, 3, 5]), ("4", [4]),
                                         ("0-2, 7", [0, 1, 2, 7])])
def test_seed_lists(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "a", "3-1", "-1", "0-2,2", "1.5"])
def test_bad_seed_lists_are_refused(text):
    with pytest.raises(QagrelError):
        parse_seeds(text)


@pytest.mark.parametrize("reading", [{"input_scaling": "standardize"}, {"feedback": "fixed"}])
def test_a_vmapped_pack_gives_the_logs_of_the_runs_one_by_one_under_other_readings(reading, data, tmp_path):
    # Standardised input: each member scales by its own training split's statistics (test images included).
    assert_pack_equals_one_by_one(tiny(arch="fc", **reading), tmp_path, data, "vmap", seeds=[0, 1])


def test_a_vmapped_pack_gives_the_logs_of_the_runs_one_by_one_with_another_conv_dropout(data, tmp_path):
    assert_pack_equals_one_by_one(tiny(conv_dropout=0.2), tmp_path, data, "vmap", seeds=[0, 1])
