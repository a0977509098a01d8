"""Layers with separate feedforward (W) and feedback (W') synapses.

Each layer is a node-to-node connection of the paper's Figure 1: feedforward
weights `weight` (W, a trainable Parameter) carry activity up; feedback
weights `feedback_weight` (W', a buffer: it moves with `.to()` and is saved in
the state dict, but no optimizer touches it) carry the selected action's
feedback down. `feedback_weight` has the same shape and index order as
`weight`: entry [m, p] is the feedback synapse w'_{m,p} from node m back to
node p, the reciprocal partner of the feedforward synapse w_{p,m}. Strict
reciprocity (the paper's setting) is therefore `feedback_weight == weight`.

Every layer offers the operations the learning rules need:
  forward(pre)              a = W . pre           (eqs. 2-4; differentiable, for BP)
  feedback(post, shape)     W'-weighted sum of the feedback arriving at the
                            layer's output nodes, delivered to its input nodes
                            (the sums of eqs. 8, 10, 12)
  synapse_product(pre, post) sum over the batch of pre_p * post_m for every
                            synapse (p, m), shaped like W (the Hebbian part
                            of the four-factor rule, eq. 1)
  synapse_product_and_feedback(pre, post)
                            both of the last two, for a hidden layer: one
                            fused kernel where the layer has one (conv)
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class FeedbackLayer(nn.Module):
    """Base class: owns W and W' and their initialisation."""

    weight: nn.Parameter
    feedback_weight: torch.Tensor

    def _init_weights(self, shape: tuple[int, ...]) -> None:
        self.weight = nn.Parameter(torch.empty(shape))
        self.register_buffer("feedback_weight", torch.empty(shape))

    @property
    def fan_in(self) -> int:
        """Synapses onto one feedforward unit (the scale of He initialisation)."""
        return self.weight.shape[1:].numel()

    def reset_weights(self, draw: Callable[[torch.Tensor], object], symmetric: bool) -> None:
        """W from `draw` (which fills a tensor in place); W' = W (strict reciprocity) or a second, independent
        draw from the same law."""
        with torch.no_grad():
            draw(self.weight)
            if symmetric:
                self.feedback_weight.copy_(self.weight)
            else:
                draw(self.feedback_weight)

    def feedback(self, post: torch.Tensor, input_shape: torch.Size) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def synapse_product(self, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def synapse_product_and_feedback(self, pre: torch.Tensor, post: torch.Tensor
                                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(synapse_product(pre, post), feedback(post, pre.shape)): the feedback pass through one layer."""
        return self.synapse_product(pre, post), self.feedback(post, pre.shape)


class FeedbackLinear(FeedbackLayer):
    """Fully connected layer, no bias: a_m = sum_p w_{p,m} pre_p.

    It sees every node of the layer below, so a (B, C, H, W) input is
    flattened here, and feedback is returned in the input's own shape.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_weights((out_features, in_features))

    def forward(self, pre: torch.Tensor) -> torch.Tensor:
        return F.linear(pre.flatten(1), self.weight)

    def feedback(self, post: torch.Tensor, input_shape: torch.Size) -> torch.Tensor:
        return (post @ self.feedback_weight).view(input_shape)

    def synapse_product(self, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
        return post.t() @ pre.flatten(1)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}"


class FeedbackConv2d(FeedbackLayer):
    """Convolution (shared weights), no bias; feedback is the transposed convolution with W'."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self._init_weights((out_channels, in_channels, kernel_size, kernel_size))

    def forward(self, pre: torch.Tensor) -> torch.Tensor:
        return F.conv2d(pre, self.weight, stride=self.stride, padding=self.padding)

    def feedback(self, post: torch.Tensor, input_shape: torch.Size) -> torch.Tensor:
        # The input shape is passed because a strided transposed conv cannot infer it.
        return torch.nn.grad.conv2d_input(input_shape, self.feedback_weight, post,
                                          stride=self.stride, padding=self.padding)

    def synapse_product(self, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
        return torch.nn.grad.conv2d_weight(pre, self.weight.shape, post,
                                           stride=self.stride, padding=self.padding)

    def synapse_product_and_feedback(self, pre: torch.Tensor, post: torch.Tensor
                                     ) -> tuple[torch.Tensor, torch.Tensor]:
        # One call, as autograd makes for a conv's backward: the two results share the
        # reordering of `post`, which costs about as much as either of them on a CPU.
        feedback, product, _ = torch.ops.aten.convolution_backward(
            post, pre, self.feedback_weight, None, [self.stride] * 2, [self.padding] * 2, [1, 1], False, [0, 0], 1,
            [True, True, False])
        return product, feedback

    def extra_repr(self) -> str:
        return (f"{self.in_channels} -> {self.out_channels}, {self.kernel_size}x{self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")


class LocallyConnected2d(FeedbackLayer):
    """Like a convolution, but every output position has its own filters (no weight sharing).

    W has shape (positions, out_channels, in_channels * k * k). The input is
    unfolded once into patches, and all positions are computed together as one
    batched matmul (positions are the batch dimension of `torch.bmm`).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, input_hw: tuple[int, int],
                 stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.input_hw = kernel_size, stride, tuple(input_hw)
        self.padding = padding
        self.output_hw = tuple((n + 2 * padding - kernel_size) // stride + 1 for n in input_hw)
        positions = self.output_hw[0] * self.output_hw[1]
        self._init_weights((positions, out_channels, in_channels * kernel_size * kernel_size))
        self._saved_patches: tuple[torch.Tensor, torch.Tensor] | None = None  # (input, its patches)

    @property
    def fan_in(self) -> int:
        return self.weight.shape[-1]  # W is (positions, out, in * k * k): one unit sees in * k * k inputs

    def _patches(self, pre: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> contiguous (positions, B, C*k*k): each position's receptive field.

        The same values as F.unfold, but built from a strided view in the layout
        `bmm` wants: with positions outermost and contiguous, the CPU runs one
        batched GEMM instead of copying each position's matrix (2-5x faster).
        """
        k, s = self.kernel_size, self.stride
        if self.padding:
            pre = F.pad(pre, [self.padding] * 4)
        windows = pre.unfold(2, k, s).unfold(3, k, s)  # (B, C, h, w, k, k), a view
        batch, channels, height, width = windows.shape[:4]
        return windows.permute(2, 3, 0, 1, 4, 5).reshape(height * width, batch, channels * k * k)

    def _to_positions(self, post: torch.Tensor) -> torch.Tensor:
        """(B, O, h, w) -> (positions, B, O)."""
        return post.flatten(2).permute(2, 0, 1)

    def forward(self, pre: torch.Tensor) -> torch.Tensor:
        patches = self._patches(pre)
        if self.training and not torch.is_grad_enabled():
            # Q-AGREL's synapse product for this batch needs the same patches: keep them, as autograd
            # keeps its saved tensors for BP. Building them costs about as much as the matmul.
            self._saved_patches = (pre, patches)
        out = torch.bmm(patches, self.weight.transpose(1, 2))  # (L, B, O)
        return out.permute(1, 2, 0).reshape(pre.shape[0], self.out_channels, *self.output_hw)

    def feedback(self, post: torch.Tensor, input_shape: torch.Size) -> torch.Tensor:
        cols = torch.bmm(self._to_positions(post), self.feedback_weight)  # (L, B, C*k*k)
        return F.fold(cols.permute(1, 2, 0), self.input_hw, self.kernel_size, stride=self.stride,
                      padding=self.padding)

    def synapse_product(self, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
        saved = self._saved_patches
        patches = saved[1] if saved is not None and saved[0] is pre else self._patches(pre)
        # (L, C*k*k, B) @ (L, B, O), returned as a (L, O, C*k*k) view: copying `post` into (L, B, O)
        # is the cheapest of its layouts to build on a CPU (about 2x faster than (L, O, B)).
        return torch.bmm(patches.transpose(1, 2), self._to_positions(post).contiguous()).transpose(1, 2)

    def extra_repr(self) -> str:
        return (f"{self.in_channels} -> {self.out_channels}, {self.kernel_size}x{self.kernel_size}, "
                f"padding={self.padding}, positions={self.output_hw[0]}x{self.output_hw[1]}, no weight sharing")
