"""One workflow for every frontend: ``create_compressed_model`` and its dry run.

A frontend (PyTorch, Keras) implements the small :class:`Frontend` contract: read its
model into the core graph, read weights, and name one controller class per algorithm.
Everything else, from the config to the composite controller, happens here once.

Example (a frontend over a hand-built graph; see ``tests/core/test_compression_workflow.py``)::

    class DictFrontend(Frontend):
        name = "dict"
        controllers = {"filter_pruning": DictPruningController}
        def capture(self, model, config):
            return Captured(graph=model.graph, sample=None)
        def read_weights(self, captured, layers):
            return {name: model.weights[name] for name in layers}

    ctrl, model = create_compressed_model(DictFrontend(), model, config)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError
from ._validation import did_you_mean
from .analysis import Analysis, analyze
from .compression import CompositeCompressionController, CompressionController
from .config import Config
from .controller import PruningControllerBase, analysis_options, pruning_params
from .finite import Probe, hold_nonfinite, hold_unstripped
from .params import ALGORITHMS, section_schema
from .schema import config_schema
from .scopes import check_unmatched
from .signals import unsupported

__all__ = ["Captured", "Frontend", "create_compressed_model", "dry_run", "DryPruningController"]

log = logging.getLogger("filterprune")


@dataclass
class Captured:
    """A model read into the core graph, with the links back to it.

    Attributes:
        graph: The core graph.
        sample: The example inputs the model was read with (frontend tensors).
        refs: Core layer name -> the frontend's object for it (module, Keras layer).
        extra: What else a frontend keeps from capture (its own traced graph, ...).
    """

    graph: Any
    sample: Any = None
    refs: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class Frontend:
    """What a framework provides to the workflow.

    Attributes:
        name: Shown in messages ("PyTorch", "TensorFlow").
        controllers: Algorithm name -> controller class, built as
            ``cls(model, params, captured, frontend)``; ``params`` are the algorithm's
            resolved settings (``<Params>.from_config(config)``).
    """

    name: ClassVar[str] = "frontend"
    controllers: ClassVar[dict[str, type]] = {}

    def check(self, model: Any, config: Config, fresh: bool = True) -> None:
        """Refuse a model or config this frontend cannot run (raise our errors); ``fresh``:
        compression starts on it (not resumed, not only analysed)."""

    def capture(self, model: Any, config: Config) -> Captured:
        """Read ``model`` into the core graph on ``config``'s ``input_info``."""
        raise NotImplementedError

    def read_weights(self, captured: Captured, layers: Iterable[str]) -> dict[str, np.ndarray]:
        """Each layer's main weight as numpy, filters (output channels) on axis 0."""
        raise NotImplementedError

    def read_params(self, captured: Captured,
                    layers: Iterable[str]) -> dict[str, dict[str, np.ndarray]]:  # fmt: skip
        """Each layer's parameters as numpy, as stored, by their names in
        ``graph.layers[layer].params`` (what ``coupled_L2`` scores).

        Raises:
            ConfigError: Where the frontend cannot read them (the default).
        """
        raise unsupported("coupled_L2", f"the {self.name} frontend")

    def init_data(self, config: Config) -> Any:
        """The batches registered by ``register_default_init_args``, or ``None``."""
        return None

    def registered_args(self, config: Config) -> Any:
        """Everything ``register_default_init_args`` registered (the frontend's own record:
        validation data and functions for the LeGR search, ...), or ``None``."""
        return None

    def adapt_batchnorm(self, model: Any, data: Any, num_samples: int) -> None:
        """Re-estimate BatchNorm statistics on ``num_samples`` samples of ``data``."""

    def cut_probe(self, model: Any, captured: Captured, analysis: Analysis,
                  params: Any) -> contextlib.AbstractContextManager[Probe | None]:  # fmt: skip
        """Yield ``finite(groups)``: whether ``model``'s output and gradients stay finite on
        a random input with :func:`~filterprune.core.finite.probe_cut` of ``groups`` masked
        (``params``: the pruning settings); ``None`` where the frontend cannot run the
        model (the default) or the uncut model is not finite. On exit ``model`` is as it
        was (``dry_run`` relies on it)."""
        return contextlib.nullcontext(None)

    def strip_probe(self, model: Any, captured: Captured, analysis: Analysis,
                    params: Any) -> contextlib.AbstractContextManager[Probe | None]:  # fmt: skip
        """Yield ``same(groups)``: whether a copy of ``model`` stripped of
        :func:`~filterprune.core.finite.probe_cut` of ``groups`` computes what ``model``
        with those masks computes, for a capture that cannot see sizes read in forward;
        ``None`` where there is no need or no way (the default). On exit ``model`` is as
        it was."""
        return contextlib.nullcontext(None)

    def finish(self, model: Any) -> None:
        """Last step before the model is handed back (drop stale traced functions, ...)."""

    def snapshot(self, model: Any) -> Any:
        """What :meth:`restore` needs to put ``model`` back as it is now."""
        return None

    def restore(self, model: Any, snapshot: Any) -> None:
        """Undo what a failed ``create_compressed_model`` did to ``model`` (masks,
        quantizers, hooks, statistics), from :meth:`snapshot`'s result."""

    def strip(self, ctrl: CompositeCompressionController, **kwargs: Any) -> Any:
        """The deployable model of a composite controller."""
        raise NotImplementedError

    def export_model(self, ctrl: CompositeCompressionController, save_path: str,
                     *args: Any, **kwargs: Any) -> None:  # fmt: skip
        """Write a composite controller's model to ``save_path``."""
        raise NotImplementedError


def algorithm_params(config: Config, name: str, frontend: str) -> Any:
    """The resolved settings of algorithm ``name`` in ``config``."""
    if name == "filter_pruning":
        return pruning_params(config, frontend)
    return ALGORITHMS[name].from_config(config)


# Top-level keys of NNCF configs that change nothing here, and why.
_NOT_APPLIED = {
    "target_device": "quantizers follow the `quantization` entry's settings, whatever the "
                     "device",
    "hw_config_type": "quantizers follow the `quantization` entry's settings, whatever the "
                      "device",
    "log_dir": "nothing is logged to files; statistics() gives the numbers",
    "disable_shape_matching": "the model is captured from its code, not matched by shapes",
    "export_to_onnx_standard_ops": "ONNX files always use standard QuantizeLinear/"
                                   "DequantizeLinear",
    "compression_lr_multiplier": "compression adds no trainable parameters to scale (in a "
                                 "`compression` entry the key is refused)",
}  # fmt: skip


def _others_initializer_keys(algorithm: Any, initializer: Any) -> dict[str, str]:
    """Keys of ``initializer`` that only other algorithms read (entries share NNCF's one
    initializer schema; ``range`` in a ``filter_pruning`` entry, say), with the entry
    that reads each."""
    cls = ALGORITHMS.get(algorithm) if isinstance(algorithm, str) else None
    if cls is None or not isinstance(initializer, Mapping):
        return {}

    def keys(algo) -> dict:
        return section_schema(algo())["properties"].get("initializer", {}).get("properties", {})

    readers = {key: name for name, other in ALGORITHMS.items() if other is not cls
               for key in keys(other)}  # fmt: skip
    return {key: readers[key] for key in initializer if key in readers and key not in keys(cls)}


def _say_ignored(config: Config) -> None:
    """Warn about keys kept for NNCF configs that change nothing here, and about an
    unknown top-level key that is a near miss of a known one (the top level accepts
    training scripts' own keys, so it is not refused)."""
    for key, why in _NOT_APPLIED.items():
        if key in config and not (key == "target_device" and config[key] == "ANY"):
            log.warning("`%s` is accepted for NNCF configs but not applied: %s.", key, why)
    known = set(config_schema(with_algorithms=False)["properties"]) | {"accuracy_aware_training"}
    for key in config:
        hint = "" if key in known else did_you_mean(key, known, cutoff=0.9)
        if hint:  # only near misses: other keys are the training script's own
            log.warning("Unknown top-level key `%s` is not read.%s", key, hint)
    for i, entry in enumerate(config.algorithms()):
        if entry.get("algorithm") == "filter_pruning" \
                and (entry.get("params") or {}).get("prune_batch_norms") is False:  # fmt: skip
            log.warning("`compression[%d].params.prune_batch_norms: false` changes nothing "
                        "the model computes: the layers reading a pruned channel read it "
                        "as zero, and the strip cuts its BatchNorm channel either way.", i)
        if entry.get("algorithm") == "knowledge_distillation" and entry.get("type") == "mse" \
                and "temperature" in entry:  # fmt: skip
            log.warning("`compression[%d].temperature` is not read by type 'mse': it softens "
                        "the 'softmax' type only.", i)
        initializer = entry.get("initializer")
        for key, reader in _others_initializer_keys(entry.get("algorithm"), initializer).items():
            log.warning("`compression[%d].initializer.%s` is not read by `%s`: move it to the "
                        "`%s` entry.", i, key, entry.get("algorithm"), reader)
        if isinstance(initializer, Mapping) and "precision" in initializer:
            log.warning(
                "`compression[%d].initializer.precision` is accepted for NNCF configs but not "
                "applied: there is no mixed-precision search, and every quantizer takes "
                "`weights.bits` / `activations.bits` (bitwidth_per_scope included).", i)
        params = entry.get("params")
        if entry.get("algorithm") == "filter_pruning" and isinstance(params, Mapping) and \
                params.get("interlayer_ranking_type", "unweighted_ranking") != "learned_ranking":
            for key in ("legr_params", "save_ranking_coeffs_path", "load_ranking_coeffs_path"):
                if key in params:
                    log.warning("`compression[%d].params.%s` is not applied: it needs "
                                "`params.interlayer_ranking_type` 'learned_ranking'.", i, key)


def _check_algorithms(frontend: Frontend, config: Config) -> list[str]:
    names = [a["algorithm"] for a in config.algorithms()]
    if not names:
        raise ConfigError(
            "`compression` must name at least one algorithm, e.g. "
            '{"algorithm": "filter_pruning"}. Received: no compression section.'
        )
    for name in names:
        if name not in frontend.controllers:
            raise ConfigError(
                f"`compression` algorithm {name!r} is not available in the {frontend.name} "
                f"frontend. Available: {sorted(frontend.controllers)}."
            )
    return names


def check_nncf_keywords(given: Mapping[str, Any], accepted: Mapping[str, str],
                        function: str = "create_compressed_model",
                        own: Sequence[str] = ("compression_state",)) -> None:  # fmt: skip
    """Refuse keywords of ``function`` other than its ``own`` and NNCF's (``accepted``:
    name -> what this library does instead), and warn where one given is not used. A
    misspelt ``compression_state`` used to start a fresh run without a word, and a
    misspelt ``train_steps_fn`` left LeGR's candidates untrained.

    Raises:
        TypeError: Naming the keyword, and the closest one accepted.
    """
    names = [*own, *accepted]
    for key, value in given.items():
        if key not in accepted:
            raise TypeError(f"{function}() got an unexpected keyword argument "
                            f"{key!r}.{did_you_mean(key, names)} It takes "
                            f"{', '.join(names)}.")  # fmt: skip
        if value is not None and accepted[key]:
            log.warning("%s: `%s` is not used: %s.", function, key, accepted[key])


def nncf_config_argument(config: Any, given: dict[str, Any]) -> Any:
    """``config``, or NNCF's keyword for it (``nncf_config=``, as NNCF's samples pass it),
    taken out of ``given``.

    Raises:
        TypeError: If neither is given.
    """
    if config is None:
        config = given.pop("nncf_config", None)
    if config is None:
        raise TypeError("register_default_init_args() needs the config: pass it first (or as "
                        "`config=`, or NNCF's `nncf_config=`).")
    return config


def create_compressed_model(frontend: Frontend, model: Any, config: Config | Mapping[str, Any],
                            compression_state: dict[str, Any] | None = None,
                            ) -> tuple[CompressionController, Any]:  # fmt: skip
    """Wrap ``model`` with the algorithms of ``config`` (the frontends' entry point).

    Steps: validate the config; read the model into the core graph once; check that
    every scope pattern matches a layer (:func:`~filterprune.core.scopes.check_unmatched`);
    build one controller per algorithm (a composite when there are several); resume from
    ``compression_state`` (checked first: :mod:`filterprune.core.state`) or put the
    initial compression in place; on a fresh run, re-estimate BatchNorm statistics if
    masks changed and let each algorithm initialise from the registered data (quantizer
    ranges).

    Returns:
        ``(controller, model)``.

    Raises:
        ConfigError: For an invalid config, a scope that matches no layer (unless
            ``validate_scopes`` is false), an algorithm the frontend lacks, or a state that
            does not fit (the message names the key and what differs).
    """
    if isinstance(config, Config):
        config.validate()  # the dict may have been edited since from_dict/from_json
    else:
        config = Config.from_dict(config)
    names = _check_algorithms(frontend, config)
    _say_ignored(config)
    settings = [algorithm_params(config, n, frontend.name) for n in names]
    frontend.check(model, config, fresh=compression_state is None)
    data = frontend.init_data(config) if compression_state is None else None
    if compression_state is None:
        paths = {algo["algorithm"]: path for path, algo in config.algorithms_with_paths()}
        for name, params in zip(names, settings, strict=True):
            check = getattr(frontend.controllers[name], "check_data", None)
            if check is not None:  # refuse before the model is touched
                check(params, data, paths.get(name, ""))
    captured = frontend.capture(model, config)
    check_unmatched(config, captured.graph.scope_names(), captured.graph.scope_types)
    before = frontend.snapshot(model)
    try:
        ctrl = _start(frontend, model, names, settings, captured, config, compression_state)
    except BaseException:
        frontend.restore(model, before)  # the user's model comes back as it was given
        raise
    frontend.finish(model)
    return ctrl, model


def _start(frontend: Frontend, model: Any, names: list[str], settings: list[Any],
           captured: Captured, config: Config, compression_state: dict[str, Any] | None,
           ) -> CompressionController:  # fmt: skip
    """Build the controllers and put the initial (or resumed) compression on ``model``."""
    # a teacher is the model as given: its copy is taken before any quantizer is put in
    built = {}
    for i in sorted(range(len(names)), key=lambda i: names[i] != "knowledge_distillation"):
        built[i] = frontend.controllers[names[i]](model, settings[i], captured, frontend)
    children = [built[i] for i in range(len(names))]
    # one algorithm is its own controller where it strips and exports on its own; a user's
    # algorithm with ``strip_model`` only goes in the composite, which the frontend strips
    alone = len(children) == 1 and (callable(getattr(children[0], "strip", None))
                                    or type(frontend).strip is Frontend.strip)  # fmt: skip
    ctrl = children[0] if alone else CompositeCompressionController(children, frontend)
    data, args = frontend.init_data(config), frontend.registered_args(config)
    for child in children:
        child.init_data = data  # what BatchNorm re-estimation after a mask change reads
        child.registered_args = args  # what a LeGR search reads
    changed = ctrl.start(compression_state)
    if compression_state is None:
        if changed and data is not None:
            frontend.adapt_batchnorm(model, data, ctrl.bn_adaptation_samples)
        ctrl.initialize(data)
    return ctrl


class DryPruningController(PruningControllerBase):
    """Filter pruning that decides plans but puts nothing on a model (``analyze``)."""

    def __init__(self, params: Any, analysis: Analysis, weights: dict[str, np.ndarray],
                 read_params: Callable[[list[str]], dict] | None = None) -> None:  # fmt: skip
        self._weights_now = weights
        self._read_params = read_params
        super().__init__(params, analysis)

    def _weights(self) -> dict[str, np.ndarray]:
        return self._weights_now

    def _params(self, layers: list[str]) -> dict[str, dict[str, np.ndarray]]:
        if self._read_params is None:
            return super()._params(layers)
        return self._read_params(layers)


def dry_run(frontend: Frontend, model: Any, config: Config | Mapping[str, Any],
            level: float | None = None) -> DryPruningController:  # fmt: skip
    """The ``filter_pruning`` decisions ``create_compressed_model`` would make, without
    touching ``model``: same capture, analysis options, importance and ranking.

    Args:
        level: The level (a FLOPs fraction under ``pruning_flops_target``) to plan for;
            default: the config's target.

    Returns:
        A controller whose ``analysis``, ``plan`` and ``statistics()`` describe the result.
    """
    if isinstance(config, Config):
        config.validate()  # the dict may have been edited since from_dict/from_json
    else:
        config = Config.from_dict(config)
    _say_ignored(config)
    params = pruning_params(config, frontend.name)
    frontend.check(model, config, fresh=False)
    captured = frontend.capture(model, config)
    check_unmatched(config, captured.graph.scope_names(), captured.graph.scope_types)
    analysis = analyze(captured.graph, analysis_options(params, captured.graph.scope_types))
    # the groups create_compressed_model keeps whole for a non-finite cut
    with frontend.cut_probe(model, captured, analysis, params) as finite:
        hold_nonfinite(analysis, finite)
    with frontend.strip_probe(model, captured, analysis, params) as same:
        hold_unstripped(analysis, same)
    weights = frontend.read_weights(captured, analysis.state.producers)
    ctrl = DryPruningController(params, analysis, weights,
                                lambda layers: frontend.read_params(captured, layers))
    ctrl.ranking_without_search()  # a dry run never trains: loaded or identity coefficients
    ctrl.set_pruning_level(params.target_level if level is None else level)
    ctrl.scheduler.current_level = ctrl.pruning_level
    return ctrl
