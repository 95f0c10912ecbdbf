"""The Keras side of the LeGR search: each candidate pruned, fine-tuned, validated, undone.

:func:`ranking_trials` is the controller's ``_ranking_trials`` hook
(:func:`filterprune.core.legr.learn_ranking` runs the search). A trial assigns the
candidate plan's masks, runs ``train_steps_fn`` for ``legr_params.train_steps`` steps,
scores the model with ``validate_fn`` and assigns back every variable of the model
(weights, BatchNorm statistics) and of its optimizers. Masks stay installed from one
trial to the next (the same mask variables, so ``tf.function`` s traced in a trial,
``model.fit``'s included, stay valid); when the search ends, layer classes and
attributes are put back as they were. Optimizer variables first made during the search
(slots) are set to zero. The search does not reseed TensorFlow: make ``validate_fn`` and
``train_steps_fn`` deterministic to repeat a search exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np

from ..core.legr import run_candidate, search_inputs
from ..core.pruner import Plan
from ._snapshot import restore, snapshot
from .controller import reset_traced_functions

__all__ = ["ranking_trials"]

_REGISTER = "register_default_init_args(config, dataset, val_dataset=..., validate_fn=...)"


class _Undo:
    """The values of the model's and the optimizers' variables, taken before a trial."""

    def __init__(self, model: Any, optimizers: list[Any]) -> None:
        self.values = [(v, np.array(v.numpy())) for v in model.weights]
        self.optimizers = [(o, [(v, np.array(v.numpy())) for v in o.variables])
                           for o in optimizers]  # fmt: skip

    def __call__(self) -> None:
        for variable, value in self.values:
            variable.assign(value)
        for optimizer, values in self.optimizers:
            known = {id(v) for v, _ in values}
            for variable, value in values:
                variable.assign(value)
            for variable in optimizer.variables:  # slots a trial's first step made
                if id(variable) not in known:
                    variable.assign(np.zeros(variable.shape, variable.dtype))


def _optimizers(model: Any, given: Any) -> tuple[Any, list[Any]]:
    """The optimizer ``train_steps_fn`` gets, and every optimizer a trial may step."""
    compiled = getattr(model, "optimizer", None)
    used = given if given is not None else compiled
    if used is None:
        used = keras.optimizers.SGD(learning_rate=1e-3, momentum=0.9)
    return used, list({id(o): o for o in (used, compiled) if o is not None}.values())


@contextlib.contextmanager
def ranking_trials(ctrl: Any) -> Iterator[Callable[[Plan], float]]:
    """Yield ``trial(plan) -> reward`` for :func:`~filterprune.core.legr.learn_ranking`.

    Raises:
        ConfigError: If ``validate_fn`` or ``val_dataset`` was not registered.
    """
    args = ctrl.registered_args
    val_dataset = search_inputs(args, "val_dataset", _REGISTER)
    model = ctrl.model
    optimizer, optimizers = _optimizers(model, args.legr_train_optimizer)
    layers, undo = snapshot(model), _Undo(model, optimizers)
    masked = []  # set once the first trial made the masks

    def trial(plan: Plan) -> float:
        try:
            if not masked:  # functions traced before the masks existed would not read them
                before = ctrl.plan
                ctrl._install(plan)
                ctrl.plan = before  # run_candidate installs it again and puts `before` back
                reset_traced_functions(model)
                masked.append(True)
            return run_candidate(ctrl, plan, args, optimizer, args.dataset, val_dataset)
        finally:
            undo()

    try:
        yield trial
    finally:
        restore(model, layers)  # classes and attributes as before; drops traced functions
