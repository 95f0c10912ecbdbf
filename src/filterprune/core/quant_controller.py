"""The framework-free half of a quantization controller.

A frontend's controller subclasses :class:`QuantizationControllerBase`, inserts one
fake-quant op per :attr:`~QuantizationControllerBase.specs` entry and supplies two hooks:
:meth:`~QuantizationControllerBase.quantizer_states` (each quantizer's scale, zero point,
integer range and initialised flag, as numpy) and
:meth:`~QuantizationControllerBase.set_quantizer_states`. Placement, range collection
settings, statistics, the compression stage and the saved state are the same for every
framework.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..errors import ConfigError
from .compression import STATE_VERSION, CompressionController, CompressionStage
from .graph import Graph
from .quantization import (
    QuantizationStatistics,
    QuantizerSpec,
    QuantizerState,
    RangeCollector,
    collect_quantization_statistics,
    place_quantizers,
    quant_params,
    tensor_range,
)

__all__ = ["QuantizationControllerBase"]

log = logging.getLogger("filterprune")


class QuantizationControllerBase(CompressionController):
    """Placement, statistics and state of quantization on one captured model.

    Args:
        params: Resolved ``quantization`` settings
            (:class:`~filterprune.core.params.QuantizationParams`).
        graph: The model's core graph.

    Attributes:
        specs: The quantizers to insert (:func:`~filterprune.core.quantization.place_quantizers`).
    """

    name = "quantization"

    def __init__(self, params: Any, graph: Graph) -> None:
        self.params = params
        self.specs: list[QuantizerSpec] = place_quantizers(graph, params)

    # -- frontend hooks --------------------------------------------------------------------
    def quantizer_states(self) -> dict[str, QuantizerState]:
        """Each quantizer's state by :attr:`QuantizerSpec.key`."""
        raise NotImplementedError

    def set_quantizer_states(self, states: dict[str, QuantizerState]) -> None:
        """Put ``states`` (some or all keys) into the model's quantizers."""
        raise NotImplementedError

    # -- ranges ----------------------------------------------------------------------------
    @property
    def bn_adaptation_samples(self) -> int:
        return self.params.num_bn_adaptation_samples

    @property
    def activation_specs(self) -> list[QuantizerSpec]:
        return [s for s in self.specs if s.kind == "activation"]

    def check_init_data(self, data: Any) -> bool:
        """Whether activation ranges are to be collected from ``data`` now.

        ``num_init_samples: 0`` asks for no data: activation ranges then come from the
        first batch the model sees (min/max of that batch).

        Raises:
            ConfigError: If ranges need data and none was registered.
        """
        n = self.params.num_init_samples
        if n == 0 or not self.activation_specs:
            return False
        if data is None:
            raise ConfigError(
                "`initializer.range.num_init_samples` must be 0 when no data is registered: "
                "activation ranges are computed from data. Call "
                "register_default_init_args(config, train_loader) before "
                "create_compressed_model, or set num_init_samples to 0 to take them from the "
                f"first batch the model sees. Received: num_init_samples={n}, no data."
            )
        return True

    def range_collector(self, spec: QuantizerSpec) -> RangeCollector:
        """A collector for ``spec`` with the configured range type and percentiles."""
        p = self.params
        return RangeCollector(p.range_type, spec.settings.per_channel, spec.channel_axis,
                              p.min_percentile, p.max_percentile)  # fmt: skip

    def collected_states(self, collectors: dict[str, RangeCollector]) -> dict[str, QuantizerState]:
        """States from finished collectors; a tensor never seen stays uninitialised."""
        specs = {s.key: s for s in self.specs}
        out = {}
        for key, rc in collectors.items():
            got = rc.range()
            if got is None:
                log.warning("quantizer %s saw no non-zero value; its range is not set", key)
                continue
            out[key] = quant_params(*got, specs[key].settings)
        return out

    @staticmethod
    def weight_state(spec: QuantizerSpec, weight: np.ndarray) -> QuantizerState:
        """The min/max state of a weight (signed unless ``signed: false``)."""
        signed = spec.settings.signed if spec.settings.signed is not None else True
        return quant_params(*tensor_range(weight, spec), spec.settings, signed)

    # -- reporting -------------------------------------------------------------------------
    def compression_stage(self) -> CompressionStage:
        """Fully compressed once every range is set; partially while some are not."""
        done = sum(s.initialized for s in self.quantizer_states().values())
        if done == 0:
            return CompressionStage.UNCOMPRESSED
        if done == len(self.specs):
            return CompressionStage.FULLY_COMPRESSED
        return CompressionStage.PARTIALLY_COMPRESSED

    def statistics(self, quickly_collected_only: bool = False) -> QuantizationStatistics:
        """Bits, number of quantizers, ranges initialised and a per-quantizer table."""
        return collect_quantization_statistics(self.specs, self.quantizer_states(), self.params)

    # -- state -----------------------------------------------------------------------------
    def get_compression_state(self) -> dict[str, Any]:
        """JSON-able state: every quantizer's scale, zero point, range and flag."""
        return {
            "version": STATE_VERSION,
            "algorithm": self.name,
            "params": self.params.to_dict(),
            "quantizers": {k: s.to_dict() for k, s in self.quantizer_states().items()},
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_compression_state` output.

        Raises:
            ConfigError: If ``state`` is not a quantization state, or its quantizers are
                not the ones placed on this model.
        """
        if not isinstance(state, dict) or state.get("algorithm") != self.name or (
            not isinstance(state.get("quantizers"), dict)
        ):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ConfigError(
                "`compression_state` must come from get_compression_state() of a "
                f"quantization controller. Received: {got}."
            )
        saved = state["quantizers"]
        keys = [s.key for s in self.specs]
        if set(saved) != set(keys):
            missing = sorted(set(keys) - set(saved))[:3]
            extra = sorted(set(saved) - set(keys))[:3]
            raise ConfigError(
                "`compression_state` must hold the quantizers placed on this model (same "
                f"model and quantization settings). Received: missing {missing}, "
                f"unexpected {extra}."
            )
        self.set_quantizer_states({k: QuantizerState.from_dict(saved[k]) for k in keys})
