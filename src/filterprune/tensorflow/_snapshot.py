"""Put a Keras model back as it was when ``create_compressed_model`` fails halfway.

Compression swaps layer classes and adds mask and transform tables to layers'
``__dict__`` (outside their tracked weights), and BatchNorm re-estimation changes
moving statistics. A snapshot keeps each layer's class, its ``__dict__`` keys and the
values of its non-trainable variables. A layer Keras builds lazily (an ``Add`` inside a
custom block, built on the first real call) may be built in between: what its build set
stays, or the layer would be marked built without its attributes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .controller import reset_traced_functions

__all__ = ["restore", "snapshot"]


def snapshot(model: Any) -> list[tuple[Any, ...]]:
    """Each layer (the model included) with what :func:`restore` needs."""
    out = []
    for layer in model._flatten_layers(include_self=True, recursive=True):
        values = [(v, np.array(v.numpy())) for v in layer.non_trainable_weights]
        out.append((layer, type(layer), set(layer.__dict__), values, layer.built))
    return out


def restore(model: Any, snap: list[tuple[Any, ...]]) -> None:
    """Give every layer of ``snap`` its class, attributes and statistics back."""
    for layer, cls, keys, values, built in snap:
        layer.__class__ = cls
        built_since = not built and layer.built
        for key in set(layer.__dict__) - keys:
            if not built_since or key.startswith("_fp_"):
                del layer.__dict__[key]
        for variable, value in values:
            variable.assign(value)
    reset_traced_functions(model)
