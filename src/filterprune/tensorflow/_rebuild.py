"""Which layers a strip rebuilds from their own configs, and which nested models it
rebuilds whole.

A strip (and an export) makes every layer again from its class and ``get_config()``,
a nested functional model layer by layer. A library model whose layers write configs
their ``__init__`` refuses (keras_hub's MiT) cannot be rebuilt so, but its own
``from_config`` rebuilds it, as Keras' save and load do: nothing in it may then be cut,
so the analysis keeps it whole as one layer.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from ..errors import AnalysisError

__all__ = ["cannot_rebuild", "computes_otherwise", "one_by_one", "rebuilt_whole"]


def cannot_rebuild(layer: Any) -> str | None:
    """Why ``layer``'s own config cannot rebuild it (the cause's last line), or None."""
    from .shrink import rebuilt

    try:
        with warnings.catch_warnings():  # Keras's notes on rebuilding a Lambda: at strip
            warnings.simplefilter("ignore")
            rebuilt(layer)
    except Exception as err:  # noqa: BLE001 - any failure is the one strip() would meet
        if isinstance(err, AnalysisError) and isinstance(err.__cause__, NotImplementedError):
            return str(err).split(": ", 1)[-1].split(". ")[0]  # Keras's get_config refused:
            # its message is code; ours says why in its first sentence after the name
        text = str(err.__cause__ or err).strip().splitlines()
        last = text[-1].split(". A strip rebuilds")[0] if text else ""  # our own: its why
        return (last if len(last) <= 300 else last[:300].rsplit(" ", 1)[0] + " ...") \
            or type(err).__name__  # fmt: skip
    return None


def computes_otherwise(layer: Any, copy: Any) -> str | None:
    """Why ``copy``, a layer of the user's own rebuilt from ``layer``'s config, does not
    compute what ``layer`` computes with its weights (a ``get_config()`` that leaves out an
    argument with a default), or None. Stock Keras layers are trusted; a layer called
    more than once, on several inputs or on sizes left free, or that computes otherwise
    from call to call (noise at inference), is not judged."""
    try:
        shape = tuple(layer.input.shape)
    except (AttributeError, ValueError):  # several calls, or several inputs
        return None
    if any(d is None for d in shape[1:]):
        return None
    x = np.random.default_rng(0).normal(size=(1, *shape[1:])).astype("float32")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            copy.build(shape)
            copy.set_weights(layer.get_weights())
            ref = keras.ops.convert_to_numpy(layer(x, training=False))
            again = keras.ops.convert_to_numpy(layer(x, training=False))
            out = keras.ops.convert_to_numpy(copy(x, training=False))
    except Exception:  # noqa: BLE001 - not to be judged alone (several outputs, ints)
        return None
    if not np.array_equal(ref, again):  # it draws noise at inference: no one call to match
        return None
    if out.shape != ref.shape:
        return f"rebuilt from its config gives shape {out.shape}, not {ref.shape}"
    diff = float(np.abs(out - ref).max() / max(float(np.abs(ref).max()), 1e-12))
    if diff > 1e-5:
        return f"rebuilt from its config computes otherwise ({diff:.2g} relative)"
    return None


def rebuilt_whole(model: Any) -> str | None:
    """Why the nested functional ``model`` is rebuilt whole by its own ``from_config``
    (a layer in it cannot be rebuilt from its config; the model's config can), or None
    where it is rebuilt layer by layer."""
    from .capture import _inner_functional

    inner = _inner_functional(model)
    if inner is None:
        return None
    for layer in one_by_one(inner):
        why = cannot_rebuild(layer)
        if why is None:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                type(model).from_config(model.get_config())
        except Exception:  # noqa: BLE001 - neither way: the layer's own error stands
            return None
        return f"its layer {layer.name} ({type(layer).__name__}) cannot be rebuilt from its " \
               f"config ({why})"  # fmt: skip
    return None


def one_by_one(functional: Any) -> Iterator[Any]:
    """The layers of ``functional`` a strip rebuilds from their own configs: those of
    nested functional models it rebuilds layer by layer, not a custom layer's sublayers
    (rebuilt with it)."""
    from .capture import _inner_functional

    for layer in functional.layers:
        inner = _inner_functional(layer) if isinstance(layer, keras.Model) else None
        if inner is not None:
            if rebuilt_whole(layer) is None:
                yield from one_by_one(inner)
        elif not isinstance(layer, keras.layers.InputLayer):
            yield layer
