"""Jacobians of a recorded layer, as operators and (on request) as dense matrices.

The analysis layer never asks for more than it needs:

* :mod:`~gradscope.jacobians.steps` — one step's products ``J_t V`` / ``J_tᵀ U`` for a set of
  sequences (:class:`~gradscope.jacobians.steps.StepOps`), the building block of everything
  below; closed forms from the cell adapters, ``O(k · weights)`` per step.
* :mod:`~gradscope.jacobians.dense` — dense Jacobians streamed in chunks (memory sizing,
  finiteness checks) and the blocked LAPACK QR iteration that is fastest for small states.
* :mod:`~gradscope.jacobians.products` — products over time in log space on operators:
  the forward QR iteration (Lyapunov exponents) and the backward VJP sweep (gradient-norm
  decay), batched over sequences; nothing underflows or overflows.
* :mod:`~gradscope.jacobians.krylov` — leading eigenvalues and singular values of one-step
  Jacobians by ARPACK on the operator, for states too large to decompose densely.
"""
