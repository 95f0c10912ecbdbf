"""The Keras 3 side of the core workflow (:class:`filterprune.core.workflow.Frontend`)."""

from __future__ import annotations

import contextlib
import logging
import types
from collections.abc import Iterable
from typing import Any

import keras
import numpy as np

from ..core.analysis import Analysis
from ..core.config import Config
from ..core.finite import Probe
from ..core.params import FilterPruningParams
from ..core.weights import filters_first
from ..core.workflow import Captured, Frontend
from ..errors import AnalysisError, ConfigError
from ._compile import compile_like, uncompiled
from ._init_args import TFInitArgs, adapt_batchnorm
from ._inputs import ordered_infos, samples
from ._snapshot import restore, snapshot
from ._traced import say_traced_before
from .capture import capture, functional_of
from .controller import FilterPruningController, export_model, reset_traced_functions
from .distillation import KnowledgeDistillationController
from .fake_quant import FakeQuant, QuantizedWeights
from .finite import cut_probe
from .masks import is_masked
from .quantization import QuantizationController
from .shrink import plain_copy

__all__ = ["KerasFrontend"]

log = logging.getLogger("filterprune")


class KerasFrontend(Frontend):
    """Reads Functional and Sequential ``keras.Model`` s (TensorFlow backend)."""

    name = "TensorFlow"
    controllers = {"filter_pruning": FilterPruningController,
                   "quantization": QuantizationController,
                   "knowledge_distillation": KnowledgeDistillationController}  # fmt: skip

    def check(self, model: Any, config: Config, fresh: bool = True) -> None:
        if not isinstance(model, keras.Model):
            raise TypeError(
                "The model must be a keras.Model (Functional or Sequential). Received: a "
                f"{type(model).__name__}. Build or load the model (keras.models.load_model), "
                "and pass it."
            )
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(
                "filterprune.tensorflow needs the Keras 'tensorflow' backend. Received: "
                f"KERAS_BACKEND={keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow."
            )
        if not config.sample_sizes():
            raise ConfigError(
                "`input_info.sample_size` is required to read the model, e.g. "
                '{"input_info": {"sample_size": [1, 224, 224, 3]}} (NHWC or NCHW). '
                "Received: no input_info."
            )
        layers = model._flatten_layers(include_self=True, recursive=True)
        done = [layer.name for layer in layers if isinstance(layer, (FakeQuant, QuantizedWeights))]
        if done:
            raise AnalysisError(
                f"Layer {done[0]!r} is a quantizer of a stripped model (ctrl.strip()): its "
                "layers are frozen for deployment and cannot be compressed again. Pass the "
                "model as it was before create_compressed_model. The model is unchanged."
            )
        carried = [layer.name for layer in layers if is_masked(layer)]
        if carried and fresh:  # two controllers would drive its masks and quantizers (one
            # resumed on the model it compressed takes them over)
            raise AnalysisError(
                f"Layer {carried[0]!r} already carries filterprune masks or quantizers: the "
                "model was compressed before. Pass the model as it was before "
                "create_compressed_model, or, to prune a pruned model again, its stripped "
                "model (ctrl.strip()); to resume a run, build a fresh model and pass "
                "compression_state=ctrl.get_compression_state(). The model is unchanged."
            )
        say_traced_before(model)

    def capture(self, model: Any, config: Config) -> Captured:
        infos = [info for _, info in ordered_infos(functional_of(model), config)]
        captured = capture(model, [info["sample_size"] for info in infos])
        captured.sample = samples(functional_of(model), infos, captured.input_shapes)
        _say_unrebuildable(functional_of(model))
        return captured

    def read_weights(self, captured: Any, layers: Iterable[str]) -> dict[str, np.ndarray]:
        out = {}
        for layer in layers:
            info = captured.graph.layers[layer]
            variable = next(v for v in captured.refs[layer].layer.weights if v.name == info.weight)
            out[layer] = filters_first(np.asarray(variable.numpy()), info.params[info.weight][1])
        return out

    def read_params(self, captured: Any,
                    layers: Iterable[str]) -> dict[str, dict[str, np.ndarray]]:  # fmt: skip
        out = {}
        for layer in layers:
            ref, names = captured.refs.get(layer), captured.graph.layers[layer].params
            weights = ref.layer.weights if ref is not None else []
            out[layer] = {v.name: np.asarray(v.numpy()) for v in weights if v.name in names}
        return out

    def init_data(self, config: Config) -> Any:
        if config.has_extra_struct(TFInitArgs):
            return config.get_extra_struct(TFInitArgs)
        return None

    def registered_args(self, config: Config) -> Any:
        return self.init_data(config)  # TFInitArgs: the dataset and LeGR's search inputs

    def adapt_batchnorm(self, model: Any, data: Any, num_samples: int) -> None:
        adapt_batchnorm(model, data.dataset, num_samples, data.batch_size)

    def cut_probe(self, model: Any, captured: Captured, analysis: Analysis,
                  params: FilterPruningParams,
                  ) -> contextlib.AbstractContextManager[Probe | None]:  # fmt: skip
        return cut_probe(model, captured, analysis, params)

    def snapshot(self, model: Any) -> Any:
        return snapshot(model)

    def restore(self, model: Any, snapshot: Any) -> None:
        restore(model, snapshot)

    def finish(self, model: Any) -> None:
        reset_traced_functions(model)
        _say_on_save(model)

    def strip(self, ctrl: Any, shrink: bool = True) -> Any:
        with uncompiled(ctrl.model):  # compiled below, from the objects themselves
            model = ctrl.strip_model(ctrl.model, shrink=shrink)
            # never the training model itself (knowledge distillation alone rebuilds nothing)
            small = plain_copy(model) if model is ctrl.model else model
        compile_like(small, ctrl.model)
        _carry_states(ctrl.model, small)
        return small

    def export_model(self, ctrl: Any, save_path: str, *args: Any, **kwargs: Any) -> None:
        export_model(ctrl, save_path, *args, **kwargs)


def _carry_states(model: Any, small: Any) -> None:
    """The states of stateful recurrent layers (kept whole) go on in ``small``, as a
    layer's weights do: rebuilt from its config, it started its stream over."""
    twins = {layer.name: layer for layer in small._flatten_layers()}
    for layer in model._flatten_layers():
        twin = twins.get(layer.name)
        if not getattr(layer, "stateful", False) or twin is None:
            continue
        for state, other in zip(getattr(layer, "states", None) or (),
                                getattr(twin, "states", None) or (), strict=False):  # fmt: skip
            if state is not None and other is not None and tuple(state.shape) == tuple(
                    other.shape):  # fmt: skip
                other.assign(state)


def _say_on_save(model: Any) -> None:
    """Warn once when the training model is saved whole (``model.save``, a
    ``ModelCheckpoint``), and once when it is copied (``pickle``, ``copy.deepcopy``, both
    through ``__reduce_ex__``, which they read from the object): masks and quantizers are
    not in the file by design, so the result is the dense model. Bound to the model, so
    a copy says so for itself. (TensorBoard reads ``to_json``: not said.)"""
    for name, method in (("save", _save_saying), ("__reduce_ex__", _copy_saying)):
        if name not in model.__dict__:
            object.__setattr__(model, name, types.MethodType(method, model))


def _save_saying(model: Any, *args: Any, **kwargs: Any) -> Any:
    if not model.__dict__.get("_fp_save_said"):
        object.__setattr__(model, "_fp_save_said", True)
        log.warning(
            "model.save writes the compressed model's weights without its masks and "
            "quantizers: loading the file gives the dense model. To resume, save "
            "ctrl.get_compression_state() too and pass it to create_compressed_model; to "
            "deploy, use ctrl.export_model(...) or ctrl.strip().save(...)."
        )
    return type(model).save(model, *args, **kwargs)


def _copy_saying(model: Any, protocol: int) -> Any:
    if not model.__dict__.get("_fp_copy_said"):
        object.__setattr__(model, "_fp_copy_said", True)
        log.warning(
            "A copy of the compressed model (pickle, copy.deepcopy) is made from its saved "
            "file, which has no masks or quantizers: the copy computes as the dense model. "
            "Copy it with ctrl.strip(); to resume, save ctrl.get_compression_state().")
    return type(model).__reduce_ex__(model, protocol)


def _say_unrebuildable(model: Any) -> None:
    """Warn now about layers their own config cannot rebuild: ``strip()`` and
    ``export_model`` rebuild every layer, and would fail with Keras's error after training."""
    from ._rebuild import cannot_rebuild, one_by_one

    failed, advice = [], {}
    for layer in one_by_one(model):
        why = cannot_rebuild(layer)
        if why is None:
            continue
        failed.append(f"{layer.name} ({type(layer).__name__}: {why})")
        if any(w in why for w in ("register", "Cannot deserialize", "Could not interpret")):
            # a regularizer, an initializer or a constraint of the user's
            advice[0] = ("Register the classes named with "
                         "@keras.saving.register_keras_serializable()")  # fmt: skip
        if not type(layer).__module__.startswith("keras"):
            advice[1] = ("give layers of your own an __init__ taking **kwargs passed to "
                         "super().__init__(), and a get_config() that returns every argument "
                         "__init__ needs")  # fmt: skip
    if failed:
        said = "; ".join(advice[k] for k in sorted(advice)) or "See the causes"
        log.warning("strip() and export_model rebuild every layer from its config, and these "
                    "cannot be: %s. %s.", "; ".join(failed), said[0].upper() + said[1:])
