"""The training-loop callback: :class:`Monitor` decides *when* to record, never *what*."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from gradscope._rng import rng_preserved
from gradscope.cells import is_registered
from gradscope.errors import (
    ArgumentError,
    ArgumentTypeError,
    GradscopeError,
    MissingDataError,
    NoRecurrentModuleError,
)
from gradscope.history import Entry, History
from gradscope.monitor.arguments import callback_list, positive_count
from gradscope.monitor.budget import AnalysisBudget
from gradscope.monitor.failures import Failures
from gradscope.monitor.gather import Snapshot, all_gather, detect_distributed, world_size
from gradscope.monitor.schedules import Every, Schedule, as_schedule
from gradscope.monitor.summaries import trace_summaries
from gradscope.recording.build import no_recurrent_error
from gradscope.recording.recorder import Recorder
from gradscope.traces import Trace

#: The note of a sampled step whose loss reached a recorded layer's calls none of the time.
NOT_REACHED = (
    "{name}: the loss did not reach it on this sampled step (no gradient reached the "
    "outputs of its calls since the previous step()); nothing recorded for it, no numbers "
    "invented"
)
#: The note of a sampled step on which no recurrent module ran with gradients enabled.
NOTHING_RAN = (
    "no recurrent module ran with gradients enabled since the previous step(); nothing "
    "recorded for this sampled step (forwards under torch.no_grad are not training steps)"
)
#: The note of a history whose gradients were divided by a GradScaler's loss scale.
UNSCALED = (
    "gradient norms are of the unscaled loss: the captured gradients were divided by the "
    "GradScaler's loss scale at each backward"
)


class Monitor:
    """Records exact per-timestep loss gradients of every recurrent layer during training.

    See the module docstring for the life cycle, the required call order and the report
    protocol.

    Cost of a sampled step: a replay of each recorded layer and one closed-form
    vector-Jacobian sweep back through it (``O(T · B · w)``, ``w`` the recurrent weights;
    no autograd graph). A single-layer fused module (``nn.LSTM``/``nn.GRU``/``nn.RNN``
    with ``num_layers=1``) over unpadded sequences is replayed teacher-forced: every
    step's previous output is the module's own, so all steps are one batched call (one
    GEMM instead of ``T``) and the states are the module's trajectory to rounding, even
    for chaotic weights (where :func:`gradscope.trace` replays a shadow trajectory).

    Args:
        model: The model being trained (its recurrent submodules are found by
            :func:`gradscope.record`).
        every: Sample every ``every``-th training step (0, every, 2·every, ...); ignored
            when ``schedule`` is given.
        schedule: When to sample: a callable ``step -> bool`` (e.g. :class:`Every`,
            :class:`At`, :class:`Logarithmic`).
        cells: Extra modules to record call by call (cells called in a Python loop), as in
            :func:`gradscope.record`.
        lyapunov: Also estimate the leading Lyapunov exponent on analysed steps.
        gates: Record the gate summaries of LSTM, GRU and vanilla RNN layers on every
            sampled step (:data:`gradscope.history.GATE_KEYS`: gate quantiles, cell-path
            carries; the path share or the vanilla factor norm on analysed steps). Their
            cost is ``O(T·B·H)`` from the gate pre-activations a single-layer module's
            replay keeps, else one product of the recorded inputs and states with the
            carried gate's weight rows, ``O(T·B·H·(I + P))``; no ``D × D`` matrix per
            timestep.
        analyze: On which sampled steps to compute the analyses of :func:`summarize` (decay
            fits, spectra, Lyapunov: dense ``D × D`` linear algebra, whose cost does not
            shrink with ``every``). ``"auto"``: whenever the analyses so far, plus the
            last analysis's cost again, stay within ``budget`` of the training time
            measured between ``step()`` calls (paused blocks do not count, nor does the
            recording of sampled steps, the schedule's own cost), so an analysis that is
            cheap next to the training steps runs on every sampled step. Whatever the
            budget, the
            first sampled step is analysed and at least one in each doubling of the sampled
            steps: sampled step ``n`` is analysed when ``n >= 2 m + 1``, ``m`` the latest
            analysed one (so 0, 1, 3, 7, 15, ... when the budget allows nothing more), so
            the analysed summaries form a curve over any run, at ``O(log n)`` extra
            analyses (early in a run these can exceed the budget). Which other steps get
            analysed depends on timing (under ``torch.distributed`` each rank decides on
            its own clock; a rank's summaries are NaN where it did not analyse). Or a
            schedule
            ``n -> bool`` over the index ``n = 0, 1, ...`` of the sampled step (e.g.
            ``Every(10)``: every 10th sampled step), or True (all) / False (none). Grad
            norms are recorded on every sampled step regardless. Unless ``analyze`` is
            False, the latest sampled step is analysed when the Monitor is closed,
            reported or saved (:meth:`analyze_latest`), so the analysed curves reach the
            end of training.
        budget: With ``analyze="auto"``, the analyses' target cost as a fraction of the
            training time (0.02: 2%; :class:`~gradscope.monitor.budget.AnalysisBudget`).
            The recording of sampled steps is never skipped and is not part of it.
        spectra_steps: Jacobian steps (spread over the sequence) per spectral statistic.
        spectra_batch: Sequences per spectral statistic.
        decay_batch: Sequences used for the state-decay fit and Lyapunov (None: all).
        check: Let the recorder verify that each replay reproduces the module's output.
        callbacks: Called as ``callback(monitor)`` after every sampled step (on rank 0 only
            in a distributed run), e.g. a
            :class:`gradscope.integrations.tensorboard.TensorBoardCallback`.
        distributed: Gather every rank's summaries with ``torch.distributed`` collectives;
            None: when ``torch.distributed`` is initialised with more than one rank.
        process_group: The process group for gathering (None: the default group).
        grad_scaler: The ``torch.amp.GradScaler`` that scales the loss
            (``scaler.scale(loss).backward()``). The captured gradients are divided by its
            scale at each backward, so the history holds the gradients of the loss itself
            (a note says so). Without it, the gradients of a scaled loss are recorded
            scaled (a Monitor cannot see the scaling).

    Attributes:
        history: The compact :class:`History`.
        latest: The latest sampled step (:class:`Snapshot`), or None before the first one.
    """

    def __init__(
        self,
        model: nn.Module,
        every: int = 50,
        *,
        schedule: Schedule | None = None,
        cells: Sequence[nn.Module] | None = None,
        lyapunov: bool = False,
        gates: bool = True,
        analyze: Schedule | bool | str = "auto",
        budget: float = 0.02,
        spectra_steps: int = 2,
        spectra_batch: int = 1,
        decay_batch: int | None = 2,
        check: bool = False,
        callbacks: Sequence[Callable[[Monitor], Any]] = (),
        distributed: bool | None = None,
        process_group: Any = None,
        grad_scaler: Any = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ArgumentTypeError(f"Monitor needs an nn.Module, got {type(model).__name__}")
        if grad_scaler is not None and not callable(getattr(grad_scaler, "get_scale", None)):
            raise ArgumentTypeError(
                "Monitor(grad_scaler=...) needs a torch.amp.GradScaler (an object with "
                f"get_scale()), got {type(grad_scaler).__name__}"
            )
        if not cells and not any(is_registered(m) for m in model.modules()):
            raise no_recurrent_error(model, ())
        self.model = model
        self.grad_scaler = grad_scaler
        self.schedule: Schedule = as_schedule(
            schedule if schedule is not None else Every(every), "schedule"
        )
        self._never = analyze is False  # not even the latest step when closing
        if analyze == "auto":
            if not budget > 0:
                raise ArgumentError(f"Monitor: budget must be > 0, got {budget!r}")
            self.analyze: Schedule | None = None
        else:
            self.analyze = as_schedule(analyze, "analyze")
        self.budget = float(budget)
        self.cells = list(cells) if cells is not None else None
        self.options = dict(
            lyapunov=bool(lyapunov),
            gates=bool(gates),
            spectra_steps=positive_count("spectra_steps", spectra_steps),
            spectra_batch=positive_count("spectra_batch", spectra_batch),
            decay_batch=None if decay_batch is None else positive_count("decay_batch", decay_batch),
        )
        self.check = bool(check)
        self.callbacks = callback_list(callbacks)
        self._failures = Failures()  # what went wrong, warned about once
        self.process_group = process_group
        self._distributed = detect_distributed(distributed, process_group)
        world = world_size(process_group) if self._distributed else 1
        self.history = History(
            world,
            {
                "model_class": type(model).__name__,
                "schedule": repr(self.schedule),
                "analyze": f"auto (budget {self.budget:g} of training time, and at least "
                "once per doubling of the sampled steps)"
                if self.analyze is None
                else repr(self.analyze),
                **{k: v for k, v in self.options.items()},
                **({"loss_scale": "divided out (GradScaler)"} if grad_scaler else {}),
            },
        )
        self.latest: Snapshot | None = None
        self.global_step = 0
        self._closed = False
        self._pending = False  # the latest row holds a trace that was not analysed
        self._paused = 0
        self._recorder: Any = None
        self._budget = AnalysisBudget(self.budget)  # time accounting for analyze="auto"
        self._arm()

    # ----------------------------------------------------------------- context
    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(analyze=exc_type is None)  # while an exception propagates: nothing

    def close(self, *, analyze: bool = True) -> None:
        """Remove every hook; the history and the latest snapshot stay readable.

        Args:
            analyze: First analyse the latest sampled step if it was not
                (:meth:`analyze_latest`), so that the analysed summaries reach the end of
                training. False: only remove the hooks (a run that failed).
        """
        self._disarm()
        if analyze and not self._closed:
            self.analyze_latest()
        self._closed = True

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def armed(self) -> bool:
        """Whether hooks are attached for the current step (it is a sampled step)."""
        return self._recorder is not None

    @property
    def rank(self) -> int:
        """This process's rank (0 when not distributed)."""
        if not self._distributed:
            return 0
        import torch.distributed as dist

        return dist.get_rank(self.process_group)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Detach the hooks for the block (e.g. an evaluation loop between training steps).

        A recording already holding this step's forward is discarded, and re-opened on
        leaving the block if the current step is sampled, so run evaluation *between*
        ``step()`` and the next training forward.
        """
        self._paused += 1
        self._disarm()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._paused -= 1
            if not self._paused:  # the outermost block: its time is not training time
                self._budget.pause(time.perf_counter() - start)
        if not self._paused:
            self._arm()

    # ----------------------------------------------------------------- hooks
    def _arm(self) -> None:
        """Attach a recorder if the current step is sampled (and nothing prevents it)."""
        if self._closed or self._paused or self._recorder is not None:
            return
        if not self.schedule(self.global_step):
            return
        scaler = self.grad_scaler
        recorder = Recorder(
            self.model,
            self.cells,
            grads=True,
            check=self.check,
            reached_only=True,  # evaluation forwards, skipped batches: not this step
            loss_scale=None if scaler is None else scaler.get_scale,
            forced_replay=True,  # the module's own trajectory, one GEMM for all steps
        )
        recorder.start()  # removes what it registered itself if registering fails
        self._recorder = recorder

    def _disarm(self, harvest: bool = False) -> Trace | None:
        """Remove every hook; with ``harvest``, return the step's trace (loss gradients in)."""
        recorder, self._recorder = self._recorder, None
        if recorder is None:
            return None
        try:
            if harvest:
                recorder.stop()  # removes the module hooks, then builds the trace
                return recorder.trace  # back-propagates the captured cotangents
            recorder.stop(failed=True)  # removes the module hooks, builds nothing
            return None
        finally:
            recorder.close()  # removes the tensor hooks on recorded outputs

    # ----------------------------------------------------------------- stepping
    def step(self) -> bool:
        """End the current training step; call it once per step after ``loss.backward()``.

        On a sampled step this reads the recording, appends to :attr:`history` and updates
        :attr:`latest`; then it decides whether the next step is sampled and attaches the
        hooks only if it is. Before or after ``optimizer.step()`` gives the same result (the
        recorder copies the weights when the forward runs).

        Returns:
            Whether this step was sampled.

        A forward that no backward reached (an evaluation forward, under ``torch.no_grad``
        or not, a batch whose loss was skipped) is not part of the step and is left out. A
        layer that the loss did not reach on a sampled step (alternating or multi-task
        losses, or ``step()`` without a backward) gets no numbers that step, only a note
        (:data:`NOT_REACHED`); training goes on.

        Raises:
            GradscopeError: the Monitor is closed, or the ranks recorded different layers.
        """
        if self._closed:
            raise GradscopeError("Monitor.step() on a closed Monitor; create a new one")
        entered = self._budget.enter()
        step, sampled = self.global_step, self._recorder is not None
        try:
            if sampled:
                self._harvest(step)
        finally:
            self._disarm()
            self.global_step += 1
            self._arm()
            self._budget.leave(entered)
        return sampled

    def _should_analyze(self) -> bool:
        """Whether this sampled step gets the loss-independent summaries."""
        if self.analyze is not None:
            return bool(self.analyze(len(self.history)))  # the n-th sampled step
        return self._budget.should_analyze(len(self.history))

    def _collect(self) -> tuple[Trace | None, list[str], list[str]]:
        """This step's trace (None if nothing was reached), notes and unreached layers.

        The notes say what was not recorded; the names are the recorded layers the loss did
        not reach.
        """
        recorder = self._recorder
        try:
            trace = self._disarm(harvest=True)
        except NoRecurrentModuleError:
            return None, [NOTHING_RAN], []
        except MissingDataError:  # calls were recorded, and the loss reached none of them
            trace = None
        except Exception as exc:  # a diagnostic never stops the training it watches
            return None, [self._failures.recording(self.global_step, exc)], []
        unreached = list(recorder.unreached)
        notes = [NOT_REACHED.format(name=name) for name in unreached]
        if trace is not None and "loss_scale" in trace.meta:
            notes.append(UNSCALED)
        return trace, notes, unreached

    def _summaries(self, trace: Trace, analyze: bool) -> tuple[dict[str, Entry], list[str]]:
        """Grad norms and summaries of every layer of ``trace`` (this rank's), and notes."""
        entries, notes, families = trace_summaries(trace, analyze=analyze, **self.options)
        for name, (kind, gates) in families.items():
            self.history.meta.setdefault("kinds", {})[name] = kind
            self.history.meta.setdefault("gate_families", {})[name] = gates
        return entries, notes

    def _harvest(self, step: int) -> None:
        with rng_preserved():
            trace, notes, unreached = self._collect()
            entries: dict[str, Entry] = {}
            analyze = trace is not None and self._should_analyze()
            start = time.perf_counter()
            if trace is not None:
                entries, more = self._summaries(trace, analyze)
                notes.extend(more)
            if analyze:
                self._budget.record(len(self.history), time.perf_counter() - start)
        if self._distributed:
            gathered = all_gather(entries, self.process_group)
        else:
            gathered = {n: (gn[None, :], sc[None, :]) for n, (gn, sc) in entries.items()}
        self.history.append(step, gathered)
        for msg in notes:
            self.history.note(step, msg)
        if trace is not None:
            self.latest = Snapshot(step, trace)
        # the latest row can be analysed later (analyze_latest) only if it holds this trace
        self._pending = trace is not None and not analyze
        self._failures.unreached(step, unreached)
        if self.rank == 0 and self.callbacks:
            with rng_preserved():
                for callback in self.callbacks:
                    self._call(callback, step)

    def _call(self, callback: Callable[[Monitor], Any], step: int) -> None:
        """Run one callback; one that raises is warned about once and training goes on."""
        try:
            callback(self)
        except Exception as exc:  # a diagnostic never stops the training it watches
            self._failures.callback(self.history, callback, step, exc)

    def analyze_latest(self) -> bool:
        """Analyse the latest sampled step if it was not, so the analyses reach the end.

        Otherwise the state-decay curve, the spectra and every analysed tag end at the
        latest *analysed* step. Its analyses are computed from :attr:`latest` (the trace
        kept anyway) into its row of :attr:`history` (the grad norms stay), and the
        ``callbacks`` run again for it, so a logger gets the analysed values at that step.
        :meth:`close`, :meth:`report`, :meth:`save` and the framework callbacks' end of
        training call it. A no-op on ranks other than 0 (rank 0 reports), with
        ``analyze=False``, when the latest row is analysed or holds no trace, and once
        closed.

        Returns:
            Whether it analysed.
        """
        if not self._pending or self._never or self._closed or self.latest is None:
            return False
        if self.rank != 0:
            return False
        self._pending = False
        step, trace, index = self.latest.step, self.latest.trace, len(self.history) - 1
        start = time.perf_counter()
        with rng_preserved():
            entries, notes = self._summaries(trace, analyze=True)
            for name, (_, values) in entries.items():
                self.history.update(index, name, values, rank=0)
            for msg in notes:
                self.history.note(step, msg)
            self._budget.record(index, time.perf_counter() - start)
            for callback in self.callbacks:
                self._call(callback, step)
        return True

    # ----------------------------------------------------------------- output
    def report(self, path: str | os.PathLike, *, environment: bool = False) -> Path | None:
        """Write the training report (HTML or PDF by suffix) on rank 0.

        The latest sampled step is analysed first if it was not (:meth:`analyze_latest`).

        ``environment=True`` adds the platform string (see
        :func:`gradscope.reporting.report`); off by default.

        Returns:
            The path written, or None on ranks other than 0 (which write nothing).
        """
        if self.rank != 0:
            return None
        from gradscope.reporting import report

        self.analyze_latest()
        with rng_preserved():
            return report(self, path, environment=environment)

    def save(self, path: str | os.PathLike) -> Path | None:
        """Save :attr:`history` (:meth:`History.save`) on rank 0; None on other ranks.

        The latest sampled step is analysed first if it was not (:meth:`analyze_latest`).
        """
        if self.rank != 0:
            return None
        self.analyze_latest()
        return self.history.save(path)

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("armed" if self.armed else "idle")
        return (
            f"Monitor({type(self.model).__name__}, schedule={self.schedule!r}, "
            f"step={self.global_step}, sampled={len(self.history)}, {state})"
        )
