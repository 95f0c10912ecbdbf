"""``params.reconstruction_after_mask_change`` on Keras: refit kept weights by least squares.

The Keras counterpart of :mod:`filterprune.torch.reconstruct`. Before a mask change, the
registered dataset runs through the model once and each ``Conv2D`` and ``Dense`` layer's
input is caught at sampled output positions (:func:`record`); the layer's outputs there
before its activation (masked kernel and bias) are what the refit matches. After the
change, each layer in the order the model runs them gets new kernel and bias values on
the channels it keeps, solved on the inputs it now receives (:func:`reconstruct`). The
masks stay as they are: a pruned entry keeps its stored value and reads as zero.

Layers the refit cannot express are left as they are, with a log line: grouped convs,
convs other than ``Conv2D`` (depthwise, separable, transposed, 1-D, 3-D), channels-first
convs, layers the forward calls more than once or not on every batch, and layers with
more weights per output than ``MAX_FAN_IN`` or than the samples give equations.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from ..core.config import ConfigError
from ..core.graph import LayerInfo
from ..core.reconstruction import LINEAR_ROWS, MAX_FAN_IN, POSITIONS, ridge_solve
from ..progress import progress
from .capture import LayerRef
from .masks import base_class, is_masked, masked_weights, set_input_transform

__all__ = ["Recording", "record", "reconstruct"]

log = logging.getLogger(__name__)


class _Reached(Exception):
    """Ends a forward pass once the layer being refit has its input."""


@dataclass
class Recording:
    """The input batches, and per layer (in run order) its input width and, per batch,
    the sampled output positions and the outputs there before the activation."""

    inputs: list[Any]
    targets: dict[str, list[tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    widths: dict[str, int] = field(default_factory=dict)


def record(model: Any, refs: Mapping[str, LayerRef], infos: Mapping[str, LayerInfo],
           batches: Iterator[Any], seed: int = 0) -> Recording:  # fmt: skip
    """Run ``batches`` through ``model`` (before its masks change) and keep each
    refittable layer's outputs at sampled positions.

    Raises:
        ConfigError: If ``batches`` yields none, or a batch fails in the model.
    """
    rng = np.random.default_rng(seed)
    layers = _layers(refs, infos)
    rec = Recording([])
    try:
        rec.inputs.extend(batches)
        calls: dict[str, list[np.ndarray]] = {}
        with _catching(layers, lambda name, x: calls.setdefault(name, []).append(x)):
            repeated: dict[str, int] = {}
            for x in rec.inputs:
                calls.clear()
                model(x, training=False)
                repeated.update((n, len(c)) for n, c in calls.items() if len(c) > 1)
                for name, (got,) in ((n, c) for n, c in calls.items() if len(c) == 1):
                    layer = layers[name]
                    at = _positions(layer, got, rng)
                    kernel, bias = _matrix(layer)
                    rec.targets.setdefault(name, []).append((at, _inputs_at(layer, got, at)
                                                             @ kernel + bias))  # fmt: skip
                    rec.widths[name] = got.shape[-1]
    except (ConfigError, MemoryError):
        raise  # an empty dataset; memory
    except Exception as err:
        raise _failed(err, "Nothing was changed.") from err
    for name in layers:
        why = (f"the forward calls it {repeated[name]} times" if name in repeated else
               None if len(rec.targets.get(name, ())) == len(rec.inputs) else
               "it does not run on every batch")  # fmt: skip
        if why:
            log.info("reconstruction leaves %s as it is: %s", name, why)
            rec.targets.pop(name, None)
    return rec


def reconstruct(model: Any, recording: Recording, refs: Mapping[str, LayerRef],
                keeps: Mapping[str, dict[str, np.ndarray]],
                ) -> dict[str, tuple[float, float]]:  # fmt: skip
    """Refit the layers in ``recording`` (made by :func:`record` before the masks
    changed) to their recorded outputs, given ``keeps`` (each layer's kept ``"out"`` and
    ``"in"`` channels). All or nothing: when a batch fails, every layer gets its weights
    back.

    Returns:
        Per refit layer, the relative squared error of its outputs before and after.

    Raises:
        ConfigError: If a batch fails in the model.
    """
    layers = {n: refs[n].layer for n in recording.targets}
    saved = {n: [v.numpy() for v in _variables(m)] for n, m in layers.items()}
    errors: dict[str, tuple[float, float]] = {}
    try:
        with progress(total=len(layers), desc="Reconstruction") as bar:
            for name, layer in layers.items():
                error = _refit(model, name, layer, recording, keeps.get(name, {}))
                if error is not None:
                    errors[name] = error
                bar.update(1)
    except Exception as err:
        for name, m in layers.items():
            for v, old in zip(_variables(m), saved[name], strict=True):
                v.assign(old)
        if isinstance(err, MemoryError):
            raise  # not the data's fault
        raise _failed(err, "Every layer's weights were restored.") from err
    if errors:
        log.info("reconstruction: %d layers refit; mean relative output error %.4f -> %.4f",
                 len(errors), np.mean([b for b, _ in errors.values()]),
                 np.mean([a for _, a in errors.values()]))  # fmt: skip
    return errors


def _failed(err: Exception, outcome: str) -> ConfigError:
    return ConfigError(
        "`dataset` must yield batches the model runs on. Received: a batch failed in "
        f"weight reconstruction: {type(err).__name__}: {err}. {outcome}"
    )


def _why_not(layer: Any) -> str | None:
    """Why ``layer`` cannot be refit here, or ``None`` when it can."""
    if getattr(layer, "lora_enabled", False):
        return "LoRA-enabled: its kernel is a sum, not one variable"
    if isinstance(layer, keras.layers.Dense):
        return None
    if not isinstance(layer, keras.layers.Conv2D):
        return f"a {type(layer).__name__}, not a Conv2D or a Dense layer"
    if getattr(layer, "groups", 1) != 1:
        return "a grouped conv: each output sees only its own group"
    if layer.data_format != "channels_last":
        return "a channels_first conv"
    return None


def _layers(refs: Mapping[str, LayerRef], infos: Mapping[str, LayerInfo]) -> dict[str, Any]:
    """The conv and dense layers a refit can express, by core name (the others are logged)."""
    layers: dict[str, Any] = {}
    names_of: dict[int, list[str]] = {}
    for name, ref in refs.items():
        info = infos.get(name)
        if info is None or info.kind not in ("conv", "linear"):
            continue
        names_of.setdefault(id(ref.layer), []).append(name)
        why = _why_not(ref.layer)
        if why is None:
            layers[name] = ref.layer
        else:
            log.info("reconstruction leaves %s as it is: %s", name, why)
    for names in names_of.values():
        if len(names) > 1 and names[0] in layers:  # one Keras layer called at several places
            log.info("reconstruction leaves %s as it is: the forward calls it %d times",
                     ", ".join(names), len(names))  # fmt: skip
            for name in names:
                layers.pop(name, None)
    return layers


class _catching:
    """Hands each layer's input, as the layer sees it, to ``seen(name, array)`` while the
    ``with`` block runs; an input transform in place (a quantizer) runs first."""

    def __init__(self, layers: Mapping[str, Any], seen: Any) -> None:
        self.layers, self.seen, self.saved = layers, seen, {}

    def __enter__(self) -> _catching:
        for name, layer in self.layers.items():
            before = layer.__dict__.get("_fp_input_transforms", {}).get(0)
            self.saved[name] = (layer, before, is_masked(layer))

            def catch(x, name=name, before=before):
                x = before(x) if before is not None else x
                self.seen(name, np.asarray(x))
                return x

            set_input_transform(layer, 0, catch)
        return self

    def __exit__(self, *exc: Any) -> None:
        for layer, before, swapped in self.saved.values():
            table = layer.__dict__["_fp_input_transforms"]
            if before is None:
                table.pop(0, None)
            else:
                table[0] = before
            if not swapped:  # a layer without masks gets its own class back
                del layer.__dict__["_fp_input_transforms"]
                layer.__class__ = base_class(layer)


def _variables(layer: Any) -> list[Any]:
    return [v for v in (layer.kernel, layer.bias) if v is not None]


def _matrix(layer: Any) -> tuple[np.ndarray, np.ndarray]:
    """The masked kernel as ``(fan_in, outputs)`` and the bias (zeros without one)."""
    values = masked_weights(layer)
    kernel = values[layer.kernel.name]
    bias = values[layer.bias.name] if layer.bias is not None else np.zeros(kernel.shape[-1])
    return kernel.reshape(-1, kernel.shape[-1]).astype(np.float64), bias.astype(np.float64)


def _positions(layer: Any, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sampled output positions: ``(n, p)`` flat spatial indices for a conv, row indices
    of the flattened input for a dense layer."""
    if isinstance(layer, keras.layers.Dense):
        count = x.size // x.shape[-1]
        return rng.permutation(count)[:LINEAR_ROWS]
    (oh, ow), _ = _geometry(layer, x.shape)
    return rng.integers(0, oh * ow, (x.shape[0], min(POSITIONS, oh * ow)))


def _geometry(layer: Any, shape: tuple) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """The output's height and width, and the (before, after) padding of each, as
    ``Conv2D`` computes them."""
    size, pads = [], []
    for n, k, s, d in zip(shape[1:3], layer.kernel_size, layer.strides, layer.dilation_rate,
                          strict=True):  # fmt: skip
        span = (k - 1) * d + 1
        if layer.padding == "same":
            out = -(-n // s)
            total = max((out - 1) * s + span - n, 0)
            pads.append((total // 2, total - total // 2))
        else:
            out = (n - span) // s + 1
            pads.append((0, 0))
        size.append(out)
    return (size[0], size[1]), pads


def _inputs_at(layer: Any, x: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The least-squares inputs at sampled positions ``at``: ``(samples, fan_in)``, in
    the order of the kernel's leading axes (kernel row, column, input channel)."""
    if isinstance(layer, keras.layers.Dense):
        return x.reshape(-1, x.shape[-1])[at].astype(np.float64)
    (_, ow), pads = _geometry(layer, x.shape)
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.strides, layer.dilation_rate
    padded = np.pad(x, [(0, 0), *pads, (0, 0)])
    rows = (at // ow)[..., None, None] * sh + np.arange(kh)[:, None] * dh
    cols = (at % ow)[..., None, None] * sw + np.arange(kw)[None, :] * dw
    got = padded[np.arange(len(x))[:, None, None, None], rows, cols]  # (n, p, kh, kw, c)
    return got.reshape(-1, kh * kw * x.shape[-1]).astype(np.float64)


def _input_of(model: Any, layer: Any, x: Any) -> np.ndarray:
    """``layer``'s input when ``model`` runs ``x`` (the pass stops there)."""
    box: list[np.ndarray] = []

    def stop(_name: str, got: np.ndarray) -> None:
        box.append(got)
        raise _Reached

    with _catching({"": layer}, stop):
        try:
            model(x, training=False)
        except _Reached:
            pass
    return box[0]


def _refit(model: Any, name: str, layer: Any, recording: Recording,
           keep: dict[str, np.ndarray]) -> tuple[float, float] | None:  # fmt: skip
    """Solve one layer; its relative output error before and after, or ``None`` if it
    was left."""
    outs = keep.get("out")
    width = recording.widths[name]
    rows = np.flatnonzero(np.ones(layer.kernel.shape[-1], bool) if outs is None else outs)
    ins = np.flatnonzero(keep.get("in", np.ones(width, bool)))
    spread = int(np.prod(layer.kernel.shape[:-2])) if len(layer.kernel.shape) > 2 else 1
    fan = (np.arange(spread)[:, None] * width + ins).reshape(-1)  # kernel (kh, kw, cin)
    unknowns = len(fan) + (layer.bias is not None)
    if unknowns > MAX_FAN_IN:
        log.info("reconstruction leaves %s as it is: %d weights per output is more than %d",
                 name, unknowns, MAX_FAN_IN)  # fmt: skip
        return None
    kernel, bias = _matrix(layer)
    old = np.concatenate([kernel[fan][:, rows], bias[None, rows]])
    gram = cross = None
    err_before = norm = 0.0
    samples = 0
    for x, (at, y) in zip(recording.inputs, recording.targets[name], strict=True):
        a = _inputs_at(layer, _input_of(model, layer, x), at)[:, fan]
        a = np.concatenate([a, np.ones((len(a), 1))], 1)
        b = y[:, rows]
        samples += len(a)
        gram = a.T @ a if gram is None else gram + a.T @ a
        cross = a.T @ b if cross is None else cross + a.T @ b
        err_before += float(((a @ old - b) ** 2).sum())
        norm += float((b**2).sum())
    if samples < unknowns:
        log.info("reconstruction leaves %s as it is: %d samples for %d weights per output; "
                 "raise num_reconstruction_samples", name, samples, unknowns)  # fmt: skip
        return None
    if layer.bias is None:  # no bias to fit: drop its column
        gram, cross, old = gram[:-1, :-1], cross[:-1], old[:-1]
    solved = ridge_solve(gram, cross)
    if solved is None or norm == 0.0:
        return None
    err_after = float((solved * (gram @ solved)).sum() - 2 * (solved * cross).sum()) + norm
    if err_after >= err_before:  # the refit would not help (data too few, say): keep it
        return err_before / norm, err_before / norm
    _write(layer, rows, fan, solved)
    return err_before / norm, max(err_after, 0.0) / norm


def _write(layer: Any, rows: np.ndarray, fan: np.ndarray, solved: np.ndarray) -> None:
    """Put the solved ``(fan[+bias], rows)`` block into the kernel and bias; the other
    entries (pruned ones, read as zero through their masks) keep their values."""
    kernel = layer.kernel.numpy()
    flat = kernel.reshape(-1, kernel.shape[-1])
    flat[np.ix_(fan, rows)] = solved[: len(fan)]
    layer.kernel.assign(flat.reshape(kernel.shape))
    if layer.bias is not None:
        bias = layer.bias.numpy()
        bias[rows] = solved[len(fan)]
        layer.bias.assign(bias)
