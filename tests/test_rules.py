"""The Q-AGREL rule against the paper's equations, computed independently here."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qagrel_cli.core.config import Arch, Init
from qagrel_cli.core.models import build_network
from qagrel_cli.core.rules import (apply_weight_changes, qagrel_weight_changes, reward_prediction_error,
                              select_action)

ALPHA = 0.3


def small_fc_net(hidden=(6, 5), inputs=4, classes=3, symmetric=False, seed=0):
    """input -> hidden... -> output, fully connected, weights large enough for mixed-sign activity."""
    net = build_network(Arch.fc, hidden, (1, 1, inputs), classes)
    net.reset_weights(Init.uniform, 0.8, symmetric, torch.Generator().manual_seed(seed))
    return net


def trial_batch(net, x, classes, seed=1, epsilon=0.5):
    """Forward pass, max-Boltzmann selection and RPE for a batch; labels drawn at random."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (x.shape[0],), generator=gen)
    with torch.no_grad():
        q, activities = net(x)
    action = select_action(q, epsilon, gen)
    reward, delta = reward_prediction_error(q, action, labels)
    return q, activities, action, reward, delta


def test_weight_changes_equal_equations_6_to_10_synapse_by_synapse():
    torch.manual_seed(0)
    net = small_fc_net(symmetric=False)  # W' != W: the feedback must go through W'
    net.eval()
    x = torch.rand(7, 1, 1, 4)
    q, activities, action, _, delta = trial_batch(net, x, classes=3)
    changes = qagrel_weight_changes(net, activities, action, delta, ALPHA)

    u, v, w = (layer.weight.detach() for layer in net.layers)  # u[j, i], v[k, j], w[l, k]
    u_fb, v_fb, w_fb = (layer.feedback_weight for layer in net.layers)  # w'[l, k]: from l back to k
    xs = x.flatten(1)
    y1 = torch.relu(xs @ u.t())
    y2 = torch.relu(y1 @ v.t())
    g1, g2 = (y1 > 0).float(), (y2 > 0).float()
    batch, n_in, n_j, n_k, n_l = xs.shape[0], u.shape[1], u.shape[0], v.shape[0], w.shape[0]
    du, dv, dw = torch.zeros_like(u), torch.zeros_like(v), torch.zeros_like(w)
    for b in range(batch):
        s, d = int(action[b]), float(delta[b])
        z = torch.zeros(n_l)
        z[s] = 1.0
        for k in range(n_k):
            for l in range(n_l):
                dw[l, k] += ALPHA * d * y2[b, k] * z[l] / batch  # eq. 6
        fb2 = [sum(w_fb[l, k] * z[l] for l in range(n_l)) for k in range(n_k)]  # eq. 8
        for j in range(n_j):
            for k in range(n_k):
                dv[k, j] += ALPHA * d * y1[b, j] * g2[b, k] * fb2[k] / batch  # eq. 7
        fb1 = [sum(g2[b, k] * v_fb[k, j] * fb2[k] for k in range(n_k)) for j in range(n_j)]  # eq. 10
        for i in range(n_in):
            for j in range(n_j):
                du[j, i] += ALPHA * d * xs[b, i] * g1[b, j] * fb1[j] / batch  # eq. 9

    for got, want in zip(changes, (du, dv, dw)):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert all(c.abs().max() > 1e-4 for c in changes), "the test must exercise non-zero updates"


def test_feedback_synapses_receive_the_identical_change():
    net = small_fc_net()
    net.eval()
    before = [(layer.weight.detach().clone(), layer.feedback_weight.clone()) for layer in net.layers]
    _, activities, action, _, delta = trial_batch(net, torch.rand(5, 1, 1, 4), classes=3)
    changes = qagrel_weight_changes(net, activities, action, delta, ALPHA)
    apply_weight_changes(net, changes)
    for layer, (w0, b0), change in zip(net.layers, before, changes):
        torch.testing.assert_close(layer.weight.detach() - w0, change)
        torch.testing.assert_close(layer.feedback_weight - b0, change)


def test_qagrel_update_equals_gradient_of_selected_unit_error_when_feedback_is_reciprocal():
    # Eqs. 17-20: with W' = W, dW = -alpha * dE/dW for E = delta^2 / 2 of the selected unit only.
    for arch in (Arch.conv, Arch.loccon, Arch.fc):
        net = build_network(arch, (12, 8), (2, 9, 9), 4)
        net.reset_weights(Init.uniform, 0.3, True, torch.Generator().manual_seed(3))
        x = torch.rand(6, 2, 9, 9)
        net.train()  # dropout on: the same masks must be drawn in both passes
        q, activities = net(x, torch.Generator().manual_seed(5))
        action = select_action(q.detach(), 0.5, torch.Generator().manual_seed(7))
        labels = torch.randint(0, 4, (6,), generator=torch.Generator().manual_seed(9))
        reward, delta = reward_prediction_error(q.detach(), action, labels)
        changes = qagrel_weight_changes(net, [a.detach() for a in activities], action, delta, ALPHA)

        q2, _ = net(x, torch.Generator().manual_seed(5))
        q_selected = q2.gather(1, action[:, None]).squeeze(1)
        error = (0.5 * (reward - q_selected) ** 2).mean()
        grads = torch.autograd.grad(error, [layer.weight for layer in net.layers])
        for change, grad in zip(changes, grads):
            torch.testing.assert_close(change, -ALPHA * grad, atol=1e-7, rtol=1e-4)


def test_weight_changes_do_not_depend_on_whether_autograd_records_the_forward_pass():
    # Training runs the forward under no_grad, where ReLUs work in place and the locally connected
    # layer keeps its patches for the synapse product; the gradient test above records a graph.
    for arch in (Arch.conv, Arch.loccon, Arch.fc):
        net = build_network(arch, (12, 8), (2, 9, 9), 4)
        net.reset_weights(Init.uniform, 0.3, True, torch.Generator().manual_seed(3))
        net.train()
        x = torch.rand(6, 2, 9, 9)
        labels = torch.randint(0, 4, (6,), generator=torch.Generator().manual_seed(9))
        results = []
        for grad_enabled in (True, False):
            with torch.set_grad_enabled(grad_enabled):
                q, activities = net(x, torch.Generator().manual_seed(5))
            q, activities = q.detach(), [a.detach() if grad_enabled else a for a in activities]
            action = select_action(q, 0.5, torch.Generator().manual_seed(7))
            _, delta = reward_prediction_error(q, action, labels)
            results.append(qagrel_weight_changes(net, activities, action, delta, ALPHA))
        for recorded, training_path in zip(*results):
            torch.testing.assert_close(training_path, recorded, atol=1e-7, rtol=1e-5)


def silent_unit_net():
    """3 hidden layers; hidden-2 unit 0 gets only negative input from non-negative activity: silent."""
    net = small_fc_net(hidden=(6, 5, 4), symmetric=False, seed=4)
    with torch.no_grad():
        net.layers[0].weight.abs_()  # positive inputs -> non-negative hidden-1 activity
        net.layers[1].weight[0] = -net.layers[1].weight[0].abs()
    net.eval()
    return net


def test_silent_unit_synapses_do_not_change():
    net = silent_unit_net()
    x = torch.rand(8, 1, 1, 4) + 0.1
    _, activities, action, _, delta = trial_batch(net, x, classes=3)
    assert (activities[2][:, 0] == 0).all() and (activities[2][:, 1:] > 0).any()
    changes = qagrel_weight_changes(net, activities, action, delta, ALPHA)
    assert (changes[1][0] == 0).all(), "synapses onto a silent unit must not change"
    assert changes[1][1:].abs().max() > 0


def test_silent_unit_passes_no_feedback():
    net = silent_unit_net()
    x = torch.rand(8, 1, 1, 4) + 0.1
    _, activities, action, _, delta = trial_batch(net, x, classes=3)
    reference = qagrel_weight_changes(net, activities, action, delta, ALPHA)
    with torch.no_grad():
        net.layers[1].feedback_weight[0] = 100.0  # the silent unit's feedback synapses down to hidden-1
    altered = qagrel_weight_changes(net, activities, action, delta, ALPHA)
    torch.testing.assert_close(altered[0], reference[0], atol=0, rtol=0)


def test_dropped_unit_neither_learns_nor_passes_feedback():
    net = build_network(Arch.conv, (10,), (1, 8, 8), 3)
    net.reset_weights(Init.uniform, 0.5, False, torch.Generator().manual_seed(0))
    net.train()
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        q, activities = net(x, torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)
    action = select_action(q, 0.5, gen)
    _, delta = reward_prediction_error(q, action, torch.randint(0, 3, (4,), generator=gen))
    last_hidden = activities[3]  # fc(10) output, dropout 0.3
    dropped = (last_hidden == 0).all(dim=0)
    assert dropped.any() and not dropped.all()
    reference = qagrel_weight_changes(net, activities, action, delta, ALPHA)
    assert (reference[2][dropped] == 0).all()
    with torch.no_grad():
        net.layers[2].feedback_weight[dropped] = 50.0
    altered = qagrel_weight_changes(net, activities, action, delta, ALPHA)
    torch.testing.assert_close(altered[1], reference[1], atol=0, rtol=0)


def test_only_the_selected_output_unit_learns():
    net = small_fc_net()
    net.eval()
    _, activities, action, _, delta = trial_batch(net, torch.rand(1, 1, 1, 4), classes=3)
    output_change = qagrel_weight_changes(net, activities, action, delta, ALPHA)[-1]
    others = [l for l in range(3) if l != int(action[0])]
    assert (output_change[others] == 0).all() and output_change[int(action[0])].abs().max() > 0


def test_action_selection_is_greedy_without_exploration():
    q = torch.randn(50, 10)
    assert torch.equal(select_action(q, 0.0), q.argmax(1))


def test_action_selection_explores_at_rate_epsilon():
    q = torch.zeros(20000, 10)
    q[:, 3] = 5.0  # softmax puts ~94% on unit 3, so exploration rarely matches greedy by chance
    action = select_action(q, 0.2, torch.Generator().manual_seed(0))
    p_other = 0.2 * (1 - F.softmax(q[0], 0)[3].item())
    assert abs((action != 3).float().mean().item() - p_other) < 0.005


def test_reward_is_one_only_for_the_label_and_rpe_is_reward_minus_q_selected():
    q = torch.tensor([[0.1, 0.7], [0.4, 0.2]])
    reward, delta = reward_prediction_error(q, torch.tensor([1, 1]), torch.tensor([1, 0]))
    torch.testing.assert_close(reward, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(delta, torch.tensor([1.0 - 0.7, 0.0 - 0.2]))
