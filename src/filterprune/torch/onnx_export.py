"""Write a PyTorch model as ONNX: the current exporter first, the TorchScript one as fallback.

The current exporter (``torch.onnx.export(..., dynamo=True)``, which needs ``onnxscript``)
captures with torch.export and handles what the deprecated TorchScript exporter refuses
(``AdaptiveAvgPool2d(4)`` on a 7x7 map). Every file it writes is checked; one its graph
optimiser broke is written again without the optimiser. Where it fails (an op it has no
translation for), the TorchScript exporter writes the file; a log message says which one
ran, and ``exporter=`` forces one.

The batch axis of every input and output is left free, so a file exported with a
1-sample example runs at any batch size; a model whose code fixes its batch size (the
capture cannot leave it free) is exported with the example's batch, and a log message
says so.

Each file is then run in ONNX Runtime on a new input (two samples where its batch is
free) and compared with the model: a forward whose Python code reads values of its input
(a loop over ``int(x[i])``) is traced for the example only, and a file that computes
something else, or does not run, is said in a warning.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .._atomic import NO_SPACE, atomic_write, check_writable
from ._snapshot import attributes_kept  # every run starts from the state the model had
from ._tree import leaves, path_name
from .onnx_check import compare_file

__all__ = ["export_onnx", "EXPORTERS"]

log = logging.getLogger("filterprune")

EXPORTERS = ("auto", "dynamo", "torchscript")
LEGACY_OPSET = 17


def export_onnx(model: nn.Module, sample: Sequence[torch.Tensor], path: str,
                input_names: list[str] | None = None, output_names: list[str] | None = None,
                exporter: str = "auto") -> str:  # fmt: skip
    """Write ``model`` run on ``sample`` as ONNX at ``path`` (atomically).

    Args:
        exporter: ``"auto"`` (the current exporter, falling back to the TorchScript one
            where it fails), ``"dynamo"`` or ``"torchscript"`` to force one.

    Returns:
        The exporter that wrote the file: ``"dynamo"`` or ``"torchscript"``.

    Raises:
        ValueError: For an unknown ``exporter``.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"`exporter` must be one of {list(EXPORTERS)}. "
                         f"Received: exporter={exporter!r}.")  # fmt: skip
    check_writable(path)  # before any export: an I/O error is not the exporter's
    args = tuple(sample)
    found, opaque = _outputs(model, args)
    taken = input_names or _argument_names(model, len(args))
    names = {"input_names": input_names,
             "output_names": output_names or _keyed_names(found, taken)}  # fmt: skip
    with _tensor_outputs(model, found, opaque):
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)  # the fused attention op has no ONNX form
        try:
            if exporter == "torchscript":
                return _write(path, lambda tmp: _legacy_any_batch(model, args, tmp, names),
                              "torchscript")
            try:
                if exporter == "dynamo":
                    return _write(path, lambda tmp: _dynamo(model, args, tmp, names), "dynamo")
                return _write_auto(path, model, args, names)
            except Exception as err:  # noqa: BLE001 - any failure of the new exporter falls back
                if exporter == "dynamo" or isinstance(err, OSError) and err.errno in NO_SPACE:
                    raise  # a full disk fails the other exporter too
                log.warning("The current ONNX exporter (dynamo=True) failed (%s); exporting with "
                            "the TorchScript exporter instead.", _short(err))  # fmt: skip
                try:
                    return _write(path, lambda tmp: _legacy_any_batch(model, args, tmp, names),
                                  "torchscript")
                except Exception as legacy:  # noqa: BLE001 - both causes, each in one line
                    if isinstance(legacy, OSError):
                        raise
                    raise RuntimeError(
                        f"Neither ONNX exporter could write {path}: the current exporter "
                        f"(dynamo=True) failed with {_short(err)}; the TorchScript exporter "
                        f"with {_short(legacy)}") from legacy  # fmt: skip
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)


def _outputs(model: nn.Module, args: tuple) -> tuple[list[tuple[tuple, Any]], bool]:
    """The ``(path, value)`` leaves of what ``model`` returns on ``args`` (:func:`leaves`),
    and whether it is built of other containers than both exporters take (tuples, lists,
    dicts with string keys)."""
    was_training = model.training
    try:
        with torch.no_grad(), attributes_kept(model):
            out = model.eval()(*args)
    finally:
        model.train(was_training)
    return list(leaves(out)), not _plain(out)


def _plain(out: Any) -> bool:
    if out is None or isinstance(out, torch.Tensor):
        return True
    if type(out) in (tuple, list):
        return all(_plain(o) for o in out)
    if type(out) is dict:
        return all(isinstance(k, str) and _plain(v) for k, v in out.items())
    return False


@contextlib.contextmanager
def _tensor_outputs(model: nn.Module, leaves_: list[tuple[tuple, Any]], opaque: bool):
    """A context in which ``model`` returns its tensor outputs as a flat tuple, where it
    returns other values too (said with their names: an ONNX graph has no other outputs,
    and an int or a string beside them made both exporters fail), or a structure the
    exporters do not flatten (a dataclass, a dict subclass: exported with no outputs
    before). A forward hook does it, so the inputs keep their names."""
    other = ["output" + "".join(f"[{k!r}]" for k in path) for path, leaf in leaves_
             if not isinstance(leaf, torch.Tensor)]  # fmt: skip
    if not other and not opaque:
        yield
        return
    if other:
        log.warning("The model returns values that are not tensors (%s); the ONNX file has "
                    "only its tensor outputs.", ", ".join(other))  # fmt: skip

    def tensors_only(module, inputs, out):
        return tuple(t for _, t in leaves(out) if isinstance(t, torch.Tensor))

    handle = model.register_forward_hook(tensors_only)
    try:
        yield
    finally:
        handle.remove()


def _keyed_names(leaves_: list[tuple[tuple, Any]], inputs: Sequence[str] = ()) -> list[str] | None:
    """Output names from the keys of a dict (or the fields of a dataclass) the model
    returns (``scores``, ``aux/boxes``); ``None`` (the exporter's names) otherwise. A key
    that names an input too (diffusers' ``forward(sample)`` returns ``.sample``) is written
    ``output/sample``: a file cannot hold two values of one name."""
    paths = [path for path, leaf in leaves_ if isinstance(leaf, torch.Tensor)]
    if not any(isinstance(k, str) for path in paths for k in path):
        return None
    names = [path_name(path) for path in paths]
    names = [f"output/{name}" if name in inputs else name for name in names]
    return names if len(set(names)) == len(names) else None


def _argument_names(model: nn.Module, count: int) -> list[str]:
    """The names the exporters give the first ``count`` inputs of ``model``'s forward:
    its arguments' names, and ``args_0``, ``args_1``... for those ``*args`` takes."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):  # a forward without a signature
        return []
    names = []
    for p in params:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
        elif p.kind == p.VAR_POSITIONAL:
            names += [p.name, *(f"{p.name}_{i}" for i in range(count - len(names)))]
            break
    return names[: count + 1]


def _write(path: str, write, name: str | Callable[[], str]) -> str:
    """Write with ``write(tmp)`` (which returns what the file computes differently from
    the model, or None), then warn where it does. ``name``: the exporter, or what says
    which one wrote the file once it is written."""
    problems: list[str | None] = []

    def write_checked(tmp: str) -> None:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always", torch.jit.TracerWarning)
            problems.append(write(tmp))
        traced = [str(w.message) for w in seen if issubclass(w.category, torch.jit.TracerWarning)]
        if problems[-1] and traced:
            log.warning("The ONNX file %s %s. The TorchScript exporter traced it for the "
                        "example input only: %s Write such a step of forward with tensor ops "
                        "(torch.where, gather), or leave it out of the exported model.",
                        path, problems[-1], _sentence(traced[0]))  # fmt: skip
        elif problems[-1] and "NOT_IMPLEMENTED" in problems[-1]:
            log.warning("The ONNX file %s %s. ONNX Runtime has no kernel for an op of the file "
                        "in its type (a float64 or bfloat16 convolution, for one), so the file "
                        "is written unchecked; export the model in float32 (model.float()) to "
                        "run it there.", path, problems[-1])  # fmt: skip
        elif problems[-1]:
            log.warning("The ONNX file %s %s. A step of forward that depends on the input's "
                        "values or batch size, or draws random numbers, is the likely cause; "
                        "do not deploy the file unchecked.", path, problems[-1])  # fmt: skip

    atomic_write(path, write_checked, suffix=".onnx")
    name = name() if callable(name) else name
    log.info("Exported %s with the %s ONNX exporter.", path, name)
    return name


def _write_auto(path: str, model: nn.Module, args: tuple, names: dict[str, Any]) -> str:
    """The current exporter's file, or the TorchScript exporter's where only that one
    computes what the model does."""
    used = ["dynamo"]

    def write(tmp: str) -> str | None:
        problem = _dynamo(model, args, tmp, names)
        if problem is None:
            return None
        other = tmp + ".torchscript.onnx"
        try:
            with warnings.catch_warnings(record=True):  # a file not kept: not its warnings
                warnings.simplefilter("always")
                if _legacy_any_batch(model, args, other, names) is not None:
                    return problem
            os.replace(other, tmp)
        except Exception:  # noqa: BLE001 - the current exporter's file and its warning stand
            return problem
        finally:
            with contextlib.suppress(OSError):
                os.remove(other)
        log.info("The current ONNX exporter's file %s; the TorchScript exporter's computes "
                 "what the model does, and is written instead.", problem)  # fmt: skip
        used[0] = "torchscript"
        return None

    return _write(path, write, lambda: used[0])


def _free_then_fixed(model: nn.Module, args: tuple, tmp: str, free, fixed) -> str | None:
    """Export with ``free(tmp)`` (a free batch axis); where that fails, or the file does
    not run at another batch (or returns another shape), with ``fixed(tmp)`` (the
    example's batch). Returns :func:`compare_file` of the file written."""
    try:
        free(tmp)
        problem = compare_file(model, args, tmp)
        if problem is None or not problem.startswith(("fails", "returns shape")) \
                or compare_file(model, args, tmp, same_batch=True):  # fmt: skip
            return problem  # not the batch's doing: a fixed batch would not mend it
        reason = f"the file {problem}"
    except Exception as err:  # noqa: BLE001 - the model fixes its batch size somewhere
        reason = _short(err)
    log.info("The batch axis cannot be left free (%s); exporting with the example's "
             "batch size.", reason)  # fmt: skip
    fixed(tmp)
    return compare_file(model, args, tmp)


def _sentence(text: str) -> str:
    return text.strip().split(". ")[0].rstrip(".") + "."


_FAKE_QUANT_OPS = ("fake_quantize_per_tensor_affine_cachemask",
                   "fake_quantize_per_channel_affine_cachemask",
                   "_fake_quantize_per_tensor_affine_cachemask_tensor_qparams")  # fmt: skip
_shape_kernels: list[Any] = []  # the library object must live as long as the process


def _fake_quant_shapes() -> None:
    """Give the fake-quant ops a shape-only (Meta) kernel where PyTorch has none.

    torch.export runs ops on shape-only tensors; with a free batch axis it cannot fall
    back to running an op without such a kernel, and fake-quant (every QAT model) has
    none. Each returns its input's shape and a boolean mask of that shape.
    """
    if _shape_kernels:
        return
    lib = torch.library.Library("aten", "IMPL")
    for op in _FAKE_QUANT_OPS:
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"aten::{op}", "Meta"):
            lib.impl(op, _fake_quant_meta, "Meta")
    _shape_kernels.append(lib)


def _fake_quant_meta(x: torch.Tensor, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(x), torch.empty_like(x, dtype=torch.bool)


def _dynamo(model: nn.Module, args: tuple, tmp: str, names: dict[str, Any]) -> str | None:
    """The current exporter, with a free batch axis where the model allows one; written
    again without its graph optimiser where the file computes other values (it drops
    ``+ 1e-15`` from ``a / (b + eps)``, and a pruned ``b`` of 0 then gives NaN)."""
    _fake_quant_shapes()
    free = _nest_var_positional(
        model, tuple({0: torch.export.Dim.DYNAMIC} if _batched(a) else None for a in args))
    # from two samples: torch.export takes an axis of size 1 for a constant, and a graph
    # captured from one sample could declare a free batch yet run only at 1
    twice = tuple(torch.cat([a, a]) if _batched(a) else a for a in args)
    problem = _free_then_fixed(
        model, args, tmp, lambda t: _dynamo_once(model, twice, t, names, free),
        lambda t: _dynamo_once(model, args, t, names, None))  # fmt: skip
    if not (problem or "").startswith("computes other values"):
        return problem
    log.info("The optimised ONNX graph %s; trying it unoptimised.", problem)
    plain = tmp + ".plain.onnx"
    try:
        if _free_then_fixed(
                model, args, plain, lambda t: _dynamo_once(model, twice, t, names, free, False),
                lambda t: _dynamo_once(model, args, t, names, None, False)) is None:  # fmt: skip
            os.replace(plain, tmp)
            return None
    except Exception:  # noqa: BLE001 - the optimised file and what it computes stand
        pass
    finally:
        with contextlib.suppress(OSError):
            os.remove(plain)
    return problem  # no better unoptimised: the optimised file is kept


def _dynamo_once(model: nn.Module, args: tuple, tmp: str, names: dict[str, Any],
                 dynamic: tuple | None, optimize_first: bool = True) -> None:  # fmt: skip
    """Its graph optimiser has written graphs that read a value no node makes (timm's
    gemma4_vit); such a file is written again without the optimiser."""
    import onnx

    from .export_capture import quiet  # its progress, guards and a failed graph

    for optimize in (True, False) if optimize_first else (False,):
        with quiet(), torch.no_grad(), attributes_kept(model):
            torch.onnx.export(model, args, tmp, dynamo=True, external_data=False, verbose=False,
                              optimize=optimize, dynamic_shapes=dynamic, **names)  # fmt: skip
        try:
            onnx.checker.check_model(tmp, full_check=True)
            if dynamic is not None:
                _name_batch(tmp)
            return
        except onnx.checker.ValidationError as err:
            if not optimize:
                raise
            log.info("The optimised ONNX graph is invalid (%s); exporting it unoptimised.",
                     _short(err))  # fmt: skip


def _name_batch(path: str) -> None:
    """Name the free batch axis ``batch``, as the TorchScript exporter does: the current
    one writes its own symbol (``s77``), which a reader of the file (Netron, an error
    naming the input's shape) shows."""
    import onnx

    proto = onnx.load(path)
    values = [v for v in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info)
              if v.type.HasField("tensor_type")]  # fmt: skip
    first = {v.type.tensor_type.shape.dim[0].dim_param for v in proto.graph.input
             if v.type.HasField("tensor_type") and v.type.tensor_type.shape.dim}  # fmt: skip
    used = {d.dim_param for v in values for d in v.type.tensor_type.shape.dim}
    if len(first) != 1 or "" in first or "batch" in used:
        return
    symbol = re.compile(rf"\b{re.escape(first.pop())}\b")
    for v in values:
        for d in v.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_param = symbol.sub("batch", d.dim_param)
    onnx.save(proto, path)


def _nest_var_positional(model: nn.Module, specs: tuple) -> tuple:
    """``specs`` laid out as torch.export reads ``dynamic_shapes``: the arguments a
    ``forward(self, a, *views)`` gathers into ``*views`` become one tuple entry."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return specs
    for i, p in enumerate(params):
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            return (*specs[:i], tuple(specs[i:]))
    return specs


def _batched(arg: Any) -> bool:
    return isinstance(arg, torch.Tensor) and arg.dim() > 0


def _legacy_any_batch(model: nn.Module, args: tuple, tmp: str,
                      names: dict[str, Any]) -> str | None:  # fmt: skip
    """The TorchScript exporter with named free batch axes, or the example's batch where
    the traced graph does not run at another batch size."""
    inputs = names["input_names"] or [f"input_{i}" for i in range(len(args))]
    with torch.no_grad(), attributes_kept(model):
        outputs = model(*args)
    count = len(outputs) if isinstance(outputs, (tuple, list)) else 1
    outs = names["output_names"] or [f"output_{i}" for i in range(count)]
    axes = {n: {0: "batch"} for n, a in zip(inputs, args, strict=False) if _batched(a)}
    axes.update({n: {0: "batch"} for n in outs})
    named = {"input_names": inputs, "output_names": outs}
    return _free_then_fixed(model, args, tmp, lambda t: _legacy(model, args, t, named, axes),
                            lambda t: _legacy(model, args, t, names))  # fmt: skip


def _legacy(model: nn.Module, args: tuple, tmp: str, names: dict[str, Any],
            axes: dict[str, Any] | None = None) -> None:  # fmt: skip
    with warnings.catch_warnings(), torch.no_grad(), attributes_kept(model):
        warnings.simplefilter("ignore")
        warnings.simplefilter("always", torch.jit.TracerWarning)  # read by _write
        torch.onnx.export(model, args, tmp, dynamo=False, opset_version=LEGACY_OPSET,
                          dynamic_axes=axes, **names)  # fmt: skip


def _short(err: Exception) -> str:
    """The line of ``err`` that says why: the current exporter's first line is its step
    ("Failed to convert ... step 3/3"), the cause is under its "Exception summary"."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip().splitlines()  # no terminal colours
    lines = [line.strip() for line in text if line.strip()]
    if "## Exception summary" in lines[:-1]:
        cause = lines[lines.index("## Exception summary") + 1]
        return re.sub(r"^<class '(?:[\w.]*\.)?(\w+)'>", r"\1", cause)[:300]
    return f"{type(err).__name__}: {lines[0][:200] if lines else ''}"
