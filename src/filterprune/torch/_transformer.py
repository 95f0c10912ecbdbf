"""torch.nn's transformer layers: read through, and kept off their fused kernel when masked.

``nn.TransformerEncoderLayer`` and ``nn.TransformerDecoderLayer`` are torch.nn modules, so
torch.fx would keep them as one opaque call, and every channel they touch would stay
whole. Their feed-forward width (``linear1`` -> activation -> ``linear2``) is a plain
pair of linear layers, so the tracer reads them, and the stacks that hold them, as the
layers inside. Attention stays one call (``nn.MultiheadAttention``: left whole).

Two things stand in the way of a trace, both only about torch's fused inference path: the
checks that choose it branch on tensors, and the stack's sequence length reads
``src.is_nested``. While tracing, the fused path is switched off (the code traced is the
one that calls the layers) and the sequence length, which only a given mask would use,
is not read from a traced tensor.

The fused kernel (``torch._transformer_encoder_layer_fwd``, eval mode without grad) reads
``linear1.weight`` directly, past a masked layer's forward. torch takes the layer-by-layer
path whenever a hook is attached inside the layer, so a layer that holds a masked or
quantized module gets a hook that does nothing (:func:`guard_fast_paths`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import fx, nn
from torch.nn.modules import transformer

__all__ = ["TRACED_THROUGH", "tracing_layers", "guard_fast_paths"]

TRACED_THROUGH = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer,
                  nn.TransformerEncoder, nn.TransformerDecoder)  # fmt: skip
_FUSED = (nn.TransformerEncoderLayer,)  # layers with a fused inference kernel


@contextlib.contextmanager
def tracing_layers() -> Iterator[None]:
    """torch.fx traces the layer-by-layer path of the transformer layers inside."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    seq_len = getattr(transformer, "_get_seq_len", None)

    def traced_seq_len(src: Any, batch_first: bool) -> Any:
        return None if isinstance(src, fx.Proxy) else seq_len(src, batch_first)

    torch.backends.mha.set_fastpath_enabled(False)
    if seq_len is not None:
        transformer._get_seq_len = traced_seq_len
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)
        if seq_len is not None:
            transformer._get_seq_len = seq_len


def _layer_by_layer(module: nn.Module, args: Any) -> None:
    """A forward pre-hook that does nothing: attached, torch runs the layers one by one."""
    return None


def guard_fast_paths(model: nn.Module, swapped: Any) -> None:
    """Attach :func:`_layer_by_layer` to each fused transformer layer of ``model`` that
    holds a module ``swapped`` says is masked or quantized; detach it where none is left."""
    for module in model.modules():
        if not isinstance(module, _FUSED):
            continue
        hooks = module._forward_pre_hooks
        ours = [k for k, h in hooks.items() if h is _layer_by_layer]
        needed = any(swapped(m) for m in module.modules())
        if needed and not ours:
            module.register_forward_pre_hook(_layer_by_layer)
        elif ours and not needed:
            for k in ours:
                del hooks[k]
