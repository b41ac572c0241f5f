"""One step's Jacobian products for a set of sequences, with the setup paid once per layer.

:meth:`LayerTrace.jvp` / :meth:`LayerTrace.vjp` validate and index on every call, which is
right for a user and too slow inside a loop over 10,000 steps. :class:`StepOps` prepares a
layer once (adapter, weights on the right device) and then applies ``J_t``, ``J_tᵀ``,
``K_t`` or ``K_tᵀ`` (``K = ∂s_t/∂x_t``) of step ``t`` to a batch of column blocks with one
adapter call. Traces that carry stored Jacobians (custom cells loaded from disk) are served
by a batched matrix product from the stored matrices.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gradscope.errors import MissingDataError
from gradscope.traces import LayerTrace


class StepOps:
    """``J_t M``, ``J_tᵀ M``, ``K_t M``, ``K_tᵀ M`` for one step and some sequences.

    Every method takes the step ``t`` (an index into ``range(T)``), the sequences ``batch``
    (a LongTensor of indices, ``(n,)``) and a block ``M`` of shape ``(n, rows, k)``, and
    returns ``(n, rows', k)`` in the trace's dtype. Cost: one adapter call, ``O(n · k · w)``
    with ``w`` the recurrent (or input) weights touched; no ``D × D`` matrix is formed
    unless the trace only has stored Jacobians.
    """

    def __init__(self, layer: LayerTrace) -> None:
        self.layer = layer
        self.dtype = layer.dtype
        stored = layer.stored_jacobians or {}
        self._stored = stored
        self._adapter = None
        if not {"state", "input"} <= set(stored):
            if layer.adapter is None and layer.kind.startswith("custom:"):
                if not stored:
                    raise MissingDataError(
                        f"{layer.name}: a custom cell's Jacobian products need the cell module "
                        "or stored Jacobians; this trace has neither (save it from a live "
                        "recording)"
                    )
            else:
                self._adapter = layer.cell_adapter()
        device = layer.states.device
        self._params = {k: v.to(device) for k, v in layer.params.items()}
        self._key: tuple[int, tuple[int, ...]] | None = None
        self._lin = None

    def linearization(self, t: int, batch: Tensor):
        """The adapter's :class:`~gradscope.cells.base.Linearization` at step ``t``.

        The last one is kept, so repeated products at one step (Arnoldi, a state and an
        input product at one lag) compute the gates once.
        """
        key = (t, tuple(batch.tolist()))
        if key != self._key:
            x = self.layer.inputs[t][batch]
            s = self.layer.states[t][batch]
            self._lin = self._adapter.linearize(self._params, x, s)
            self._key = key
        return self._lin

    def _call(self, wrt: str, transpose: bool, t: int, batch: Tensor, m: Tensor) -> Tensor:
        m = m.to(self.dtype)
        if wrt in self._stored:
            jac = self._stored[wrt][t][batch].to(self.dtype)
            return torch.matmul(jac.transpose(-1, -2) if transpose else jac, m)
        if self._adapter is None:
            raise MissingDataError(
                f"{self.layer.name}: no stored {wrt} Jacobians and no cell module to compute "
                "their products"
            )
        lin = self.linearization(t, batch)
        if wrt == "state":
            return lin.vjp_state(m) if transpose else lin.jvp_state(m)
        return lin.vjp_input(m) if transpose else lin.jvp_input(m)

    def jvp(self, t: int, batch: Tensor, v: Tensor) -> Tensor:
        """``J_t v`` per sequence: ``v`` ``(n, D, k)`` -> ``(n, D, k)``."""
        return self._call("state", False, t, batch, v)

    def vjp(self, t: int, batch: Tensor, u: Tensor) -> Tensor:
        """``J_tᵀ u`` per sequence: ``u`` ``(n, D, k)`` -> ``(n, D, k)``."""
        return self._call("state", True, t, batch, u)

    def vjp_input(self, t: int, batch: Tensor, u: Tensor) -> Tensor:
        """``K_tᵀ u`` per sequence: ``u`` ``(n, D, k)`` -> ``(n, I, k)``."""
        return self._call("input", True, t, batch, u)

    def jvp_input(self, t: int, batch: Tensor, v: Tensor) -> Tensor:
        """``K_t v`` per sequence: ``v`` ``(n, I, k)`` -> ``(n, D, k)``."""
        return self._call("input", False, t, batch, v)
