"""Cell adapters and the registry that maps module types to them.

Dispatch is a dictionary lookup, never an if/else chain. Two tables:

* ``module type -> adapter`` decides how a module met during recording is handled; the
  lookup walks the type's MRO so a subclass of ``nn.LSTM`` is handled as an LSTM.
* ``kind -> adapter`` finds the adapter again when a saved trace is loaded.

Built-in families register themselves when :mod:`gradscope.cells` is imported.
"""

from __future__ import annotations

from functools import lru_cache

from torch import nn

from gradscope.cells.base import CellAdapter, Params
from gradscope.errors import GradscopeError, UnsupportedModuleError

_BY_TYPE: dict[type[nn.Module], CellAdapter] = {}
_BY_KIND: dict[str, CellAdapter] = {}
#: Fused (multi-step, multi-layer) module types; everything else registered is a one-step cell.
_FUSED: set[type[nn.Module]] = set()
#: Modules that serve classes of libraries gradscope does not import (``transformers``, and
#: PyPI packages): each declares ``SERVES``, a dict from a class's qualified name
#: (``f"{cls.__module__}.{cls.__qualname__}"``) to the adapter instance that records it, and
#: ``ADAPTER``, its family's adapter (found again by ``kind`` when a saved trace is loaded).
#: They are imported the first time a model holds a module that neither torch nor gradscope
#: defines, so recording a model without them never imports ``transformers``. A family that
#: serves new classes adds them to its module's ``SERVES``; a new family adds its module here.
_HOMES: tuple[str, ...] = (
    "gradscope.sequences.mamba",
    "gradscope.sequences.mamba_relatives",
    "gradscope.sequences.mamba2",
    "gradscope.sequences.mamba2_relatives",
    "gradscope.sequences.rwkv",
    "gradscope.sequences.xlstm",
    "gradscope.sequences.rglru",
    "gradscope.sequences.deltanet",
    "gradscope.sequences.deltanet_relatives",
    "gradscope.sequences.kda",
    "gradscope.sequences.lightning",
)
#: Single classes by qualified name -> the adapter module that serves them (its
#: ``SERVES[name]``, else its ``ADAPTER``): for a module that serves one class and declares no
#: ``SERVES``. Merged with the declarations of :data:`_HOMES` by :func:`served`.
_LAZY: dict[str, str] = {
    "xlstm.blocks.mlstm.layer.mLSTMLayer": "gradscope.sequences.xlstm_pkg",
    "xlstm.blocks.slstm.cell.sLSTMCell_vanilla": "gradscope.sequences.slstm",
    "minGRU_pytorch.minGRU.minGRU": "gradscope.sequences.mingru_pkg",
    "minGRU_pytorch.minLSTM.minLSTM": "gradscope.sequences.minlstm_pkg",
    "mambapy.mamba.MambaBlock": "gradscope.sequences.mambapy_block",
    "s5.s5_model.S5": "gradscope.sequences.s5",
    "ncps.torch.cfc.CfC": "gradscope.sequences.ncps_cfc",
    "ncps.torch.ltc.LTC": "gradscope.sequences.ncps_ltc",
}
#: Top-level packages whose classes are never served lazily (no adapter module is imported
#: for them).
_NATIVE = ("torch", "gradscope", "builtins")


def _home(name: str):
    return __import__(name, fromlist=["ADAPTER"])


@lru_cache(maxsize=1)
def served() -> dict[str, CellAdapter]:
    """Every class served lazily, by qualified name -> its adapter (imports the homes once).

    Raises:
        GradscopeError: two homes declare the same class.
    """
    table: dict[str, CellAdapter] = {}
    owner: dict[str, str] = {}
    for home in _HOMES:
        for qualname, adapter in getattr(_home(home), "SERVES", {}).items():
            if qualname in owner:
                raise GradscopeError(f"{qualname} is declared by both {owner[qualname]} and {home}")
            table[qualname], owner[qualname] = adapter, home
    for qualname, home in _LAZY.items():
        module = _home(home)
        table[qualname] = getattr(module, "SERVES", {}).get(qualname, module.ADAPTER)
    return table


def _lazy_adapter(base: type) -> CellAdapter | None:
    if base.__module__.split(".", 1)[0] in _NATIVE:
        return None
    return served().get(f"{base.__module__}.{base.__qualname__}")


def register_cell(
    module_type: type[nn.Module],
    adapter: CellAdapter,
    *,
    overwrite: bool = False,
    fused: bool = False,
) -> None:
    """Register ``adapter`` for every module of type ``module_type`` (and its subclasses).

    Args:
        module_type: The ``nn.Module`` subclass the adapter handles.
        adapter: A :class:`~gradscope.cells.base.CellAdapter` instance with a unique ``kind``.
        overwrite: Replace an existing registration instead of raising.
        fused: The module runs whole sequences and layers in one call (like ``nn.LSTM``);
            only built-in fused modules are supported for now.

    Raises:
        GradscopeError: ``module_type`` or ``adapter.kind`` is registered already and
            ``overwrite`` is False, or the arguments have the wrong types.
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise GradscopeError(
            f"register_cell: module_type must be an nn.Module subclass, got {module_type!r}"
        )
    if not isinstance(adapter, CellAdapter):
        raise GradscopeError(
            f"register_cell: adapter must be a gradscope.CellAdapter instance, got "
            f"{type(adapter).__name__}; subclass gradscope.CellAdapter and implement "
            "state_sizes, step, jacobian_state and jacobian_input"
        )
    if not adapter.kind:
        raise GradscopeError(f"register_cell: {type(adapter).__name__}.kind must be set")
    if not overwrite:
        if module_type in _BY_TYPE:
            raise GradscopeError(
                f"{module_type.__name__} already has the adapter {_BY_TYPE[module_type]!r}; "
                "pass overwrite=True to replace it"
            )
        known = _BY_KIND.get(adapter.kind)
        if known is not None and known is not adapter:
            raise GradscopeError(
                f"cell kind {adapter.kind!r} is taken by {known!r}; choose another kind or "
                "pass overwrite=True"
            )
    _BY_TYPE[module_type] = adapter
    _BY_KIND[adapter.kind] = adapter
    if fused:
        _FUSED.add(module_type)
    else:
        _FUSED.discard(module_type)
    lookup_type.cache_clear()


def _lookup(module_type: type) -> type[nn.Module] | None:
    for base in module_type.__mro__:
        if base in _BY_TYPE:
            return base
        adapter = _lazy_adapter(base)
        if adapter is not None:
            _BY_TYPE[base] = adapter
            _BY_KIND.setdefault(adapter.kind, adapter)
            return base
    return None


@lru_cache(maxsize=256)
def lookup_type(module_type: type) -> type[nn.Module] | None:
    """The registered type that handles ``module_type`` (via its MRO), or None."""
    return _lookup(module_type)


def adapter_for(module: nn.Module) -> CellAdapter:
    """The adapter for ``module``.

    Raises:
        UnsupportedModuleError: Nothing is registered for the module's type; the message
            names the class and shows how to register it.
    """
    registered = lookup_type(type(module))
    if registered is None:
        name = type(module).__name__
        raise UnsupportedModuleError(
            f"gradscope has no adapter for {type(module).__module__}.{name}. A cell called "
            f"once per step: name it in record(model, cells=[...]) (Jacobians via torch.func; "
            f"its forward must be forward(x_t, state) -> state), or register closed forms "
            f"with gradscope.register_cell({name}, MyAdapter()) where MyAdapter subclasses "
            f"gradscope.CellAdapter. A module that runs whole sequences per call: give its "
            f"own step function, gradscope.register_step({name}, step={name}.step, "
            f"state=...) (examples/step.py), or its recurrence, "
            f"gradscope.register_sequence({name}, MyAdapter()) (examples/mingru.py, "
            f"examples/lru.py)."
        )
    adapter = _BY_TYPE[registered]
    return adapter.for_module(module)


def is_fused(module: nn.Module) -> bool:
    """Whether ``module`` is a registered fused (whole-sequence) recurrent module."""
    registered = lookup_type(type(module))
    return registered is not None and registered in _FUSED


def is_sequence(module: nn.Module) -> bool:
    """Whether ``module`` is a registered sequence mixer (a :class:`SequenceAdapter`'s type)."""
    registered = lookup_type(type(module))
    return registered is not None and _BY_TYPE[registered].runs_sequences


def is_registered(module: nn.Module) -> bool:
    """Whether ``module``'s type (or a base type) has an adapter."""
    return lookup_type(type(module)) is not None


def adapter_for_kind(kind: str) -> CellAdapter:
    """The adapter registered under ``kind`` (used when loading a saved trace).

    Raises:
        UnsupportedModuleError: No adapter has that kind (e.g. a custom cell whose module
            was not registered in this process).
    """
    if kind not in _BY_KIND:  # a saved trace of a lazily served family: its ADAPTER
        for home in (*_HOMES, *sorted(set(_LAZY.values()))):
            adapter = _home(home).ADAPTER
            if adapter.kind == kind:
                _BY_KIND[kind] = adapter
                break
    try:
        return _BY_KIND[kind]
    except KeyError:
        raise UnsupportedModuleError(
            f"no cell adapter of kind {kind!r} is registered in this process; call "
            f"gradscope.register_cell(YourCell, YourAdapter()) before loading, where "
            f"YourAdapter.kind == {kind!r}"
        ) from None


def _register_builtins() -> None:
    from gradscope.cells import vanilla

    vanilla.register()
    for name in ("lstm", "gru"):
        try:
            module = __import__(f"gradscope.cells.{name}", fromlist=["register"])
        except ModuleNotFoundError:  # pragma: no cover - during development only
            continue
        module.register()


_register_builtins()

__all__ = [
    "CellAdapter",
    "Params",
    "adapter_for",
    "adapter_for_kind",
    "is_fused",
    "is_registered",
    "is_sequence",
    "register_cell",
    "served",
]
