"""A stripped model compiled as the training model is, from the objects it was compiled
with: Keras' ``clone_model`` compiles a clone from the serialized compile config, which
fails for a loss or metric of the user's not in Keras' registry (a plain function, a
``Loss`` subclass) and would fail the whole strip."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import keras

__all__ = ["compile_like", "uncompiled"]

log = logging.getLogger("filterprune")


@contextlib.contextmanager
def uncompiled(model: Any) -> Iterator[None]:
    """``model`` read as not compiled, so the clones made inside are not compiled."""
    compiled = bool(getattr(model, "compiled", False))
    if compiled:
        model.compiled = False
    try:
        yield
    finally:
        if compiled:
            model.compiled = True


def compile_like(new: Any, model: Any) -> None:
    """Compile ``new`` with ``model``'s compile arguments: the same losses, metrics of the
    same classes and configs, an optimizer of the same class and config (fresh state).
    Where that fails, ``new`` stays uncompiled, with a warning."""
    given = getattr(getattr(model, "_compile_config", None), "config", None)
    if not getattr(model, "compiled", False) or not isinstance(given, dict):
        return
    try:
        kwargs = dict(given)
        kwargs["optimizer"] = _fresh(given.get("optimizer"))
        for key in ("metrics", "weighted_metrics"):
            kwargs[key] = keras.tree.map_structure(_fresh, given.get(key))
        new.compile(**kwargs)
    except Exception as err:  # noqa: BLE001 - any: the stripped model is still right
        log.warning("The stripped model is not compiled: %s's compile arguments did not "
                    "carry over (%s: %s). Compile it as you compiled the model.",
                    model.name, type(err).__name__, str(err).split("\n")[0][:200])  # fmt: skip


def _fresh(value: Any) -> Any:
    """A new optimizer or metric like ``value`` (they hold state); anything else as is."""
    if isinstance(value, (keras.optimizers.Optimizer, keras.metrics.Metric)):
        return type(value).from_config(value.get_config())
    return value
