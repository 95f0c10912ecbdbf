"""``params.reconstruction_after_mask_change``: refit kept weights by least squares.

Before a mask change, the registered data runs through the model once and each conv and
linear layer's outputs are kept at sampled positions (:func:`record`). After it, each
layer, in the order the model runs them, gets new weights on the channels it keeps: those
that best reproduce, on that data, what the layer output before the change (the dense
model's output, for a one-shot cut), given the inputs it now receives
(:func:`reconstruct`). Each refit sees its predecessors' refits, so errors do not pile
up. BatchNorm statistics stay those of the model before the change, which the refit
outputs match.

The recorded batches run joined in one forward pass, each layer solved as its input
arrives; when that would hold more than ``ONE_PASS_BYTES`` of activations or the model
refuses the joined batch, each layer runs the model up to it instead. A conv is sampled
at enough output positions per image for two rows per weight (at least 16, at most all).
Every 8th image is held out of a trial fit, and the refit is written only if that fit
predicts them better than the layer's weights do.

    {"algorithm": "filter_pruning",
     "params": {"schedule": "baseline", "pruning_flops_target": 0.5,
                "reconstruction_after_mask_change": true}}

Layers the refit cannot express are left as they are, with a log line: grouped and
depthwise convs (each output sees only its own group), convs other than 2-D or with
string or non-zero padding modes, layers the forward calls more than once or not on every
batch, layers sharing their weights, and layers with more weights per output than
``MAX_FAN_IN`` or than the samples give equations.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._batches import batch_inputs, nonempty_batches
from ..core.config import ConfigError
from ..core.reconstruction import (
    LINEAR_ROWS,
    MAX_FAN_IN,
    ONE_PASS_BYTES,
    RIDGE,
    NormalEquations,
    held_out,
    positions_per_image,
    solve_checked,
)
from ..progress import progress
from ._init_args import random_state_kept
from .fake_quant import lazy_ranges_paused
from .masks import _shared_parameters

__all__ = ["Recording", "record", "reconstruct"]

log = logging.getLogger(__name__)

_OUT_OF_MEMORY = (MemoryError, torch.OutOfMemoryError)


class _Reached(Exception):
    """Ends a forward pass once the layer being refit has been seen."""


@dataclass
class Recording:
    """What the refit matches, recorded before the masks change: the input batches, and
    per layer (in run order) its input width and, per batch, the sampled positions and
    the outputs there."""

    inputs: list[torch.Tensor]
    widths: dict[str, int] = field(default_factory=dict)
    targets: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)
    peak_bytes: int = 0  # the largest refit layer output, per sample


def record(model: nn.Module, data: Any, num_samples: int, seed: int = 0) -> Recording:
    """Run ``num_samples`` samples of ``data`` through ``model`` (before its masks change)
    and keep each refittable layer's outputs at sampled positions.

    Raises:
        ConfigError: If ``data`` yields no batch, or a batch fails in the model.
    """
    generator = torch.Generator().manual_seed(seed)
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), lazy_ranges_paused(model):
            with random_state_kept(model):
                rec = Recording(_take(data, num_samples, next(model.parameters()).device))
            images = sum(len(x) for x in rec.inputs)
            layers = _layers(model)
            calls: dict[str, int] = {}

            def keep(layer, args, out, name):
                calls[name] = calls.get(name, 0) + 1
                rows = _positions(layer, out, images, generator)
                rec.targets.setdefault(name, []).append((rows, _at(layer, out, rows)))
                rec.widths[name] = layer.weight.shape[1]
                rec.peak_bytes = max(rec.peak_bytes, out.numel() * out.element_size() // len(out))

            hooks = [m.register_forward_hook(lambda m, a, o, n=n: keep(m, a, o, n))
                     for n, m in layers.items()]  # fmt: skip
            repeated: dict[str, int] = {}
            try:
                for x in rec.inputs:
                    calls.clear()
                    model(x)
                    repeated.update((n, c) for n, c in calls.items() if c > 1)
            finally:
                for h in hooks:
                    h.remove()
    except (ConfigError, *_OUT_OF_MEMORY):
        raise  # an empty loader; memory
    except Exception as err:
        raise _failed(err, "Nothing was changed.") from err
    finally:
        model.train(was)
    for name, targets in list(rec.targets.items()):
        why = (f"the forward calls it {repeated[name]} times" if name in repeated else
               None if len(targets) == len(rec.inputs) else "it does not run on every batch")
        if why:
            log.info("reconstruction leaves %s as it is: %s", name, why)
            del rec.targets[name]
    rec.widths = {n: rec.widths[n] for n in rec.targets}
    return rec


def reconstruct(model: nn.Module, recording: Recording,
                keeps: dict[str, dict[str, np.ndarray]],
                ) -> dict[str, tuple[float, float]]:  # fmt: skip
    """Refit ``model``'s layers to the outputs in ``recording`` (made by :func:`record`
    before the masks changed).

    ``keeps`` gives each layer's kept outputs (``"out"``) and inputs (``"in"``) as
    positions in the recorded model; a layer may be masked (full width) or already cut to
    the kept channels. All or nothing: when a batch fails, every layer gets its weights
    back.

    Returns:
        Per refit layer, the relative squared error of its outputs before and after.

    Raises:
        ConfigError: If a batch fails in the model.
    """
    modules = dict(model.named_modules())
    layers = [(n, modules[n]) for n in recording.targets if n in modules]
    saved = {n: [p.detach().clone() for p in _weights(m)] for n, m in layers}
    was = model.training
    model.eval()
    errors: dict[str, tuple[float, float]] = {}
    try:
        with torch.no_grad(), lazy_ranges_paused(model), \
                progress(total=len(layers), desc="Reconstruction") as bar:
            done = _in_one_pass(model, layers, recording, keeps, errors, bar.update)
            if not done:  # too large for one pass, or the model refused the joined batch
                _restore(layers, saved)
                errors.clear()
                bar.reset()
                for name, layer in layers:
                    inputs = (_input_of(model, layer, x) for x in recording.inputs)
                    error = _refit(name, layer, recording, keeps.get(name, {}), inputs)
                    if error is not None:
                        errors[name] = error
                    bar.update(1)
    except Exception as err:
        _restore(layers, saved)
        if isinstance(err, _OUT_OF_MEMORY):
            raise  # not the data's fault
        raise _failed(err, "Every layer's weights were restored.") from err
    finally:
        model.train(was)
    if errors:
        before = np.mean([b for b, _ in errors.values()])
        after = np.mean([a for _, a in errors.values()])
        log.info("reconstruction: %d layers refit on %d samples; mean relative output error "
                 "%.4f -> %.4f", len(errors), sum(len(x) for x in recording.inputs), before,
                 after)  # fmt: skip
    return errors


def _restore(layers: list[tuple[str, nn.Module]], saved: dict[str, list[torch.Tensor]]) -> None:
    with torch.no_grad():
        for name, m in layers:
            for p, old in zip(_weights(m), saved[name], strict=True):
                p.copy_(old)


class _RefitFailed(Exception):
    """A refit inside the one joined pass failed (not the model): no second try."""


def _in_one_pass(model: nn.Module, layers: list[tuple[str, nn.Module]], recording: Recording,
                 keeps: dict[str, dict[str, np.ndarray]], errors: dict, step: Any) -> bool:
    """Refit every layer in one forward pass over all recorded batches joined: a layer's
    hook solves it from the input it gets, and the pass goes on through the refit weights,
    so each layer sees its predecessors' refits, as in the per-layer passes, at the cost
    of one forward instead of one per layer.

    Returns:
        ``False``, having changed nothing it did not also record in ``errors``, when the
        joined batch would take more than ``ONE_PASS_BYTES`` of activations or the model
        fails on it (a fixed batch size, say); the caller then refits layer by layer.
    """
    images = sum(len(x) for x in recording.inputs)
    if images * recording.peak_bytes * 4 > ONE_PASS_BYTES:  # a few activations alive at once
        return False
    sizes = [len(x) for x in recording.inputs]
    solved: set[str] = set()

    def solve(name, layer, args):
        if name in solved or len(args[0]) != images:  # the forward splits the batch itself
            raise RuntimeError(f"{name} is not called once on the whole batch")
        solved.add(name)
        try:
            inputs = args[0].split(sizes)
            error = _refit(name, layer, recording, keeps.get(name, {}), iter(inputs))
        except Exception as err:
            raise _RefitFailed() from err
        if error is not None:
            errors[name] = error
        step(1)

    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: solve(n, m, a)) for n, m in layers]
    try:
        model(torch.cat(recording.inputs))
    except _RefitFailed as err:
        raise err.__cause__ from None
    except _OUT_OF_MEMORY:
        return False
    except Exception as err:
        log.info("reconstruction refits layer by layer: the model fails on all %d samples "
                 "in one batch (%s: %s)", images, type(err).__name__, err)  # fmt: skip
        return False
    finally:
        for h in hooks:
            h.remove()
    if len(solved) < len(layers):
        log.info("reconstruction refits layer by layer: %d layers did not run on all %d "
                 "samples in one batch", len(layers) - len(solved), images)  # fmt: skip
        return False
    return True


def _failed(err: Exception, outcome: str) -> ConfigError:
    return ConfigError(
        "`data_loader` must yield batches the model runs on. Received: a batch failed in "
        f"weight reconstruction: {type(err).__name__}: {err}. {outcome}"
    )


def _take(data: Any, num_samples: int, device: torch.device) -> list[torch.Tensor]:
    taken, seen = [], 0
    for batch in nonempty_batches(data, "data_loader"):
        x = batch_inputs(batch)[: num_samples - seen].to(device)
        taken.append(x)
        seen += len(x)
        if seen >= num_samples:
            break
    return taken


def _weights(layer: nn.Module) -> list[torch.Tensor]:
    return [p for p in (layer.weight, layer.bias) if p is not None]


def _why_not(layer: nn.Module) -> str | None:
    """Why ``layer`` cannot be refit here, or ``None`` when it can."""
    if isinstance(layer, nn.Linear):
        return None
    if not isinstance(layer, nn.Conv2d):  # Conv1d/3d, transposed convs
        return f"a {type(layer).__name__}, not a 2-D conv or a linear layer"
    if layer.groups != 1:
        return "a grouped conv: each output sees only its own group"
    if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        return f"padding {layer.padding!r} ({layer.padding_mode})"
    return None


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    """The conv and linear layers a refit can express, by name (the others are logged)."""
    layers = {}
    shared = _shared_parameters(model)
    for name, m in model.named_modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            why = _why_not(m)
            if why is None and any(id(p) in shared for p in _weights(m)):
                why = "its weights are shared with another layer"
            if why is None:
                layers[name] = m
            else:
                log.info("reconstruction leaves %s as it is: %s", name, why)
    return layers


def _positions(layer: nn.Module, out: torch.Tensor, images: int,
               generator: torch.Generator) -> torch.Tensor:  # fmt: skip
    """Sampled output positions: ``(n, p)`` flat spatial indices for a conv (``p`` from
    the layer's fan-in and the ``images`` recorded), row indices of the flattened output
    for a linear layer."""
    if isinstance(layer, nn.Linear):
        count = out.numel() // out.shape[-1]
        return torch.randperm(count, generator=generator)[:LINEAR_ROWS].to(out.device)
    n, spatial = out.shape[0], out[0, 0].numel()
    unknowns = layer.weight[0].numel() + (layer.bias is not None)
    per_image = positions_per_image(unknowns, images, spatial)
    return torch.randint(0, spatial, (n, per_image), generator=generator).to(out.device)


def _at(layer: nn.Module, out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``out`` at positions ``rows``, as ``(samples, channels)``."""
    if isinstance(layer, nn.Linear):
        return out.reshape(-1, out.shape[-1])[rows]
    n, channels = out.shape[:2]
    flat = out.reshape(n, channels, -1)
    picked = torch.gather(flat, 2, rows[:, None].expand(n, channels, rows.shape[1]))
    return picked.transpose(1, 2).reshape(-1, channels)


def _input_of(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer``'s input when ``model`` runs ``x`` (the pass stops there)."""
    box: list[torch.Tensor] = []

    def stop(_m, args):
        box.append(args[0])
        raise _Reached

    hook = layer.register_forward_pre_hook(stop)
    try:
        model(x)
    except _Reached:
        pass
    finally:
        hook.remove()
    return box[0]


def _inputs_at(layer: nn.Module, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The least-squares inputs at recorded positions ``rows``: ``(samples, fan_in)``."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])[rows]
    out_width = (x.shape[3] + 2 * layer.padding[1]
                 - layer.dilation[1] * (layer.kernel_size[1] - 1) - 1) // layer.stride[1] + 1
    return _patches(layer, x, rows, out_width)


def _patches(layer: nn.Conv2d, x: torch.Tensor, take: torch.Tensor, width: int) -> torch.Tensor:
    """The conv's input patches at output positions ``take`` (``(n, p)``, row-major over an
    output ``width`` wide), as ``(n * p, channels * kh * kw)`` in the weight's order: an
    unfold of the sampled positions only."""
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = (layer.kernel_size, layer.stride, layer.dilation,
                                              layer.padding)  # fmt: skip
    x = F.pad(x, (pw, pw, ph, ph))
    n, c, hp, wp = x.shape
    rows, cols = take // width, take % width
    iy = rows[..., None, None] * sh + (torch.arange(kh, device=x.device) * dh)[:, None]
    ix = cols[..., None, None] * sw + (torch.arange(kw, device=x.device) * dw)[None, :]
    flat = (iy * wp + ix).reshape(n, -1)  # (n, p * kh * kw)
    got = torch.gather(x.reshape(n, c, hp * wp), 2, flat[:, None].expand(n, c, flat.shape[1]))
    return got.reshape(n, c, take.shape[1], kh * kw).transpose(1, 2).reshape(-1, c * kh * kw)


def _kept(vector: np.ndarray | None, width: int, ref_width: int,
          ) -> tuple[torch.Tensor, torch.Tensor] | None:  # fmt: skip
    """Positions of the kept channels in the layer and in the reference, or ``None`` when
    the widths fit neither a masked nor a cut layer."""
    keep = np.ones(ref_width, bool) if vector is None else np.asarray(vector, bool)
    if len(keep) != ref_width:
        return None
    in_ref = torch.as_tensor(np.flatnonzero(keep))
    if width == ref_width:
        return in_ref, in_ref
    if width == len(in_ref):
        return torch.arange(width), in_ref
    return None


def _refit(name: str, layer: nn.Module, recording: Recording, keep: dict[str, np.ndarray],
           inputs: Iterator[torch.Tensor]) -> tuple[float, float] | None:  # fmt: skip
    """Solve one layer from its ``inputs`` on each recorded batch; its relative output
    error before and after, or ``None`` if it was left (widths that fit no keep vector,
    or nothing to fit)."""
    conv = isinstance(layer, nn.Conv2d)
    targets = recording.targets[name]
    rows = _kept(keep.get("out"), layer.weight.shape[0], targets[0][1].shape[1])
    cols = _kept(keep.get("in"), layer.weight.shape[1], recording.widths[name])
    if rows is None or cols is None:
        log.info("reconstruction leaves %s as it is: its widths do not match the masks", name)
        return None
    spread = int(np.prod(layer.kernel_size)) if conv else 1  # columns per input channel
    fan = (cols[0][:, None] * spread + torch.arange(spread)).reshape(-1)
    unknowns = len(fan) + (layer.bias is not None)
    if unknowns > MAX_FAN_IN:
        log.info("reconstruction leaves %s as it is: %d weights per output is more than %d",
                 name, unknowns, MAX_FAN_IN)  # fmt: skip
        return None
    old = _matrix(layer)[rows[0]][:, _with_bias(layer, fan)].T
    fit, held = NormalEquations(old), NormalEquations(old)
    seen = 0  # images (conv) or rows (linear) before this batch: the held-out split
    for xin, (positions, y) in zip(inputs, targets, strict=True):
        xin = xin.index_select(1 if conv else xin.dim() - 1, cols[0].to(xin.device))
        a = _inputs_at(layer, xin.float(), positions).double()
        if layer.bias is not None:
            a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype, device=a.device)], 1)
        b = y.index_select(1, rows[1].to(y.device)).double()
        units = (torch.arange(len(positions)).repeat_interleave(positions.shape[1]) if conv
                 else torch.arange(len(a)))  # fmt: skip
        out = held_out(units, seen).to(a.device)
        seen += len(positions) if conv else len(a)
        fit.add(a[~out], b[~out])
        held.add(a[out], b[out])
    if fit.rows + held.rows < unknowns:
        log.info("reconstruction leaves %s as it is: %d samples for %d weights per output; "
                 "raise num_reconstruction_samples", name, fit.rows + held.rows, unknowns)
        return None
    result = solve_checked(fit, held, _ridge)
    if result is None:
        return None
    solved, before, after = result
    if solved is not None:
        _write(layer, rows[0], fan, solved.T)
    return before, after


def _ridge(gram: torch.Tensor, cross: torch.Tensor) -> torch.Tensor | None:
    """``W`` minimising ``|XW - Y|^2 + ridge |W|^2`` (``None`` when ``X`` is all zero)."""
    scale = float(gram.diagonal().mean())
    if scale == 0.0:
        return None
    eye = torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram + RIDGE * scale * eye, cross)


def _matrix(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as ``(out, fan_in)`` float64, with the bias as a last column."""
    w = layer.weight.detach().reshape(layer.weight.shape[0], -1).double()
    if layer.bias is not None:
        w = torch.cat([w, layer.bias.detach().double()[:, None]], 1)
    return w


def _with_bias(layer: nn.Module, fan: torch.Tensor) -> torch.Tensor:
    if layer.bias is None:
        return fan
    return torch.cat([fan, torch.tensor([layer.weight[0].numel()])])


def _write(layer: nn.Module, rows: torch.Tensor, fan: torch.Tensor, solved: torch.Tensor) -> None:
    """Put ``solved`` (kept rows by kept columns, bias last) into the layer's parameters,
    each keeping its dtype and memory layout."""
    weight = layer.weight.detach().reshape(layer.weight.shape[0], -1).clone()
    values = solved[:, : len(fan)].to(weight)
    weight[rows[:, None].to(weight.device), fan[None].to(weight.device)] = values
    layer.weight.copy_(weight.reshape(layer.weight.shape))
    if layer.bias is not None:
        layer.bias[rows.to(layer.bias.device)] = solved[:, -1].to(layer.bias)
