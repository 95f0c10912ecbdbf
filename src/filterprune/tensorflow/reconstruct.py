"""``params.reconstruction_after_mask_change`` on Keras: refit kept weights by least squares.

The Keras counterpart of :mod:`filterprune.torch.reconstruct`. Before a mask change, the
registered dataset runs through the model once and each ``Conv2D`` and ``Dense`` layer's
input is caught at sampled output positions (:func:`record`); the layer's outputs there
before its activation (masked kernel and bias) are what the refit matches. After the
change, each layer in the order the model runs them gets new kernel and bias values on
the channels it keeps, solved on the inputs it now receives (:func:`reconstruct`), in one
forward pass over the joined batches where it fits. The masks stay as they are: a pruned
entry keeps its stored value and reads as zero.

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
from ..core.reconstruction import (
    LINEAR_ROWS,
    MAX_FAN_IN,
    ONE_PASS_BYTES,
    NormalEquations,
    held_out,
    positions_per_image,
    ridge_solve,
    solve_checked,
)
from ..progress import progress
from ._init_args import _size
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
    peak_bytes: int = 0  # the largest refit layer input, per sample


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
        images = sum(_size(x) for x in rec.inputs)
        calls: dict[str, list[np.ndarray]] = {}
        with _catching(layers, lambda name, x: calls.setdefault(name, []).append(x)):
            repeated: dict[str, int] = {}
            for x in rec.inputs:
                calls.clear()
                model(x, training=False)
                repeated.update((n, len(c)) for n, c in calls.items() if len(c) > 1)
                for name, (got,) in ((n, c) for n, c in calls.items() if len(c) == 1):
                    layer = layers[name]
                    at = _positions(layer, got, images, rng)
                    kernel, bias = _matrix(layer)
                    rec.targets.setdefault(name, []).append((at, _inputs_at(layer, got, at)
                                                             @ kernel + bias))  # fmt: skip
                    rec.widths[name] = got.shape[-1]
                    rec.peak_bytes = max(rec.peak_bytes, got.nbytes // len(got))
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
            if not _in_one_pass(model, layers, recording, keeps, errors, bar.update):
                _restore(layers, saved)
                errors.clear()
                bar.reset()
                for name, layer in layers.items():
                    inputs = (_input_of(model, layer, x) for x in recording.inputs)
                    error = _refit(name, layer, recording, keeps.get(name, {}), inputs)
                    if error is not None:
                        errors[name] = error
                    bar.update(1)
    except Exception as err:
        _restore(layers, saved)
        if isinstance(err, MemoryError):
            raise  # not the data's fault
        raise _failed(err, "Every layer's weights were restored.") from err
    if errors:
        log.info("reconstruction: %d layers refit; mean relative output error %.4f -> %.4f",
                 len(errors), np.mean([b for b, _ in errors.values()]),
                 np.mean([a for _, a in errors.values()]))  # fmt: skip
    return errors


def _restore(layers: Mapping[str, Any], saved: Mapping[str, list[np.ndarray]]) -> None:
    for name, m in layers.items():
        for v, old in zip(_variables(m), saved[name], strict=True):
            v.assign(old)


def _in_one_pass(model: Any, layers: Mapping[str, Any], recording: Recording,
                 keeps: Mapping[str, dict[str, np.ndarray]], errors: dict, step: Any) -> bool:
    """Refit every layer in one forward pass over all recorded batches joined: each layer
    is solved from the input it is handed, and the pass goes on through the refit kernel,
    so each layer sees its predecessors' refits, at the cost of one forward instead of
    one per layer (see :func:`filterprune.torch.reconstruct._in_one_pass`).

    Returns:
        ``False`` when the joined batch would take more than ``ONE_PASS_BYTES`` of
        activations or the model fails on it; the caller then refits layer by layer.
    """
    sizes = [_size(x) for x in recording.inputs]
    if sum(sizes) * recording.peak_bytes * 4 > ONE_PASS_BYTES:  # a few activations alive
        return False
    failed: list[Exception] = []  # Keras re-raises errors from a call as new exceptions
    solved: set[str] = set()

    def solve(name: str, x: np.ndarray) -> None:
        if name in solved or len(x) != sum(sizes):  # the forward splits the batch itself
            raise RuntimeError(f"{name} is not called once on the whole batch")
        solved.add(name)
        try:
            inputs = np.split(x, np.cumsum(sizes)[:-1])
            error = _refit(name, layers[name], recording, keeps.get(name, {}), iter(inputs))
        except Exception as err:
            failed.append(err)
            raise
        if error is not None:
            errors[name] = error
        step(1)

    joined = keras.tree.map_structure(lambda *parts: np.concatenate(parts), *recording.inputs)
    try:
        with _catching(layers, solve):
            model(joined, training=False)
    except MemoryError:
        return False
    except Exception as err:
        if failed:
            raise failed[0] from None
        log.info("reconstruction refits layer by layer: the model fails on all %d samples "
                 "in one batch (%s: %s)", sum(sizes), type(err).__name__, err)  # fmt: skip
        return False
    if len(solved) < len(layers):
        log.info("reconstruction refits layer by layer: %d layers did not run on all %d "
                 "samples in one batch", len(layers) - len(solved), sum(sizes))  # fmt: skip
        return False
    return True


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


def _positions(layer: Any, x: np.ndarray, images: int, rng: np.random.Generator) -> np.ndarray:
    """Sampled output positions: ``(n, p)`` flat spatial indices for a conv (``p`` from
    its fan-in and the ``images`` recorded), row indices of the flattened input for a
    dense layer."""
    if isinstance(layer, keras.layers.Dense):
        count = x.size // x.shape[-1]
        return rng.permutation(count)[:LINEAR_ROWS]
    (oh, ow), _ = _geometry(layer, x.shape)
    unknowns = int(np.prod(layer.kernel.shape[:-1])) + (layer.bias is not None)
    per_image = positions_per_image(unknowns, images, oh * ow)
    return rng.integers(0, oh * ow, (x.shape[0], per_image))


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


def _refit(name: str, layer: Any, recording: Recording, keep: dict[str, np.ndarray],
           inputs: Iterator[np.ndarray]) -> tuple[float, float] | None:  # fmt: skip
    """Solve one layer from its ``inputs`` on each recorded batch; its relative output
    error before and after, or ``None`` if it was left."""
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
    with_bias = layer.bias is not None
    old = kernel[fan][:, rows]
    old = np.concatenate([old, bias[None, rows]]) if with_bias else old
    fit, held = NormalEquations(old), NormalEquations(old)
    seen = 0  # images (conv) or rows (dense) before this batch: the held-out split
    conv = not isinstance(layer, keras.layers.Dense)
    for x, (at, y) in zip(inputs, recording.targets[name], strict=True):
        a = _inputs_at(layer, x, at)[:, fan]
        if with_bias:
            a = np.concatenate([a, np.ones((len(a), 1))], 1)
        b = y[:, rows]
        units = np.repeat(np.arange(len(at)), at.shape[1]) if conv else np.arange(len(a))
        out = held_out(units, seen)
        seen += len(at) if conv else len(a)
        fit.add(a[~out], b[~out])
        held.add(a[out], b[out])
    if fit.rows + held.rows < unknowns:
        log.info("reconstruction leaves %s as it is: %d samples for %d weights per output; "
                 "raise num_reconstruction_samples", name, fit.rows + held.rows, unknowns)
        return None
    result = solve_checked(fit, held, ridge_solve)
    if result is None:
        return None
    solved, before, after = result
    if solved is not None:
        _write(layer, rows, fan, solved)
    return before, after


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
