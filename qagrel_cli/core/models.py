"""The paper's architectures (section 3), built once and shared by both rules.

  conv:   conv32 3x3; conv32 3x3 str(2,2); drop.8; (full 1,000;) full500; drop.3; output
  loccon: loccon32 3x3; conv32 3x3 str(2,2); drop.8; (full 1,000;) full500; drop.3; output
          (drop.8: `conv_dropout`, whose default is the paper's 0.8)
  fc:     full1500; full1000; full500; output          (MNIST only in Table 1)

Hidden units are ReLU, the output units are linear (Q-values for Q-AGREL,
logits for BP). No biases: the paper's equations have none.

Two options come from the authors' later code (core/recipes.py): the first
layer's `padding` ('valid', the paper's, or 'same'), and `batch_norm`, which
puts batch normalisation after the ReLU of each of the two conv/loccon layers
(before their dropout), with a learned scale and shift.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from qagrel_cli.core.catalog import FeedbackSource, arch_info, rule_info
from qagrel_cli.core.config import CONV_DROPOUT, Arch, Init, Padding, TrainConfig
from qagrel_cli.core.layers import FeedbackConv2d, FeedbackLayer, FeedbackLinear, LocallyConnected2d

CONV_CHANNELS = 32
LAST_HIDDEN_DROPOUT = 0.3
# Batch normalisation as the authors' later code has it (Keras' defaults): running statistics move by 1 %
# of the batch's per step (Keras momentum 0.99), and the variance gets 1e-3 before its square root.
BATCH_NORM_MOMENTUM = 0.01
BATCH_NORM_EPS = 1e-3


class NormTrace(NamedTuple):
    """What the feedback pass needs at a batch-normalised hidden layer, kept by a training forward pass:
    the layer's ReLU output (batch norm's input) and its dropout keep mask (None without dropout)."""

    relu: torch.Tensor
    keep: torch.Tensor | None


class QNetwork(nn.Module):
    """A stack of feedback layers with ReLU hidden units and inverted dropout.

    `forward` returns the output and the activity of every layer's input
    nodes: activities[0] is the image, activities[n] the (dropped-out) output
    of hidden layer n. The learning rules read pre- and postsynaptic activity
    from this list.
    """

    def __init__(self, layers: list[FeedbackLayer], dropout: list[float],
                 batch_norm: dict[int, nn.BatchNorm2d] | None = None) -> None:
        super().__init__()
        assert len(dropout) == len(layers) - 1, "one dropout rate per hidden layer"
        self.layers = nn.ModuleList(layers)
        self.dropout = list(dropout)
        # Keyed by hidden layer index; registered after `layers`, so `parameters()` lists every W first.
        self.batch_norm = nn.ModuleDict({str(n): bn for n, bn in (batch_norm or {}).items()})

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None,
                noise: list[torch.Tensor | None] | None = None, traces: dict[int, NormTrace] | None = None
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Eqs. (2)-(4): Q-values (or logits) and every layer's input activity.

        In training mode a node is dropped when its uniform draw is below the
        layer's dropout rate. The draws come from `generator` as each layer is
        reached, unless `noise` gives them (one tensor per hidden layer, None
        where there is no dropout): a seed pack draws every member's noise from
        the member's own generator outside `vmap` (see `dropout_noise`).
        A batch-normalised layer normalises its ReLU output before dropout;
        `traces`, when given, receives what Q-AGREL's feedback pass needs there.
        """
        activities = [x]
        for n, (layer, p) in enumerate(zip(self.layers[:-1], self.dropout)):
            # In place when no autograd graph is recorded (Q-AGREL): each large temporary costs a
            # fresh allocation on a CPU. Under autograd, an in-place ReLU on a view (the locally
            # connected layer's output) would cost more than it saves.
            y = F.relu(layer(activities[-1]), inplace=not torch.is_grad_enabled())
            relu, keep = y, None
            if str(n) in self.batch_norm:
                y = self.batch_norm[str(n)](y)
            if self.training and p > 0:
                uniform = noise[n] if noise is not None else torch.rand(y.shape, generator=generator, device=y.device)
                # Inverted dropout: a dropped node neither fires nor (y == 0) passes feedback.
                keep = uniform >= p
                y = (y * keep).div_(1.0 - p)
            if traces is not None and str(n) in self.batch_norm:
                traces[n] = NormTrace(relu, keep)
            activities.append(y)
        return self.layers[-1](activities[-1]), activities

    def dropout_noise(self, batch: int, hidden_shapes: list[torch.Size], generators: list[torch.Generator]
                      ) -> list[torch.Tensor | None]:
        """For K networks of this architecture, the uniform draws a training `forward` on `batch` inputs makes.

        One (K, batch, ...) tensor per hidden layer (None where there is no
        dropout); network k draws from `generators[k]`, layer by layer, exactly
        as `forward(x, generators[k])` would, so `forward(x, noise=[t[k] ...])`
        is that forward. `hidden_shapes` is `hidden_shapes(input_shape)`.
        """
        device = self.layers[0].weight.device
        noise = [torch.empty(len(generators), batch, *shape, device=device) if p > 0 else None
                 for shape, p in zip(hidden_shapes, self.dropout)]
        for k, generator in enumerate(generators):
            for uniform in noise:
                if uniform is not None:
                    torch.rand(uniform.shape[1:], generator=generator, out=uniform[k])
        return noise

    def gated_feedback(self, n: int, activity: torch.Tensor, feedback: torch.Tensor) -> torch.Tensor:
        """g * fb at hidden layer n's nodes: the feedback unit is open iff its feedforward unit fires.

        g is the ReLU derivative (eqs. 7, 9), all-or-nothing, so it is read off the
        node's own activity; a dropped node has zero activity and is closed. Kept
        nodes of a dropout layer carry the inverted-dropout scale 1 / (1 - p), the
        derivative of their activity.
        """
        # fb where activity > 0, else 0: the fused kernel autograd uses for ReLU's backward
        # (about 10x faster here than torch.where on a CPU).
        gated = torch.ops.aten.threshold_backward(feedback, activity, 0)
        p = self.dropout[n] if self.training else 0.0
        return gated.mul_(1.0 / (1.0 - p)) if p > 0 else gated

    def normalised_feedback(self, n: int, trace: NormTrace, feedback: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """At batch-normalised hidden layer n: g * fb at its ReLU nodes, and the changes of its scale and shift.

        The feedback arriving at the layer's (dropped-out) output passes back
        through dropout (the keep mask and its 1 / (1 - p) scale), then through
        batch normalisation as the authors' code passes it: the vector-Jacobian
        product of batch norm at the batch's own statistics, which couples the
        trials of a batch (the one non-local step, docs/design.md). The scale and
        shift change by the same feedback: feedback x normalised activity, and
        feedback. g is the ReLU derivative, read off the ReLU's output.
        """
        p = self.dropout[n] if self.training else 0.0
        if trace.keep is not None:
            feedback = (feedback * trace.keep).mul_(1.0 / (1.0 - p))
        bn = self.batch_norm[str(n)]
        if self.training:  # the batch's statistics, as the training forward pass used them (biased variance)
            var, mean = torch.var_mean(trace.relu, dim=(0, 2, 3), correction=0)
            statistics = (None, None, mean, torch.rsqrt(var + bn.eps))
        else:  # evaluation normalises by the running statistics: batch norm is then a fixed affine map
            statistics = (bn.running_mean, bn.running_var, None, None)
        # The fused kernel autograd uses for batch norm's backward: (d input, d scale, d shift).
        at_relu, d_scale, d_shift = torch.ops.aten.native_batch_norm_backward(
            feedback, trace.relu, bn.weight, *statistics, self.training, bn.eps, [True, True, True])
        return torch.ops.aten.threshold_backward(at_relu, trace.relu, 0), d_scale, d_shift

    def direct_feedback(self, n: int) -> torch.Tensor:
        """Direct feedback alignment's fixed matrix B_n (classes x hidden layer n's units), from the output
        to hidden layer n."""
        return getattr(self, f"direct_feedback_{n}")

    def hidden_shapes(self, input_shape: tuple[int, ...]) -> list[torch.Size]:
        """The shape of one sample's activity at every hidden layer, from a probe through the built layers."""
        was_training = self.training
        self.eval()
        with torch.no_grad():
            probe = torch.zeros(1, *input_shape, device=self.layers[0].weight.device)
            _, activities = self(probe)
        self.train(was_training)
        return [a.shape[1:] for a in activities[1:]]

    def hidden_units(self, input_shape: tuple[int, ...]) -> str:
        """Table 1's 'hidden units' string, e.g. '21632-5408-500', computed from the built layers."""
        return "-".join(str(shape.numel()) for shape in self.hidden_shapes(input_shape))

    def reset_weights(self, init: Init, scale: float | None, symmetric: bool, generator: torch.Generator) -> None:
        """Initialise every layer's W (and W') from one generator, in layer order.

        uniform: W ~ U[-r, r] with r = `scale` (the paper's init range); he: He-uniform,
        r = sqrt(6 / fan_in) per layer; normal: W ~ N(0, `scale`^2). Batch norm
        starts as the identity (scale 1, shift 0).
        """
        for layer in self.layers:
            layer.reset_weights(functools.partial(_draw, init=init, scale=scale, fan_in=layer.fan_in,
                                                  generator=generator), symmetric)
        for bn in self.batch_norm.values():
            bn.reset_parameters()
        # Direct feedback's matrices B_n after every W, each from the law of the layer above hidden layer n.
        for n in range(len(self.layers) - 1):
            if hasattr(self, f"direct_feedback_{n}"):
                with torch.no_grad():
                    _draw(self.direct_feedback(n), init, scale, self.layers[n + 1].fan_in, generator)


def _draw(tensor: torch.Tensor, init: Init, scale: float | None, fan_in: int, generator: torch.Generator) -> None:
    """Fill `tensor` in place from the initial law `init` (see `QNetwork.reset_weights`)."""
    if init == Init.normal:
        tensor.normal_(0.0, scale, generator=generator)
    else:
        bound = scale if init == Init.uniform else math.sqrt(6.0 / fan_in)
        tensor.uniform_(-bound, bound, generator=generator)


def first_layer(arch: Arch, input_shape: tuple[int, int, int], padding: int) -> FeedbackLayer:
    """The first layer of a conv or loccon net: 32 3x3 filters, shared (conv) or per position (loccon)."""
    channels, height, width = input_shape
    match Arch(arch):
        case Arch.conv:
            return FeedbackConv2d(channels, CONV_CHANNELS, 3, padding=padding)
        case Arch.loccon:
            return LocallyConnected2d(channels, CONV_CHANNELS, 3, (height, width), padding=padding)
        case _:
            raise ValueError(f"{arch} has no conv/loccon first layer")


def build_network(arch: Arch, fc: tuple[int, ...], input_shape: tuple[int, int, int],
                  num_classes: int, conv_dropout: float = CONV_DROPOUT, padding: Padding = Padding.valid,
                  batch_norm: bool = False, direct_feedback: bool = False) -> QNetwork:
    """Build `arch` for images of `input_shape` (C, H, W) with hidden fc sizes `fc`; `conv_dropout` is the
    fraction of the strided conv layer's units silenced in training, `padding` the first layer's, and
    `batch_norm` normalises both conv/loccon layers (conv and loccon only). `direct_feedback` adds a fixed
    matrix from the output to every hidden layer (direct feedback alignment)."""
    channels, height, width = input_shape
    layers: list[FeedbackLayer] = []
    dropout: list[float] = []
    norms: dict[int, nn.BatchNorm2d] = {}
    if not arch_info(arch).conv_layers:
        n_in = channels * height * width
    else:
        pad = 1 if Padding(padding) == Padding.same else 0
        layers.append(first_layer(arch, input_shape, pad))
        h1, w1 = height - 2 + 2 * pad, width - 2 + 2 * pad  # 3x3: valid 28 -> 26, same 28 -> 28
        # 3x3 stride 2 'same': padding 1 gives ceil(n / 2) outputs, 26 -> 13 and 30 -> 15.
        layers.append(FeedbackConv2d(CONV_CHANNELS, CONV_CHANNELS, 3, stride=2, padding=1))
        h2, w2 = (h1 - 1) // 2 + 1, (w1 - 1) // 2 + 1
        dropout += [0.0, conv_dropout]
        if batch_norm:
            norms = {n: nn.BatchNorm2d(CONV_CHANNELS, eps=BATCH_NORM_EPS, momentum=BATCH_NORM_MOMENTUM) for n in (0, 1)}
        n_in = CONV_CHANNELS * h2 * w2
    for i, units in enumerate(fc):
        layers.append(FeedbackLinear(n_in, units))
        last = i == len(fc) - 1
        dropout.append(LAST_HIDDEN_DROPOUT if (last and arch != Arch.fc) else 0.0)
        n_in = units
    layers.append(FeedbackLinear(n_in, num_classes))
    net = QNetwork(layers, dropout, norms)
    if direct_feedback:
        for n, shape in enumerate(net.hidden_shapes(input_shape)):
            net.register_buffer(f"direct_feedback_{n}", torch.empty(num_classes, shape.numel()))
    return net


def network_for(config: TrainConfig, input_shape: tuple[int, int, int], num_classes: int) -> QNetwork:
    """The network `config` trains, for images of `input_shape` and `num_classes` outputs (not initialised)."""
    return build_network(config.arch, config.fc, input_shape, num_classes, config.conv_dropout, config.padding,
                         config.batch_norm, rule_info(config.rule).feedback == FeedbackSource.direct)


@functools.lru_cache(maxsize=None)
def hidden_units(arch: Arch, fc: tuple[int, ...], input_shape: tuple[int, int, int],
                 padding: Padding = Padding.valid) -> str:
    """Table 1's 'hidden units' of a network, e.g. '21632-5408-500', without training it.

    The network is built on the meta device (shapes only, nothing allocated) and
    its layer sizes read off, as `QNetwork.hidden_units` does for a real one.
    """
    with torch.device("meta"):
        return build_network(Arch(arch), tuple(fc), input_shape, num_classes=10,
                             padding=padding).hidden_units(input_shape)
