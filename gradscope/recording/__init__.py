r"""Recording: forward hooks that capture every recurrent step of an arbitrary model.

``gs.record(model)`` hooks every submodule of ``model`` whose type has a cell adapter
(:func:`gradscope.cells.is_registered`), plus the modules named in ``cells=[...]``, runs
nothing itself, and turns what the hooks saw into a :class:`~gradscope.traces.Trace` when the
block exits::

    with gs.record(model, grads=True) as rec:
        loss = loss_fn(model(x), y)
    loss.backward()
    trace = rec.trace            # states, inputs, weights; and ∂L/∂s_t after the backward

Two kinds of module are recorded differently.

**Fused modules** (``nn.RNN``, ``nn.LSTM``, ``nn.GRU``) run whole sequences and layers in one
call, so their intermediate states never appear in Python. Their forward hook keeps the
input, the initial state and the outputs, and the module is *replayed* step by step from its
own weights with the adapter's step function ``s_t = f(x_t, s_{t-1})`` (the same dtype and
device, under ``torch.no_grad``). For layer ``k`` and direction ``d`` this yields the states
``s_0 ... s_T`` in processing order: a reverse direction's step ``j`` reads position
``L_b - 1 - j`` of sequence ``b`` (``L_b`` its length), so its step 0 is the last valid
position. Layer ``k > 0`` reads the concatenated ``(forward, reverse)`` outputs ``h`` of layer
``k - 1`` (with ``proj_size`` the projected ``h``), after inter-layer dropout if any. The replay
must reproduce the module's own top-layer output at every valid position and ``h_n`` (and
``c_n``) of every layer and direction, to ``1e-12`` in float64 and ``1e-5`` in float32
(errors relative to ``max(1, max|output|)``; float32 on CUDA: ``1e-4``, or ``1e-2`` while
``torch.backends.cudnn.allow_tf32`` lets cuDNN round to TF32, PyTorch's default); otherwise,
with ``check=True``, :class:`~gradscope.errors.ReplayMismatchError` names the module, layer,
direction, error and dtype, unless the dynamics explain the difference (next paragraph). The
measured error is kept in ``meta["replay_error"]``.

**Chaotic networks: shadow trajectories.** The kernel and the replay round differently
(different summation orders), and in a chaotic network (largest Lyapunov exponent
``λ₁ > 0``) those per-step differences grow like ``e^{λ₁ t}``: a legitimate replay can then
miss the fixed tolerance by orders of magnitude (an ``nn.RNN`` with recurrent gain 3 differs
by ``1.8e-9`` in float64 after 60 steps, by ``O(1)`` in float32). The fixed tolerance is
therefore the error allowed *per step*; only when a replayed quantity misses it is the
amplification measured, along the replayed trajectory, to decide. Four random unit tangent
vectors per sequence are propagated through the replay with forward-mode AD
(``torch.func.jvp`` of the adapter's step), renormalised every step; their log growth
``a_t = ln(‖v_t‖/‖v_{t-1}‖)`` gives the amplification ``G_{u→t} = exp(Σ_{u<w≤t} a_w)`` of a
perturbation from step ``u`` to ``t``, and the error budget of the state at step ``t`` is
``β_t = Σ_{u≤t} G_{u→t} (tol·σ + ‖∂f/∂x_u‖_F β^{below}_u)``: the tolerance injected at every
step, plus, for a layer ``k > 0``, the budget of layer ``k - 1``'s outputs that it reads,
so amplification inherited from the layers below is accounted for (``σ = max(1, max|s|)``;
padded steps inject nothing; the largest of the four budgets counts). Every checked entry,
``h_n``/``c_n`` per sequence and the top layer's output per sequence *and position*, must
stay within its own budget, so the early positions, before the trajectories separate, keep
the check strict even where the later ones cannot. For a contracting layer the budget stays
``≈ tol/(1 - e^{λ})``, and a model that meets the fixed tolerance is treated exactly as before
(the budget is never computed). Within the budget the replay is accepted as a *shadow
trajectory*: each step is exact to rounding, but the trajectory differs from the kernel's by
amplified rounding, which leaves spectra, Lyapunov exponents and decay statistics unaffected.
The layer's meta then holds ``"replay": "shadow"``, ``"amplification"`` (the largest
``G_{u→t}``), ``"growth_rate"`` (``λ̂``, the mean of ``a_t`` per step), ``"replay_budget"``
(the largest budget, relative like the error) and ``"replay_horizon"`` (the first step whose
budget reaches the states' own size: from there on the two trajectories are unrelated and
the comparison verifies nothing, None if never), and one
:class:`~gradscope.errors.ChaoticReplayWarning` per module says so. An error beyond the budget
(a wrong adapter, a modified forward: errors far above rounding from the first steps) still
raises :class:`~gradscope.errors.ReplayMismatchError`, with the budget and the amplification
in the message; so does an adapter whose step ``torch.func.jvp`` cannot differentiate. Loss
gradients of a shadow layer are back-propagated along the recorded (shadow) trajectory, with
the cotangents that the kernel's outputs received.

**Inter-layer dropout** (``num_layers > 1``, ``dropout > 0``, training mode). PyTorch's fused
CPU kernels apply ``at::dropout(y, p, train=True)`` to each layer's output ``y`` except the
last (``apply_layer_stack`` in ``aten/src/ATen/native/RNN.cpp``, and the oneDNN LSTM path
likewise); on CPU that is ``noise = empty_like(y).bernoulli_(1 - p); noise /= 1 - p;
y * noise`` (``_dropout_impl`` in ``Dropout.cpp``), drawn from the default CPU generator on
the time-major ``(T, B, F)`` output, or on the packed data ``(ΣL_b, F)`` for a
``PackedSequence``. A forward *pre*-hook copies the CPU generator's state just before the
module runs, and the replay draws the same masks, in the same order and on tensors of the
same shape and dtype, from a private ``torch.Generator`` set to that state; the global RNG is
never touched. The replay check then confirms the masks bit for bit (``meta["dropout"] ==
"mask reproduced"``). On CUDA (cuDNN or ``native_dropout``) the mask comes from a generator
whose stream cannot be replayed this way: gradscope does not fake it. It warns, replays
layers ``> 0`` *without* the mask (their recorded inputs are the undropped outputs of the
layer below), skips the output check for those layers, marks them
``meta["dropout"] == "not reproducible"``, and leaves their loss gradients empty. Call
``model.eval()`` (or record on CPU) for exact traces of such a model.

**Cells called in a Python loop** (``nn.RNNCell``, ``nn.LSTMCell``, ``nn.GRUCell``, cells
registered with :func:`gradscope.register_cell`, and any module named in ``cells=[...]``,
which then uses :class:`~gradscope.cells.generic.GenericAdapter`) are recorded call by call
from the hook's ``(x_t, state)`` and output. Consecutive calls form one sequence while each
call's input state equals the previous call's output (the same, unmodified tensor, or equal
values) with the same shapes; a ``None`` state or any other state starts a new sequence,
recorded as a new :class:`~gradscope.traces.LayerTrace` with the suffix ``@1``, ``@2``, ....
With ``check=True`` the adapter's step must reproduce every recorded output (same
tolerances), which catches a mis-registered adapter.

**A fused module called step by step** (a seq2seq decoder calling an ``nn.LSTM`` on one
step at a time, or truncated chunks) is chained the same way
(:mod:`~gradscope.recording.fused_chain`): a call whose initial state is the previous call's
final state (the same unmodified tensors, or equal values), with the same weights, batch and
layout, continues that call's sequence, and its layers are joined into one layer per layer
of the module (``meta["calls"]``, ``meta["steps_per_call"]``). Each call is replayed and
checked on its own. Bidirectional modules and packed input never chain.

**``torch.autocast`` and users' forward hooks.** Under ``torch.autocast`` a module computes
in a lower precision (``bfloat16``, ``float16``) than its weights. The replay runs in the
weights' dtype (autocast is turned off for it, wherever the trace is built) and must match
to the autocast dtype's tolerance (``1e-2``); the layer's ``meta["autocast"]`` names the
dtype, and an error beyond the tolerance says that the module ran under autocast. Loss
gradients are back-propagated in the weights' dtype from the cotangents the low-precision
backward delivered (accurate to that precision). A fused module's own output is recorded
before its forward hooks run, so a user's hook that changes it is downstream of the
recurrence (its effect is part of the loss); a cell's output is recorded after them,
because its next call reads what they return: a hook that changes it fails the check, and
the error names the hook (global forward hooks likewise, for both).

**Loss gradients** (``grads=True``). ``LayerTrace.grads[t] = ∂L/∂s_t`` for ``t = 0..T``,
the total derivative through everything downstream of ``s_t``, so that

    g_{t-1} = J_tᵀ g_t + ∂ℓ/∂s_{t-1}|_direct,       J_t = ∂s_t/∂s_{t-1}.

The parts of ``s_t`` are independent coordinates: for an LSTM, ``h_t``'s dependence on
``c_t`` belongs to ``J_t``, not to ``∂L/∂c_t``. For cells, tensor hooks on each call's output
state parts receive their total autograd gradient during the user's ``backward()``; where
the cell computes one returned part from another inside the same step (PyTorch's CPU
``nn.LSTMCell`` computes ``h_t = o ⊙ tanh(c_t)`` from the ``c_t`` it returns), node hooks on
those within-step edges of the autograd graph measure that share, and it is subtracted.
``g_0 = J_1ᵀ g_1`` (a vector-Jacobian product of the adapter's step), as for fused modules:
uses of the initial state outside the recorded module are not part of it.
For fused modules, tensor hooks on the module's outputs (``output`` or its packed ``data``,
``h_n``, ``c_n``) capture the cotangents that reach the module in the real backward; when
:attr:`Recorder.trace` is next read, the captured cotangents are back-propagated through
the replayed states (same weights, same dropout masks) by the cell adapters' closed-form
vector-Jacobian products, layer by layer and direction by direction
(:func:`gradscope.jacobians.bptt.stack_state_grads`; no autograd graph is built over the
replay, and the input products of all steps are one product per layer). A cotangent that
never arrives (an output the loss does not use) counts as zero; if no backward pass reached
any recorded module, ``grads`` stays None and ``trace.meta["grads"]`` says why. All hooks
return None, so no gradient is changed. Repeated backward passes accumulate, like ``.grad``.

Recording never changes the model's outputs, gradients, parameters, its hooks or the global
RNG state (CPU and CUDA): hooks return None, recorded tensors are detached clones, every
module hook is removed when the block exits (also when the forward raises) or when the
recorder is garbage collected (hooks hold it only weakly), and the only
code that could consume random numbers (re-running a user's cell through ``torch.func`` in the
check) runs with the RNG state saved and restored.

Recorded tensors stay on the module's device.

The modules of this package, one concept each:

- :mod:`~gradscope.recording.recorder`: :class:`Recorder` (owns the hooks and their
  lifecycle);
- :mod:`~gradscope.recording.api`: :func:`record`, :func:`trace`;
- :mod:`~gradscope.recording.arguments`: a hooked call's arguments (bound, described, copied);
- :mod:`~gradscope.recording.fused`: fused modules' layout and capture;
- :mod:`~gradscope.recording.replay`: replaying a fused call (step by step or teacher-forced);
- :mod:`~gradscope.recording.dropout`: inter-layer dropout masks;
- :mod:`~gradscope.recording.check`: tolerances, mismatch, the replay check of fused calls
  and cell chains, shadow trajectories;
- :mod:`~gradscope.recording.budget`: the shadow-trajectory error budget;
- :mod:`~gradscope.recording.chains`: cells called in a loop, chained into sequences;
- :mod:`~gradscope.recording.fused_chain`: successive calls of a fused module that carry
  the state on, chained into one sequence;
- :mod:`~gradscope.recording.build`: turning the captured calls into a trace;
- :mod:`~gradscope.recording.grads`: loss gradients from the captured cotangents.
"""

from gradscope.recording.api import record, trace
from gradscope.recording.recorder import Recorder

__all__ = ["Recorder", "record", "trace"]
