r"""Watch the recurrent layers of a model while it trains: exact ``∂L/∂s_t`` over training.

:class:`Monitor` is a thin stateful wrapper around pure functions. It decides *when* to look
(a schedule, ``step -> bool``) and keeps a compact :class:`History`; *what* it computes comes
from the rest of gradscope: :func:`gradscope.record` (hooks, replay, loss gradients) and the
analysis functions (:func:`gradscope.decay`, :func:`gradscope.spectrum`,
:func:`gradscope.lyapunov`, :func:`gradscope.diagnose`).

Usage::

    import gradscope as gs

    with gs.Monitor(model, every=50) as monitor:
        for x, y in loader:
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            monitor.step()          # after backward (before or after optimizer.step())
            optimizer.step()
    monitor.history.grad_norms("lstm.l0")   # (n_sampled, T+1)
    monitor.report("training.html")

The life cycle of one training step
-----------------------------------
Training steps are counted by calls of :meth:`Monitor.step`; the first step is step 0. Hooks
must be in place *before* a step's forward, so the decision for step ``n`` is taken when step
``n-1`` ends (for step 0: when the Monitor is created): if ``schedule(n)`` is true, a
:func:`gradscope.record` recorder (``grads=True``) is opened; otherwise no hook is attached at
all and the step costs nothing. On a sampled step, ``step()``

1. stops the recorder (module hooks removed) and reads its :class:`~gradscope.traces.Trace`,
   whose layers carry the exact loss gradients ``∂L/∂s_t``: for cells called in a loop from
   tensor hooks in the real backward pass, for fused ``nn.RNN/LSTM/GRU`` by back-propagating
   the cotangents captured in the real backward pass through the step-by-step replay; then
   the tensor hooks on the recorded outputs are removed too;
2. reduces every layer (and direction) to :func:`grad_norms` and, on the sampled steps
   chosen by ``analyze``, to the analyses of :func:`summarize`: the decay fits of the loss
   gradient and of the state-to-state gradient (rate with its confidence interval, regime),
   spectral radius and norm statistics on a subsample, optionally the leading Lyapunov
   exponent; and for LSTM, GRU and vanilla RNN layers the gate summaries on every sampled
   step (:data:`~gradscope.history.GATE_KEYS`: gate quantiles and cell-path carries, from
   the gate pre-activations the replay kept, else one product with the carried gate's
   weight rows; the path share or the vanilla factor norm on analysed steps). The analyses
   cost dense ``D × D`` linear algebra (``O(D³)`` per Jacobian), which for large states
   outweighs many training steps, so by default
   (``analyze="auto"``) they run only as often as keeps their own cost within ``budget``
   (2%) of the measured training time (the recording of sampled steps, the schedule's cost,
   does not count: cheap analyses run on every sampled step), and at least once per
   doubling of the sampled steps (sampled steps 0, 1, 3, 7, 15, ... when the budget allows
   nothing more), so that they form curves; and the latest sampled step is analysed when
   the Monitor is closed, reported or saved (:meth:`Monitor.analyze_latest`), so that they
   reach the end of training;
3. under ``torch.distributed``, all-gathers those fixed-size float64 rows from every rank
   (tensor collectives only, no pickling) so the history holds every rank's batch;
4. appends one row to :attr:`Monitor.history`, keeps this step's trace as
   :attr:`Monitor.latest` (replacing the previous one) and runs the ``callbacks`` (on rank 0).

**Order: call ``step()`` once per training step, after ``loss.backward()``.** Before or after
``optimizer.step()`` is the same: the replay must use the weights of the forward, and the
recorder copies them (and, for inter-layer dropout, the RNG state) when the forward runs,
so an optimizer updating the parameters in place afterwards cannot alter the result. With
gradient accumulation, call ``step()`` once per optimizer step after the last backward: the
captured cotangents accumulate like ``.grad``; the forwards of the micro-batches are
recorded as separate calls (names ``@1``, ``@2``, ...).

Only what the step's backward reached is the step. Forwards under ``torch.no_grad()`` or
``torch.inference_mode()`` (evaluation, predictions) are not recorded at all, and a forward
whose outputs no gradient reached by ``step()`` (an evaluation forward with gradients on, a
batch whose loss was skipped) is dropped then; so an evaluation between ``step()`` and the
next training forward changes nothing (``with monitor.paused():`` still spares it the
hooks' cost; the Lightning callback pauses for validation). A sampled step on which the
loss reached a layer none of the time (alternating or multi-task losses, ``step()`` without a
backward) holds no numbers for that layer (NaN in :meth:`History.grad_norms`) and a note
in ``history.notes``; a step never raises for it.

Under ``torch.amp.GradScaler`` pass ``grad_scaler=scaler``: the captured gradients are
divided by the loss scale of each backward, so the history holds the gradients of the loss
itself (``history.notes`` says so); without it they are the scaled loss's.

A Monitor that is garbage collected without ``close()`` (e.g. after an exception) takes its
hooks with it: they hold it only weakly.

Training is never changed: the hooks only read; the global RNG states (torch CPU and the
current CUDA devices, NumPy's and Python's) are restored after every sampled step's analysis;
unsampled steps run without hooks. ``close()`` (or leaving the ``with`` block, also through an
exception) removes every hook; while an exception propagates nothing is analysed
(``close(analyze=False)``).

The grad norms
--------------
For layer ``ℓ`` at sampled training step ``n``, column ``t`` (``t = 0 … T``, aligned with
``LayerTrace.states``: processing order, so a reverse direction's ``t = 0`` is its initial
state at the end of the sequence) is the batch mean of the per-sequence Euclidean norm over
the whole state vector (LSTM: ``h`` and ``c`` together),

.. math:: G_{n,t} = \frac{1}{|V_t|}\sum_{b\in V_t}
          \Bigl\lVert \frac{\partial L}{\partial s_t^{(b)}} \Bigr\rVert_2,
          \qquad V_t = \{b : t \le T_b\},

over the sequences ``V_t`` that are still running at ``t`` (padded steps of shorter
sequences, e.g. from a ``PackedSequence``, are left out, not counted as zero). When ``T``
varies across training steps, :meth:`History.grad_norms` NaN-pads every row to the longest
``T`` seen: a NaN column means "this step's batch was shorter", never "zero gradient".
A non-finite gradient of a real step makes its entry NaN or inf (reported, not hidden).

The report protocol
-------------------
:func:`gradscope.reporting.report` accepts a Monitor (duck-typed; reports never import it) and
reads only:

* ``monitor.history``: a :class:`History` with ``steps`` ``(n,)`` int, ``names`` (layer
  names), ``grad_norms(name)`` ``(n, T+1)`` (``KeyError`` for an unknown name),
  ``summaries(name)`` (a dict of ``(n,)`` arrays: ``"steps"``, ``"rate"``, ``"rate_ci"``
  ``(n, 2)``, ``"regime"`` (str, ``""`` where not analysed), and every key of
  :data:`SUMMARY_KEYS`; a history saved before a key existed lacks it) and ``meta`` (a
  JSON-able dict; a Monitor's holds each layer's cell kind under ``"kinds"``);
* ``monitor.latest``: ``None`` before the first sampled step, else a :class:`Snapshot` of
  the latest sampled step with ``.trace`` (its :class:`~gradscope.traces.Trace`, loss
  gradients included) and ``.diagnosis`` (:func:`gradscope.diagnose` of that trace, computed
  on first access and cached).

A :class:`History` on its own (e.g. loaded with :func:`load_history`) is report-able too
(training views only).
"""

from __future__ import annotations

from gradscope.history import (
    HISTORY_FORMAT_VERSION,
    REGIME_CODES,
    SUMMARY_KEYS,
    History,
    load_history,
)
from gradscope.monitor.gather import Snapshot
from gradscope.monitor.monitor import Monitor
from gradscope.monitor.schedules import At, Every, Logarithmic, Schedule
from gradscope.monitor.summaries import grad_norms, select_batch, summarize, trace_grad_norms

__all__ = [
    "HISTORY_FORMAT_VERSION",
    "REGIME_CODES",
    "SUMMARY_KEYS",
    "At",
    "Every",
    "History",
    "Logarithmic",
    "Monitor",
    "Schedule",
    "Snapshot",
    "grad_norms",
    "load_history",
    "select_batch",
    "summarize",
    "trace_grad_norms",
]
