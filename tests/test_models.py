"""Architectures (Table 1's hidden-unit strings) and the locally connected layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qagrel_cli.core.config import Arch, Init
from qagrel_cli.core.layers import FeedbackConv2d, LocallyConnected2d
from qagrel_cli.core.models import build_network

MNIST, CIFAR = (1, 28, 28), (3, 32, 32)


@pytest.mark.parametrize("arch, fc, shape, classes, expected", [
    (Arch.fc, (1500, 1000, 500), MNIST, 10, "1500-1000-500"),
    (Arch.conv, (500,), MNIST, 10, "21632-5408-500"),
    (Arch.conv, (1000, 500), MNIST, 10, "21632-5408-1000-500"),
    (Arch.loccon, (500,), MNIST, 10, "21632-5408-500"),
    (Arch.loccon, (1000, 500), MNIST, 10, "21632-5408-1000-500"),
    (Arch.conv, (500,), CIFAR, 10, "28800-7200-500"),
    (Arch.conv, (1000, 500), CIFAR, 10, "28800-7200-1000-500"),
    (Arch.loccon, (500,), CIFAR, 10, "28800-7200-500"),
    (Arch.loccon, (1000, 500), CIFAR, 100, "28800-7200-1000-500"),
])
def test_hidden_units_match_table_1(arch, fc, shape, classes, expected):
    net = build_network(arch, fc, shape, classes)
    assert net.hidden_units(shape) == expected
    assert net.layers[-1].weight.shape[0] == classes


def test_dropout_is_point_eight_after_the_strided_conv_and_point_three_after_the_last_hidden_layer():
    assert build_network(Arch.conv, (1000, 500), MNIST, 10).dropout == [0.0, 0.8, 0.0, 0.3]
    assert build_network(Arch.fc, (1500, 1000, 500), MNIST, 10).dropout == [0.0, 0.0, 0.0]


def test_networks_have_no_biases_and_feedback_weights_are_buffers():
    net = build_network(Arch.loccon, (500,), MNIST, 10)
    names = [n for n, _ in net.named_parameters()]
    assert all(n.endswith(".weight") for n in names)
    assert all(n.endswith("feedback_weight") for n, _ in net.named_buffers())
    assert len(list(net.buffers())) == len(names)


def test_symmetric_init_copies_w_into_w_prime_and_random_init_does_not():
    net = build_network(Arch.conv, (20,), (1, 8, 8), 3)
    net.reset_weights(Init.uniform, 0.02, True, torch.Generator().manual_seed(0))
    assert all(torch.equal(l.weight, l.feedback_weight) for l in net.layers)
    net.reset_weights(Init.uniform, 0.02, False, torch.Generator().manual_seed(0))
    assert not any(torch.equal(l.weight, l.feedback_weight) for l in net.layers)
    assert all(l.weight.abs().max() <= 0.02 for l in net.layers)


def loccon_and_conv(in_ch=2, out_ch=3, hw=(7, 6)):
    local = LocallyConnected2d(in_ch, out_ch, 3, hw)
    conv = FeedbackConv2d(in_ch, out_ch, 3)
    gen = torch.Generator().manual_seed(0)
    conv.reset_weights(lambda w: w.uniform_(-0.5, 0.5, generator=gen), False)
    with torch.no_grad():  # every position gets the conv's shared filters
        local.weight.copy_(conv.weight.reshape(out_ch, -1).expand_as(local.weight))
        local.feedback_weight.copy_(conv.feedback_weight.reshape(out_ch, -1).expand_as(local.weight))
    return local, conv


def test_locally_connected_with_identical_weights_everywhere_equals_conv2d():
    local, conv = loccon_and_conv()
    x = torch.randn(4, 2, 7, 6)
    torch.testing.assert_close(local(x), F.conv2d(x, conv.weight))


def test_locally_connected_feedback_and_synapse_product_match_conv_when_weights_are_shared():
    local, conv = loccon_and_conv()
    x, post = torch.randn(4, 2, 7, 6), torch.randn(4, 3, 5, 4)
    torch.testing.assert_close(local.feedback(post, x.shape), conv.feedback(post, x.shape))
    per_position = local.synapse_product(x, post)  # (positions, out, in*k*k)
    torch.testing.assert_close(per_position.sum(0), conv.synapse_product(x, post).reshape(3, -1))


def test_locally_connected_has_no_weight_sharing():
    local, _ = loccon_and_conv()
    x = torch.randn(2, 2, 7, 6)
    before = local(x)
    position = 7  # row 1, column 3 of the 5x4 output grid
    with torch.no_grad():
        local.weight[position] += 1.0
    after = local(x)
    changed = (after - before).abs().amax(dim=(0, 1)) > 0
    expected = torch.zeros(5, 4, dtype=torch.bool)
    expected[1, 3] = True
    assert torch.equal(changed, expected)
