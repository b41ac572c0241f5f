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
    if module_name.endswith(".py") or "/" in module_name or "\\" in module_name:
        stem = Path(module_name).name.removesuffix(".py")
        raise UsageError(
            f"{what} {spec!r}: {module_name!r} is a file path; {what} names the module the way "
            f"Python imports it: run gradscope from the folder that holds the file and give "
            f"'{stem}:{attr}' (a package's module: 'package.module:{attr}')"
        )
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


def _required_parameters(fn: Any) -> list[str]:
    """Names of the parameters ``fn()`` would miss (none when the signature is unknown)."""
    import inspect

    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: let the call say
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
             inspect.Parameter.KEYWORD_ONLY)  # fmt: skip
    return [
        name
        for name, p in sig.parameters.items()
        if p.kind in kinds and p.default is inspect.Parameter.empty
    ]


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
        needed = _required_parameters(obj)
        if needed:
            raise UsageError(
                f"{spec} needs arguments ({', '.join(needed)}), and TARGET is called with none; "
                "give a factory that takes no arguments (def make(): return "
                f"{spec.partition(':')[2]}(...)) or a module-level model object"
            )
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

    import torch

    def loss_fn(output: Any) -> Any:
        try:
            loss = fn(output, batch)
        except SystemExit as exc:
            raise UsageError(exited_message(f"--loss {spec}", exc)) from None
        except Exception as exc:
            raise UsageError(
                f"--loss {spec} raised {_user_error(exc)} (it is called as "
                "function(output, batch): the model's output and the --input tensor)"
            ) from None
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            got = type(loss).__name__
            if isinstance(loss, torch.Tensor):
                got = f"a tensor of shape {tuple(loss.shape)}"
            raise UsageError(
                f"--loss {spec} returned {got}; it must return a scalar tensor (one number: "
                "reduce it, e.g. with .mean()) computed from the model's output"
            )
        if not loss.requires_grad:
            raise UsageError(
                f"--loss {spec} returned a tensor that needs no gradient, so no loss gradient "
                "reaches the recorded layers: compute it from the output the function is "
                "given (a model whose parameters are all frozen has none to give); or drop "
                "--loss"
            )
        return loss

    return loss_fn


#: The default of ``--max-input-gb``: the largest input the command makes or loads, in GiB.
#: Recording and analysis hold several times the input's size (float64 states and inputs).
MAX_INPUT_GB = 1.0


def size_text(nbytes: float) -> str:
    """``nbytes`` in binary units: ``"512 B"``, ``"1.5 GiB"``, ``"3.6e+09 EiB"``."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    value, unit = float(nbytes), units[0]
    for unit in units:
        if value < 1024 or unit == units[-1]:
            break
        value /= 1024
    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.3g} {unit}"


def _check_size(spec: str, shape: tuple[int, ...], itemsize: int, kind: str, max_bytes: float):
    """Refuse an input of ``shape`` (``itemsize`` bytes a number) over ``max_bytes``."""
    numel = 1
    for n in shape:
        numel *= int(n)
    nbytes = numel * itemsize
    if nbytes > max_bytes:
        dims = "x".join(str(n) for n in shape)
        raise UsageError(
            f"--input {spec!r}: a {dims} tensor of {kind} takes {size_text(nbytes)}, over the "
            f"input limit of {size_text(max_bytes)} (recording and analysis need several "
            "times the input's size); give a smaller input (fewer steps T or sequences B), or "
            "raise the limit with --max-input-gb"
        )


def _pickled(spec: str) -> UsageError:
    return UsageError(
        f"--input {spec!r}: holds pickled Python objects, not just a tensor; gradscope never "
        "unpickles them. Save the tensor alone (torch.save(tensor, path)) or as .npy"
    )


def _npy_header(path: Path) -> tuple[Any, tuple[int, ...]]:
    """The dtype and shape a ``.npy`` file declares, read from its header alone."""
    import numpy as np

    fmt = np.lib.format
    with open(path, "rb") as f:
        version = fmt.read_magic(f)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read(f)
    return dtype, tuple(shape)


def _read_file(spec: str, path: Path, max_bytes: float) -> Any:
    """The tensor in a ``.npy`` / ``.pt`` file, loaded safely, its size checked first."""
    import numpy as np
    import torch

    try:
        if path.suffix == ".npy":
            dtype, shape = _npy_header(path)  # the size before the data is read
            if dtype.hasobject:
                raise _pickled(spec)
            if dtype.fields is not None or dtype.kind not in "biufc":
                raise UsageError(
                    f"--input {spec!r}: holds an array of dtype {dtype}; gradscope takes "
                    "numbers (floating point, or integer token ids)"
                )
            native = dtype.newbyteorder("=")
            _check_size(spec, shape, native.itemsize, str(native), max_bytes)
            array = np.load(path, allow_pickle=False)
            return torch.from_numpy(np.asarray(array, dtype=native))
        if path.suffix in (".pt", ".pth"):
            nbytes = path.stat().st_size
            if nbytes > max_bytes:
                raise UsageError(
                    f"--input {spec!r}: the file takes {size_text(nbytes)}, over the input "
                    f"limit of {size_text(max_bytes)}; give a smaller input, or raise the limit "
                    "with --max-input-gb"
                )
            return torch.load(path, map_location="cpu", weights_only=True)
    except UsageError:
        raise
    except Exception as exc:
        if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc):
            raise _pickled(spec) from None
        raise UsageError(f"--input {spec!r}: cannot read it ({_user_error(exc)})") from None
    raise UsageError(f"--input {spec!r}: expected a .npy or .pt file (or random:T,B,I)")


def _as_model_input(spec: str, tensor: Any, params: list[Any], dtype: Any) -> Any:
    """The file's tensor in the dtype the model takes.

    Floating point becomes the model's dtype; integers become int64 (token ids, for an
    embedding); booleans stay as they are; complex numbers only reach a model with complex
    parameters.
    """
    import torch

    if tensor.is_complex():
        cdtype = next((p.dtype for p in params if p.is_complex()), None)
        if cdtype is None:
            raise UsageError(
                f"--input {spec!r}: holds complex numbers ({str(tensor.dtype)[6:]}) and the "
                f"model's parameters are real ({str(dtype)[6:]}), so it cannot take them; save "
                "real features instead (e.g. the real and imaginary parts side by side: "
                "np.concatenate([x.real, x.imag], axis=-1))"
            )
        return tensor.to(cdtype)
    if tensor.is_floating_point():
        return tensor.to(dtype)
    if tensor.dtype == torch.bool or tensor.dtype == torch.int64:
        return tensor
    if tensor.dtype == torch.uint64 and tensor.numel() and int(tensor.max()) >= 2**63:
        raise UsageError(
            f"--input {spec!r}: holds uint64 values of 2**63 and above, which do not fit the "
            "int64 that token ids are passed as"
        )
    return tensor.to(torch.int64)


def load_input(
    spec: str,
    model: Any,
    batch_first: bool,
    dtype: Any = None,
    max_bytes: float = MAX_INPUT_GB * 2**30,
) -> Any:
    """An input tensor from ``random:T,B,I`` or a ``.npy`` / ``.pt`` file (loaded safely).

    ``random:T,B,I`` is standard normal in the model's dtype, laid out ``(T, B, I)``, or
    ``(B, T, I)`` with ``--batch-first``. Files are loaded with ``allow_pickle=False`` /
    ``weights_only=True``: they can hold data, never code. A file's floating-point array is
    converted to the model's dtype, an integer array to int64 (token ids for an embedding);
    complex numbers are refused unless the model has complex parameters.

    Args:
        spec: ``random:T,B,I`` or a file path.
        model: The model (its parameters give the dtype and device).
        batch_first: ``random:`` input as ``(B, T, I)``.
        dtype: Floating dtype (default: the model's).
        max_bytes: The largest input made or loaded; checked before anything is allocated.

    Returns:
        The tensor, on the model's device.

    Raises:
        UsageError: a malformed spec, a missing or unreadable file, an input over
            ``max_bytes``, or numbers the model cannot take.
    """
    import torch

    params = list(model.parameters())
    floats = [p for p in params if p.is_floating_point()]
    dtype = dtype or (floats[0].dtype if floats else torch.float32)
    device = params[0].device if params else torch.device("cpu")
    if spec.startswith("random:"):
        try:
            t, b, i = (int(v) for v in spec[len("random:") :].split(","))
        except ValueError:
            raise UsageError(
                f"--input {spec!r}: expected random:T,B,I with three integers (steps, "
                "sequences, features), e.g. random:100,8,32"
            ) from None
        if min(t, b, i) < 1:
            raise UsageError(f"--input {spec!r}: T, B and I must be >= 1")
        shape = (b, t, i) if batch_first else (t, b, i)
        _check_size(spec, shape, dtype.itemsize, str(dtype)[6:], max_bytes)
        gen = torch.Generator().manual_seed(0)
        return torch.randn(shape, generator=gen, dtype=dtype).to(device)
    path = Path(spec)
    if not path.is_file():
        what = "a folder" if path.is_dir() else "no such file"
        raise UsageError(f"--input {spec!r}: {what} (give a .npy or .pt file, or random:T,B,I)")
    tensor = _read_file(spec, path, max_bytes)
    if not isinstance(tensor, torch.Tensor):
        raise UsageError(f"--input {spec!r}: holds a {type(tensor).__name__}, not one tensor")
    if tensor.is_floating_point():  # the model's dtype may be wider than the file's
        _check_size(spec, tuple(tensor.shape), dtype.itemsize, str(dtype)[6:], max_bytes)
    return _as_model_input(spec, tensor, params, dtype).to(device)


def nonfinite_note(spec: str, tensor: Any) -> str | None:
    """A warning when a floating input holds NaN or inf (the analysis reports those steps)."""
    import torch

    if not (tensor.is_floating_point() or tensor.is_complex()):
        return None
    bad = int((~torch.isfinite(tensor)).sum())
    if not bad:
        return None
    return (
        f"--input {spec!r} holds {bad} NaN/inf value{'s' * (bad != 1)} of {tensor.numel()}; "
        "the states they reach are non-finite and the analysis reports them as such"
    )


__all__ = [
    "MAX_INPUT_GB",
    "UsageError",
    "exited_message",
    "load_input",
    "load_loss",
    "load_target",
    "nonfinite_note",
    "size_text",
]
