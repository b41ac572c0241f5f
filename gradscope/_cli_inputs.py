"""Command-line inputs: the user's model, loss and input tensor (``gradscope profile``).

``TARGET`` and ``--loss`` name an attribute of an importable module, ``package.module:attr``;
the working directory is searched last, so a stray ``numpy.py`` beside the user's module
never shadows gradscope's dependencies. Everything the user's code raises becomes one
:class:`UsageError` line that says whose code failed.
"""

from __future__ import annotations

import importlib
import os
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gradscope.errors import GradscopeError


class UsageError(GradscopeError):
    """Wrong command-line input (a bad TARGET, --input spec or file)."""


# --------------------------------------------------------------------------- inputs
def _user_error(exc: BaseException) -> str:
    """``"Type: first line"`` of an exception raised by the user's code."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def exited_message(what: str, exc: SystemExit) -> str:
    """The error for user code that called ``sys.exit`` while gradscope imported or ran it."""
    return (
        f"{what} called sys.exit({exc.code!r}); gradscope needs a module that defines the "
        "model without running a script (put the script part under "
        "`if __name__ == '__main__':`)"
    )


def _resolve(spec: str, what: str, shape: str) -> Any:
    """Import ``package.module`` of ``package.module:attr`` and return the attribute.

    Raises:
        UsageError: malformed spec, missing module or attribute, a module that fails to
            import or exits.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"{what} must look like {shape}, got {spec!r}")
    # The working directory goes *last*: the user's module is found there, but a stray
    # seaborn.py (or numpy.py, ...) next to it never shadows gradscope's dependencies.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise UsageError(
                f"cannot import module {module_name!r} ({exc}); run from the directory that "
                "contains it or install it"
            ) from None
        raise UsageError(f"importing {module_name!r} failed: {_user_error(exc)}") from None
    except SystemExit as exc:
        raise UsageError(exited_message(f"importing {module_name!r}", exc)) from None
    except Exception as exc:  # ImportError, SyntaxError, ...: the user's module, not gradscope
        raise UsageError(f"importing {module_name!r} failed: {_user_error(exc)}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def load_target(spec: str) -> Any:
    """Resolve ``package.module:attr`` to a model: a callable is called with no arguments.

    Args:
        spec: ``package.module:factory`` (a callable returning the model) or
            ``package.module:model`` (the model object).

    Returns:
        The ``torch.nn.Module``.

    Raises:
        UsageError: malformed spec, missing module or attribute, a factory that raises, or
            something that is not an ``nn.Module``.
    """
    from torch import nn

    obj = _resolve(
        spec,
        "TARGET",
        "'package.module:factory' (a callable returning the model, or the model object)",
    )
    if not isinstance(obj, nn.Module):
        if not callable(obj):
            raise UsageError(f"{spec} is neither an nn.Module nor a callable returning one")
        try:
            obj = obj()
        except SystemExit as exc:
            raise UsageError(exited_message(f"{spec}()", exc)) from None
        except Exception as exc:
            raise UsageError(f"{spec}() raised {_user_error(exc)}") from None
    if not isinstance(obj, nn.Module):
        raise UsageError(f"{spec} gave a {type(obj).__name__}, expected a torch.nn.Module")
    return obj


def load_loss(spec: str, batch: Any) -> Callable[[Any], Any]:
    """Resolve ``--loss package.module:function`` to the ``loss_fn`` of :func:`gs.profile`.

    The user's function is called as ``function(output, batch)``: the model's output and the
    input tensor it was given; it returns a scalar tensor. An exception it raises is the
    user's error, named as such.

    Args:
        spec: ``package.module:function``.
        batch: The input tensor, passed as the second argument.

    Returns:
        ``output -> loss``.

    Raises:
        UsageError: malformed spec, missing module or attribute, or not a callable.
    """
    fn = _resolve(spec, "--loss", "'package.module:function' (called as function(output, batch))")
    if not callable(fn):
        raise UsageError(
            f"--loss {spec}: a {type(fn).__name__}, not a function; give one called as "
            "function(output, batch) that returns a scalar tensor"
        )

    def loss_fn(output: Any) -> Any:
        try:
            return fn(output, batch)
        except SystemExit as exc:
            raise UsageError(exited_message(f"--loss {spec}", exc)) from None
        except Exception as exc:
            raise UsageError(
                f"--loss {spec} raised {_user_error(exc)} (it is called as "
                "function(output, batch): the model's output and the --input tensor)"
            ) from None

    return loss_fn


def load_input(spec: str, model: Any, batch_first: bool, dtype: Any = None) -> Any:
    """An input tensor from ``random:T,B,I`` or a ``.npy`` / ``.pt`` file (loaded safely).

    ``random:T,B,I`` is standard normal in the model's dtype, laid out ``(T, B, I)``, or
    ``(B, T, I)`` with ``--batch-first``. Files are loaded with ``allow_pickle=False`` /
    ``weights_only=True``: they can hold data, never code.
    """
    import numpy as np
    import torch

    params = list(model.parameters())
    dtype = dtype or (params[0].dtype if params else torch.float32)
    device = params[0].device if params else torch.device("cpu")
    if spec.startswith("random:"):
        try:
            t, b, i = (int(v) for v in spec[len("random:") :].split(","))
        except ValueError:
            raise UsageError(
                f"--input {spec!r}: expected random:T,B,I with three integers"
            ) from None
        if min(t, b, i) < 1:
            raise UsageError(f"--input {spec!r}: T, B and I must be >= 1")
        gen = torch.Generator().manual_seed(0)
        shape = (b, t, i) if batch_first else (t, b, i)
        return torch.randn(shape, generator=gen, dtype=dtype).to(device)
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"--input {spec!r}: no such file (or use random:T,B,I)")
    try:
        if path.suffix == ".npy":
            tensor = torch.from_numpy(np.load(path, allow_pickle=False))
        elif path.suffix in (".pt", ".pth"):
            tensor = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise UsageError(f"--input {spec!r}: expected a .npy or .pt file")
    except UsageError:
        raise
    except Exception as exc:
        if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc):
            raise UsageError(
                f"--input {spec!r}: holds pickled Python objects, not just a tensor; gradscope "
                "never unpickles them. Save the tensor alone (torch.save(tensor, path)) or "
                "as .npy"
            ) from None
        raise UsageError(f"--input {spec!r}: cannot read it ({_user_error(exc)})") from None
    if not isinstance(tensor, torch.Tensor):
        raise UsageError(f"--input {spec!r}: holds a {type(tensor).__name__}, not one tensor")
    if tensor.is_floating_point():
        tensor = tensor.to(dtype)
    return tensor.to(device)


__all__ = ["UsageError", "exited_message", "load_input", "load_loss", "load_target"]
