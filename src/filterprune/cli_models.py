"""MODEL arguments of the command line: which model a spec names, and loading it safely.

A spec is one of:

- ``torchvision:resnet50`` or a bare torchvision name (``resnet50``): random init;
- ``timm:NAME``: a timm model (needs ``pip install timm``), random init;
- ``package.module:factory`` or ``path/to/file.py:factory``: a callable returning an
  ``nn.Module`` (this imports and runs that code: it is the user's own);
- ``model.keras``: a Keras 3 file, read with ``safe_mode`` (no Lambda code);
- ``model.onnx``: an ONNX file (``analyze`` only);
- ``model.pt``/``.pth``: a pickled full model, read only with ``--trusted``, because
  unpickling runs code stored in the file.

Weights files (``--weights``) and checkpoints are read with ``torch.load(...,
weights_only=True)``: tensors and plain containers only, never code.

Only this module's torch functions import torch, so ``analyze model.keras`` never does.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cli_common import UsageError

__all__ = ["ModelSpec", "parse_spec", "load_torch_model", "load_weights", "torch_load",
           "load_keras_model", "check_torch_model"]  # fmt: skip

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".bin")
_TRUST_HINT = ("Unpickling runs code stored in the file. If you trust the file, add --trusted; "
               "otherwise save a state_dict (torch.save(model.state_dict(), path)) and pass "
               "the architecture as MODEL with --weights path.")  # fmt: skip


@dataclass(frozen=True)
class ModelSpec:
    """A parsed MODEL argument.

    Attributes:
        kind: ``torchvision``, ``timm``, ``factory``, ``pickle``, ``keras`` or ``onnx``.
        text: The argument as given.
        name: The model name, ``module:factory`` or file path.
    """

    kind: str
    text: str
    name: str

    @property
    def framework(self) -> str:
        return {"keras": "keras", "onnx": "onnx"}.get(self.kind, "torch")


_SAVED_MODEL = ("a TensorFlow SavedModel, whose layers cannot be cut. Give the .keras file "
                "(model.save('m.keras')), or convert it to ONNX (tf2onnx) and use convert.")
# model files the commands cannot read, and the way in
_FOREIGN = {
    ".pt2": "a torch.export program, whose graph is fixed and cannot be cut. Give the "
            "nn.Module (module:factory, with --weights for its state_dict).",
    ".h5": "a Keras 2 HDF5 file. Load it with Keras 3 and save it as .keras.",
    ".hdf5": "a Keras 2 HDF5 file. Load it with Keras 3 and save it as .keras.",
    ".pb": _SAVED_MODEL,
    ".tflite": "a TensorFlow Lite file, whose layers cannot be cut. Give the model it was "
               "made from (.keras).",
    ".xml": "an OpenVINO IR, whose layers cannot be cut here. Give the model it was made "
            "from, or zero filters in an ONNX file and `filterprune convert --to openvino`.",
}


def parse_spec(text: str) -> ModelSpec:
    """Classify a MODEL argument (nothing is loaded or imported).

    Raises:
        UsageError: For an empty spec or a model file that does not exist.
    """
    if not text.strip():
        raise UsageError("MODEL must name a model, e.g. torchvision:resnet50. Received: ''.")
    lower = text.lower()
    path = Path(text)
    kind = next((k for suffix, k in _FOREIGN.items() if lower.endswith(suffix)), None)
    if kind is None and path.is_dir() and (path / "saved_model.pb").is_file():
        kind = _SAVED_MODEL
    if kind is not None and (path.exists() or ":" not in text):
        raise UsageError(f"MODEL {text} is {kind}")
    for suffix, kind in ((".keras", "keras"), (".onnx", "onnx"), *[(s, "pickle")
                                                                  for s in PICKLE_SUFFIXES]):
        if lower.endswith(suffix):
            if not Path(text).is_file():
                raise UsageError(f"MODEL file not found: {text}. Check the path.")
            return ModelSpec(kind, text, text)
    for prefix in ("torchvision", "timm"):
        if lower.startswith(prefix + ":"):
            return ModelSpec(prefix, text, text.split(":", 1)[1])
    if ":" in text:
        return ModelSpec("factory", text, text)
    return ModelSpec("torchvision", text, text)


# -- torch models --------------------------------------------------------------------------
_KIND_NAMES = {"onnx": "an ONNX", "keras": "a Keras"}

def load_torch_model(spec: ModelSpec, *, trusted: bool = False, num_classes: int | None = None,
                     built: Any = None) -> Any:  # fmt: skip
    """Build the ``nn.Module`` a torch spec names, checked by :func:`check_torch_model`.

    Args:
        num_classes: For torchvision and timm names: the classifier's size (default:
            the model's own). Ignored by factories and pickles.
        built: What the spec's factory already returned (:func:`build_factory`).
    """
    builders = {"torchvision": _torchvision, "timm": _timm, "factory": _factory,
                "pickle": lambda s, n: _pickled(s, trusted)}  # fmt: skip
    if spec.kind not in builders:
        hint = " (for an ONNX file's layers and zero filters: `filterprune convert " \
               f"{spec.text} -o OUT --report`)" if spec.kind == "onnx" else ""  # fmt: skip
        raise UsageError(f"MODEL {spec.text} is {_KIND_NAMES.get(spec.kind, spec.kind)} file; "
                         "this command needs a PyTorch model (torchvision:NAME, timm:NAME, "
                         f"module:factory).{hint}")  # fmt: skip
    model = built if built is not None else builders[spec.kind](spec, num_classes)
    check_torch_model(model, spec.text)
    return model


def build_factory(spec: ModelSpec) -> Any:
    """What a ``module:factory`` or ``file.py:factory`` spec returns, unchecked."""
    return _factory(spec, None)


def is_keras_model(obj: Any) -> bool:
    """Whether ``obj`` is a Keras model (without importing Keras for a torch one)."""
    keras = sys.modules.get("keras")
    return keras is not None and isinstance(obj, keras.Model)


def _torchvision(spec: ModelSpec, num_classes: int | None) -> Any:
    import torchvision

    names = torchvision.models.list_models()
    if spec.name not in names:
        close = [n for n in names if spec.name.lower()[:4] in n] or names[:8]
        raise UsageError(
            f"MODEL must be a torchvision model name or 'module:factory'. Received: "
            f"{spec.text!r}. Known torchvision names include: {', '.join(close[:8])}, ...")
    extra = {"num_classes": num_classes} if num_classes else {}
    builder = torchvision.models.get_model_builder(spec.name)
    if "weights_backbone" in inspect.signature(builder).parameters:
        extra["weights_backbone"] = None  # segmenters and detectors: nothing downloads
    return builder(weights=None, **extra)


def _timm(spec: ModelSpec, num_classes: int | None) -> Any:
    try:
        timm = importlib.import_module("timm")
    except ImportError:
        raise UsageError(f"MODEL {spec.text} needs the timm package, which is not installed. "
                         "Install it with `pip install timm`.") from None
    if spec.name not in timm.list_models():
        close = timm.list_models(f"*{spec.name[:4]}*")[:8]
        raise UsageError(f"MODEL must name a timm model. Received: {spec.text!r}. "
                         f"Similar timm names: {', '.join(close) or 'none'}.")
    extra = {"num_classes": num_classes} if num_classes else {}
    return timm.create_model(spec.name, pretrained=False, **extra)


def _factory(spec: ModelSpec, num_classes: int | None) -> Any:
    source, _, attr = spec.text.rpartition(":")
    if not source or not attr:
        raise UsageError(f"MODEL must be 'module:factory' with both parts. Received: "
                         f"{spec.text!r}.")
    module = _import(source, spec.text)
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise UsageError(f"MODEL {spec.text}: module {source!r} has no callable {attr!r}. "
                         "Name a function or class that returns an nn.Module.")
    try:
        return factory()
    except Exception as err:  # noqa: BLE001 - the user's code: report it in one sentence
        raise UsageError(f"MODEL {spec.text}: calling {attr}() failed with "
                         f"{type(err).__name__}: {err}. The factory must take no "
                         "arguments and return an nn.Module.") from err


def _import(source: str, text: str) -> Any:
    """The module ``source`` names: a dotted module name or a ``.py`` file path."""
    try:
        if source.endswith(".py"):
            path = Path(source)
            if not path.is_file():
                raise UsageError(f"MODEL {text}: no such file {source}.")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules.setdefault(path.stem, module)
            spec.loader.exec_module(module)
            return module
        return importlib.import_module(source)
    except UsageError:
        raise
    except ModuleNotFoundError as err:
        raise UsageError(f"MODEL {text}: cannot import {source!r} ({err}). Put its folder on "
                         "PYTHONPATH, install its package, or give a .py file path.") from err
    except Exception as err:  # noqa: BLE001 - importing user code may fail in any way
        raise UsageError(f"MODEL {text}: importing {source!r} failed with "
                         f"{type(err).__name__}: {err}.") from err


def _pickled(spec: ModelSpec, trusted: bool) -> Any:
    if not trusted:
        data = torch_load(spec.text, trusted=False, what="MODEL")
        kind = "a state_dict" if isinstance(data, dict) else f"a {type(data).__name__}"
        raise UsageError(
            f"MODEL {spec.text} holds {kind}, not a model. Give the architecture as MODEL "
            f"(torchvision:NAME, module:factory) and this file as --weights {spec.text}.")
    return torch_load(spec.text, trusted=True, what="MODEL")


def check_torch_model(model: Any, what: str) -> None:
    """Refuse what the torch commands cannot read, naming the cause and the fix.

    Raises:
        UsageError: Not an ``nn.Module``; parameters on the meta device; parameters that
            are not float32 (fp16, bf16, float64).
    """
    import torch
    from torch import nn

    if not isinstance(model, nn.Module):
        raise UsageError(f"MODEL {what} must give a torch.nn.Module. Received: an object of "
                         f"type {type(model).__name__}.")
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.is_meta for t in tensors):
        raise UsageError(
            f"MODEL {what} has parameters on the meta device (shapes without data). "
            "Materialise them in the factory (model.to_empty(device='cpu'), then load "
            "weights) before handing the model over.")
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in model.parameters()
                     if t.is_floating_point() and t.dtype != torch.float32})  # fmt: skip
    if dtypes:
        raise UsageError(
            f"MODEL {what} has {'/'.join(dtypes)} parameters; filterprune reads float32 "
            "models (the dtype is the problem, not the input size). Return model.float() "
            "from the factory; mixed precision is applied during training on a GPU.")


# -- weights -------------------------------------------------------------------------------
def torch_load(path: str, *, trusted: bool = False, what: str = "--weights") -> Any:
    """``torch.load`` on CPU; ``weights_only`` unless ``trusted``. Errors name the file.

    Raises:
        UsageError: Missing, truncated or foreign file, or one that needs unpickling
            code without ``trusted``.
    """
    import pickle

    import torch

    file = Path(path)
    if not file.is_file():
        raise UsageError(f"{what} file not found: {path}. Check the path.")
    try:
        return torch.load(file, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as err:
        text = str(err).lower()
        if not trusted and "weights_only" in text.replace(" ", "_") and (
                "global" in text or "unsupported operand" not in text):  # fmt: skip
            # (a class to unpickle; "Unsupported operand" is a file of other bytes)
            raise UsageError(f"{what} {path} holds objects beyond tensors and plain "
                             f"containers. {_TRUST_HINT}") from None
        why = next((line.strip() for line in str(err).splitlines()
                    if "unsupported operand" in line.lower()), str(err))  # fmt: skip
        raise UsageError(f"{what} {path} could not be read: it is truncated or not a "
                         f"torch.save file ({why}).") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        if _torchscript(file):
            raise UsageError(f"{what} {path} is a TorchScript file (torch.jit.save), whose "
                             "layers cannot be cut. Give the nn.Module (module:factory, with "
                             "--weights for its state_dict).") from None
        raise UsageError(
            f"{what} {path} could not be read: it is truncated or not a torch.save file "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}).") from None
    except ModuleNotFoundError as err:  # unpickling a class from a module not on the path
        raise UsageError(f"{what} {path} needs the module {err.name!r} that defines its "
                         "classes. Run from the folder that holds it, or put that folder on "
                         "PYTHONPATH.") from None


def _torchscript(file: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(file) as z:
            return any("/code/" in n or n.endswith("/constants.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _state_dict_of(data: Any, path: str) -> dict[str, Any]:
    import torch
    from torch import nn

    if isinstance(data, nn.Module):
        return data.state_dict()
    if isinstance(data, dict):
        if data and all(isinstance(v, torch.Tensor) for v in data.values()):
            return data
        for key in ("state_dict", "model_state_dict", "model"):
            inner = data.get(key)
            if isinstance(inner, (dict, nn.Module)):
                return _state_dict_of(inner, path)
    got = f"keys {sorted(map(str, data))[:8]}" if isinstance(data, dict) else type(data).__name__
    raise UsageError(f"--weights {path} must hold a state_dict (parameter name -> tensor), "
                     f"or a dict with one under 'state_dict'. Received: {got}.")


def _masks_applied(state: dict[str, Any], own: dict[str, Any], path: str) -> dict[str, Any]:
    """A compressed model's state_dict (``model.state_dict()`` after
    create_compressed_model) with its masks applied as ``strip`` bakes them: a
    ``<param>_mask`` zeroes the pruned entries of ``<param>`` (stored unmasked), a
    ``channel_mask`` a norm's pruned channels (statistics 0 and 1); masks and quantizer
    ranges then go."""
    masks = [k for k in state if k.endswith("_mask") and k not in own]
    if not masks:
        return state
    out = dict(state)
    for key in masks:
        mask = out.pop(key) != 0
        owner, _, name = key[: -len("_mask")].rpartition(".")
        names = ("weight", "bias", "running_mean") if name == "channel" else (name,)
        for tensor in (f"{owner}.{n}" if owner else n for n in names):
            if tensor in out:
                out[tensor] = out[tensor].masked_fill(~mask, 0)
        var = f"{owner}.running_var" if owner else "running_var"
        if name == "channel" and var in out:
            out[var] = out[var].masked_fill(~mask, 1)
    quantizers = [k for k in out if k not in own and "_quantizer." in k]
    for key in quantizers:
        del out[key]
    print(f"--weights {path}: a compressed model's state_dict; its {len(masks)} masks applied "
          "(pruned filters read as zero)" + (", its quantizer ranges left out" if quantizers
                                             else ""))  # fmt: skip
    return out


def load_weights(model: Any, path: str, *, trusted: bool = False) -> None:
    """Load the state_dict in ``path`` into ``model``, naming what does not fit."""
    state = _state_dict_of(torch_load(path, trusted=trusted), path)
    own = model.state_dict()
    if all(k.startswith("module.") for k in state) and not any(k.startswith("module.")
                                                               for k in own):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from DDP
    state = _masks_applied(state, own, path)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if shapes and not missing and not unexpected and all(
            len(own[k].shape) == len(state[k].shape)
            and all(a <= b for a, b in zip(state[k].shape, own[k].shape, strict=True))
            for k in shapes):  # fmt: skip
        from .torch import resize_to_state_dict

        resize_to_state_dict(model, state)  # a pruned model's (strip, prune -o)
        print(f"--weights {path}: {len(shapes)} tensors narrower than MODEL's; read as a "
              "pruned model (resize_to_state_dict)")
        return
    if missing or unexpected or shapes:
        parts = [f"{label} {keys[:4]}{' ...' if len(keys) > 4 else ''}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("other shape", shapes))
                 if keys]  # fmt: skip
        raise UsageError(f"--weights {path} does not fit the model: {'; '.join(parts)}. "
                         "Check that MODEL builds the architecture the weights were saved "
                         "from.")
    model.load_state_dict(state)


# -- Keras ---------------------------------------------------------------------------------
def _custom_hint(path: str) -> str:
    """What to do when a ``.keras`` file names classes or functions of the user's own code,
    which this process has not imported (Keras' own message names neither)."""
    import json
    import zipfile

    found: list[str] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            module = obj.get("module") or ""
            if obj.get("class_name") == "function" and ">" in str(obj.get("config")):
                found.append(str(obj["config"]))  # a registered function: package>name
            elif "class_name" in obj and module and module.split(".")[0] not in (
                    "keras", "builtins", "tensorflow"):  # fmt: skip
                found.append(f"{obj.get('registered_name') or obj['class_name']} from {module}")
            for value in obj.values():
                walk(value)
        elif isinstance(obj, list):
            for value in obj:
                walk(value)

    try:
        with zipfile.ZipFile(path) as archive:
            walk(json.loads(archive.read("config.json")))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return ""
    if not found:
        return ""
    names = ", ".join(dict.fromkeys(map(str, found)))
    return (f" It holds objects of your own code ({names}), which Keras builds only once "
            "their module is imported: give MODEL as file.py:factory (or module:factory) "
            "whose factory imports them and returns keras.saving.load_model(...).")


def load_keras_model(spec: ModelSpec, trusted: bool = False) -> Any:
    """Read a ``.keras`` file; Lambda layers (code) only with ``trusted``."""
    try:
        import keras
    except ImportError:
        raise UsageError(f"MODEL {spec.text} is a Keras file; reading it needs TensorFlow "
                         "and Keras: pip install tensorflow-cpu.") from None
    if spec.text.endswith(".keras") and Path(spec.text).is_file() \
            and not zipfile.is_zipfile(spec.text):  # Keras says "File not found" for it
        raise UsageError(f"MODEL {spec.text} is not a .keras archive (a zip file): it is "
                         "truncated or of another format. Save the model again with "
                         "model.save('name.keras').")  # fmt: skip
    try:
        return keras.saving.load_model(spec.text, compile=False, safe_mode=not trusted)
    except Exception as err:  # noqa: BLE001 - Keras raises many types for bad files
        hint = f" {_TRUST_HINT}" if "safe_mode" in str(err) else _custom_hint(spec.text)
        raise UsageError(f"MODEL {spec.text} could not be read as a Keras model "
                         f"({type(err).__name__}: {str(err).splitlines()[0]}).{hint}") from None
