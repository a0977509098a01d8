"""The paper's architectures (section 3), built once and shared by both rules.

  conv:   conv32 3x3; conv32 3x3 str(2,2); drop.8; (full 1,000;) full500; drop.3; output
  loccon: loccon32 3x3; conv32 3x3 str(2,2); drop.8; (full 1,000;) full500; drop.3; output
          (drop.8: `conv_dropout`, whose default is the paper's 0.8)
  fc:     full1500; full1000; full500; output          (MNIST only in Table 1)

Hidden units are ReLU, the output units are linear (Q-values for Q-AGREL,
logits for BP). No biases: the paper's equations have none.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from qagrel_cli.core.config import CONV_DROPOUT, Arch
from qagrel_cli.core.layers import FeedbackConv2d, FeedbackLayer, FeedbackLinear, LocallyConnected2d

CONV_CHANNELS = 32
LAST_HIDDEN_DROPOUT = 0.3


class QNetwork(nn.Module):
    """A stack of feedback layers with ReLU hidden units and inverted dropout.

    `forward` returns the output and the activity of every layer's input
    nodes: activities[0] is the image, activities[n] the (dropped-out) output
    of hidden layer n. The learning rules read pre- and postsynaptic activity
    from this list.
    """

    def __init__(self, layers: list[FeedbackLayer], dropout: list[float]) -> None:
        super().__init__()
        assert len(dropout) == len(layers) - 1, "one dropout rate per hidden layer"
        self.layers = nn.ModuleList(layers)
        self.dropout = list(dropout)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None,
                noise: list[torch.Tensor | None] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Eqs. (2)-(4): Q-values (or logits) and every layer's input activity.

        In training mode a node is dropped when its uniform draw is below the
        layer's dropout rate. The draws come from `generator` as each layer is
        reached, unless `noise` gives them (one tensor per hidden layer, None
        where there is no dropout): a seed pack draws every member's noise from
        the member's own generator outside `vmap` (see `dropout_noise`).
        """
        activities = [x]
        for n, (layer, p) in enumerate(zip(self.layers[:-1], self.dropout)):
            # In place when no autograd graph is recorded (Q-AGREL): each large temporary costs a
            # fresh allocation on a CPU. Under autograd, an in-place ReLU on a view (the locally
            # connected layer's output) would cost more than it saves.
            y = F.relu(layer(activities[-1]), inplace=not torch.is_grad_enabled())
            if self.training and p > 0:
                uniform = noise[n] if noise is not None else torch.rand(y.shape, generator=generator, device=y.device)
                # Inverted dropout: a dropped node neither fires nor (y == 0) passes feedback.
                y = (y * (uniform >= p)).div_(1.0 - p)
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

    def reset_weights(self, init_range: float | None, symmetric: bool, generator: torch.Generator) -> None:
        """Initialise every layer's W (and W') from one generator, in layer order.

        W ~ U[-r, r] with r = `init_range` (the paper's), or with `init_range=None`
        He-uniform, r = sqrt(6 / fan_in) per layer.
        """
        for layer in self.layers:
            bound = init_range if init_range is not None else math.sqrt(6.0 / layer.fan_in)
            layer.reset_weights(bound, symmetric, generator)


def build_network(arch: Arch, fc: tuple[int, ...], input_shape: tuple[int, int, int],
                  num_classes: int, conv_dropout: float = CONV_DROPOUT) -> QNetwork:
    """Build `arch` for images of `input_shape` (C, H, W) with hidden fc sizes `fc`; `conv_dropout` is the
    fraction of the strided conv layer's units silenced in training (conv and loccon only)."""
    channels, height, width = input_shape
    layers: list[FeedbackLayer] = []
    dropout: list[float] = []
    if arch == Arch.fc:
        n_in = channels * height * width
    else:
        if arch == Arch.conv:
            layers.append(FeedbackConv2d(channels, CONV_CHANNELS, 3))
        else:
            layers.append(LocallyConnected2d(channels, CONV_CHANNELS, 3, (height, width)))
        h1, w1 = height - 2, width - 2  # 3x3, valid
        # 3x3 stride 2 'same': padding 1 gives ceil(n / 2) outputs, 26 -> 13 and 30 -> 15.
        layers.append(FeedbackConv2d(CONV_CHANNELS, CONV_CHANNELS, 3, stride=2, padding=1))
        h2, w2 = (h1 - 1) // 2 + 1, (w1 - 1) // 2 + 1
        dropout += [0.0, conv_dropout]
        n_in = CONV_CHANNELS * h2 * w2
    for i, units in enumerate(fc):
        layers.append(FeedbackLinear(n_in, units))
        last = i == len(fc) - 1
        dropout.append(LAST_HIDDEN_DROPOUT if (last and arch != Arch.fc) else 0.0)
        n_in = units
    layers.append(FeedbackLinear(n_in, num_classes))
    return QNetwork(layers, dropout)


@functools.lru_cache(maxsize=None)
def hidden_units(arch: Arch, fc: tuple[int, ...], input_shape: tuple[int, int, int]) -> str:
    """Table 1's 'hidden units' of a network, e.g. '21632-5408-500', without training it.

    The network is built on the meta device (shapes only, nothing allocated) and
    its layer sizes read off, as `QNetwork.hidden_units` does for a real one.
    """
    with torch.device("meta"):
        return build_network(Arch(arch), tuple(fc), input_shape, num_classes=10).hidden_units(input_shape)
