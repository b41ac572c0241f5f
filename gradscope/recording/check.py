"""The replay check: tolerances, mismatch, and accepting chaotic replays as shadow trajectories.

A replay must reproduce what the recorded module computed: :func:`check_fused` compares a
fused module's replay against its own outputs (``h_n``/``c_n`` of every layer and direction,
the top layer's output), within the fixed :func:`tolerance` per step or, where the dynamics
amplify rounding, within the :class:`~gradscope.recording.budget.ErrorBudget` (a *shadow
trajectory*, reported by :func:`warn_shadow`); :func:`check_chain` does the same for a cell
called in a loop. See :mod:`gradscope.recording` for the numbers.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from gradscope._rng import rng_preserved
from gradscope.errors import ChaoticReplayWarning, ReplayMismatchError, ShapeError
from gradscope.recording.budget import BudgetUnavailable, ErrorBudget
from gradscope.recording.chains import CellChain
from gradscope.recording.dropout import NOT_REPRODUCIBLE
from gradscope.recording.fused import FusedCall, Replay

#: Replay tolerances, relative to ``max(1, max|reference|)``: thousands of units in the
#: last place of float64 (eps 2.2e-16) and ~80 of float32 (eps 1.2e-7), enough for
#: different summation orders over long sequences (measured on CPU: float32 RNN/LSTM/GRU,
#: T = 1000, H = 64 stay below 1e-5), far below any real discrepancy (a wrong gate order or
#: a modified forward gives errors of order 1).
_TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}
#: float32 on an accelerator: cuDNN's kernels sum in other orders (measured on an H100:
#: up to 1.0e-5 at T = 100), and with ``torch.backends.cudnn.allow_tf32`` (PyTorch's
#: default) their matrix products round inputs to TF32's 10-bit mantissa (unit roundoff
#: 4.9e-4; measured: up to 7.3e-4). Tolerances ~10x above the measurements.
_TOLERANCE_F32_ACCELERATOR = 1e-4
_TOLERANCE_F32_TF32 = 1e-2
_TOLERANCE_OTHER = 1e-2  # half / bfloat16: 8-11 mantissa bits


def tolerance(dtype: torch.dtype, device: torch.device, fused: bool) -> float:
    """The replay tolerance for ``dtype`` on ``device`` (see the constants above)."""
    if dtype == torch.float32 and device.type != "cpu":
        cudnn = torch.backends.cudnn
        if fused and device.type == "cuda" and cudnn.enabled and cudnn.allow_tf32:
            return _TOLERANCE_F32_TF32
        return _TOLERANCE_F32_ACCELERATOR
    return _TOLERANCE.get(dtype, _TOLERANCE_OTHER)


def _hook_names(hooks: dict) -> list[str]:
    return [getattr(fn, "__qualname__", type(fn).__name__) for fn in hooks.values()]


def other_causes(module: nn.Module, autocast: torch.dtype | None, local_hooks: bool) -> str:
    """What, besides a wrong adapter, can make a module's output differ from its recurrence.

    Called after the recorder removed its own hooks, so every forward hook still attached is
    the user's. A fused module's own output is recorded before its module-level hooks run,
    so only global ones (``register_module_forward_hook``) count for it (``local_hooks``).
    """
    from torch.nn.modules import module as module_mod

    causes = []
    if autocast is not None:
        causes.append(
            f"It ran under torch.autocast in {str(autocast).replace('torch.', '')}: the replay "
            "runs in the weights' dtype and is held to that precision's tolerance, which this "
            "error exceeds; record it outside autocast (wrap the forward in "
            "torch.autocast(device_type, enabled=False)) to see the exact recurrence."
        )
    hooks = _hook_names(getattr(module_mod, "_global_forward_hooks", {}))
    if local_hooks:
        hooks = _hook_names(module._forward_hooks) + hooks
    if hooks:
        causes.append(
            f"It has forward hooks that are not gradscope's ({', '.join(hooks)}): a forward "
            "hook that returns a changed output makes the output differ from the recurrence "
            "its weights define; remove the hook (or let it return None) while recording."
        )
    return " ".join(causes) + (" " if causes else "")


def mismatch(replayed: Tensor, reference: Tensor) -> float:
    """Max error of ``replayed`` against ``reference``, relative to ``max(1, max|ref|)``.

    Non-finite entries must agree exactly (same NaN / ±inf pattern); a disagreement counts
    as an infinite error. Finite entries give ``max|a - b| / max(1, max|b|)``.
    """
    a = replayed.detach().to(torch.float64)
    b = reference.detach().to(torch.float64)
    fin = torch.isfinite(a) & torch.isfinite(b)
    nonfin_ok = torch.where(fin, True, (a == b) | (torch.isnan(a) & torch.isnan(b)))
    if not bool(nonfin_ok.all()):
        return float("inf")
    if not bool(fin.any()):
        return 0.0
    diff = (a - b).abs()[fin].max()
    scale = torch.clamp(b.abs()[fin].max(), min=1.0)
    return float(diff / scale)


def _exp(x: float) -> float:
    """``e^x`` as a float, ``inf`` past float64's range (no overflow warning)."""
    return math.inf if x > 709.0 else math.exp(x)


@dataclass
class Shadow:
    """A (layer, direction) accepted as a shadow trajectory: the numbers for meta/warning."""

    error: float  # max relative error of the checked quantities
    budget: float  # max relative budget they were compared against
    growth_rate: float  # λ̂, nat-log per step
    amplification: float  # max G
    horizon: int | None  # first step whose budget reaches the states' size
    what: list[str]  # the quantities that needed the budget


@dataclass
class FusedCheck:
    """What the replay check of one fused call found."""

    errors: dict[tuple[int, int], float] = field(default_factory=dict)
    shadows: dict[tuple[int, int], Shadow] = field(default_factory=dict)


def _entry_errors(mine: Tensor, ref: Tensor) -> tuple[Tensor, float]:
    """Per-entry max-abs error over the last dim (``inf`` where non-finite values disagree)."""
    a = mine.detach().to(torch.float64).cpu()
    b = ref.detach().to(torch.float64).cpu()
    fin = torch.isfinite(a) & torch.isfinite(b)
    same = (a == b) | (torch.isnan(a) & torch.isnan(b))
    diff = torch.where(fin, (a - b).abs(), torch.where(same, 0.0, float("inf")))
    scale = max(1.0, float(b.abs()[fin].max())) if bool(fin.any()) else 1.0
    return diff.amax(dim=-1), scale


def check_fused(call: FusedCall, rep: Replay) -> FusedCheck:
    """Raise ReplayMismatchError unless the replay reproduces the module's outputs.

    Every checked quantity (``h_n``/``c_n`` of every layer and direction, the top layer's
    output at every valid position) must match to the fixed tolerance, or else stay within
    the error budget of :class:`ErrorBudget` at every sequence and position (computed only
    then); the latter marks the layer and direction as a shadow trajectory.

    Returns:
        The largest relative error per checked ``(layer, direction)``, and the shadows.
    """
    dtype = call.autocast or call.x.dtype
    tol = tolerance(dtype, call.x.device, fused=True)
    result = FusedCheck()
    budget = ErrorBudget(call, rep, tol)
    top = call.num_layers - 1
    valid = call.valid
    checked_layers = range(1) if call.dropout == NOT_REPRODUCIBLE else range(call.num_layers)
    for layer in checked_layers:
        for d in range(call.dirs):
            direction = "reverse" if d else "forward"
            params = call.params[(layer, d)]
            sizes = call.adapter.state_sizes(params)
            p = sizes[0]
            final = rep.states[layer][d][-1]
            idx = layer * call.dirs + d
            pairs = [("h_n", final[:, :p], call.h_n[idx])]
            if call.c_n is not None:
                pairs.append(("c_n", final[:, p:], call.c_n[idx]))
            if layer == top:
                mine = rep.outputs[layer][..., d * p : (d + 1) * p]
                ref = call.out[..., d * p : (d + 1) * p]
                pairs.append(("output", mine, ref))
            for what, mine, ref in pairs:
                sel = valid if what == "output" and valid is not None else None
                err = mismatch(
                    mine[sel] if sel is not None else mine, ref[sel] if sel is not None else ref
                )
                result.errors[(layer, d)] = max(err, result.errors.get((layer, d), 0.0))
                if err <= tol:
                    continue
                where = f"{call.path or call.name} ({type(call.module).__name__})"
                head = (
                    f"{where}: the step-by-step replay does not reproduce the module's {what} "
                    f"at layer {layer}, {direction} direction: max error {err:.3g} relative to "
                    f"max(1, |{what}|) exceeds {tol:g} for {dtype}"
                )
                advice = other_causes(call.module, call.autocast, local_hooks=False) + (
                    "Does the module (a subclass?) compute something other than PyTorch's "
                    "equations, or is a wrong adapter registered for it? Pass check=False to "
                    "record anyway."
                )
                try:
                    log_b = (
                        budget.at_positions(layer, d)
                        if what == "output"
                        else budget.log_budget(layer, d)[-1]
                    )
                except BudgetUnavailable as exc:
                    raise ReplayMismatchError(
                        f"{head}, and its amplification along the trajectory could not be "
                        f"measured: {exc}. {advice}"
                    ) from None
                entry_err, scale = _entry_errors(mine, ref)
                rel = entry_err / scale  # (T, B) for the output, (B,) for h_n / c_n
                allowed = torch.fmax(torch.exp(log_b) / scale, torch.tensor(tol).double())
                ok = (rel <= allowed) & torch.isfinite(rel)
                if sel is not None:
                    ok |= ~sel.cpu()
                    allowed = torch.where(sel.cpu(), allowed, 0.0)
                lam = budget.growth_rate(layer, d)
                amp = _exp(budget.log_amplification(layer, d))
                if not bool(ok.all()):
                    ratio = torch.where(ok, 0.0, torch.nan_to_num(rel / allowed, nan=math.inf))
                    worst = int(ratio.argmax())
                    if what == "output":
                        pos, seq = divmod(worst, rel.shape[1])
                        at = f"position {pos} of sequence {seq}"
                        e_w, b_w = float(rel[pos, seq]), float(allowed[pos, seq])
                    else:
                        at = f"sequence {worst}"
                        e_w, b_w = float(rel[worst]), float(allowed[worst])
                    raise ReplayMismatchError(
                        f"{head}, and more than rounding errors amplified by the dynamics can "
                        f"explain: at {at} the error is {e_w:.3g} but the error budget (the "
                        f"tolerance per step, amplified along the replayed trajectory) is only "
                        f"{b_w:.3g}; perturbations grow by λ̂ = {lam:+.3g} per step (up to "
                        f"{amp:.3g}x). {advice}"
                    )
                prev = result.shadows.get((layer, d))
                result.shadows[(layer, d)] = Shadow(
                    error=max(err, prev.error if prev else 0.0),
                    budget=max(float(allowed.max()), prev.budget if prev else 0.0),
                    growth_rate=lam,
                    amplification=amp,
                    horizon=budget.horizon(layer, d),
                    what=[*(prev.what if prev else []), what],
                )
    return result


def warn_shadow(call: FusedCall, check: FusedCheck) -> None:
    """The :class:`~gradscope.errors.ChaoticReplayWarning` for a call with shadow layers."""
    items = []
    for (layer, d), sh in sorted(check.shadows.items()):
        kind = "chaotic" if sh.growth_rate > 0 else "transiently amplifying"
        text = (
            f"layer {layer} {'reverse' if d else 'forward'} ({', '.join(sh.what)}): error "
            f"{sh.error:.3g} within the budget {sh.budget:.3g}; perturbations grow by "
            f"λ̂ = {sh.growth_rate:+.3g} per step (up to {sh.amplification:.3g}x): {kind}"
        )
        if sh.horizon is not None:
            text += (
                f"; from step {sh.horizon} on the budget reaches the states' own size: "
                "there the two trajectories are unrelated, and the comparison verifies "
                "the replay only through earlier steps"
            )
        items.append(text)
    tol = tolerance(call.autocast or call.x.dtype, call.x.device, fused=True)
    chaotic = any(sh.growth_rate > 0 for sh in check.shadows.values())
    nature = (
        "The dynamics are chaotic at this precision,"
        if chaotic
        else "The dynamics amplify perturbations transiently,"
    )
    warnings.warn(
        f"gradscope: {call.path or call.name} ({type(call.module).__name__}): the "
        f"step-by-step replay misses the fixed tolerance {tol:g} for "
        f"{call.autocast or call.x.dtype}, by "
        "no more than rounding errors amplified by the dynamics along the trajectory: "
        + "; ".join(items)
        + f". {nature} so the recorded states are a shadow trajectory: each step is "
        "exact to rounding, but the trajectory differs "
        "from the kernel's by amplified rounding (different summation orders), which "
        "leaves spectra, Lyapunov exponents and decay statistics unaffected. These layers "
        "have meta['replay'] == 'shadow'.",
        ChaoticReplayWarning,
        stacklevel=4,  # Recorder.stop (via build_trace, _build_fused)
    )


def check_chain(chain: CellChain, xs: Tensor, s_in: Tensor, s_out: Tensor) -> float:
    """The adapter's step must reproduce every recorded call; returns the max error."""
    steps, batch = xs.shape[:2]
    cls = type(chain.module).__name__
    with torch.no_grad(), rng_preserved():
        try:
            got = chain.adapter.step(
                chain.params, xs.reshape(steps * batch, -1), s_in.reshape(steps * batch, -1)
            )
        except (RuntimeError, ValueError, IndexError) as exc:
            raise ShapeError(
                f"{chain.name} ({cls}, kind {chain.adapter.kind!r}): the adapter's step "
                f"failed on inputs {tuple(xs.shape[1:])} and states {tuple(s_in.shape[1:])}: "
                f"{exc}. Is the right adapter registered for {cls}?"
            ) from exc
    err = mismatch(got.reshape(s_out.shape), s_out)
    dtype = chain.autocast or xs.dtype
    tol = tolerance(dtype, xs.device, fused=False)
    if not err <= tol:
        worst = (got.reshape(s_out.shape) - s_out).abs().flatten(1).amax(1)
        step = int(torch.nan_to_num(worst, nan=float("inf")).argmax())
        raise ReplayMismatchError(
            f"{chain.name} ({cls}, kind {chain.adapter.kind!r}): the adapter's step does "
            f"not reproduce the cell's output: max error {err:.3g} relative to "
            f"max(1, |state|) exceeds {tol:g} for {dtype} (worst at call {step}). "
            + other_causes(chain.module, chain.autocast, local_hooks=True)
            + f"Otherwise the registered adapter does not match {cls}'s forward, or the cell "
            "is stochastic (e.g. dropout in training mode: call model.eval()). Pass "
            "check=False to record anyway."
        )
    return err
