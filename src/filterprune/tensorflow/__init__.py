"""TensorFlow 2 / Keras 3 frontend: the NNCF-style workflow for Keras models.

Functional and Sequential ``keras.Model`` s are read into the framework-free core
graph; masks go on the model in place; ``strip()`` gives a physically smaller model of
stock Keras layers.

Example:
    >>> from filterprune import NNCFConfig  # doctest: +SKIP
    >>> from filterprune.tensorflow import create_compressed_model, create_compression_callbacks
    >>> ctrl, model = create_compressed_model(model, NNCFConfig.from_dict({...}))
    >>> model.fit(data, epochs=10, callbacks=create_compression_callbacks(ctrl, log_dir="logs"))
    >>> small = ctrl.strip(); small.save("pruned.keras")
"""

from __future__ import annotations

from typing import Any

import keras

from ..core.analysis import analyze
from ..core.config import Config, FilterPruningParams
from ..core.controller import analysis_options, pruning_params
from ..errors import ConfigError
from ._init_args import TFInitArgs, adapt_batchnorm, register_default_init_args
from .callbacks import (
    CheckpointManagerCallback,
    CompressionCallback,
    TFCompressionState,
    TFCompressionStateLoader,
    create_compression_callbacks,
)
from .capture import capture
from .controller import CompressionStage, FilterPruningController, reset_traced_functions

__all__ = [
    "create_compressed_model",
    "create_compression_callbacks",
    "register_default_init_args",
    "TFCompressionState",
    "TFCompressionStateLoader",
    "CheckpointManagerCallback",
    "CompressionCallback",
    "FilterPruningController",
    "CompressionStage",
]


def _params(config: Config) -> FilterPruningParams:
    params = pruning_params(config, "TensorFlow")
    if not config.sample_sizes():
        raise ConfigError(
            "`input_info.sample_size` is required to read the model, e.g. "
            '{"input_info": {"sample_size": [1, 224, 224, 3]}} (NHWC or NCHW). '
            "Received: no input_info."
        )
    return params


def create_compressed_model(model: Any, config: Config | dict,
                            compression_state: dict[str, Any] | None = None,
                            **_: Any) -> tuple[FilterPruningController, Any]:  # fmt: skip
    """Prepare a Keras model for filter pruning with fine-tuning.

    Args:
        model: A Functional or Sequential ``keras.Model`` (built); it is masked in place
            and returned.
        config: A :class:`~filterprune.Config` (``NNCFConfig``) or a plain dict;
            ``input_info.sample_size`` may be NHWC or NCHW.
        compression_state: A saved state (``TFCompressionStateLoader().state`` or
            ``ctrl.get_compression_state()``), to resume.

    Returns:
        ``(compression_ctrl, model)``.

    Raises:
        ConfigError: For an invalid config or one this frontend cannot run.
        AnalysisError: For a subclassed model or an unbuilt Sequential.
        RuntimeError: If Keras runs on a backend other than TensorFlow.
    """
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            "filterprune.tensorflow needs the Keras 'tensorflow' backend. Received: "
            f"KERAS_BACKEND={keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow."
        )
    if not isinstance(config, Config):
        config = Config.from_dict(config)
    params = _params(config)
    cap = capture(model, config.sample_sizes())
    analysis = analyze(cap.graph, analysis_options(params))
    ctrl = FilterPruningController(model, params, analysis, cap)
    reset_traced_functions(model)
    if ctrl.start(compression_state) and config.has_extra_struct(TFInitArgs):
        init = config.get_extra_struct(TFInitArgs)
        adapt_batchnorm(model, init.dataset, params.num_bn_adaptation_samples, init.batch_size)
    return ctrl, model
