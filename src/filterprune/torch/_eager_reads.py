"""Which layers feed the modules only a training forward calls, read from autograd's
graph of one eager training forward: for a model torch.fx cannot trace in train mode
(DARTS's ``drop_path`` builds ``torch.FloatTensor(x.size(0), 1, 1, 1)``), whose auxiliary
head would otherwise be cut under.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._snapshot import attributes_kept
from ._tree import leaves

__all__ = ["training_sources"]


def training_sources(model: nn.Module, example: tuple[Any, ...], idle: list[str],
                     called: set[str]) -> dict[str, set[str]] | None:  # fmt: skip
    """For each module of ``idle`` that one training forward on ``example`` runs, the
    modules of ``called`` whose outputs reach its inputs (the nearest on each path);
    None where that forward fails, or where a reader's input has no autograd history
    (made under ``torch.no_grad()``), so its sources are unknown. The inputs require
    gradients, so frozen layers' outputs have a history too."""
    example = tuple(t.detach().clone().requires_grad_() if torch.is_tensor(t)
                    and t.is_floating_point() else t for t in example)  # fmt: skip
    modules = dict(model.named_modules())
    made: dict[Any, str] = {}  # grad_fn of a called module's output -> the module
    reads: dict[str, list[Any]] = {}

    def output_of(name: str) -> Any:
        def hook(_m: nn.Module, _args: Any, out: Any) -> None:
            for _, t in leaves(out):
                if torch.is_tensor(t) and t.grad_fn is not None:
                    made.setdefault(t.grad_fn, name)
        return hook

    def input_of(name: str) -> Any:
        def hook(_m: nn.Module, args: Any) -> None:
            reads.setdefault(name, []).extend(t for _, t in leaves(args) if torch.is_tensor(t))
        return hook

    was_training = model.training
    # the hooks go on inside: what hooks on the model hold is put back after the run
    with attributes_kept(model), torch.random.fork_rng(), torch.enable_grad():
        handles = [modules[n].register_forward_hook(output_of(n)) for n in called
                   if n in modules]  # fmt: skip
        handles += [modules[n].register_forward_pre_hook(input_of(n)) for n in idle]
        try:
            model.train()
            model(*example)
        except Exception:  # noqa: BLE001 - e.g. a detector that needs targets to train
            return None
        finally:
            model.train(was_training)
            for handle in handles:
                handle.remove()
    if any(t.grad_fn is None and not t.requires_grad and t.is_floating_point()
           for tensors in reads.values() for t in tensors):  # fmt: skip
        return None
    return {name: _nearest([t.grad_fn for t in tensors], made) for name, tensors in reads.items()}


def _nearest(starts: list[Any], made: dict[Any, str]) -> set[str]:
    """The modules whose outputs' autograd nodes are met first walking back from
    ``starts``."""
    found, seen, stack = set(), set(), [f for f in starts if f is not None]
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        if fn in made:
            found.add(made[fn])
            continue
        stack += [f for f, _ in fn.next_functions if f is not None]
    return found
