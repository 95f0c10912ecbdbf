"""The PyTorch side of the LeGR search: each candidate pruned, fine-tuned, validated, undone.

:func:`ranking_trials` is the controller's ``_ranking_trials`` hook
(:func:`filterprune.core.legr.learn_ranking` runs the search). A trial puts the
candidate plan's masks on the model, runs ``train_steps_fn`` for ``legr_params.train_steps``
steps, scores the model with ``validate_fn`` and then gives back, bit for bit, what it
changed: parameters and their gradients, buffers (BatchNorm statistics, masks), module
classes, hooks, training flags, the optimizer's state and the schedule. Each trial starts
from the torch random state seeded with ``legr_params.random_seed`` (so every candidate
sees the same batches), and the caller's random state is the same after the search as
before it.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..core.legr import run_candidate, search_inputs
from ..core.pruner import Plan
from ._init_args import random_state_kept
from ._snapshot import restore, snapshot

__all__ = ["ranking_trials"]

_REGISTER = "register_default_init_args(config, train_loader, val_loader=..., validate_fn=...)"


class _Undo:
    """What a trial changes, taken before it and put back after it."""

    def __init__(self, ctrl: Any, optimizer: torch.optim.Optimizer) -> None:
        self.ctrl, self.optimizer = ctrl, optimizer
        self.modules = snapshot(ctrl.model)
        self.params = [(p, p.detach().clone(), None if p.grad is None else p.grad.clone())
                       for p in ctrl.model.parameters()]  # fmt: skip
        self.optimizer_state = copy.deepcopy(optimizer.state_dict())

    def __call__(self) -> None:
        restore(self.modules)
        with torch.no_grad():
            for p, value, grad in self.params:
                p.copy_(value)
                p.grad = None if grad is None else grad.clone()
        # a copy: loading keeps the tensors it is given, and steps change them in place
        self.optimizer.load_state_dict(copy.deepcopy(self.optimizer_state))


@contextlib.contextmanager
def ranking_trials(ctrl: Any) -> Iterator[Callable[[Plan], float]]:
    """Yield ``trial(plan) -> reward`` for :func:`~filterprune.core.legr.learn_ranking`.

    Raises:
        ConfigError: If ``validate_fn`` or ``val_loader`` was not registered.
    """
    args = ctrl.registered_args
    val_loader = search_inputs(args, "val_loader", _REGISTER)
    optimizer = args.legr_train_optimizer
    if optimizer is None:
        optimizer = torch.optim.SGD(ctrl.model.parameters(), lr=1e-3, momentum=0.9)
    undo = _Undo(ctrl, optimizer)

    def trial(plan: Plan) -> float:
        torch.manual_seed(ctrl.params.legr.random_seed)  # every candidate sees the same batches
        try:
            return run_candidate(ctrl, plan, args, optimizer, args.data_loader, val_loader)
        finally:
            undo()

    with random_state_kept(ctrl.model):
        yield trial
