"""``input_info`` read against a Keras model's inputs: which entry feeds which input,
its dtype, and the sample values.

The Keras graph is read statically, so sample values never change the analysis; they
are still made as ``filler`` says (``Captured.sample`` is the model's example input).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from ..core._validation import one_of
from ..core.config import INPUT_TYPES, Config
from ..errors import ConfigError

__all__ = ["ordered_infos", "samples", "as_model_inputs"]

_SEED = 0  # "random" samples are the same on every run


def _name(kt: Any) -> str:
    return kt._keras_history.operation.name


def ordered_infos(functional: Any, config: Config) -> list[tuple[str, dict[str, Any]]]:
    """``(key, entry)`` of each ``input_info`` entry, in the order of the model inputs.

    Entries with a ``keyword`` go to the model input of that name; the others fill the
    remaining inputs in order. A ``type`` must be the dtype of the input it feeds.

    Raises:
        ConfigError: For a ``keyword`` that names no model input or one named twice, or a
            ``type`` unknown or other than the input's dtype.
    """
    entries = list(zip(config.input_info_keys(), config.input_infos(), strict=True))
    inputs = list(functional.inputs)
    if len(entries) != len(inputs):
        return entries  # input_shapes says that the counts differ
    names = [_name(kt) for kt in inputs]
    slots: list[Any] = [None] * len(inputs)
    for key, info in entries:
        word = info.get("keyword")
        if word is None:
            continue
        if word not in names:
            listed = ", ".join(map(repr, names))
            raise ConfigError(f"`{key}.keyword` must name an input of the model: {listed}. "
                              f"Received: keyword={word!r}.")  # fmt: skip
        if slots[names.index(word)] is not None:
            raise ConfigError(f"`{key}.keyword` must name an input no other entry names. "
                              f"Received: keyword={word!r}, also given by "
                              f"{slots[names.index(word)][0]}.")  # fmt: skip
        slots[names.index(word)] = (key, info)
    free = iter(entry for entry in entries if "keyword" not in entry[1])
    slots = [slot if slot is not None else next(free) for slot in slots]
    for (key, info), kt, name in zip(slots, inputs, names, strict=True):
        _check_type(key, info, kt, name)
    return slots


def _check_type(key: str, info: dict[str, Any], kt: Any, name: str) -> None:
    given = info.get("type")
    if given is None:
        return
    if given not in INPUT_TYPES:
        raise one_of(f"{key}.type", given, INPUT_TYPES)
    if INPUT_TYPES[given] != str(kt.dtype):
        raise ConfigError(
            f"`{key}.type` must be the dtype of model input {name!r} ({kt.dtype}): Keras "
            f"reads the model with its own input dtypes. Received: type={given!r}. Drop "
            "`type`, or build the model with keras.Input(..., dtype=...)."
        )


def samples(functional: Any, infos: list[dict[str, Any]], shapes: list[tuple]) -> list:
    """One array per model input, of its dtype and ``shape``, filled as ``filler`` says:
    zeros (default), ones, or seeded random values (uniform in [0, 1), or 0/1 for
    integers)."""
    rng = np.random.default_rng(_SEED)
    out = []
    for info, kt, shape in zip(infos, functional.inputs, shapes, strict=True):
        try:
            dtype = np.dtype(str(kt.dtype))
        except TypeError:  # bfloat16: NumPy has no such dtype
            dtype = np.dtype("float32")
        filler = info.get("filler", "zeros")
        if filler == "random":
            values = rng.random(shape) if dtype.kind == "f" else rng.integers(0, 2, shape)
        else:
            values = np.full(shape, 1 if filler == "ones" else 0)
        out.append(values.astype(dtype))
    return out


def as_model_inputs(model: Any, tensors: list) -> Any:
    """``tensors`` (in ``model.inputs`` order) as ``model`` takes them: in its input
    structure (a dict by its keys, as Keras refuses a list for unsorted keys), or the one
    tensor alone."""
    if len(tensors) == 1:
        return tensors[0]
    struct = getattr(model, "_inputs_struct", None)
    return list(tensors) if struct is None else keras.tree.pack_sequence_as(struct, tensors)
