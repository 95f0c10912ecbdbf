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
from collections.abc import Mapping
from dataclasses import asdict, fields
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
    float_layers,
    place_quantizers,
    quant_params,
    tensor_range,
    warn_signed,
)
from .state import auto_numbered_renames

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
    first_batch_ranges = True  # ``num_init_samples: 0`` takes activation ranges from it

    def __init__(self, params: Any, graph: Graph, idle: Mapping[str, str] | None = None) -> None:
        self.params = params
        self.specs: list[QuantizerSpec] = place_quantizers(graph, params, idle)
        unseen = float_layers(graph, idle)  # said now; those the scopes leave out, listed
        self.left_in_float = float_layers(graph, idle, params)
        self._sign_said: set[str] = set()  # quantizers said to fall back to signed
        if unseen:
            log.warning("quantization: %d layer(s) keep float weights, no quantizer inside "
                        "them: %s. statistics() lists them.", len(unseen),
                        ", ".join(f"{n} ({why})" for n, why in unseen[:5])
                        + (" ..." if len(unseen) > 5 else ""))  # fmt: skip
        if not self.specs:
            log.warning("quantization: no quantizer placed (ignored_scopes or target_scopes "
                        "leave out every layer); the model stays in float.")  # fmt: skip

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

    @classmethod
    def check_data(cls, params: Any, data: Any, where: str = "") -> None:
        """Refuse, before the model is touched, ranges that need data when none is there
        (``where``: the entry's key path, ``compression[1]``).

        Raises:
            ConfigError: If ``num_init_samples`` asks for data and ``data`` is None.
        """
        if data is None and params.num_init_samples > 0:
            raise missing_data_error(params.num_init_samples, params.key("num_init_samples", where),
                                     cls.first_batch_ranges)  # fmt: skip

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
            raise missing_data_error(n, first_batch=self.first_batch_ranges)
        return True

    def range_collector(self, spec: QuantizerSpec) -> RangeCollector:
        """A collector for ``spec`` with the configured range type and percentiles."""
        p = self.params
        return RangeCollector(p.range_type, spec.settings.per_channel, spec.channel_axis,
                              p.min_percentile, p.max_percentile)  # fmt: skip

    def collected_states(self, collectors: dict[str, RangeCollector]) -> dict[str, QuantizerState]:
        """States from finished collectors; a tensor never seen stays uninitialised, and
        one that was only zeros (a dead activation) gets the smallest range."""
        specs = {s.key: s for s in self.specs}
        out = {}
        for key, rc in collectors.items():
            got = rc.range()
            if got is None and rc.zeros is not None:
                got = rc.zeros
                log.warning("quantizer %s saw only zeros in the init data (an activation that "
                            "is never positive?): it gets the smallest range, and values it "
                            "meets later are clipped to it", key)  # fmt: skip
            if got is None:
                log.warning("quantizer %s saw no value in the init data (a branch the samples "
                            "did not take); its range is not set", key)  # fmt: skip
                continue
            out[key] = quant_params(*got, specs[key].settings)
            warn_signed(specs[key], out[key], self._sign_said)
        return out

    def weight_state(self, spec: QuantizerSpec, weight: np.ndarray) -> QuantizerState:
        """The min/max state of a weight (signed unless ``signed: false`` and no weight is
        negative)."""
        signed = None if spec.settings.signed is False else True
        state = quant_params(*tensor_range(weight, spec), spec.settings, signed)
        warn_signed(spec, state, self._sign_said)
        return state

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
        return collect_quantization_statistics(self.specs, self.quantizer_states(), self.params,
                                               self.left_in_float)  # fmt: skip

    # -- state -----------------------------------------------------------------------------
    def get_compression_state(self) -> dict[str, Any]:
        """JSON-able state: every quantizer's scale, zero point, range and flag."""
        return {
            "version": STATE_VERSION,
            "algorithm": self.name,
            "params": self.params.to_dict(),
            "quantizers": {k: s.to_dict() for k, s in self.quantizer_states().items()},
            # what each quantizer was made with: a resume under other settings is refused
            "settings": {s.key: asdict(s.settings) for s in self.specs},
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_compression_state` output.

        Raises:
            ConfigError: If ``state`` is not a quantization state, its quantizers are not
                the ones placed on this model, or one was saved with other settings (bits,
                mode, signedness, per channel, overflow fix) than the config gives it.
        """
        if not isinstance(state, dict) or state.get("algorithm") != self.name or (
            not isinstance(state.get("quantizers"), dict)
        ):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ConfigError(
                "`compression_state` must come from get_compression_state() of a "
                f"quantization controller. Received: {got}."
            )
        renames = self._renames(list(state["quantizers"]))
        saved = {renames[k]: v for k, v in state["quantizers"].items()}
        settings = _saved_settings(state, renames)
        for spec in self.specs:
            _check_settings(spec, saved[spec.key], settings.get(spec.key), self.state_where)
        self.set_quantizer_states({s.key: QuantizerState.from_dict(saved[s.key])
                                   for s in self.specs})  # fmt: skip

    def _renames(self, saved: list[str]) -> dict[str, str]:
        """Saved quantizer key -> this model's: the same keys, or keys that differ only by
        Keras' auto-numbering of unnamed layers, paired in graph order.

        Raises:
            ConfigError: If the saved quantizers are not the ones placed on this model.
        """
        own = [s.key for s in self.specs]
        if set(saved) == set(own):
            return {k: k for k in saved}
        renames = auto_numbered_renames(saved, own)
        if renames is not None:
            log.info("quantization: the state's layer names differ from this model's only "
                     "by auto-numbering (a model built twice); matched in graph order")
            return renames
        missing = sorted(set(own) - set(saved))[:3]
        extra = sorted(set(saved) - set(own))[:3]
        raise ConfigError(
            f"`{self.state_where}.quantizers` must hold the quantizers placed on this model: "
            "the same model, with the `ignored_scopes` / `target_scopes` of the quantization "
            "entry as when the state was saved (other scopes place other quantizers). With "
            "Keras, a model built twice in one process also gets other auto-generated layer "
            "names (dropout_1 for dropout): call keras.backend.clear_session() before "
            f"building it again, or name its layers. Received: missing {missing}, unexpected "
            f"{extra}."
        )


def _saved_settings(state: dict[str, Any], renames: dict[str, str]) -> dict[str, Any]:
    """Each quantizer's saved settings under this model's keys (none in older states)."""
    settings = state.get("settings")
    if not isinstance(settings, dict):
        return {}
    return {renames.get(k, k): v for k, v in settings.items()}


def _config_key(kind: str, setting: str) -> str:
    """The ``quantization`` key a quantizer's ``setting`` comes from."""
    if setting == "half_range":
        return "overflow_fix"
    return f"{'weights' if kind == 'weight' else 'activations'}.{setting}"


def _check_settings(spec: QuantizerSpec, saved_state: dict[str, Any], saved: Any,
                    where: str) -> None:  # fmt: skip
    """Refuse a saved quantizer made with other settings than ``spec``'s: its scales and
    integer range would be read under the new ones. States saved without settings are
    compared on what their ranges show (bits, granularity, a configured sign)."""
    if isinstance(saved, dict):
        differ = [(f.name, saved.get(f.name), getattr(spec.settings, f.name))
                  for f in fields(spec.settings)
                  if f.name in saved and saved[f.name] != getattr(spec.settings, f.name)]
    else:
        differ = _inferred_differences(spec, saved_state)
    if not differ:
        return
    name, was, now = differ[0]
    key = _config_key(spec.kind, name)
    if name == "half_range":
        back = "set `overflow_fix` as it was when the state was saved"
    elif was is None:
        back = f"leave `{key}` unset, as when the state was saved"
    else:
        back = f"set `{key}` back to {was!r}"
    raise ConfigError(
        f"`{where}.quantizers[{spec.key!r}]` was saved with {name}={was!r}, but this config "
        f"makes it with {name}={now!r} (from `{key}`): its saved scales and integer range "
        f"do not apply. To resume, {back}; or start a new run without compression_state. "
        f"Received: saved {name}={was!r}, configured {name}={now!r}."
    )


def _inferred_differences(spec: QuantizerSpec, saved: dict[str, Any]) -> list[tuple]:
    """What a saved quantizer's range shows about its settings, where ``spec`` differs."""
    qmin, qmax = int(saved["quant_min"]), int(saved["quant_max"])
    bits = (qmax - qmin + 1).bit_length() - 1
    per_channel = np.ndim(saved["scale"]) == 1
    own = spec.settings
    out = []
    if bits != own.bits:
        out.append(("bits", bits, own.bits))
    if per_channel != (own.per_channel and bool(spec.num_channels)):
        out.append(("per_channel", per_channel, own.per_channel))
    if own.signed and qmin >= 0:  # (signed: false falls back to signed over negatives)
        out.append(("signed", False, own.signed))
    return out


def missing_data_error(num_init_samples: int, key: str = "initializer.range.num_init_samples",
                       first_batch: bool = True) -> ConfigError:  # fmt: skip
    """The error for activation ranges that need data when none is registered
    (``first_batch``: the frontend can take them from the first training batch instead)."""
    other = ", or set num_init_samples to 0 to take them from the first batch the model " \
        "sees" if first_batch else " (the Keras frontend takes them from that data only)"
    return ConfigError(
        f"`{key}` asks for {num_init_samples} samples and no data is registered: activation "
        "ranges are computed from data. Call register_default_init_args(config, "
        f"train_loader) before create_compressed_model{other}. "
        f"Received: num_init_samples={num_init_samples}, no data."
    )
