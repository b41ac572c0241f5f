"""The analysis layer: numbers from recorded layers, never from live models.

One module per quantity (``spectra``, ``lyapunov``, ``decay``), the per-layer verdicts
(``diagnosis``, with the rules in ``verdicts`` and the advice text in ``advice``) and
``profiling`` (record + diagnose in one call). The public functions are reached as
``gradscope.spectrum``, ``gradscope.lyapunov``, ``gradscope.decay``, ``gradscope.diagnose``
and ``gradscope.profile``; this package re-exports nothing, so a module name never hides a
function of the same name.
"""
