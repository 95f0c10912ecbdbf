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

__all__ = ["cannot_rebuild", "one_by_one", "rebuilt_whole"]


def cannot_rebuild(layer: Any) -> str | None:
    """Why ``layer``'s own config cannot rebuild it (the cause's last line), or None."""
    from .shrink import rebuilt

    try:
        with warnings.catch_warnings():  # Keras's notes on rebuilding a Lambda: at strip
            warnings.simplefilter("ignore")
            rebuilt(layer)
    except Exception as err:  # noqa: BLE001 - any failure is the one strip() would meet
        text = str(err.__cause__ or err).strip().splitlines()
        return (text[-1][:160] if text else "") or type(err).__name__
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
