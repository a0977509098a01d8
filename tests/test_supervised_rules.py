"""The rule seam and the rules Q-AGREL is placed among: feedback alignment (FA), direct feedback alignment
(DFA), and every rule's update angle to Error-BP's gradient."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from qagrel_cli.core.catalog import ARCHS, RULES, Arch, QagrelError, Rule, arch_info, rule_info
from qagrel_cli.core.config import Init, TrainConfig
from qagrel_cli.core.models import build_network
from qagrel_cli.core.packs import Member, VmapPack
from qagrel_cli.core.rules import RULE_UPDATES, StepSettings, angles_to_bp, bp_gradients, dfa_gradients, fa_gradients
from qagrel_cli.core.run_folder import BP_ANGLE_PREFIX
from qagrel_cli.core.stopping import RunProgress
from qagrel_cli.core.trainer import Trainer, record_epoch

from conftest import random_splits

SETTINGS = StepSettings(lr=0.1, epsilon=0.02)


def double_net(arch: Arch, batch_norm: bool = False, direct_feedback: bool = False, symmetric: bool = True):
    """A small float64 net of `arch` with dropout on its strided conv layer."""
    net = build_network(arch, (12, 8), (2, 9, 9), 4, conv_dropout=0.3, batch_norm=batch_norm,
                        direct_feedback=direct_feedback).double()
    net.reset_weights(Init.uniform, 0.3, symmetric, torch.Generator().manual_seed(3))
    return net


def batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(9)
    return torch.rand(n, 2, 9, 9, dtype=torch.float64, generator=gen), torch.randint(0, 4, (n,), generator=gen)


def with_draws(settings: StepSettings = SETTINGS, seed: int = 5) -> StepSettings:
    """`settings` with a fresh generator at `seed`: two calls draw the same dropout masks."""
    return StepSettings(settings.lr, settings.epsilon, torch.Generator().manual_seed(seed))


def test_every_rule_has_a_record_and_an_update_function_and_every_architecture_a_record():
    assert set(RULES) == set(Rule) == set(RULE_UPDATES)
    assert set(ARCHS) == set(Arch)


@pytest.mark.parametrize("lookup, name", [(rule_info, "hebb"), (arch_info, "resnet")])
def test_an_unknown_rule_or_architecture_is_an_error_naming_the_known_ones(lookup, name):
    with pytest.raises(QagrelError, match=f"unknown (rule|arch) '{name}'; choose one of: "):
        lookup(name)


def test_a_config_with_an_unknown_rule_is_refused():
    with pytest.raises(QagrelError, match="unknown rule 'hebb'"):
        TrainConfig(rule="hebb")


@pytest.mark.parametrize("arch, batch_norm", [(Arch.fc, False), (Arch.conv, False), (Arch.loccon, False),
                                              (Arch.conv, True)])
def test_fa_with_feedback_weights_equal_to_the_forward_weights_is_error_bp_exactly(arch, batch_norm):
    net = double_net(arch, batch_norm, symmetric=True)  # W' = W
    net.train()
    x, labels = batch()
    fa, _ = fa_gradients(net, x, labels, with_draws())
    bp, _ = bp_gradients(net, x, labels, with_draws())
    assert len(fa) == len(bp) == len(list(net.parameters()))
    for got, want in zip(fa, bp):
        torch.testing.assert_close(got, want, atol=1e-13, rtol=1e-10)


def test_fa_sends_its_error_through_the_feedback_weights_not_the_forward_weights():
    net = double_net(Arch.fc, symmetric=False)
    x, labels = batch()
    fa, _ = fa_gradients(net, x, labels, SETTINGS)
    bp, _ = bp_gradients(net, x, labels, SETTINGS)
    torch.testing.assert_close(fa[-1], bp[-1])  # the output layer's error is Error-BP's
    assert not torch.allclose(fa[0], bp[0])  # below it, W' (drawn apart from W) carries it


def test_dfa_matches_its_reference_computed_from_the_equations():
    # Nokland (2016): e = softmax(q) - onehot; hidden layer n gets (e B_n) * f'(a_n); dW_n = its outer product
    # with the layer's input, averaged over the batch. Computed here for a fully connected net, by hand.
    net = double_net(Arch.fc, direct_feedback=True)
    net.eval()
    x, labels = batch()
    grads, _ = dfa_gradients(net, x, labels, SETTINGS)
    w1, w2, w3 = (layer.weight.detach() for layer in net.layers)
    b1, b2 = net.direct_feedback(0), net.direct_feedback(1)
    h0 = x.flatten(1)
    a1 = h0 @ w1.t()
    h1 = a1.clamp_min(0)
    a2 = h1 @ w2.t()
    h2 = a2.clamp_min(0)
    q = h2 @ w3.t()
    e = (F.softmax(q, dim=1) - F.one_hot(labels, 4).double()) / x.shape[0]
    d2 = (e @ b2) * (a2 > 0)
    d1 = (e @ b1) * (a1 > 0)
    for got, want in zip(grads, (d1.t() @ h0, d2.t() @ h1, e.t() @ h2)):
        torch.testing.assert_close(got, want, atol=1e-13, rtol=1e-10)


def test_dfa_matrices_have_one_row_per_class_and_one_column_per_hidden_unit():
    net = build_network(Arch.conv, (500,), (1, 28, 28), 10, direct_feedback=True)
    assert [tuple(net.direct_feedback(n).shape) for n in range(3)] == [(10, 21632), (10, 5408), (10, 500)]


@pytest.mark.parametrize("rule", [Rule.bp, Rule.fa])
def test_update_angle_to_bp_is_zero_for_bp_and_for_fa_with_reciprocal_feedback(rule):
    net = double_net(Arch.conv, symmetric=True)
    x, labels = batch(20)
    assert max(angles_to_bp(net, rule, x, labels, SETTINGS)) < 1e-4


def test_update_angle_to_bp_of_qagrel_is_measured_with_its_own_action_draws():
    net = double_net(Arch.conv, symmetric=True)
    x, labels = batch(20)
    first = angles_to_bp(net, Rule.qagrel, x, labels, with_draws(seed=1))
    assert first == angles_to_bp(net, Rule.qagrel, x, labels, with_draws(seed=1))  # same draws, same angles
    assert all(0 < a < 180 for a in first) and len(first) == len(net.layers)


@pytest.mark.parametrize("rule", list(Rule))
def test_every_rule_trains_an_epoch_and_logs_one_update_angle_per_layer(rule):
    trainer = Trainer(TrainConfig(arch="conv", fc=(8,), rule=rule, val_size=50), random_splits(0, n_train=100),
                      torch.device("cpu"))
    before = [layer.weight.detach().clone() for layer in trainer.net.layers]
    progress = RunProgress(epoch=1)
    rewarded, loss = trainer.run_epoch(1)
    record_epoch(trainer, progress, rewarded=float(rewarded), loss=float(loss), val_acc=0.1, test_acc=0.1,
                 train_seconds=1.0, epoch_seconds=1.0)
    angles = [v for k, v in progress.rows[-1].items() if k.startswith(BP_ANGLE_PREFIX)]
    assert len(angles) == len(trainer.net.layers) and all(0 <= a <= 180 for a in angles)
    assert all(not torch.equal(w, layer.weight) for w, layer in zip(before, trainer.net.layers))


@pytest.mark.parametrize("rule", [Rule.fa, Rule.dfa])
def test_fa_and_dfa_never_change_their_feedback(rule):
    trainer = Trainer(TrainConfig(arch="fc", fc=(16, 8), rule=rule, val_size=50), random_splits(0, n_train=100),
                      torch.device("cpu"))
    feedback = {name: t.clone() for name, t in trainer.net.named_buffers()}
    trainer.run_epoch(1)
    for name, t in trainer.net.named_buffers():
        assert torch.equal(t, feedback[name]), name


def test_fa_draws_its_feedback_weights_apart_from_the_forward_weights():
    trainer = Trainer(TrainConfig(arch="fc", fc=(16, 8), rule="fa", val_size=50), random_splits(0), torch.device("cpu"))
    assert not any(torch.equal(layer.weight, layer.feedback_weight) for layer in trainer.net.layers)


def test_a_vmapped_seed_pack_refuses_a_rule_it_cannot_vmap():
    trainers = [Trainer(TrainConfig(arch="fc", fc=(8,), rule="fa", seed=s, val_size=50), random_splits(s),
                        torch.device("cpu")) for s in (0, 1)]
    with pytest.raises(QagrelError, match="vmapped seed pack cannot train rule fa"):
        VmapPack([Member(k, t.config, Path("unused"), t, RunProgress()) for k, t in enumerate(trainers)])
