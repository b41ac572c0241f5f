"""A module recorded through its own step function: ``gs.register_step``, no maths written.

Packages that run a recurrence over whole sequences at once usually ship the step that
generation uses (``MambaBlock.step(x, cache)``, ``ssm_step``, ``forward_rnn``). Name that step
and the state's layout, and gradscope replays the recurrence with it, checks the replay
against the module's own forward, and differentiates the step with ``torch.func``.

The module below is a small gated state space layer with a short causal convolution, in the
style of Mamba (``c_t`` the depthwise convolution of the last ``K`` inputs)::

    c_t = Σ_k w_k ⊙ x_{t−K+1+k},    a_t = σ(W_a c_t),
    h_t = a_t ⊙ h_{t−1} + (1 − a_t) ⊙ (W_v c_t),    y_t = W_o h_t

run over the whole sequence by its ``forward``, and one step at a time by its ``step``, whose
state is ``(h, the last K − 1 inputs)``. One line records it::

    gs.register_step(ShortConvSSM, step=ShortConvSSM.step, state=ShortConvSSM.state_shapes)

For mambapy's block it is the same line (its ``step`` keeps ``(h, conv inputs)``), although
gradscope records that block out of the box::

    gs.register_step(MambaBlock, step=MambaBlock.step, state=lambda b: {
        "h": (b.config.d_inner, b.config.d_state),
        "conv": (b.config.d_inner, b.config.d_conv - 1)})

Run it: ``python examples/step.py`` prints the diagnosis of the layer at initialisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import gradscope as gs


class ShortConvSSM(nn.Module):
    """``forward(x (B, T, I)) -> y (B, T, O)``; ``step(x_t, state) -> (y_t, state)``."""

    def __init__(self, inputs: int, width: int, outputs: int, kernel: int = 3):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.inputs, self.width, self.kernel = inputs, width, kernel
        self.conv = nn.Parameter(torch.randn(inputs, kernel, generator=g) / kernel**0.5)
        self.w_a = nn.Parameter(torch.randn(width, inputs, generator=g) / inputs**0.5 + 0.5)
        self.w_v = nn.Parameter(torch.randn(width, inputs, generator=g) / inputs**0.5)
        self.w_o = nn.Parameter(torch.randn(outputs, width, generator=g) / width**0.5)

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """The step's state without the batch dimension: ``h`` and the last ``K − 1`` inputs."""
        return {"h": (self.width,), "conv": (self.inputs, self.kernel - 1)}

    def forward(self, x: Tensor) -> Tensor:
        """All steps: the convolution in parallel, then the gated recurrence."""
        c = F.conv1d(
            x.transpose(1, 2), self.conv[:, None], padding=self.kernel - 1, groups=self.inputs
        )[..., : x.shape[1]].transpose(1, 2)
        a = torch.sigmoid(c @ self.w_a.T)
        v = (1 - a) * (c @ self.w_v.T)
        h, out = x.new_zeros(x.shape[0], self.width), []
        for t in range(x.shape[1]):
            h = a[:, t] * h + v[:, t]
            out.append(h)
        return torch.stack(out, 1) @ self.w_o.T

    def step(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple]:
        """One step from ``(h, the last K − 1 inputs (B, I, K − 1))``."""
        h, buf = state
        window = torch.cat([buf, x[:, :, None]], dim=2)  # (B, I, K)
        c = (window * self.conv).sum(-1)
        a = torch.sigmoid(c @ self.w_a.T)
        h = a * h + (1 - a) * (c @ self.w_v.T)
        return h @ self.w_o.T, (h, window[:, :, 1:])


gs.register_step(
    ShortConvSSM, step=ShortConvSSM.step, state=ShortConvSSM.state_shapes, overwrite=True
)


if __name__ == "__main__":
    torch.manual_seed(0)
    model = ShortConvSSM(8, 32, 8)
    print(gs.diagnose(gs.trace(model, torch.randn(4, 200, 8))))
