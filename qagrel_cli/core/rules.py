"""The learning rules: Q-AGREL (section 2 of the paper), error-backpropagation, and two supervised rules
without weight transport (feedback alignment and direct feedback alignment) to place it among.

Q-AGREL, one trial (or a batch of independent trials) in five phases:
  1. forward pass            eqs. (2)-(4): ReLU hidden layers, linear Q-values q
  2. action selection        eq. (5): max-Boltzmann; the winner s gets z_s = 1
  3. reward and RPE          r = 1 if s is the label else 0;  delta = r - q_s
  4. feedback pass           eqs. (8), (10), (12): only the winner sends feedback,
                             through W', gated at every node by g (the ReLU derivative)
  5. four-factor update      eqs. (1), (6), (7), (9), (11):
                             dW_{p,m} = alpha * delta * pre_p * g_m * fb_m, and dW' = dW

A rule is an error source at the output and a way down: Q-AGREL's source is alpha * delta at the selected
unit, feedback alignment's is Error-BP's softmax minus one-hot; both go down the shared feedback walk
through W' (`feedback_walk`). Direct feedback alignment sends its source to every hidden layer at once
(`direct_feedback_walk`), Error-BP goes through W by autograd. Each rule is one function in
`RULE_UPDATES`: it takes a batch and returns one update per parameter (`net.parameters()` order) and the
batch's sums; its record (core/catalog.py) says whether an optimizer applies the updates (they are then
gradients) or the rule applies them itself (Q-AGREL's changes, which carry alpha).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from qagrel_cli.core.catalog import Rule, rule_info
from qagrel_cli.core.models import NormTrace, QNetwork


@dataclass
class BatchStats:
    """Per-batch sums, kept on the training device (read once per epoch)."""

    rewarded: torch.Tensor  # number of rewarded trials (supervised rules: correct argmax)
    loss: torch.Tensor  # summed loss (Q-AGREL: E = delta^2 / 2; supervised rules: cross-entropy)


@dataclass(frozen=True)
class StepSettings:
    """What a rule's step reads besides the batch: alpha this epoch, exploration, and the trial draws' stream."""

    lr: float
    epsilon: float
    generator: torch.Generator | None = None


RuleUpdate = Callable[[QNetwork, torch.Tensor, torch.Tensor, StepSettings], tuple[list[torch.Tensor], BatchStats]]
# Every rule's batch update, by rule (filled by `rule_update` below; a test checks every Rule has one).
RULE_UPDATES: dict[Rule, RuleUpdate] = {}


def rule_update(rule: Rule) -> Callable[[RuleUpdate], RuleUpdate]:
    """Register the decorated function as `rule`'s batch update."""
    def register(fn: RuleUpdate) -> RuleUpdate:
        RULE_UPDATES[rule] = fn
        return fn
    return register


# ---------------------------------------------------------------- Q-AGREL, phase by phase

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

    At the output, only the selected unit is active (z, eq. 6); `feedback_walk`
    carries its feedback down through W'. Every synapse multiplies the four factors:
    RPE (delta) x presynaptic activity (pre) x postsynaptic gate (g) x feedback (fb).

    delta is one number per trial, and each layer's change is linear in the
    feedback arriving from above, so alpha * delta / B scales the feedback once,
    at its source z, instead of every synapse: the walk's `fb` is the paper's
    feedback times alpha * delta / B, and `pre x (g * fb)` is the whole product.
    """
    z = F.one_hot(action, net.layers[-1].weight.shape[0]).to(delta.dtype)  # only the winner s is active
    rpe = (lr / delta.shape[0]) * delta  # alpha * delta, averaged over the trials of the batch
    return feedback_walk(net, activities, rpe[:, None] * z, traces)  # feedback at the output carries the RPE


def feedback_walk(net: QNetwork, activities: list[torch.Tensor], output_feedback: torch.Tensor,
                  traces: dict[int, NormTrace] | None = None) -> list[torch.Tensor]:
    """The feedback network's pass from the output down, and every parameter's pre x (g * fb) product.

    `output_feedback` (B, classes) arrives at the output nodes. At each lower node the feedback unit is
    gated by its feedforward unit (g) and passes its activity down through W' (eqs. 8, 10, 12); every
    synapse's product is presynaptic activity x the postsynaptic feedback unit's activity (eqs. 1, 6, 7,
    9, 11), summed over the batch. One result per parameter, in `net.parameters()` order.
    """
    num_layers = len(net.layers)
    products: list[torch.Tensor] = [torch.empty(0)] * num_layers
    norm_products: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    fb = output_feedback
    for n in reversed(range(num_layers)):
        layer, pre = net.layers[n], activities[n]
        # Activity of the postsynaptic feedback units, g * fb (eqs. 7, 9; the output layer is linear: g = 1).
        post = fb if n == num_layers - 1 else _postsynaptic(net, n, activities, fb, traces, norm_products)
        # Below the first layer, also the feedback through W' (not W) to the layer below, eqs. (8), (10), (12).
        if n > 0:
            products[n], fb = layer.synapse_product_and_feedback(pre, post)
        else:
            products[n] = layer.synapse_product(pre, post)
    return products + _in_parameter_order(norm_products)


def direct_feedback_walk(net: QNetwork, activities: list[torch.Tensor], output_feedback: torch.Tensor,
                         traces: dict[int, NormTrace] | None = None) -> list[torch.Tensor]:
    """Direct feedback alignment: every hidden layer n receives `output_feedback` through its own fixed
    matrix B_n (`QNetwork.direct_feedback`), gated as in `feedback_walk`; the output layer receives it
    directly. One pre x post product per parameter, in `net.parameters()` order."""
    num_layers = len(net.layers)
    products: list[torch.Tensor] = []
    norm_products: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for n in range(num_layers):
        if n == num_layers - 1:
            post = output_feedback
        else:
            fb = (output_feedback @ net.direct_feedback(n)).view(activities[n + 1].shape)
            post = _postsynaptic(net, n, activities, fb, traces, norm_products)
        products.append(net.layers[n].synapse_product(activities[n], post))
    return products + _in_parameter_order(norm_products)


def _postsynaptic(net: QNetwork, n: int, activities: list[torch.Tensor], fb: torch.Tensor,
                  traces: dict[int, NormTrace] | None, norm_products: dict[int, tuple[torch.Tensor, torch.Tensor]]
                  ) -> torch.Tensor:
    """g * fb at hidden layer n's nodes, from the feedback `fb` arriving at its (dropped-out) output; a
    batch-normalised layer also leaves its scale and shift's products in `norm_products`."""
    if str(n) not in net.batch_norm:
        return net.gated_feedback(n, activities[n + 1], fb)
    if traces is None or n not in traces:
        raise ValueError("a batch-normalised network's feedback pass needs the traces of its forward pass")
    post, *norm_products[n] = net.normalised_feedback(n, traces[n], fb)
    return post


def _in_parameter_order(norm_products: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    """Batch norm's scale and shift products, layer by layer: their place after every W in `net.parameters()`."""
    return [product for n in sorted(norm_products) for product in norm_products[n]]


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


@rule_update(Rule.qagrel)
@torch.no_grad()
def qagrel_updates(net: QNetwork, x: torch.Tensor, labels: torch.Tensor, settings: StepSettings
                   ) -> tuple[list[torch.Tensor], BatchStats]:
    """Phases 1-5 of a Q-AGREL batch: forward, select, reward, feedback; every parameter's change (with alpha)."""
    traces: dict[int, NormTrace] = {}
    q, activities = net(x, settings.generator, traces=traces)
    action = select_action(q, settings.epsilon, settings.generator)
    return qagrel_learn(net, q, activities, action, labels, settings.lr, traces)


def qagrel_step(net: QNetwork, x: torch.Tensor, labels: torch.Tensor, lr: float, epsilon: float,
                generator: torch.Generator | None = None, learn_feedback: bool = True) -> BatchStats:
    """One Q-AGREL batch: forward, select, reward, feedback, update. Returns on-device sums."""
    changes, stats = qagrel_updates(net, x, labels, StepSettings(lr, epsilon, generator))
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


# ---------------------------------------------------------------- supervised rules

def bp_loss(q: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, BatchStats]:
    """BP's objective, softmax + cross-entropy averaged over the batch, and the batch's sums."""
    loss = F.cross_entropy(q, labels)
    with torch.no_grad():
        correct = (q.argmax(dim=1) == labels).sum().to(q.dtype)
    return loss, BatchStats(rewarded=correct, loss=loss.detach() * labels.shape[0])


def supervised_error(q: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Error-BP's output error: softmax(q) minus the one-hot label, over the batch size (the gradient of the
    batch-mean cross-entropy with respect to q)."""
    return (F.softmax(q, dim=-1) - F.one_hot(labels, q.shape[-1]).to(q.dtype)) / q.shape[0]


@rule_update(Rule.bp)
def bp_gradients(net: QNetwork, x: torch.Tensor, labels: torch.Tensor, settings: StepSettings
                 ) -> tuple[list[torch.Tensor], BatchStats]:
    """Error-BP: softmax + cross-entropy (batch mean), every parameter's gradient by autograd through W."""
    with torch.enable_grad():
        q, _ = net(x, settings.generator)
        loss, stats = bp_loss(q, labels)
        return list(torch.autograd.grad(loss, list(net.parameters()))), stats


@rule_update(Rule.fa)
@torch.no_grad()
def fa_gradients(net: QNetwork, x: torch.Tensor, labels: torch.Tensor, settings: StepSettings
                 ) -> tuple[list[torch.Tensor], BatchStats]:
    """Feedback alignment: Error-BP's output error sent down the feedback walk through fixed random W'
    (with W' = W, exactly Error-BP's gradient)."""
    traces: dict[int, NormTrace] = {}
    q, activities = net(x, settings.generator, traces=traces)
    return feedback_walk(net, activities, supervised_error(q, labels), traces), bp_loss(q, labels)[1]


@rule_update(Rule.dfa)
@torch.no_grad()
def dfa_gradients(net: QNetwork, x: torch.Tensor, labels: torch.Tensor, settings: StepSettings
                  ) -> tuple[list[torch.Tensor], BatchStats]:
    """Direct feedback alignment: Error-BP's output error sent to every hidden layer by its own fixed random
    matrix."""
    traces: dict[int, NormTrace] = {}
    q, activities = net(x, settings.generator, traces=traces)
    return direct_feedback_walk(net, activities, supervised_error(q, labels), traces), bp_loss(q, labels)[1]


def bp_step(net: QNetwork, optimizer: torch.optim.Optimizer, x: torch.Tensor, labels: torch.Tensor,
            generator: torch.Generator | None = None) -> BatchStats:
    """One error-backpropagation batch: its gradients, then the optimizer's step."""
    return optimizer_step(net, optimizer, *bp_gradients(net, x, labels, StepSettings(0.0, 0.0, generator)))


def optimizer_step(net: QNetwork, optimizer: torch.optim.Optimizer, gradients: list[torch.Tensor],
                   stats: BatchStats) -> BatchStats:
    """Hand a rule's gradients (`net.parameters()` order) to its optimizer, which steps. Returns `stats`."""
    for parameter, gradient in zip(net.parameters(), gradients):
        parameter.grad = gradient
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return stats


# ---------------------------------------------------------------- how a rule's updates compare

def alignment_angles(net: QNetwork) -> list[float]:
    """Per layer, the angle in degrees between W and W'^T (0 = strict reciprocity).

    W' is stored in W's index order (see layers.py), so this is the angle
    between the two tensors as stored. Weights that are no longer finite (a
    diverged run) have no angle: NaN.
    """
    return [angle(layer.weight.detach(), layer.feedback_weight) for layer in net.layers]


def angles_to_bp(net: QNetwork, rule: Rule, x: torch.Tensor, labels: torch.Tensor, settings: StepSettings
                 ) -> list[float]:
    """Per layer, the angle in degrees between `rule`'s weight change on the batch (x, labels) and Error-BP's
    negative gradient for the same weights and batch (0 = the rule follows backprop's gradient).

    Measured without dropout or batch statistics (evaluation mode), so it depends only on the weights, the
    batch and `settings` (Q-AGREL's action draws come from its generator). An optimizer's rescaling (Adam)
    is not part of it: a rule's change is its update before any optimizer.
    """
    was_training = net.training
    net.eval()
    try:
        updates, _ = RULE_UPDATES[rule](net, x, labels, settings)
        gradients, _ = bp_gradients(net, x, labels, settings)
    finally:
        net.train(was_training)
    sign = -1.0 if rule_info(rule).uses_optimizer else 1.0  # an optimizer rule's update is a gradient
    return [angle(sign * update, -gradient) for update, gradient in zip(updates, gradients[:len(net.layers)])]


def angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """The angle in degrees between two tensors as vectors (90 where either is zero); NaN where either is not
    finite.

    Computed in float64: near 0 degrees the arccos magnifies float32 rounding of the cosine to a tenth of
    a degree.
    """
    a, b = a.detach().flatten().double(), b.detach().flatten().double()
    cos = float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-30))
    # min/max would turn a NaN cosine into 1, i.e. 0°: perfect alignment.
    return math.degrees(math.acos(max(-1.0, min(1.0, cos)))) if math.isfinite(cos) else math.nan
