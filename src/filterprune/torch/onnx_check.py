"""Does an exported ONNX file compute what the model computes? Run both on a new input.

An exporter traces the model on the example input. A forward whose Python code reads
values of that input (a loop over ``int(x[i])``) is written for those values only, and
a graph captured from one sample can declare a free batch axis yet run only at batch 1.
Neither shows on the example, so the file is run in ONNX Runtime on a new input, with
two samples where its batch axis is free.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from ..testing.zoo import relative_diff
from ._snapshot import attributes_kept
from ._tree import leaves
from .fake_quant import FakeQuantize

__all__ = ["compare_file"]


def compare_file(model: nn.Module, args: tuple, path: str, tol: float = 1e-4,
                 same_batch: bool = False) -> str | None:  # fmt: skip
    """Run the ONNX file at ``path`` and ``model`` on a new input like ``args`` (two
    samples where the file's batch is free): None where they agree within ``tol``
    relative to the largest output, else what differs, as a phrase ("fails in ONNX
    Runtime ..."). ``same_batch``: at the example's batch. ``tol`` widens to the
    arithmetic of the model (half precision, TF32 on CUDA). Not checked (None) without
    onnxruntime, where the file's inputs or outputs do not pair with the model's tensors
    one to one, or where the model itself fails on the new input (and the file does not).

    A quantized model that differs is compared again with its activations in float on
    both sides (Q/DQ pairs, quantizers): summed in another order, a value near a rounding
    boundary rounds the other way, and in a deep network such steps add up past ``tol``.
    Its weights, quantized after BatchNorm folding, can flip a step too: that comparison
    allows 1e-3 (a file traced for the example's values differs by 1e-2 and more).
    """
    try:
        import onnx

        from ..onnx.convert import activations_in_float
    except ImportError:
        return None
    proto = onnx.load(path)
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if len(inputs) != len(tensors) or any(a.dtype == torch.bfloat16 for a in tensors):
        return None  # numpy has no bfloat16
    free = not same_batch and any(i.type.tensor_type.shape.dim[:1]
                                  and i.type.tensor_type.shape.dim[0].dim_param
                                  for i in inputs)  # fmt: skip
    tol = max(tol, _arithmetic_tol(model))
    generator = torch.Generator().manual_seed(1)
    fresh = {id(a): _fresh(a, 2 if free and a.dim() else None, generator) for a in tensors}
    new_args = tuple(fresh.get(id(a), a) for a in args)
    feeds = {i.name: fresh[id(a)].cpu().numpy() for i, a in zip(inputs, tensors, strict=True)}
    problem = _differs(model, new_args, proto, feeds, tol)
    if problem and "fails" not in problem and _quantized(proto):
        with _activations_in_float(model):
            problem = _differs(model, new_args, activations_in_float(proto), feeds,
                               max(tol, 1e-3))  # fmt: skip
    return problem


_FLOOR = 1e-12  # the smallest output magnitude whose differences a check reads


def _differs(model: nn.Module, args: tuple, proto: Any, feeds: dict, tol: float) -> str | None:
    from ..onnx.convert import run_onnxruntime

    was_training = model.training
    try:
        with torch.no_grad(), attributes_kept(model):  # a stream's state: as the export's
            out = model.eval()(*args)
    except Exception:  # noqa: BLE001 - the model runs only on inputs like the example
        out = None  # then only whether the file runs is known
    finally:
        model.train(was_training)
    try:
        got = run_onnxruntime(proto, feeds)
    except Exception as err:  # noqa: BLE001 - the runtime's own error, said in the warning
        shapes = ", ".join(str(list(v.shape)) for v in feeds.values())
        message = re.sub(r"\s+", " ", str(err)).strip()
        if len(message) > 160:  # its end names the op; cut at a word
            message = "... " + message[-160:].split(" ", 1)[-1]
        return f"fails in ONNX Runtime on an input of shape {shapes} ({message})"
    expected = [t for _, t in leaves(out) if isinstance(t, torch.Tensor)]
    if out is None or len(got) != len(expected):
        return None
    for ref, value in zip(expected, got, strict=True):
        ref = ref.detach().cpu()
        if tuple(ref.shape) != value.shape:
            return f"returns shape {list(value.shape)} where the model returns {list(ref.shape)}"
        # an output of about 1e-23 (a sigmoid far below 0 at random init) differs in full
        # between runtimes by rounding alone: below _FLOOR, differences count as noise
        diff = relative_diff(ref, torch.from_numpy(np.asarray(value)).to(ref.dtype), _FLOOR)
        if not diff <= tol:
            return f"computes other values than the model on a new input (max relative " \
                   f"difference {diff:.2g})"  # fmt: skip
    return None


def _arithmetic_tol(model: nn.Module) -> float:
    """The difference the model's own arithmetic allows: float16 or bfloat16 weights round
    at about 1e-3, as do convolutions in TF32 on CUDA (PyTorch's default for cuDNN)."""
    params = list(model.parameters())
    if any(p.dtype in (torch.float16, torch.bfloat16) for p in params):
        return 1e-2
    if any(p.is_cuda for p in params) and torch.backends.cudnn.allow_tf32:
        return 2e-3
    return 0.0


def _quantized(proto: Any) -> bool:
    return any(n.op_type == "QuantizeLinear" for n in proto.graph.node)


@contextlib.contextmanager
def _activations_in_float(model: nn.Module) -> Iterator[None]:
    quantizers = [m for m in model.modules() if isinstance(m, FakeQuantize)
                  and m.spec.kind != "weight" and m.enabled]  # fmt: skip
    for m in quantizers:
        m.enabled = False
    try:
        yield
    finally:
        for m in quantizers:
            m.enabled = True


def _fresh(arg: torch.Tensor, batch: int | None, generator: torch.Generator) -> torch.Tensor:
    """A new input like ``arg``: uniform in [0, 1) for floats, ``arg``'s values otherwise;
    with ``batch`` samples where given."""
    shape = [batch or arg.shape[0], *arg.shape[1:]] if arg.dim() else []
    if not arg.dtype.is_floating_point:
        return arg[:1].expand(shape).clone() if batch else arg.clone()
    return torch.rand(shape, generator=generator).to(arg.dtype).to(arg.device)
