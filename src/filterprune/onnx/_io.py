"""Reading ONNX files with clear errors, and writing them atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import onnx

from .._atomic import atomic_write  # re-exported: older imports of onnx._io keep working
from ..errors import ConversionError

__all__ = ["load_model", "save_model", "atomic_write"]

_LIMIT = 2**31 - 1  # protobuf's limit: larger models keep their weights in external data


def load_model(model: Any) -> onnx.ModelProto:
    """An ``onnx.ModelProto`` from a path, bytes or a ModelProto (which is copied).

    Raises:
        ConversionError: The file is missing or is not an ONNX model.
        TypeError: ``model`` is none of the accepted types.
    """
    if isinstance(model, onnx.ModelProto):
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return _checked(out, "the given ModelProto")
    if isinstance(model, (bytes, bytearray)):
        return _checked(_parse(bytes(model), "the given bytes"), "the given bytes")
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            "`model` must be a path, bytes or an onnx.ModelProto. "
            f"Received: model of type {type(model).__name__}."
        )
    path = Path(model)
    if not path.is_file():
        raise ConversionError(f"No such ONNX file: {str(path)!r}.")
    if path.suffix.lower() == ".xml":  # OpenVINO IR: it is what convert writes
        raise ConversionError(
            f"{str(path)!r} is an OpenVINO IR; this reads ONNX. Give the .onnx file it was "
            "converted from (ctrl.export_model writes one)."
        )
    try:
        proto = onnx.load(str(path))
    except Exception as err:  # noqa: BLE001 - protobuf raises several types for bad bytes
        if "should be stored in" in str(err):  # parsed; a file of its external data is missing
            raise ConversionError(
                f"{str(path)!r} keeps weights in external data files, and one is missing "
                f"({err}). Put the data files beside the model, as when it was saved."
            ) from err
        if "External data" in str(err):  # parsed; a data file is shorter than it says
            raise ConversionError(
                f"{str(path)!r} keeps weights in external data files, and one is shorter than "
                f"the model says ({err}): it was cut off in a copy or download. Copy the data "
                "files beside the model again."
            ) from err
        raise ConversionError(
            f"{str(path)!r} is not an ONNX model: it could not be parsed ({err}). "
            "Expected a file written by onnx.save or torch.onnx.export."
        ) from err
    return _checked(proto, repr(str(path)))


def _parse(data: bytes, what: str) -> onnx.ModelProto:
    try:
        return onnx.load_from_string(data)
    except Exception as err:  # noqa: BLE001 - protobuf raises several types for bad bytes
        raise ConversionError(f"{what} is not an ONNX model: {err}.") from err


def _checked(proto: onnx.ModelProto, what: str) -> onnx.ModelProto:
    if not proto.graph.node:
        raise ConversionError(
            f"{what} is not an ONNX model with a graph: it has no nodes "
            f"(ir_version={proto.ir_version}, {len(proto.opset_import)} opset imports)."
        )
    try:
        onnx.checker.check_model(proto)
    except Exception as err:  # noqa: BLE001 - the checker's own error types vary by version
        raise ConversionError(f"{what} is not a valid ONNX model: {err}") from err
    return proto


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write ``model`` atomically (temp file + rename)."""
    if model.ByteSize() > _LIMIT:
        raise ConversionError(
            f"The model is {model.ByteSize() / 2**30:.1f} GiB; models over 2 GiB need external "
            "weight files, which this release does not write."
        )
    atomic_write(path, lambda tmp: onnx.save(model, tmp), suffix=".onnx")
