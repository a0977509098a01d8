"""The two learning rules: Q-AGREL (section 2 of the paper) and error-backpropagation.

Q-AGREL, one trial (or a batch of independent trials) in five phases:
  1. forward pass            eqs. (2)-(4): ReLU hidden layers, linear Q-values q
  2. action selection        eq. (5): max-Boltzmann; the winner s gets z_s = 1
  3. reward and RPE          r = 1 if s is the label else 0;  delta = r - q_s
  4. feedback pass           eqs. (8), (10), (12): only the winner sends feedback,
                             through W', gated at every node by g (the ReLU derivative)
  5. four-factor update      eqs. (1), (6), (7), (9), (11):
                             dW_{p,m} = alpha * delta * pre_p * g_m * fb_m, and dW' = dW
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qagrel_cli.core.models import NormTrace, QNetwork


@dataclass
class BatchStats:
    """Per-batch sums, kept on the training device (read once per epoch)."""

    rewarded: torch.Tensor  # number of rewarded trials (BP: correct argmax)
    loss: torch.Tensor  # summed loss (Q-AGREL: E = delta^2 / 2; BP: cross-entropy)


def select_action(q: torch.Tensor, epsilon: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Eq. (5), max-Boltzmann: argmax_l q_l with probability 1 - epsilon, else a draw from softmax(q)."""
    return select_action_per_member(q[None], epsilon, [generator])[0]


def select_action_per_member(q: torch.Tensor, epsilon: float, generators: list[torch.Generator | None]
                             ) -> torch.Tensor:
    """Eq. (5) for K networks at once: q is (K, B, classes); network k draws from `generators[k]`.

    Only the draws are made network by network (each from its own stream, in
    the order a single network draws them: the Boltzmann sample, then the
    exploration coin); everything else is one batched operation.
    """
    greedy = q.argmax(dim=-1)
    if epsilon <= 0:
        return greedy
    # A diverged network has non-finite q; keep drawing (uniformly) instead of failing mid-epoch on the
    # device: the epoch's non-finite loss marks the run as diverged when the epoch ends.
    probabilities = F.softmax(q, dim=-1).nan_to_num(nan=1.0)
    boltzmann = torch.empty(*q.shape[:-1], 1, dtype=torch.long, device=q.device)
    coin = torch.empty(q.shape[:-1], dtype=q.dtype, device=q.device)
    for k, generator in enumerate(generators):
        torch.multinomial(probabilities[k], 1, generator=generator, out=boltzmann[k])
        torch.rand(q.shape[1], generator=generator, out=coin[k])
    return torch.where(coin < epsilon, boltzmann.squeeze(-1), greedy)


def reward_prediction_error(q: torch.Tensor, action: torch.Tensor, labels: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Direct reward r (1 if the selected unit is the label) and the RPE delta = r - q_s."""
    reward = (action == labels).to(q.dtype)
    q_s = q.gather(1, action[:, None]).squeeze(1)
    return reward, reward - q_s


def qagrel_weight_changes(net: QNetwork, activities: list[torch.Tensor], action: torch.Tensor,
                          delta: torch.Tensor, lr: float | torch.Tensor,
                          traces: dict[int, NormTrace] | None = None) -> list[torch.Tensor]:
    """Eqs. (6)-(12): the change of every layer's W (and, identically, of W'), batch-averaged.

    One change per parameter, in `net.parameters()` order: every layer's W, then
    (with batch norm) each normalised layer's scale and shift, which change by
    the same feedback (`QNetwork.normalised_feedback`, from the forward pass's `traces`).

    Walks the feedback network from the output down. At the output, only the
    selected unit is active (z, eq. 6). At each lower node the feedback unit
    is gated by its feedforward unit (g) and passes its activity down through
    W' (eqs. 8, 10, 12). Every synapse multiplies the four factors:
    RPE (delta) x presynaptic activity (pre) x postsynaptic gate (g) x feedback (fb).

    delta is one number per trial, and each layer's change is linear in the
    feedback arriving from above, so alpha * delta / B scales the feedback once,
    at its source z, instead of every synapse: the `fb` below is the paper's
    feedback times alpha * delta / B, and `pre x (g * fb)` is the whole product.
    """
    num_layers = len(net.layers)
    z = F.one_hot(action, net.layers[-1].weight.shape[0]).to(delta.dtype)  # only the winner s is active
    rpe = (lr / delta.shape[0]) * delta  # alpha * delta, averaged over the trials of the batch
    fb = rpe[:, None] * z  # feedback arriving at the output nodes, carrying the RPE factor
    changes: list[torch.Tensor] = [torch.empty(0)] * num_layers
    norm_changes: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for n in reversed(range(num_layers)):
        layer, pre = net.layers[n], activities[n]
        # Activity of the postsynaptic feedback units, g * fb (eqs. 7, 9; the output layer is linear: g = 1).
        if n == num_layers - 1:
            post = fb
        elif str(n) in net.batch_norm:
            if traces is None or n not in traces:
                raise ValueError("a batch-normalised network's feedback pass needs the traces of its forward pass")
            post, *norm_changes[n] = net.normalised_feedback(n, traces[n], fb)
        else:
            post = net.gated_feedback(n, activities[n + 1], fb)
        # Four factors, eqs. (1), (6), (7), (9), (11): (alpha * delta) * pre * (g * fb), summed over the batch;
        # below the first layer, also the feedback through W' (not W) to the layer below, eqs. (8), (10), (12).
        if n > 0:
            changes[n], fb = layer.synapse_product_and_feedback(pre, post)
        else:
            changes[n] = layer.synapse_product(pre, post)
    return changes + [change for n in sorted(norm_changes) for change in norm_changes[n]]


@torch.no_grad()
def apply_weight_changes(net: QNetwork, changes: list[torch.Tensor], learn_feedback: bool = True) -> None:
    """Add each change to its parameter (`net.parameters()` order) and, the paper's rule, every W's change to
    its reciprocal feedback synapses W' (dW' = dW).

    `learn_feedback=False` leaves W' as it is (fixed feedback, as in feedback alignment).
    """
    targets, deltas = list(net.parameters()), list(changes)
    if learn_feedback:
        targets += [layer.feedback_weight for layer in net.layers]
        deltas += changes[:len(net.layers)]  # dW' = dW
    # One multi-tensor add, as torch.optim.SGD makes its step: on a GPU, one launch instead of one per tensor.
    torch._foreach_add_(targets, deltas)


@torch.no_grad()
def qagrel_step(net: QNetwork, x: torch.Tensor, labels: torch.Tensor, lr: float, epsilon: float,
                generator: torch.Generator | None = None, learn_feedback: bool = True) -> BatchStats:
    """One Q-AGREL batch: forward, select, reward, feedback, update. Returns on-device sums."""
    traces: dict[int, NormTrace] = {}
    q, activities = net(x, generator, traces=traces)
    action = select_action(q, epsilon, generator)
    changes, stats = qagrel_learn(net, q, activities, action, labels, lr, traces)
    apply_weight_changes(net, changes, learn_feedback)
    return stats


def qagrel_learn(net: QNetwork, q: torch.Tensor, activities: list[torch.Tensor], action: torch.Tensor,
                 labels: torch.Tensor, lr: float | torch.Tensor, traces: dict[int, NormTrace] | None = None
                 ) -> tuple[list[torch.Tensor], BatchStats]:
    """Phases 3-5 once the actions are selected: reward, RPE and every layer's weight change.

    Free of random draws and of side effects, so a seed pack can `vmap` it over members.
    """
    reward, delta = reward_prediction_error(q, action, labels)
    changes = qagrel_weight_changes(net, activities, action, delta, lr, traces)
    return changes, BatchStats(rewarded=reward.sum(), loss=0.5 * delta.square().sum())


def bp_step(net: QNetwork, optimizer: torch.optim.Optimizer, x: torch.Tensor, labels: torch.Tensor,
            generator: torch.Generator | None = None) -> BatchStats:
    """One error-backpropagation batch: softmax + cross-entropy (batch mean), autograd through W."""
    q, _ = net(x, generator)
    loss, stats = bp_loss(q, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return stats


def bp_loss(q: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, BatchStats]:
    """BP's objective, softmax + cross-entropy averaged over the batch, and the batch's sums."""
    loss = F.cross_entropy(q, labels)
    with torch.no_grad():
        correct = (q.argmax(dim=1) == labels).sum().to(q.dtype)
    return loss, BatchStats(rewarded=correct, loss=loss.detach() * labels.shape[0])


def alignment_angles(net: QNetwork) -> list[float]:
    """Per layer, the angle in degrees between W and W'^T (0 = strict reciprocity).

    W' is stored in W's index order (see layers.py), so this is the angle
    between the two tensors as stored. Computed in float64: near 0 degrees the
    arccos magnifies float32 rounding of the cosine to a tenth of a degree. Weights that are no longer
    finite (a diverged run) have no angle: NaN.
    """
    angles = []
    for layer in net.layers:
        w, b = layer.weight.detach().flatten().double(), layer.feedback_weight.flatten().double()
        cos = float(torch.dot(w, b) / (w.norm() * b.norm()).clamp_min(1e-30))
        # min/max would turn a NaN cosine into 1, i.e. 0°: perfect reciprocity.
        angles.append(math.degrees(math.acos(max(-1.0, min(1.0, cos)))) if math.isfinite(cos) else math.nan)
    return angles
