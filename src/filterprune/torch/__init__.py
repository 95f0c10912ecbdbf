"""PyTorch frontend: the NNCF-style workflow with physical removal of pruned filters.

Example::

    from filterprune import NNCFConfig
    from filterprune.torch import create_compressed_model
    ctrl, model = create_compressed_model(model, NNCFConfig.from_dict({...}))
    ctrl.scheduler.epoch_step(); ...; small = ctrl.strip()
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..core import workflow
from ..core.compression import CompositeCompressionController
from ..core.config import Config
from . import _triton  # noqa: F401 - before torchvision: hides Triton after TensorFlow
from ._init_args import own_arithmetic, register_default_init_args
from .accuracy_aware import create_accuracy_aware_training_loop
from .controller import CompressionStage, FilterPruningController
from .frontend import TorchFrontend
from .shrink import resize_to_state_dict

__all__ = [
    "create_compressed_model",
    "analyze_model",
    "register_default_init_args",
    "create_accuracy_aware_training_loop",
    "resize_to_state_dict",
    "FilterPruningController",
    "CompositeCompressionController",
    "CompressionStage",
    "TorchFrontend",
]


_NNCF_KEYWORDS = {
    "dummy_forward_fn": "the model is run on inputs made from `input_info` (give a "
                        "`keyword` per entry for named arguments)",
    "wrap_inputs_fn": "inputs are not wrapped", "wrap_outputs_fn": "outputs are not wrapped",
    "dump_graphs": "",  # NNCF's debug output: nothing to dump, nothing to say
}


def create_compressed_model(model: nn.Module, config: Config | dict,
                            compression_state: dict[str, Any] | None = None,
                            **nncf_keywords: Any) -> tuple[Any, nn.Module]:  # fmt: skip
    """Prepare ``model`` for the algorithms of ``config`` (pruning, quantization).

    Args:
        model: The model to compress; it is modified in place and returned.
        config: A :class:`~filterprune.Config` (``NNCFConfig``) or a plain dict.
        compression_state: ``ctrl.get_compression_state()`` from a checkpoint, to resume.
        nncf_keywords: NNCF's ``dummy_forward_fn``, ``wrap_inputs_fn``,
            ``wrap_outputs_fn`` and ``dump_graphs`` are accepted for its scripts, and a
            warning says where one given is not used; any other keyword is a TypeError.

    Returns:
        ``(compression_ctrl, model)``: the algorithm's controller, or a
        :class:`CompositeCompressionController` when ``compression`` lists several.

    Raises:
        ConfigError: For an invalid config or one this frontend cannot run.
    """
    workflow.check_nncf_keywords(nncf_keywords, _NNCF_KEYWORDS)
    with own_arithmetic():  # BatchNorm statistics and ranges of the model as deployed
        return workflow.create_compressed_model(TorchFrontend(), model, config, compression_state)


def analyze_model(model: nn.Module, config: Config | dict, level: float | None = None) -> Any:
    """What :func:`create_compressed_model` would prune, without changing ``model``.

    The same capture, analysis options, importance and ranking as a real run; the result's
    ``analysis.groups`` (with reasons), ``plan`` and ``statistics()`` describe the model at
    ``level`` (default: the config's target).
    """
    return workflow.dry_run(TorchFrontend(), model, config, level)
