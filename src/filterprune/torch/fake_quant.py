"""The fake-quant module and the hooks that put it on a model's tensors.

:class:`FakeQuantize` rounds with ``torch.fake_quantize_per_tensor_affine`` /
``torch.fake_quantize_per_channel_affine`` (straight-through gradients inside the range),
which ``torch.onnx.export`` writes as QuantizeLinear/DequantizeLinear pairs.

A weight quantizer follows its weight: every forward takes the range from the (masked)
weight, so the scales never lag the optimizer and a pruned filter gets a safe scale of its
own. An activation quantizer keeps the range set from data (or, with
``num_init_samples: 0``, from the first batch it sees).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.quantization import (
    QuantizerSpec,
    QuantizerState,
    RangeCollector,
    quant_limits,
    quant_params,
    used_limits,
    warn_signed,
)
from ..errors import ConfigError

log = logging.getLogger("filterprune")

__all__ = ["FakeQuantize", "FirstPass", "QuantizeInput", "QuantizeOutput", "follow_range",
           "lazy_ranges_paused"]

_ONNX_RANGES = ((0, 255), (-128, 127))
_TINY = 1e-12


def _fill_dead(low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-width channels take the widest live range, or [-1, 1] (as the core does)."""
    dead = (high - low) <= _TINY
    any_live = (~dead).any()
    fill_low = torch.where(any_live, torch.where(dead, math.inf, low).amin(0), -1.0)
    fill_high = torch.where(any_live, torch.where(dead, -math.inf, high).amax(0), 1.0)
    return torch.where(dead, fill_low, low), torch.where(dead, fill_high, high)


def follow_range(w: torch.Tensor, spec: QuantizerSpec, signed: bool) -> tuple[torch.Tensor, ...]:
    """``(scale, zero_point)`` of a weight's min/max range, in torch (no host sync).

    The same math as :func:`filterprune.core.quantization.quant_params` over
    :func:`~filterprune.core.quantization.tensor_range`: channels that are all zero are
    left out of a per-tensor range and get a safe scale when per channel.
    """
    w = w.detach()
    rows = w.movedim(spec.channel_axis, 0).flatten(1) if spec.channel_axis is not None else (
        w.reshape(1, -1))  # fmt: skip
    low, high = rows.amin(1).double(), rows.amax(1).double()  # extremes are exact in any dtype
    if not spec.settings.per_channel:
        live = (rows != 0).any(1)
        low = torch.where(live, low, math.inf).amin(0).clamp(max=0)
        high = torch.where(live, high, -math.inf).amax(0).clamp(min=0)
    low, high = _fill_dead(low.clamp(max=0).reshape(-1), high.clamp(min=0).reshape(-1))
    qmin, qmax = used_limits(spec.settings, signed)
    if spec.settings.mode == "symmetric":
        scale = (torch.maximum(-low, high) if signed else high) / qmax
        zero_point = torch.zeros_like(scale)
    else:
        scale = (high - low) / (qmax - qmin)
        zero_point = (qmin + torch.round(-low / scale)).clamp(qmin, qmax)
    scale = torch.where(scale > _TINY, scale, 1.0)
    shape = scale.shape if spec.settings.per_channel else ()
    return scale.float().reshape(shape), zero_point.int().reshape(shape)


class FakeQuantize(nn.Module):
    """Quantize-dequantize of one tensor, as placed by the core.

    Args:
        spec: The core's :class:`~filterprune.core.quantization.QuantizerSpec`.
        lazy: Activations only: take the range from the first batch seen (every call of
            the model's first pass, :class:`FirstPass`).

    Attributes:
        scale, zero_point: Buffers (0-d per tensor, 1-d per channel).
        quant_min, quant_max: The integer range.
        initialized: False while the quantizer passes values through.
        collector: A core ``RangeCollector`` while ranges are being collected: the
            quantizer then records its input and passes it through.
        frozen: A weight quantizer stops following its weight (stripped models).
        enabled: False passes values through (to compare with float).
    """

    # lazy: the calls of the model's first pass, and whether one is running (class
    # defaults: a quantizer pickled before these existed reads them too)
    first: RangeCollector | None = None
    widening = False

    def __init__(self, spec: QuantizerSpec, lazy: bool = False) -> None:
        super().__init__()
        self.spec = spec
        state = QuantizerState.empty(spec.settings, spec.num_channels)
        self.register_buffer("scale", torch.from_numpy(state.scale))
        # integers kept as floats, read rounded: an EMA that averages every buffer (timm's
        # ModelEmaV2) writes 126.9999 for 127, which an integer buffer truncated to 126
        self.register_buffer("zero_point", torch.from_numpy(state.zero_point.astype(np.float32)))
        self.quant_min, self.quant_max = state.quant_min, state.quant_max
        self.initialized = False
        self.lazy = lazy
        self.frozen = False
        self.enabled = True
        # python values drive forward (no host sync); the buffer carries them in state_dict
        self.register_buffer("meta", torch.zeros(4))
        self._meta_written: tuple = ()
        self._write_meta()
        self.collector: RangeCollector | None = None
        self._signed: bool | None = None  # a weight's integer range, once decided

    @property
    def follows_weight(self) -> bool:
        return self.spec.kind == "weight" and not self.frozen

    @property
    def axis(self) -> int | None:
        return self.spec.channel_axis if self.spec.settings.per_channel else None

    @property
    def channel_role(self) -> str | None:
        """The keep vector of the owning layer that cuts a per-channel scale."""
        if self.axis is None:
            return None
        return "out" if self.spec.kind == "weight" else "in"

    def extra_repr(self) -> str:
        return f"{self.spec.key}, bits={self.spec.settings.bits}, range=({self.quant_min}, " \
               f"{self.quant_max}), per_channel={self.axis is not None}"  # fmt: skip

    # -- state -----------------------------------------------------------------------------
    def state(self) -> QuantizerState:
        return QuantizerState(self.scale.detach().cpu().numpy().copy(),
                              self._zero_point().detach().cpu().numpy().copy(),
                              self.quant_min, self.quant_max, self.initialized)  # fmt: skip

    def _zero_point(self) -> torch.Tensor:
        """The zero point as integers (a quantizer pickled before it was kept as floats
        holds integers)."""
        zp = self.zero_point
        return (zp.round() if zp.is_floating_point() else zp).to(torch.int32)

    def set_state(self, state: QuantizerState) -> None:
        with torch.no_grad():
            for name, value in (("scale", state.scale), ("zero_point", state.zero_point)):
                old = getattr(self, name)
                setattr(self, name, torch.as_tensor(value, device=old.device).to(old.dtype))
        self.quant_min, self.quant_max = state.quant_min, state.quant_max
        self.initialized = state.initialized
        self._write_meta()

    def _apply(self, fn, recurse=True):
        # a model moved to float16/bfloat16 keeps float32 scales: a rounded scale would put a
        # frozen (stripped, exported) weight quantizer on another grid than the training
        # model's, whose weight quantizer uses the float32 scale it computes each forward
        before = self.scale
        out = super()._apply(fn, recurse)
        if self.scale.dtype != before.dtype and self.scale.is_floating_point():
            self.scale = before.to(device=self.scale.device)
        return out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("scale", "zero_point"):  # a stripped model's scales may be cut
            saved = state_dict.get(prefix + name)
            mine = getattr(self, name)
            if saved is not None and saved.shape != mine.shape:
                setattr(self, name, torch.empty(saved.shape, dtype=mine.dtype, device=mine.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.buffers_restored()

    def sync_buffers(self) -> None:
        """Before a snapshot of the buffers: ``meta`` as the flags are now."""
        self._write_meta()

    def buffers_restored(self) -> None:
        """After the buffers are put back as a snapshot took them (a LeGR trial undone):
        the flags as ``meta`` holds them. A range a trial's batch set goes with it, and
        the next first pass sets it again."""
        qmin, qmax, initialized, frozen = (round(v) for v in self.meta.tolist())
        self.quant_min, self.quant_max = qmin, qmax
        self.initialized, self.frozen = bool(initialized), bool(frozen)
        self._meta_written = (qmin, qmax, int(initialized), int(frozen))
        if self.spec.kind == "weight":  # a weight turned signed stays so on resume
            self._signed = qmin < 0 if self.initialized else None
        if not self.initialized:
            self.first = None

    def _write_meta(self) -> None:
        """Mirror the integer range and flags into the ``meta`` buffer (for state_dict)."""
        values = (self.quant_min, self.quant_max, int(self.initialized), int(self.frozen))
        if values != self._meta_written:
            self.meta.copy_(torch.tensor(values, dtype=self.meta.dtype))
            self._meta_written = values

    def select_channels(self, index: np.ndarray) -> None:
        """Keep the per-channel scales of channels ``index`` (the layer was cut)."""
        if self.axis is None:
            return
        idx = torch.as_tensor(index, dtype=torch.long, device=self.scale.device)
        self.scale = self.scale.index_select(0, idx).contiguous()
        self.zero_point = self.zero_point.index_select(0, idx).contiguous()

    # -- forward ---------------------------------------------------------------------------
    def follow(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Set the range from weight ``w``; returns the new ``(scale, zero_point)``."""
        signed, was = self._signed, self._signed
        if signed is None or not signed and not _tracing():  # once signed, always
            # unsigned is checked at every eager range (a host sync, for `signed: false`
            # alone): a weight trained, or a BatchNorm with a negative gamma folded in, below
            # 0 would clip to 0. A graph being traced keeps the sign decided so far.
            signed = self.spec.settings.signed is not False or bool((w < 0).any())
            self._signed = signed
        scale, zero_point = follow_range(w, self.spec, signed)
        with torch.no_grad():
            self.scale.copy_(scale)
            self.zero_point.copy_(zero_point)
        self.quant_min, self.quant_max = quant_limits(self.spec.settings.bits, signed)
        if not self.initialized or signed != was:
            warn_signed(self.spec, self.state())
        self.initialized = True
        self._write_meta()
        return scale, zero_point

    def freeze(self, w: torch.Tensor) -> None:
        """Fix a weight quantizer's range on weight ``w`` (it stops following)."""
        self.follow(w)
        self.frozen = True
        self._write_meta()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.collector is not None:
            self.collector.update(x.detach().float().cpu().numpy())
            return x
        if not self.enabled:
            return x
        if self.follows_weight:
            return self._fake_quantize(x, *self.follow(x))
        if not self.initialized and not self.lazy:
            return x
        if not self.initialized or self.first is not None and self.widening:
            self._widen(x)
        return self._fake_quantize(x, self.scale, self._zero_point())

    def _widen(self, x: torch.Tensor) -> None:
        """The range of every call in the model's first pass so far (a layer called at
        each time step of a loop sees its widest input at the last one)."""
        if self.first is None:
            self.first = RangeCollector("min_max", self.axis is not None, self.spec.channel_axis)
        rc = self.first
        rc.update(x.detach().float().cpu().numpy())
        got = rc.range()
        if got is None:  # as ranges from init data do: only zeros so far
            got = rc.zeros
        if got is not None:
            self.set_state(quant_params(*got, self.spec.settings))

    def end_first_pass(self) -> None:
        """The model's first pass is over: the range stays as its calls set it."""
        if self.first is not None and self.first.range() is None and self.first.zeros is not None:
            log.warning("quantizer %s saw only zeros in its first batch (an activation that "
                        "is never positive?): it gets the smallest range, and values it meets "
                        "later are clipped to it", self.spec.key)  # fmt: skip
        self.first, self.widening = None, False

    def _fake_quantize(self, x, scale, zero_point) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export() and (self.quant_min, self.quant_max) not in _ONNX_RANGES:
            raise ConfigError(
                "`bits` must be 8 to export QuantizeLinear/DequantizeLinear pairs to ONNX. "
                f"Received: bits={self.spec.settings.bits} for {self.spec.key}."
            )
        qmin, qmax = self.quant_min, self.quant_max
        scale = scale.float()  # a model moved to another dtype: the ops take float32 scales
        if x.dtype in (torch.float16, torch.bfloat16):  # and no half-precision input
            return self._fake_quantize(x.float(), scale, zero_point).to(x.dtype)
        if torch.compiler.is_compiling() and not (torch.compiler.is_exporting()
                                                  or torch.onnx.is_in_onnx_export()):
            return _traceable_fake_quantize(x, scale, zero_point, self.axis, qmin, qmax)
        if self.axis is None:
            return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)
        return torch.fake_quantize_per_channel_affine(x, scale, zero_point, self.axis, qmin, qmax)


def _tracing() -> bool:
    """Whether a graph is being captured (torch.compile, torch.export, an ONNX export),
    where a decision read off a value cannot be made."""
    return (torch.compiler.is_compiling() or torch.compiler.is_exporting()
            or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing())  # fmt: skip


def _traceable_fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                             axis: int | None, qmin: int, qmax: int) -> torch.Tensor:  # fmt: skip
    """The fake-quant ops' arithmetic (``nearbyint(x * (1 / scale)) + zero_point``, clamped;
    gradients passed inside the range) in plain ops, for ``torch.compile`` (``torch.export``
    keeps the ops, which tools lowering a program look for): the per-tensor
    op with tensor scales has no kernel for symbolic shapes, so a compiled model failed
    at a second batch size with ``fullgraph=True`` (and broke its graph at each quantizer
    without)."""
    if axis is not None:
        shape = [1] * x.dim()
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    zero = zero_point.to(x.dtype)
    q = torch.round(x * (1.0 / scale)) + zero
    inside = (q >= qmin) & (q <= qmax)
    out = (q.clamp(qmin, qmax) - zero) * scale
    return out.detach() + (x - x.detach()) * inside


class FirstPass:
    """Forward pre-hook and hook on the model: a lazy quantizer whose range is not set yet
    widens it over every call of the model's pass that sets it (a layer a loop calls at
    each step); a call outside a pass of the model (another method of it) sets it alone,
    as before. Removes itself once every range is set."""

    def __init__(self, quantizers: list[FakeQuantize]) -> None:
        self.quantizers = quantizers

    def start(self, module: nn.Module, args: tuple) -> None:
        for q in self.quantizers:
            q.widening = not q.initialized

    def end(self, module: nn.Module, args: tuple, output: Any) -> None:
        for q in self.quantizers:
            q.end_first_pass()
        if all(q.initialized for q in self.quantizers):  # (a copy's hooks leave the copy)
            for table in (module._forward_pre_hooks, module._forward_hooks):
                for key in [k for k, h in table.items() if getattr(h, "__self__", None) is self]:
                    del table[key]


class QuantizeInput:
    """Forward pre-hook: the layer reads its first input through ``quantizer``."""

    def __init__(self, quantizer: FakeQuantize) -> None:
        self.quantizer = quantizer

    def __call__(self, module: nn.Module, args: tuple) -> tuple | None:
        if not args or not isinstance(args[0], torch.Tensor):
            return None
        return (self.quantizer(args[0]), *args[1:])


class QuantizeOutput:
    """Forward hook: the module's output tensor goes through ``quantizer``."""

    def __init__(self, quantizer: FakeQuantize) -> None:
        self.quantizer = quantizer

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> Any:
        return self.quantizer(output) if isinstance(output, torch.Tensor) else None


@contextlib.contextmanager
def lazy_ranges_paused(model: nn.Module) -> Iterator[None]:
    """Activation quantizers that take their range from the first batch they see pass
    values through meanwhile, so a forward that is not training (a layout check, the
    refit's recording) leaves that batch to be the first training one."""
    waiting = [m for m in model.modules()
               if isinstance(m, FakeQuantize) and m.lazy and not m.initialized and m.enabled]
    for m in waiting:
        m.enabled = False
    try:
        yield
    finally:
        for m in waiting:
            m.enabled = True
