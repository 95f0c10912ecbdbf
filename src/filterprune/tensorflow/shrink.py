"""A plain Keras model from a masked one: pruned filters removed, or zeroed in place.

The model is rebuilt with ``keras.models.clone_model``: every layer is made again from
its own class and ``get_config()``, with ``filters``/``units`` lowered to the kept
count (a ``Reshape`` target and the bounds of a slice written as numbers rewritten),
then given its sliced weights. The result holds only stock Keras layers, so it saves
and reloads as ``.keras`` without any filterprune object. Nested models are rebuilt
nested, or whole by their own ``from_config`` where a layer of theirs cannot be rebuilt
(:mod:`._rebuild`).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from ..core.analysis import Analysis
from ..core.graph import LayerInfo
from ..core.weights import groups_left, slice_weight
from ..errors import AnalysisError
from ._inputs import as_model_inputs
from ._rebuild import computes_otherwise, rebuilt_whole
from ._slices import scaled_key
from .capture import Capture
from .masks import base_class, is_masked, masked_weights

__all__ = ["copy_weights", "plain_copy", "strip_model"]

log = logging.getLogger("filterprune")

Keeps = Mapping[str, dict[str, np.ndarray]]


def _roles(info: LayerInfo, pname: str, shape: tuple[int, ...]) -> tuple[str | None, ...]:
    if pname in info.params:
        return info.params[pname][1]
    if info.kind == "batchnorm" and len(shape) == 1:  # moving statistics follow gamma/beta
        return ("channel",)
    return (None,) * len(shape)


def _cut_layers(cap: Capture, keeps: Keeps) -> tuple[dict[int, dict], dict[int, dict]]:
    """Per Keras layer (by id): config overrides and sliced weights by variable name."""
    overrides: dict[int, dict[str, Any]] = {}
    weights: dict[int, dict[str, np.ndarray]] = {}
    for name, ref in cap.refs.items():
        info = cap.graph.layers.get(name)
        keep = keeps.get(name, {})
        if info is None or not keep or all(v.all() for v in keep.values()):
            continue
        layer = ref.layer
        values = weights.setdefault(id(layer), {})
        current = {v.name: v.numpy() for v in layer.weights}
        for pname in ref.variables:
            array = values.get(pname, current[pname])
            values[pname] = slice_weight(array, _roles(info, pname, array.shape), keep, info.groups)
        overrides.setdefault(id(layer), {}).update(_config_changes(layer, info, keep))
    return overrides, weights


def _config_changes(layer: Any, info: LayerInfo, keep: dict[str, np.ndarray]) -> dict[str, Any]:
    config = layer.get_config()
    changes: dict[str, Any] = {}
    out = keep.get("out")
    if out is not None and info.weight != "depthwise_kernel":
        if "filters" in config:
            changes["filters"] = int(out.sum())
        elif "units" in config:
            changes["units"] = int(out.sum())
    groups = int(config.get("groups", 1))
    channels = keep.get("channel")
    if channels is not None and "projection_dim" in config:  # ConvNeXt's LayerScale
        changes["projection_dim"] = int(channels.sum())
    if isinstance(layer, keras.layers.GroupNormalization) and channels is not None:
        changes["groups"] = groups_left(layer.name, int(channels.sum()), channels.size, groups)
    inp = keep.get("in")
    if groups > 1 and inp is not None and groups == inp.size:  # depthwise written as groups
        changes["groups"] = int(inp.sum())
    return changes


def _kept_extent(analysis: Analysis, node: Any, kept: dict[int, np.ndarray]) -> list[int] | None:
    """Kept size of each axis of a node's output (``None`` if nothing of it is cut)."""
    ids = analysis.state.values.get(node.name)
    if not isinstance(ids, np.ndarray) or not isinstance(node.shape, tuple):
        return None
    full = np.broadcast_to(analysis.kept_ids(ids, kept), node.shape)
    if full.all():
        return None
    counts = [int(np.any(full, axis=tuple(a for a in range(full.ndim) if a != axis)).sum())
              for axis in range(full.ndim)]  # fmt: skip
    if int(np.prod(counts)) != int(full.sum()):
        raise AnalysisError(
            f"The kept channels of {node.name!r} do not form a box, so the layer reading "
            "them cannot be rebuilt smaller. Add the layers around it to ignored_scopes."
        )
    return counts


def _reshape_targets(cap: Capture, analysis: Analysis, kept: dict[int, np.ndarray]) -> dict:
    """New sizes of every ``Reshape`` whose channels were cut: a layer's ``target_shape``
    (the batch left out), a ``keras.ops.reshape``'s ``newshape`` (the batch as written)."""
    out: dict[int, dict[str, Any]] = {}
    for node_name, layer in cap.reshapes.items():
        counts = _kept_extent(analysis, cap.graph[node_name], kept)
        if counts is None or not cap.graph[node_name].attrs.get("rewritable"):
            continue  # (a reshape called again keeps its channels)
        if isinstance(layer, keras.layers.Reshape):
            target = [d if d == -1 else counts[i + 1] for i, d in enumerate(layer.target_shape)]
            out[id(layer)] = {"target_shape": tuple(target)}
        else:
            new = [d if d == -1 or i == 0 else counts[i] for i, d in enumerate(layer.newshape)]
            out[id(layer)] = {"newshape": tuple(new)}
    return out


def _split_points(cap: Capture, analysis: Analysis, kept: dict[int, np.ndarray]) -> dict:
    """New points of every ``keras.ops.split`` at points on equal parts whose channels
    were cut: each scaled to the kept width (the parts lose alike)."""
    out: dict[int, dict[str, Any]] = {}
    for node_name, op in cap.splits.items():
        if "equal_parts" not in cap.graph[node_name].attrs:  # called again: held
            continue
        source = cap.graph[cap.graph[node_name].inputs[0]]
        counts = _kept_extent(analysis, source, kept)
        if counts is not None:
            axis, full = cap.graph[node_name].attrs["axis"], source.shape
            points = [p * counts[axis] // full[axis] for p in op.indices_or_sections]
            out[id(op)] = {"indices_or_sections": points}
    return out


def _slice_keys(cap: Capture, analysis: Analysis, kept: dict[int, np.ndarray]) -> dict:
    """New keys of the slices written as numbers (``h[..., :16]``) whose channels were
    cut, by the ``GetItem`` operation's id (one called more than once has no
    ``equal_parts``: the capture keeps its channels whole)."""
    out: dict[int, Any] = {}
    for node in cap.graph:
        op = cap.calls.get(node.name, (None,))[0]
        if node.op != "index" or not node.attrs.get("equal_parts") \
                or type(op).__name__ != "GetItem":  # a Lambda's slice computes its own  # fmt: skip
            continue
        source = cap.graph[node.inputs[0]]
        counts = _kept_extent(analysis, source, kept)
        if counts is not None:
            out[id(op)] = scaled_key(node.attrs["index"], source.shape, counts)
    return out


def _lambda_shapes(cap: Capture, analysis: Analysis, kept: dict[int, np.ndarray]) -> dict:
    """The ``output_shape`` a Lambda read through was given, at the cut widths."""
    out: dict[int, dict[str, Any]] = {}
    for key, (layer, names) in cap.lambdas.items():
        given = getattr(layer, "_output_shape", None)  # a layer of the user's: its own
        if not isinstance(given, (tuple, list)) or len(names) != 1:
            continue  # inferred, or computed by a function of the input shape
        counts = _kept_extent(analysis, cap.graph[names[0]], kept)
        if counts is not None:
            new = tuple(d if d is None else c for d, c in zip(given, counts[1:], strict=True))
            out[key] = {"output_shape": new}
    return out


def _nested_inputs(model: Any, cap: Capture, analysis: Analysis, kept) -> Any:
    """New inputs of a nested model whose input channels were cut (``None``: unchanged);
    one without weights takes any width there (its calls may be cut otherwise)."""
    names = cap.nested.get(id(model))
    if names is None:
        return None
    tensors, changed = [], False
    for name, kt in zip(names, model.inputs, strict=True):
        counts = _kept_extent(analysis, cap.graph[name], kept)
        shape = list(kt.shape)
        if counts is not None:
            changed = True
            shape = [d if d is None or i == 0 or c == d else c if model.weights else None
                     for i, (d, c) in enumerate(zip(shape, counts, strict=True))]  # fmt: skip
        tensors.append(keras.Input(batch_shape=tuple(shape), dtype=kt.dtype))
    if not changed:
        return None
    return as_model_inputs(model, tensors)  # clone_model wants the model's nesting


def strip_model(model: Any, cap: Capture, analysis: Analysis, kept: dict[int, np.ndarray],
                keeps: Keeps, shrink: bool = True) -> Any:  # fmt: skip
    """A new Keras model without masks.

    Args:
        model: The masked model (left untouched).
        cap: Its capture.
        analysis: Its analysis.
        kept: The plan's kept channels per group id.
        keeps: The plan's keep vectors per core layer.
        shrink: Remove pruned filters (smaller layers); ``False`` keeps the shapes and
            writes the zeros into the weights.

    Returns:
        A Functional or Sequential ``keras.Model`` of stock Keras layers.
    """
    if shrink:
        overrides, weights = _cut_layers(cap, keeps)
        for key, change in [*_reshape_targets(cap, analysis, kept).items(),
                            *_split_points(cap, analysis, kept).items()]:
            overrides.setdefault(key, {}).update(change)
        keys = _slice_keys(cap, analysis, kept)
        for key, change in _lambda_shapes(cap, analysis, kept).items():
            overrides.setdefault(key, {}).update(change)
    else:
        overrides, weights, keys = {}, {}, {}
    pairs: list[tuple[Any, Any]] = []

    def clone(layer: Any) -> Any:
        if isinstance(layer, keras.Model) and id(layer) in cap.nested:  # rebuilt nested
            inputs = _nested_inputs(layer, cap, analysis, kept) if shrink else None
            return keras.models.clone_model(layer, input_tensors=inputs, clone_function=clone)
        new = rebuilt(layer, overrides.get(id(layer), {}))
        pairs.append((layer, new))
        key = keys.get(id(layer))
        if key is not None:  # a slice: called with its scaled key instead of the old one
            return lambda x, *_: new(x, key)
        return new

    with _own_code():
        new_model = keras.models.clone_model(model, clone_function=clone)
    copy_weights(pairs, weights)
    if overrides and not any(id(old) in overrides for old, _ in pairs):
        # the layers are another model's (quantization listed first rebuilt them)
        log.warning("filter_pruning: the stripped model keeps its pruned channels as zeros "
                    "(not cut): the model it strips was rebuilt by an algorithm listed "
                    "before filter_pruning. List filter_pruning first in `compression` to "
                    "cut them.")  # fmt: skip
    return new_model


def copy_weights(pairs: list[tuple[Any, Any]],
                 cut: Mapping[int, dict[str, np.ndarray]] | None = None) -> None:  # fmt: skip
    """Give each rebuilt layer its old layer's weights, masks multiplied in.

    Args:
        pairs: ``(old layer, new layer)``; the new one is built.
        cut: Sliced weights by variable name, per old layer id (they replace the old).
    """
    cut = cut or {}
    for old, new in pairs:
        if not isinstance(old, keras.Layer) or not old.weights:
            continue
        if not is_masked(old) and id(old) not in cut:
            new.set_weights(old.get_weights())  # untouched (names may repeat in custom layers)
        else:
            values = masked_weights(old)
            values.update(cut.get(id(old), {}))
            new.set_weights([values[v.name] for v in old.weights])
        if hasattr(new, "finalize_state"):  # an adapted Normalization reads its statistics
            new.finalize_state()


def config_of(operation: Any) -> dict[str, Any]:
    """``operation.get_config()``, or an error that says how to make it rebuildable.

    Raises:
        AnalysisError: A ``keras.ops`` call whose arguments Keras cannot put in a config
            (a numpy array of repeats).
    """
    try:
        config = operation.get_config()
    except NotImplementedError as err:
        what = f"{type(operation).__name__} {operation.name!r} cannot be rebuilt"
        if isinstance(operation, keras.Layer):  # Keras's default get_config refused
            raise AnalysisError(
                f"{what}: it has no get_config() of its own, and Keras's refuses an __init__ "
                "with arguments it cannot put in a config. Give it a get_config() that "
                "returns every argument __init__ needs (and register what they name)."
                f"{_given_layers(operation)} The model is unchanged.") from err  # fmt: skip
        raise AnalysisError(
            f"{what}: Keras has no config for it (a keras.ops call with an array argument "
            "has none). Wrap the call in a Layer subclass with get_config(). The model is "
            "unchanged.") from err  # fmt: skip
    if callable(getattr(operation, "activation", None)) and "activation" in config:
        config["activation"] = operation.activation  # a lambda has no name to find it by
    return config


def _given_layers(layer: Any) -> str:
    """What a layer given other layers (tied weights) should know of its rebuild."""
    try:
        names = inspect.signature(type(layer).__init__).parameters
    except (TypeError, ValueError):
        return ""
    given = [n for n in names if isinstance(getattr(layer, n, None), keras.Layer)]
    if not given:
        return ""
    return (f" It is given layer {', '.join(repr(getattr(layer, n).name) for n in given)}: "
            "rebuilt from its config, it holds a copy of that layer's weights, no longer "
            "tied to it (the stripped model computes the same).")


def rebuilt(operation: Any, changes: dict[str, Any] | None = None) -> Any:
    """A new layer of ``operation``'s own class and config, with ``changes`` (cut sizes)
    made to it (no weights yet)."""
    config = {**config_of(operation), **(changes or {})}
    cls = base_class(operation)
    if isinstance(operation, keras.layers.Dropout) and config.get("noise_shape"):
        # a size written in it (``(None, 1, 1, 16)``) is the input's, read at each call
        config["noise_shape"] = tuple(None if d is not None and d > 1 else d
                                      for d in config["noise_shape"])  # fmt: skip
    if isinstance(operation, keras.layers.Lambda):
        # its live functions: rebuilt from bytecode they lose the module names they read
        config.update(function=operation.function, arguments=operation.arguments)
        if "output_shape" in config and "output_shape" not in (changes or {}):
            config["output_shape"] = operation._output_shape
        if "mask" in config:
            config["mask"] = operation.mask
        return cls(**config)
    try:
        new = cls.from_config(config)
    except Exception as err:  # noqa: BLE001 - whatever a layer's own code raises
        last = (str(err).strip().splitlines() or [""])[-1][:300] or type(err).__name__
        fix = "give its __init__ every key its get_config() writes"
        if cls.__module__.startswith("keras"):  # (RandomShear's config gives other factors)
            fix = ("Keras's own config does not rebuild this layer (keras.models.clone_model "
                   "fails alike): run it outside the model, in the input pipeline")
        raise AnalysisError(
            f"{cls.__name__} {operation.name!r} cannot be rebuilt from its get_config() "
            f"({last}). A strip rebuilds each layer from its class and config: {fix}. The "
            "model is unchanged."
        ) from err
    own = not cls.__module__.startswith(("keras", "filterprune")) and not is_masked(operation)
    why = computes_otherwise(operation, new) if own and not changes else None
    if why is not None:
        raise AnalysisError(
            f"{cls.__name__} {operation.name!r} {why}. A strip rebuilds each layer from its "
            "class and config: give its get_config() every argument its __init__ takes. "
            "The model is unchanged."
        )
    return new


def plain_copy(model: Any) -> Any:
    """A new model of stock layers computing what ``model`` computes, masks multiplied in
    (no transforms, taps or recording hooks: those live on the training model only)."""
    pairs: list[tuple[Any, Any]] = []

    def clone(layer: Any) -> Any:
        if isinstance(layer, keras.Model) and rebuilt_whole(layer) is None:
            return keras.models.clone_model(layer, clone_function=clone)  # layer by layer
        new = rebuilt(layer)
        pairs.append((layer, new))
        return new

    with _own_code():
        new_model = keras.models.clone_model(model, clone_function=clone)
    copy_weights(pairs)
    return new_model


def _own_code() -> Any:
    """Rebuild layers that hold Python code (a ``Lambda``, a lambda activation): they come
    from the caller's model in memory, so Keras' safe mode, which guards loading a file,
    does not apply. Saving and reloading the result still needs ``safe_mode=False``."""
    try:
        from keras.src.saving.serialization_lib import SafeModeScope  # pinned Keras
    except ImportError:  # moved in another Keras: strip as before, Lambdas refused there
        return contextlib.nullcontext()
    return SafeModeScope(False)
