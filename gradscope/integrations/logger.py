r"""Log a Monitor's history to TensorBoard, W&B or a framework's loggers: :class:`MonitorLogger`.

Usage::

    from gradscope.integrations.logger import MonitorLogger

    log = MonitorLogger("runs/exp1")          # a log dir, a SummaryWriter, a W&B run, a
    with gs.Monitor(model, every=50, callbacks=[log]) as monitor:   # Lightning logger, ...
        ...                                   # train; every sampled step is logged
    log.close()

Destinations are :class:`~gradscope.integrations.writers.Writer`\ s (see
:func:`~gradscope.integrations.writers.as_writer` for what is accepted). The framework
callbacks make one for you from the framework's own loggers.

What is logged, and when
------------------------
After each sampled training step (the Monitor's ``every`` / ``schedule``), for every recorded
layer, at the step the writer is given (the Monitor's training step; the framework
callbacks use the framework's own step, see theirs). Tags are ``{prefix}/{layer}/{name}``
(``prefix`` ``"gradscope"``; dots in layer names are kept). A value that is NaN or infinite
at a step is not logged at that step, so a tag's points are exactly the steps that computed
it.

By default (``scalars="core"``) a layer gets its core tags only (:data:`CORE_KEYS`, at most
7 of them for one cell family): ``rate``, ``regime_code``, ``half_life``,
``log10_grad_norm_t0``, ``log10_grad_norm_tT``, ``loss_rate``, ``lyapunov`` (with
``Monitor(lyapunov=True)``) and the carried gate's median (``gate_forget_median``,
``gate_update_median`` or ``gate_dphi_median``). ``scalars="all"`` logs every History field
under its own name unless renamed below (so fields added to
:data:`gradscope.history.SUMMARY_KEYS` later are logged too), a list logs those fields.
The fields, when logged:

*Every sampled step* (cheap summaries, computed on every sampled step):

* ``log10_grad_norm_t0``, ``log10_grad_norm_tT``: ``log10`` of the batch-mean
  ``‖∂L/∂s_t‖`` at the initial state (``t = 0``, the farthest back in time) and at the last
  state (``t = T``), History fields ``grad_t0`` / ``grad_tT``;
* ``loss_rate``, ``loss_rate_lo``, ``loss_rate_hi``, ``loss_regime_code``: the decay fit of
  the real loss gradient over time (nats per timestep, its 95% interval, and the regime as
  -1 / 0 / +1 for vanishing / neutral / exploding);
* ``T``, ``B``, ``nonfinite``: timesteps and sequences recorded, real states holding NaN/inf;
* the text ``{prefix}/verdict``: a markdown table with one row per layer, the loss-gradient
  verdict of this step and the state-gradient verdict of the latest analysed step.

*Analysed steps* (expensive summaries, when the Monitor's ``analyze`` runs them):
``rate``, ``rate_lo``, ``rate_hi``, ``r2``, ``half_life``, ``regime_code`` (the state-gradient
decay), ``radius_{median,mean,p05,p95,max,frac_above_1}`` (spectral radius of the one-step
Jacobians) and ``sigma_max_{...}`` (their largest singular value, History ``norm_*``),
``lyapunov`` and ``lyapunov_stderr`` (only with ``Monitor(lyapunov=True)``). With the default
``analyze="auto"`` these are the sampled steps that the 2% time budget allows, and at least
sampled steps 0, 1, 3, 7, 15, ... (one per doubling of the sampled steps), so every tag forms
a curve; ``analyze=True`` analyses every sampled step. The latest sampled step is analysed
when the Monitor is closed (or the framework's training ends), and logged again then: the
analysed tags reach the end of training.

*Every* ``figures_every`` *sampled steps* (0, ``figures_every``, ...; None: never), as images
redrawn from the history up to that step: ``{prefix}/{layer}/heatmap`` (``log10 ‖∂L/∂s_t‖``
over training step × timestep) and ``{prefix}/{layer}/rate`` (the state and loss-gradient
decay rates over training), the figures of the training report, each titled with its
layer's name; and once more at the end of the run.

The logging runs inside ``monitor.step()`` (a Monitor callback), so its time (mostly the
figures) counts as the Monitor's in the time budget of ``analyze="auto"``.

Logging never stops training: a destination that fails (its log directory removed during
the run, a full disk, a lost connection) is skipped for that call and the others still get
it; the first failure of each destination is a :class:`~gradscope.errors.LoggingWarning`
naming it, its path, what was being logged and the error (later ones are only counted, in
``logger.writers.failures``). A TensorBoard destination whose log directory is back is
written to again.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from gradscope.errors import ArgumentError, LoggingWarning
from gradscope.history import REGIME_CODES, SUMMARY_KEYS
from gradscope.integrations.writers import Writers, caller_level

#: History fields logged as ``log10`` of their value, and their tags.
LOG10_TAGS: dict[str, str] = {"grad_t0": "log10_grad_norm_t0", "grad_tT": "log10_grad_norm_tT"}


def tag_of(key: str) -> str:
    """The tag name of a History field (any field not renamed here keeps its name).

    ``grad_t0`` → ``log10_grad_norm_t0`` (logged as log10), ``norm_max`` → ``sigma_max_max``,
    ``regime`` → ``regime_code``.
    """
    if key in LOG10_TAGS:
        return LOG10_TAGS[key]
    if key.startswith("norm_"):
        return "sigma_max_" + key[len("norm_") :]
    if key in ("regime", "loss_regime"):
        return key + "_code"
    return key


#: The tag of every field of :data:`~gradscope.history.SUMMARY_KEYS`.
SCALARS: dict[str, str] = {key: tag_of(key) for key in SUMMARY_KEYS}

#: The History fields a :class:`MonitorLogger` logs by default (``scalars="core"``): the
#: state-gradient decay (rate, regime, half-life), the loss gradient at both ends and its
#: rate, λ1 and the carried gate's median (the family's own: forget, update or φ′; the
#: others are NaN for it, so not logged). ``scalars="all"`` logs every field.
CORE_KEYS: tuple[str, ...] = (
    "rate",
    "regime",
    "half_life",
    "grad_t0",
    "grad_tT",
    "loss_rate",
    "lyapunov",
    "gate_forget_median",
    "gate_update_median",
    "gate_dphi_median",
)


def scalar_keys(scalars: str | Any, keys: tuple[str, ...]) -> tuple[str, ...]:
    """The History fields to log: ``"core"`` (:data:`CORE_KEYS`), ``"all"`` or an iterable.

    Raises:
        ArgumentError: another string, or a field name the history does not keep.
    """
    if isinstance(scalars, str):
        if scalars == "all":
            return tuple(keys)
        if scalars == "core":
            return tuple(k for k in CORE_KEYS if k in keys)
        raise ArgumentError(
            f"scalars must be 'core', 'all' or a list of History fields, got {scalars!r}"
        )
    chosen = tuple(str(k) for k in scalars)
    unknown = [k for k in chosen if k not in keys]
    if unknown:
        raise ArgumentError(
            f"scalars: no History field {unknown}; the fields are {list(keys)} (tags: "
            "gradscope.integrations.logger.SCALARS)"
        )
    return chosen


def _number(key: str, value: Any) -> float:
    """A History value as the number logged (NaN: nothing to log)."""
    if isinstance(value, str):
        value = REGIME_CODES.get(value, math.nan)
    if not isinstance(value, (int, float, np.integer, np.floating)):
        return math.nan  # arrays and anything else are not scalars
    value = float(value)
    if key in LOG10_TAGS:
        return math.log10(value) if value > 0 else math.nan
    return value


def history_scalars(
    history: Any,
    index: int = -1,
    prefix: str = "gradscope",
    keys: tuple[str, ...] | None = None,
) -> dict[str, float]:
    """The scalars of one sampled step: ``{"{prefix}/{layer}/{tag}": value}`` (finite only).

    Args:
        history: A :class:`gradscope.monitor.History`.
        index: Which sampled step (row), -1 for the latest.
        prefix: First part of every tag.
        keys: The History fields to log (None: every field the history keeps).
    """
    out: dict[str, float] = {}
    for name in history.names:
        entry = history.entry(name, index)
        for key in history.keys if keys is None else keys:
            value = _number(key, entry.get(key, math.nan))
            if math.isfinite(value):
                out[f"{prefix}/{name}/{tag_of(key)}"] = value
    return out


def _fmt(v: float) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:.3g}".replace("-", "−")


def _rate(rate: float, lo: float, hi: float) -> str:
    ci = f" (95% CI {_fmt(lo)} … {_fmt(hi)})" if math.isfinite(lo) and math.isfinite(hi) else ""
    return f"rate {_fmt(rate)} per step{ci}"


def md_cell(text: str) -> str:
    r"""``text`` as the content of one markdown table cell, read back as the same text.

    A ``|`` would end the cell and a line break the row; ``*``, a backtick, ``[``, ``_`` at
    a word's edge, ``<`` and ``&`` would turn into emphasis, code, links, tags or entities.
    These are escaped (``\|``, ``&lt;``, ...), line breaks become ``<br>`` and tabs ``&#9;``
    (as TensorBoard's markdown renders them). An underscore inside a word (``l1_reverse``) is
    left as it is, as markdown leaves it.
    """
    text = str(text).replace("&", "&amp;").replace("<", "&lt;")
    text = re.sub(r"([\\`*\[\]|])", r"\\\1", text)
    text = re.sub(r"(?<![^\W_])_|_(?![^\W_])", r"\\_", text)
    text = text.replace("\t", "&#9;")
    return re.sub(r"\r\n|\r|\n", "<br>", text)


def verdict_text(history: Any, index: int = -1) -> str:
    """A markdown table of each layer's verdict at one sampled step.

    The loss-gradient verdict is this step's (its fit runs on every sampled step); the
    state-gradient verdict and spectral radius are those of the latest analysed step up to
    this one, and say which step that was. Layer names are escaped (:func:`md_cell`), so a
    ``|`` or a line break in one keeps the table at one row per layer.
    """
    index = index % len(history)
    step = int(history.steps[index])
    rows = [
        f"**gradscope at step {step}**",
        "",
        "| layer | loss gradient ‖∂L/∂s_t‖ (this step) | state gradient (latest analysis) |",
        "|---|---|---|",
    ]
    for name in history.names:
        e = history.entry(name, index)
        if e["loss_regime"]:
            loss = (
                f"{e['loss_regime']}: {_rate(e['loss_rate'], e['loss_rate_lo'], e['loss_rate_hi'])}"
                f"; norm {_fmt(e['grad_t0'])} at t = 0, {_fmt(e['grad_tT'])} at t = T"
            )
        else:
            loss = "no fit at this step"
        regimes = history.regime(name)[: index + 1]
        done = [i for i, r in enumerate(regimes) if r]
        if done:
            a = history.entry(name, done[-1])
            state = (
                f"{a['regime']} at step {a['step']}: {_rate(a['rate'], a['rate_lo'], a['rate_hi'])}"
                f"; spectral radius median {_fmt(a['radius_median'])}"
            )
        else:
            state = "not analysed yet"
        rows.append(f"| {md_cell(name)} | {loss} | {state} |")
    return "\n".join(rows)


def layer_figures(history: Any, name: str, index: int = -1) -> dict[str, Any]:
    """One layer's training heatmap and rate figure from the rows up to ``index``.

    Each title starts with the layer's name (``"rnn.l0: Decay rate over training"``): the
    images of several layers sit side by side in TensorBoard and W&B.

    Returns:
        ``{"heatmap": Figure, "rate": Figure}`` (matplotlib figures, not yet drawn).
    """
    from gradscope.reporting.figures import training_heatmap_figure, training_rate_figure

    stop = index % len(history) + 1
    steps = history.steps[:stop]
    summ = history.summaries(name)
    figures = {
        "heatmap": training_heatmap_figure(history.grad_norms(name)[:stop], steps),
        "rate": training_rate_figure(
            steps,
            summ["rate"][:stop],
            summ["regime"][:stop],
            rate_ci=summ["rate_ci"][:stop],
            loss_rates=summ["loss_rate"][:stop],
        ),
    }
    for fig in figures.values():
        ax = fig.axes[0]
        ax.set_title(f"{name}: {ax.get_title()}" if ax.get_title() else name)
    return figures


def figure_images(history: Any, index: int = -1) -> dict[tuple[str, str], np.ndarray]:
    """Each layer's :func:`layer_figures`, drawn from the rows up to ``index``.

    Returns:
        ``{(layer, "heatmap" | "rate"): (H, W, 3) uint8}``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    out: dict[tuple[str, str], np.ndarray] = {}
    for name in history.names:
        for what, fig in layer_figures(history, name, index).items():
            canvas = FigureCanvasAgg(fig)
            canvas.draw()
            out[name, what] = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    return out


class MonitorLogger:
    r"""A Monitor callback that logs every sampled step (see the module docstring for tags).

    Args:
        *targets: Where to log: :class:`~gradscope.integrations.writers.Writer`\ s, or what
            :func:`~gradscope.integrations.writers.as_writer` turns into one (a TensorBoard
            log directory or ``SummaryWriter``, a W&B run, a Lightning logger).
        prefix: First part of every tag.
        figures_every: Log the figures every this many sampled steps (None: never).
        text: Log the verdict text on every sampled step.
        step: Maps the Monitor's training step to the step logged (default: the same);
            the framework callbacks pass their trainer's step.
        scalars: Which History fields to log: ``"core"`` (default, :data:`CORE_KEYS`: up
            to 7 tags per layer), ``"all"`` (every field, :data:`SCALARS`) or a list of
            History fields.

    Attributes:
        writers: The destinations, as one :class:`~gradscope.integrations.writers.Writers`
            (a destination that fails is skipped, with one warning; see there).
        failures: How many sampled steps could not be logged at all (their values or
            figures could not be made), each skipped with training going on.

    When the Monitor analyses its latest sampled step at the end of the run
    (:meth:`gradscope.Monitor.analyze_latest`) it calls the logger again for that step:
    the scalars it did not have the first time are logged, then the verdict text and, if
    ``figures_every`` is not None, the figures (the final view).

    Raises:
        ArgumentError: no target, ``figures_every`` < 1, or ``scalars`` names no field.
    """

    def __init__(
        self,
        *targets: Any,
        prefix: str = "gradscope",
        figures_every: int | None = 10,
        text: bool = True,
        step: Callable[[int], int] | None = None,
        scalars: str | Any = "core",
    ) -> None:
        self.keys = scalar_keys(scalars, SUMMARY_KEYS)
        if figures_every is not None and (int(figures_every) != figures_every or figures_every < 1):
            raise ArgumentError(
                f"figures_every must be an integer >= 1 or None, got {figures_every!r}"
            )
        if not targets:
            raise ArgumentError(
                "MonitorLogger needs at least one destination: a TensorBoard log directory or "
                "SummaryWriter, a W&B run, a Lightning logger, or a gradscope Writer"
            )
        self.writers = Writers(targets)
        self.prefix = prefix
        self.figures_every = figures_every
        self.text = bool(text)
        self.step = step
        self.failures = 0
        # the latest row logged (rows, training step), its tags and the step logged at
        self._logged: tuple[tuple[int, int], set[str], int] = ((-1, -1), set(), -1)

    def __call__(self, monitor: Any) -> None:
        """Log the monitor's latest sampled step (called by the Monitor).

        Logging never stops training: a destination that fails is skipped (see
        :class:`~gradscope.integrations.writers.Writers`), and so is a step whose values or
        figures cannot be made, with one :class:`~gradscope.errors.LoggingWarning` the first
        time (:attr:`failures` counts them all).
        """
        try:
            history = monitor.history
            row = (len(history), int(history.steps[-1])) if len(history) else (0, -1)
            self.log(history, again=row == self._logged[0])
        except Exception as exc:  # never out of monitor.step()
            self.failures += 1
            if self.failures == 1:
                warnings.warn(
                    f"gradscope: {self!r} could not log the step: {type(exc).__name__}: {exc}. "
                    "Skipped; training goes on, and later failures are skipped without a "
                    "warning",
                    LoggingWarning,
                    stacklevel=caller_level(),
                )

    def log(self, history: Any, index: int = -1, *, again: bool = False) -> dict[str, int]:
        """Log one sampled step of ``history`` (see the module docstring for what and when).

        Args:
            history: A :class:`gradscope.monitor.History`.
            index: Which sampled step (row), -1 for the latest.
            again: The latest row was logged before and has been analysed since: log the
                scalars it did not have, the text and the figures (the end of a run).

        Returns:
            ``{"scalars": n, "texts": n, "images": n}`` written to each destination.
        """
        if not len(history):
            return {"scalars": 0, "texts": 0, "images": 0}
        index = index % len(history)
        at = int(history.steps[index])
        _, logged, logged_at = self._logged
        seen = logged if again else set()
        step = int(self.step(at)) if self.step is not None else at
        if again:  # at the step it was logged at, not the framework's step of now
            step = logged_at
        scalars = history_scalars(history, index, self.prefix, self.keys)
        self._logged = ((len(history), at), seen | set(scalars), step)
        scalars = {tag: v for tag, v in scalars.items() if tag not in seen}
        self.writers.log_scalars(scalars, step)
        texts = 0
        if self.text and history.names:
            self.writers.log_text(f"{self.prefix}/verdict", verdict_text(history, index), step)
            texts = 1
        images = 0
        if self.figures_every is not None and (again or index % self.figures_every == 0):
            for (name, what), image in figure_images(history, index).items():
                self.writers.log_image(f"{self.prefix}/{name}/{what}", image, step)
                images += 1
        self.writers.flush()
        return {"scalars": len(scalars), "texts": texts, "images": images}

    def close(self) -> None:
        """Close every destination (each closes only what it opened itself)."""
        self.writers.close()

    def __repr__(self) -> str:
        return f"MonitorLogger({self.writers!r}, figures_every={self.figures_every})"


def log_all(history: Any, *targets: Any, **kwargs: Any) -> Mapping[str, int]:
    """Log every sampled step of a (saved) history at once, e.g. after training.

    Args:
        history: A :class:`gradscope.monitor.History` (:func:`gradscope.load_history`).
        *targets: As for :class:`MonitorLogger`.
        **kwargs: As for :class:`MonitorLogger`.

    Returns:
        The totals of :meth:`MonitorLogger.log`.
    """
    logger = MonitorLogger(*targets, **kwargs)
    total = {"scalars": 0, "texts": 0, "images": 0}
    try:
        for i in range(len(history)):
            for key, n in logger.log(history, i).items():
                total[key] += n
    finally:
        logger.close()
    return total


__all__ = [
    "CORE_KEYS",
    "LOG10_TAGS",
    "SCALARS",
    "MonitorLogger",
    "figure_images",
    "history_scalars",
    "layer_figures",
    "log_all",
    "md_cell",
    "scalar_keys",
    "tag_of",
]
