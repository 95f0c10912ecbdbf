"""TensorFlow 2 / Keras 3 frontend: the NNCF-style workflow for Keras models.

Functional and Sequential ``keras.Model`` s are read into the framework-free core
graph; masks go on the model in place; ``strip()`` gives a physically smaller model of
stock Keras layers.

Example::

    from filterprune import NNCFConfig
    from filterprune.tensorflow import create_compressed_model, create_compression_callbacks
    ctrl, model = create_compressed_model(model, NNCFConfig.from_dict({...}))
    model.fit(data, epochs=10, callbacks=create_compression_callbacks(ctrl, log_dir="logs"))
    small = ctrl.strip(); small.save("pruned.keras")
"""

from __future__ import annotations

from typing import Any

from ..core import workflow
from ..core.config import Config
from ._init_args import register_default_init_args
from .accuracy_aware import create_accuracy_aware_training_loop
from .callbacks import (
    CheckpointManagerCallback,
    CompressionCallback,
    TFCompressionState,
    TFCompressionStateLoader,
    create_compression_callbacks,
)
from .controller import CompressionStage, FilterPruningController
from .frontend import KerasFrontend

__all__ = [
    "create_compressed_model",
    "analyze_model",
    "create_compression_callbacks",
    "register_default_init_args",
    "create_accuracy_aware_training_loop",
    "TFCompressionState",
    "TFCompressionStateLoader",
    "CheckpointManagerCallback",
    "CompressionCallback",
    "FilterPruningController",
    "CompressionStage",
    "KerasFrontend",
]


def create_compressed_model(model: Any, config: Config | dict,
                            compression_state: dict[str, Any] | None = None,
                            **nncf_keywords: Any) -> tuple[Any, Any]:  # fmt: skip
    """Prepare a Keras model for the algorithms of ``config`` (pruning, quantization,
    knowledge distillation).

    Args:
        model: A Functional or Sequential ``keras.Model`` (built); it is changed in place
            and returned.
        config: A :class:`~filterprune.Config` (``NNCFConfig``) or a plain dict;
            ``input_info.sample_size`` may be NHWC or NCHW.
        compression_state: A saved state (``TFCompressionStateLoader().state`` or
            ``ctrl.get_compression_state()``), to resume.

    Returns:
        ``(compression_ctrl, model)``: the algorithm's controller, or a
        :class:`~filterprune.core.compression.CompositeCompressionController` when
        ``compression`` lists several.

    Raises:
        ConfigError: For an invalid config or one this frontend cannot run.
        AnalysisError: For a subclassed model or an unbuilt Sequential.
        RuntimeError: If Keras runs on a backend other than TensorFlow.
    """
    workflow.check_nncf_keywords(nncf_keywords, {})  # a misspelt compression_state: refused
    return workflow.create_compressed_model(KerasFrontend(), model, config, compression_state)


def analyze_model(model: Any, config: Config | dict, level: float | None = None) -> Any:
    """What :func:`create_compressed_model` would prune, without changing ``model``.

    The same capture, analysis options, importance and ranking as a real run; the result's
    ``analysis.groups`` (with reasons), ``plan`` and ``statistics()`` describe the model at
    ``level`` (default: the config's target).
    """
    return workflow.dry_run(KerasFrontend(), model, config, level)
