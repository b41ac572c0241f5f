"""One Jacobian operator per layer, and the one place that decides how an analysis reaches it.

A recorded layer's one-step Jacobians ``J_t = ∂s_t/∂s_{t−1}`` come from one of four sources
(:attr:`LayerOperator.source`):

* ``"diagonal"``: the family's transition is diagonal (or 2 × 2 scaled rotations) in the
  state's own coordinates and says so (:meth:`~gradscope.cells.base.CellAdapter.diagonal`):
  exact eigenvalues, ``O(T · D)``, no products at all;
* ``"closed form"``: the adapter's closed-form products ``J v``/``Jᵀ u`` (and, for the
  families that declare a :class:`~gradscope.cells.gated.GatedForm`, runs of them);
* ``"torch.func"``: the products differentiate the cell's step (custom cells);
* ``"stored"``: dense matrices saved in the trace (a custom cell's trace loaded without
  its module), the only thing there is.

:func:`operator_of` builds the :class:`LayerOperator` once per layer object and hands the
same one to the spectra, the Lyapunov QR iteration, the decay walks and the gate walk (its
:class:`~gradscope.jacobians.steps.StepOps` keeps the linearised steps between them);
:meth:`LayerOperator.route` is where ``method="auto"`` becomes dense matrices, operators or
the exact diagonal analysis, with the thresholds of :data:`DENSE_UP_TO`. (The Monitor's
loss-gradient sweep runs on the replay's own factors before a layer exists:
:mod:`gradscope.jacobians.bptt`.)
"""

from __future__ import annotations

from gradscope.errors import ArgumentError
from gradscope.jacobians.diagonal import has_diagonal
from gradscope.jacobians.steps import StepOps, check_method
from gradscope.layer_trace import LayerTrace

#: Under ``method="auto"``: the largest state whose dense Jacobians an analysis forms (a
#: dense decomposition costs ``O(D³)`` per step against ``O(k · w)`` per product).
#: Lyapunov also goes dense for the full spectrum (``k = D``: no ``Q`` to spare), the decay
#: walk whenever its probes are exact (``p = D``).
DENSE_UP_TO = {"lyapunov": 64, "spectrum": 256}
#: The analyses :meth:`LayerOperator.route` decides for.
ANALYSES = ("lyapunov", "spectrum", "decay")


class LayerOperator:
    """The one-step Jacobians of one layer, as every analysis reaches them.

    Attributes:
        layer: The layer.
        source: ``"diagonal"``, ``"closed form"``, ``"torch.func"`` or ``"stored"``.
        stored: The trace holds dense state Jacobians.
        adapter: The adapter that computes them, or None where only stored matrices serve.
    """

    def __init__(self, layer: LayerTrace) -> None:
        self.layer = layer
        self.stored = layer.stored_jacobians is not None and "state" in layer.stored_jacobians
        self.adapter = layer.computing_adapter()
        self.diagonal = has_diagonal(layer)
        if self.diagonal:
            self.source = "diagonal"
        elif self.adapter is None:
            self.source = "stored"
        else:
            self.source = "closed form" if self.adapter.closed_form else "torch.func"
        self._steps: StepOps | None = None

    @property
    def steps(self) -> StepOps:
        """The per-step products (:class:`StepOps`), made on first use and kept."""
        if self._steps is None:
            self._steps = StepOps(self.layer)
        return self._steps

    def route(
        self,
        analysis: str,
        method: str = "auto",
        *,
        k: int | None = None,
        probes: int | None = None,
    ) -> str:
        """``"diagonal"``, ``"dense"`` or ``"operator"`` for ``analysis`` under ``method``.

        An explicit ``method`` is taken as it is (``"diagonal"`` only where the transition
        is diagonal). ``"auto"``: the exact diagonal analysis where it applies; dense for
        stored Jacobians; else per analysis: Lyapunov dense up to :data:`DENSE_UP_TO` or
        for the full spectrum (``k = D``), spectra dense up to theirs, the decay walk dense
        when its probes are exact (``probes = D``); operators otherwise.

        Raises:
            ArgumentError: an unknown analysis or method, or ``"diagonal"`` for a
                transition that is not diagonal.
        """
        if analysis not in ANALYSES:
            raise ArgumentError(f"route: analysis must be one of {ANALYSES}, got {analysis!r}")
        check_method(self.layer, method)
        if method != "auto":
            return method
        D = self.layer.D
        if self.diagonal:
            return "diagonal"
        if self.stored:
            return "dense"
        if analysis == "lyapunov":
            return "dense" if DENSE_UP_TO["lyapunov"] >= D or k == D else "operator"
        if analysis == "spectrum":
            return "dense" if DENSE_UP_TO["spectrum"] >= D else "operator"
        return "operator" if probes is not None and probes < D else "dense"

    def __repr__(self) -> str:
        return f"LayerOperator({self.layer.name!r}, source={self.source!r}, D={self.layer.D})"


def operator_of(layer: LayerTrace) -> LayerOperator:
    """The layer's :class:`LayerOperator`, built on first use and kept on the layer object."""
    op = layer.__dict__.get("_operator")
    if op is None or op.layer is not layer:
        op = LayerOperator(layer)
        layer.__dict__["_operator"] = op
    return op


__all__ = ["ANALYSES", "DENSE_UP_TO", "LayerOperator", "operator_of"]
