"""The user's ``tf.function``s traced before ``create_compressed_model``.

A traced function keeps the graph of its first calls: the layers' calls as they were,
without masks or quantizers. A train or eval step traced on the model before it was
compressed keeps computing the dense model, and trains the filters the masks prune.
Keras' own ``fit``/``evaluate``/``predict`` functions are dropped at creation; the user's
cannot be, so they are said.
"""

from __future__ import annotations

import gc
import warnings
from typing import Any

from tensorflow.python.eager.polymorphic_function.polymorphic_function import Function

__all__ = ["say_traced_before"]

_OWN = ("keras.", "tensorflow.", "filterprune.", "tf_keras.")  # functions of libraries


def say_traced_before(model: Any) -> None:
    """Warn about each traced ``tf.function`` of the user's that reads ``model``'s weights."""
    weights = {id(_tf_variable(w)): w for w in model.weights}
    found = []
    for fn in (o for o in gc.get_objects() if isinstance(o, Function)):
        module = getattr(fn.python_function, "__module__", "") or ""
        if module.startswith(_OWN) or not fn.experimental_get_tracing_count():
            continue
        read = {id(v) for cf in _concrete(fn) for v in cf.variables} & weights.keys()
        if read:
            layers = sorted({weights[i].path.rsplit("/", 1)[0] for i in read})
            found.append((getattr(fn, "__name__", "a tf.function"), layers))
    for name, layers in found:
        warnings.warn(
            f"tf.function {name!r} was traced before create_compressed_model and reads the "
            f"weights of {', '.join(layers[:4])}{' ...' if len(layers) > 4 else ''}: its "
            "traced graph keeps computing the model as it was, without masks or quantizers "
            "(an evaluation of the dense model; training it moves the pruned filters). "
            "Define the tf.function again after create_compressed_model, or call the "
            "model eagerly.",
            UserWarning, stacklevel=5)  # fmt: skip


def _tf_variable(weight: Any) -> Any:
    return getattr(weight, "value", weight)


def _concrete(fn: Any) -> list[Any]:
    try:
        return list(fn._list_all_concrete_functions())
    except Exception:  # noqa: BLE001 - a function of another form: not said
        return []
