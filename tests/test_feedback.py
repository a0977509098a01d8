"""The feedback modes (docs/feedback.md): what each does to W' while W learns, and what the log records.

- symmetric (the paper): W' starts equal to W and gets every change W gets, so it stays W;
- random: W' starts as its own draw and gets every change W gets;
- fixed: W' starts as its own draw and never changes (feedback alignment).

The weight tests train on random images (the rule does not care what it learns), for a few
steps of every architecture, through the Trainer that a run uses and through the vmapped seed
pack; one short run on real MNIST checks what the log records.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from qagrel_cli.core import run_folder, training
from qagrel_cli.core.config import Arch, Feedback, Init, TrainConfig, paper_lr
from qagrel_cli.core.data import make_splits
from qagrel_cli.core.models import build_network
from qagrel_cli.core.packs import Member, VmapPack
from qagrel_cli.core.rules import alignment_angles, qagrel_step
from qagrel_cli.core.stopping import RunProgress
from qagrel_cli.core.trainer import Trainer
from qagrel_cli.sweeps.sweep_file import load_sweep

from conftest import load_with_small_test_set, random_splits

ARCHS = ["fc", "conv", "loccon"]
EPOCHS = 2  # 300 random training images, batch 100: 6 weight updates
# W' stays bitwise equal to W. acos is ill-conditioned at 1 (acos(1 - e) = sqrt(2e) rad), so the
# float64 rounding of the cosine of equal vectors (e ~ 1e-16) still leaves up to about 1e-6 degrees.
SYMMETRIC_ANGLE_TOLERANCE = 1e-4


def small_config(arch: str, feedback: str, seed: int = 0) -> TrainConfig:
    """A small network of `arch` (fc: two hidden layers) with `feedback`, on the CPU."""
    return TrainConfig(arch=arch, fc="32,16" if arch == "fc" else "16", feedback=feedback, seed=seed, device="cpu",
                       val_size=50)


def weights(net) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A copy of every layer's (W, W')."""
    return [(layer.weight.detach().clone(), layer.feedback_weight.clone()) for layer in net.layers]


def trained(arch: str, feedback: str) -> tuple[Trainer, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A Trainer after EPOCHS epochs on random images, and its weights before them."""
    trainer = Trainer(small_config(arch, feedback), random_splits(), torch.device("cpu"))
    before = weights(trainer.net)
    for epoch in range(1, EPOCHS + 1):
        trainer.run_epoch(epoch)
    return trainer, before


def trained_pack(arch: str, feedback: str) -> list[tuple[Trainer, list[tuple[torch.Tensor, torch.Tensor]]]]:
    """Seeds 0 and 1 after one epoch as a vmapped seed pack (the GPU strategy, run here on the CPU): each
    member's Trainer, whose tensors are views into the pack's stacks, and its weights before the epoch."""
    trainers = [Trainer(small_config(arch, feedback, seed=s), random_splits(s), torch.device("cpu")) for s in (0, 1)]
    before = [weights(t.net) for t in trainers]
    VmapPack([Member(k, t.config, Path("unused"), t, RunProgress()) for k, t in enumerate(trainers)]).run_epoch()
    return list(zip(trainers, before))


def assert_every_w_changed(net, before) -> None:
    for n, (layer, (w0, _)) in enumerate(zip(net.layers, before)):
        assert not torch.equal(layer.weight.detach(), w0), f"layer {n}: W did not learn, the test proves nothing"


def assert_w_prime_got_w_s_change(net, before, steps: int) -> None:
    """W' - W'_0 == W - W_0 in every layer, to the rounding of `steps` float32 adds."""
    for n, (layer, (w0, b0)) in enumerate(zip(net.layers, before)):
        assert not torch.equal(b0, w0), "random W' must start apart from W"
        w, b = layer.weight.detach(), layer.feedback_weight
        # The same change added to different numbers rounds differently: each add is exact to half a float32
        # step (2^-24 relative) of its sum, in W and W' alike, so after `steps` adds the two accumulated
        # changes differ by at most `steps` float32 steps (2^-23 relative) of the largest weight.
        largest = float(max(w0.abs().max(), b0.abs().max(), w.abs().max(), b.abs().max()))
        tolerance = steps * largest * 2.0**-23
        assert float((w - w0).abs().max()) > 100 * tolerance, f"layer {n}: the change is too small to compare"
        torch.testing.assert_close(b - b0, w - w0, rtol=0, atol=tolerance, msg=f"layer {n}")


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: two cores are shared with other work, and these steps are too small to gain from two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------- fixed

def test_fixed_feedback_qagrel_step_without_learn_feedback_leaves_w_prime_unchanged():
    net = build_network(Arch.fc, (6, 5), (1, 1, 4), 3)
    net.reset_weights(Init.uniform, 0.8, False, torch.Generator().manual_seed(0))
    before = weights(net)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        x, labels = torch.rand(8, 1, 1, 4, generator=gen), torch.randint(0, 3, (8,), generator=gen)
        qagrel_step(net, x, labels, lr=0.5, epsilon=0.5, generator=gen, learn_feedback=False)
    assert_every_w_changed(net, before)
    for layer, (_, b0) in zip(net.layers, before):
        assert torch.equal(layer.feedback_weight, b0)


@pytest.mark.parametrize("arch", ARCHS)
def test_fixed_feedback_trainer_never_changes_w_prime(arch):
    trainer, before = trained(arch, "fixed")
    assert_every_w_changed(trainer.net, before)
    for layer, (_, b0) in zip(trainer.net.layers, before):
        assert torch.equal(layer.feedback_weight, b0)


def test_fixed_feedback_vmapped_pack_never_changes_any_member_s_w_prime():
    for trainer, member_before in trained_pack("fc", "fixed"):
        assert_every_w_changed(trainer.net, member_before)
        for layer, (_, b0) in zip(trainer.net.layers, member_before):
            assert torch.equal(layer.feedback_weight, b0)


# ----------------------------------------------------------------- symmetric

@pytest.mark.parametrize("arch", ARCHS)
def test_symmetric_feedback_stays_at_angle_zero(arch):
    trainer, before = trained(arch, "symmetric")
    assert_every_w_changed(trainer.net, before)
    assert max(alignment_angles(trainer.net)) < SYMMETRIC_ANGLE_TOLERANCE
    for layer in trainer.net.layers:  # what the angle measures, exactly: W' is W, bit for bit
        assert torch.equal(layer.feedback_weight, layer.weight.detach())


# ----------------------------------------------------------------- random

@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_layer_whose_weights_are_not_finite_has_no_angle(bad):
    net = build_network(Arch.fc, (8,), (1, 4, 4), 3)
    net.reset_weights(Init.uniform, 0.05, False, torch.Generator().manual_seed(0))
    with torch.no_grad():
        net.layers[1].weight[0, 0] = bad
    angles = alignment_angles(net)
    assert math.isnan(angles[1])
    assert all(0 < a < 180 for k, a in enumerate(angles) if k != 1)


@pytest.mark.parametrize("arch", ARCHS)
def test_random_feedback_receives_exactly_w_s_change(arch):
    trainer, before = trained(arch, "random")
    assert_every_w_changed(trainer.net, before)
    assert_w_prime_got_w_s_change(trainer.net, before, steps=EPOCHS * trainer.batches_per_epoch)


def test_random_feedback_vmapped_pack_gives_each_member_s_w_prime_w_s_change():
    for trainer, member_before in trained_pack("conv", "random"):
        assert_every_w_changed(trainer.net, member_before)
        assert_w_prime_got_w_s_change(trainer.net, member_before, steps=trainer.batches_per_epoch)


# ----------------------------------------------------------------- a real run

def test_a_fixed_feedback_run_logs_every_layer_s_angle_to_its_never_changed_w_prime(small_mnist, tmp_path,
                                                                                      monkeypatch):
    # The run's weights at the end of each epoch, captured as the epoch loop saves or finishes the run
    # (a finished run keeps no checkpoint).
    snapshots: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    save, finish = training.save_progress, training.finish_run

    def saving(out, trainer, progress, *args):
        snapshots[progress.epoch] = weights(trainer.net)
        return save(out, trainer, progress, *args)

    def finishing(out, trainer, progress, *args):
        snapshots[progress.epoch] = weights(trainer.net)
        return finish(out, trainer, progress, *args)

    monkeypatch.setattr(training, "save_progress", saving)
    monkeypatch.setattr(training, "finish_run", finishing)
    run_dir = tmp_path / "run"
    # The library's train: `qagrel train` has no --val-size (its runs validate on 1000 images).
    config = TrainConfig(feedback="fixed", arch="fc", train_size=300, val_size=100, max_epochs=2, device="cpu")
    training.train(config, run_dir, data_dir=small_mnist, quiet=True)
    assert run_folder.read_config(run_dir) == config
    log = run_folder.read_log(run_dir)
    angle_columns = [f"angle_{n}" for n in range(4)]  # fc 1500-1000-500: three hidden layers and the output
    assert log["epoch"].tolist() == [1, 2] and sorted(c for c in log.columns if c.startswith("angle_")) == angle_columns
    assert log[angle_columns].notna().all().all()

    # The initial draw, rebuilt from the seed as the run drew it: W' at every epoch's end is still that draw.
    raw = load_with_small_test_set(config.dataset, small_mnist)
    initial = Trainer(config, make_splits(raw, config.seed, config.val_size, config.train_size), torch.device("cpu"))
    initial_w_prime = [layer.feedback_weight for layer in initial.net.layers]
    assert sorted(snapshots) == [1, 2]
    for epoch, state in snapshots.items():
        assert all(torch.equal(b, b0) for (_, b), b0 in zip(state, initial_w_prime)), f"W' changed by epoch {epoch}"
        assert not torch.equal(state[0][0], initial.net.layers[0].weight.detach())
        # The logged angles are those between that epoch's W and the initial W'.
        with torch.no_grad():
            for layer, (w, _) in zip(initial.net.layers, state):
                layer.weight.copy_(w)
        logged = log.loc[log["epoch"] == epoch, angle_columns].iloc[0].tolist()
        assert logged == pytest.approx(alignment_angles(initial.net), abs=1e-9)


# ----------------------------------------------------------------- run ids

def test_each_feedback_mode_is_a_run_of_its_own():
    ids = {mode: TrainConfig(arch="fc", feedback=mode).run_id for mode in Feedback}
    assert len(set(ids.values())) == 3
    assert ids[Feedback.symmetric] == TrainConfig(arch="fc").run_id  # the paper's runs keep their ids


# ----------------------------------------------------------------- the study

def test_the_feedback_sweep_runs_each_mode_at_table1_alpha_and_fc_also_at_alpha_0_1_under_the_full_protocol():
    sweep = load_sweep(Path(__file__).resolve().parents[1] / "sweeps" / "feedback.yaml")
    assert sweep.name == "feedback" and len({c.run_id for c in sweep.configs}) == 24
    at_table1_alpha = [c for c in sweep.configs if c.lr == paper_lr(c.rule, c.arch, c.dataset)]
    assert {(c.arch.value, c.fc, c.lr) for c in at_table1_alpha} == {("fc", (1500, 1000, 500), 0.5),
                                                                      ("conv", (500,), 1.0)}
    assert sorted((c.arch.value, c.feedback.value, c.seed) for c in at_table1_alpha) == sorted(
        (arch, mode.value, seed) for arch in ("fc", "conv") for mode in Feedback for seed in range(3))
    # fixed diverged on fc at alpha 0.5: fc also runs at alpha 0.1, fixed and symmetric
    assert sorted((c.arch.value, c.lr, c.feedback.value, c.seed) for c in sweep.configs
                  if c not in at_table1_alpha) == sorted(
        ("fc", 0.1, mode, seed) for mode in ("symmetric", "fixed") for seed in range(3))
    assert {(c.dataset.value, c.rule.value, c.max_epochs, c.patience) for c in sweep.configs} == {
        ("mnist", "qagrel", 500, 20)}
