"""Calls that forward hooks do not see, made seen while a recording is open.

A forward hook fires when a module is *called* (``cell(x, h)``, ``nn.Module.__call__``). A
model that calls ``cell.forward(x, h)`` directly, as ``ncps``' ``CfC`` and ``LTC`` run their
``rnn_cell``, bypasses ``__call__``: no hook fires and the cell seems never to have run.

:class:`ForwardSeen` shadows ``forward`` on the module instance while the recording is open
with a function that tells the two apart. A forward pre-hook marks every call that comes
through ``__call__``; the shadowing ``forward`` finds the mark and runs the module's own
forward. A call without the mark is a direct ``.forward(...)`` call, and is sent through
``__call__`` (``module._call_impl``), so every hook (gradscope's and the user's) sees it as
it would see ``cell(x, h)``, and the result is what ``.forward`` would have returned.
``remove()`` (a hook handle's interface: the recorder keeps it with its hooks and removes it
when the block exits, also on error) puts the instance's ``forward`` back as it was.

:class:`ParentWatch` counts the calls of the modules that hold a cell named in
``cells=[...]``, so that a cell that never ran while its parent did is named with what to
do (:func:`unseen_cells`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

from gradscope.cells import is_fused, is_registered, is_sequence


class ForwardSeen:
    """``module.forward(...)`` called directly, routed through ``module(...)`` while recording.

    Args:
        module: The recorded module; its class's (or instance's) ``forward`` is kept and
            put back by :meth:`remove`.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self._had = "forward" in module.__dict__
        self._old = module.__dict__.get("forward")
        own = module.forward  # the bound forward the module would run
        through_call = [0]  # calls that came through __call__ and have not reached forward

        def mark(mod: nn.Module, args: tuple) -> None:
            through_call[0] += 1

        def forward(*args: Any, **kwargs: Any) -> Any:
            if through_call[0]:
                through_call[0] -= 1
                return own(*args, **kwargs)
            return module._call_impl(*args, **kwargs)  # a direct call: let the hooks see it

        # appended last, so it runs just before forward (after every earlier pre-hook)
        self._mark: RemovableHandle | None = module.register_forward_pre_hook(mark)
        module.__dict__["forward"] = forward

    def remove(self) -> None:
        """Put the module's own ``forward`` back and remove the marking pre-hook."""
        if self._mark is not None:
            self._mark.remove()
            self._mark = None
        if self._had:
            self.module.__dict__["forward"] = self._old
        else:
            self.module.__dict__.pop("forward", None)


class ParentWatch:
    """How often the parents of the cells named in ``cells=[...]`` ran while recording.

    Args:
        model: The recorded model.
        cells: The named cells, by ``id``.
    """

    def __init__(self, model: nn.Module, cells: dict[int, nn.Module]) -> None:
        paths = {id(m): p for p, m in model.named_modules()}
        self._parent: dict[int, tuple[str, nn.Module]] = {}
        for cid in cells:
            path = paths[cid]
            parent_path = path.rpartition(".")[0]
            parent = model.get_submodule(parent_path) if path else None
            if parent is not None:
                self._parent[cid] = (parent_path, parent)
        self.calls: dict[int, int] = {}

    def hooks(self) -> list[RemovableHandle]:
        """One counting pre-hook per distinct parent (the recorder owns the handles)."""
        out = []
        for pid, parent in {id(p): p for _, p in self._parent.values()}.items():
            out.append(parent.register_forward_pre_hook(self._counter(pid)))
        return out

    def _counter(self, pid: int) -> Callable[..., None]:
        def count(module: nn.Module, args: tuple) -> None:
            self.calls[pid] = self.calls.get(pid, 0) + 1

        return count

    def parent_ran(self, cid: int) -> tuple[str, nn.Module] | None:
        """The parent of cell ``cid`` if it ran while recording, else None."""
        entry = self._parent.get(cid)
        if entry is None or not self.calls.get(id(entry[1])):
            return None
        return entry


def inside_whole(model: nn.Module, cells: dict[int, nn.Module]) -> str | None:
    """Why a cell named in ``cells=[...]`` must not be named, or None.

    Such a cell runs inside a module gradscope records as a whole (a fused module or a
    sequence mixer, e.g. ``ncps``' ``CfC`` around its ``rnn_cell``): naming it would record
    its recurrence twice.
    """
    for path, module in model.named_modules():
        if id(module) not in cells:
            continue
        parts = path.split(".")
        for n in range(len(parts) - 1, -1, -1):
            outer_path = ".".join(parts[:n])
            outer = model.get_submodule(outer_path)
            if (
                outer is not module
                and is_registered(outer)
                and (is_sequence(outer) or is_fused(outer))
            ):
                return (
                    f"cells=[...] holds {path} ({type(module).__name__}), which runs inside "
                    f"{outer_path or 'the model'} ({type(outer).__name__}), a module gradscope "
                    "records as a whole: leave it out of cells=[...] (gs.trace(model, x) "
                    f"records {type(outer).__name__} out of the box)"
                )
    return None


def unseen_cells(
    model: nn.Module, cells: dict[int, nn.Module], ran: Iterable[int], watch: ParentWatch
) -> str | None:
    """Why the named cells that never ran did not, when their parents ran; None if none.

    ``ran``: ``id`` of the modules whose calls were recorded.
    """
    paths = {id(m): p for p, m in model.named_modules()}
    seen = set(ran)
    lines = []
    for cid, cell in cells.items():
        if cid in seen:
            continue
        parent = watch.parent_ran(cid)
        if parent is None:
            continue
        ppath, pmod = parent
        lines.append(
            f"{paths[cid]} ({type(cell).__name__}) never ran while its parent "
            f"{ppath or 'the model'} ({type(pmod).__name__}) did"
        )
    if not lines:
        return None
    return (
        "; ".join(lines) + ". Calls cell(x, state) and cell.forward(x, state) are both seen "
        "while recording; the parent may run the cell through another method (a step function "
        "such as cell.step(...), the class's forward called unbound, "
        "type(cell).forward(cell, ...)) or use its weights directly. Call the cell as "
        "cell(x, state) in the loop, or record the parent's recurrence with "
        "gs.register_step(Parent, step=...) or gs.register_sequence (examples/mingru.py, "
        "examples/lru.py)."
    )


__all__ = ["ForwardSeen", "ParentWatch", "unseen_cells"]
