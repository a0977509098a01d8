"""Batch normalisation after the conv/loccon layers (the authors' later code), under both rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qagrel_cli.core.config import Arch, Init, Padding, QagrelError, TrainConfig
from qagrel_cli.core.models import NormTrace, build_network, hidden_units
from qagrel_cli.core.packs import Member, VmapPack
from qagrel_cli.core.rules import apply_weight_changes, qagrel_weight_changes, reward_prediction_error, select_action
from qagrel_cli.core.stopping import RunProgress
from qagrel_cli.core.trainer import Trainer

from conftest import random_splits

ALPHA = 0.3


def normalised_net(arch: Arch, padding: Padding = Padding.same) -> torch.nn.Module:
    """A small conv/loccon net with batch norm, in float64, its scale and shift moved off the identity."""
    net = build_network(arch, (12, 8), (2, 9, 9), 4, conv_dropout=0.3, padding=padding, batch_norm=True).double()
    net.reset_weights(Init.normal, 0.3, True, torch.Generator().manual_seed(3))
    with torch.no_grad():
        for bn in net.batch_norm.values():
            bn.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(4))
            bn.bias.uniform_(-0.2, 0.2, generator=torch.Generator().manual_seed(5))
    return net


@pytest.mark.parametrize("arch", [Arch.conv, Arch.loccon])
@pytest.mark.parametrize("padding", [Padding.valid, Padding.same])
def test_qagrel_changes_with_batch_norm_equal_minus_alpha_times_the_gradient_of_the_selected_error(arch, padding):
    # With W' = W the feedback through batch norm is its vector-Jacobian product at the batch's statistics,
    # so every change (W, and batch norm's scale and shift) is -alpha x d/dparam of mean(delta^2 / 2).
    net = normalised_net(arch, padding)
    net.train()  # batch statistics and dropout on: the same masks are drawn in both passes
    x = torch.rand(6, 2, 9, 9, dtype=torch.float64)
    traces: dict[int, NormTrace] = {}
    with torch.no_grad():
        q, activities = net(x, torch.Generator().manual_seed(5), traces=traces)
    action = select_action(q, 0.5, torch.Generator().manual_seed(7))
    labels = torch.randint(0, 4, (6,), generator=torch.Generator().manual_seed(9))
    reward, delta = reward_prediction_error(q, action, labels)
    changes = qagrel_weight_changes(net, activities, action, delta, ALPHA, traces)

    q2, _ = net(x, torch.Generator().manual_seed(5))
    error = (0.5 * (reward - q2.gather(1, action[:, None]).squeeze(1)) ** 2).mean()
    parameters = list(net.parameters())
    grads = torch.autograd.grad(error, parameters)
    assert len(changes) == len(parameters) == len(net.layers) + 4  # every W, then two scales and shifts
    for change, grad in zip(changes, grads):
        torch.testing.assert_close(change, -ALPHA * grad, atol=1e-12, rtol=1e-9)
    assert all(c.abs().max() > 1e-6 for c in changes), "the test must exercise non-zero updates"


def test_apply_weight_changes_moves_batch_norm_scale_and_shift_and_every_feedback_weight_with_its_w():
    net = normalised_net(Arch.conv)
    changes = [torch.full_like(p, 0.01 * (k + 1)) for k, p in enumerate(net.parameters())]
    before = [p.detach().clone() for p in net.parameters()]
    feedback_before = [layer.feedback_weight.clone() for layer in net.layers]
    apply_weight_changes(net, changes)
    for p, p0, change in zip(net.parameters(), before, changes):
        torch.testing.assert_close(p.detach() - p0, change)
    for layer, b0, change in zip(net.layers, feedback_before, changes):
        torch.testing.assert_close(layer.feedback_weight - b0, change)


def test_the_feedback_pass_of_a_batch_normalised_net_refuses_to_run_without_the_forward_traces():
    net = normalised_net(Arch.conv)
    net.train()
    with torch.no_grad():
        q, activities = net(torch.rand(4, 2, 9, 9, dtype=torch.float64), torch.Generator().manual_seed(0))
    action = q.argmax(1)
    _, delta = reward_prediction_error(q, action, action)
    with pytest.raises(ValueError, match="traces"):
        qagrel_weight_changes(net, activities, action, delta, ALPHA)


def test_same_padding_gives_the_authors_hidden_units_and_valid_keeps_table_1s():
    assert hidden_units(Arch.conv, (500,), (1, 28, 28)) == "21632-5408-500"
    assert hidden_units(Arch.conv, (500,), (1, 28, 28), Padding.same) == "25088-6272-500"
    assert hidden_units(Arch.conv, (500,), (3, 32, 32), Padding.same) == "32768-8192-500"
    assert hidden_units(Arch.loccon, (500,), (3, 32, 32), Padding.same) == "32768-8192-500"


def test_a_batch_normalised_net_evaluates_with_its_running_statistics():
    net = normalised_net(Arch.conv)
    x = torch.rand(5, 2, 9, 9, dtype=torch.float64)
    net.eval()
    with torch.no_grad():
        alone = net(x[:1])[0]
        in_batch = net(x)[0][:1]
    torch.testing.assert_close(alone, in_batch)  # no batch statistics: an image's output is its own


def test_normal_init_draws_weights_with_the_given_sd():
    net = build_network(Arch.fc, (1500, 1000), (1, 28, 28), 10)
    net.reset_weights(Init.normal, 0.01, False, torch.Generator().manual_seed(0))
    w = net.layers[0].weight.detach()
    assert abs(float(w.std()) - 0.01) < 2e-4 and abs(float(w.mean())) < 2e-4
    assert not torch.equal(w, net.layers[0].feedback_weight)  # W' drawn apart from W


def test_batch_norm_and_padding_are_refused_for_a_fully_connected_net():
    with pytest.raises(QagrelError, match="batch_norm applies to arch conv and loccon only"):
        TrainConfig(arch=Arch.fc, batch_norm=True)
    with pytest.raises(QagrelError, match="padding applies to arch conv and loccon only"):
        TrainConfig(arch=Arch.fc, padding="same")


def test_a_vmapped_seed_pack_refuses_batch_norm_in_one_line():
    trainers = [Trainer(TrainConfig(arch=Arch.conv, fc=(8,), batch_norm=True, seed=s, val_size=50), random_splits(s),
                        torch.device("cpu")) for s in (0, 1)]
    with pytest.raises(QagrelError, match="vmapped seed pack cannot train batch_norm"):
        VmapPack([Member(k, t.config, Path("unused"), t, RunProgress()) for k, t in enumerate(trainers)])


def test_qagrel_trains_a_batch_normalised_net_scale_and_shift_included():
    trainer = Trainer(TrainConfig(arch=Arch.conv, fc=(8,), batch_norm=True, val_size=50), random_splits(0, n_train=40),
                      torch.device("cpu"))
    scale_before = trainer.net.batch_norm["1"].weight.detach().clone()
    trainer.run_epoch(1)
    assert not torch.equal(trainer.net.batch_norm["1"].weight.detach(), scale_before)
    assert not torch.equal(trainer.net.batch_norm["1"].running_mean, torch.zeros(32))
