"""Compression controllers: one per algorithm, and the composite that runs several.

Every algorithm of the ``compression`` list (``filter_pruning``, ``quantization``, ...)
is driven by one :class:`CompressionController`. When the list names several, the
frontends return a :class:`CompositeCompressionController` that runs them in list
order: one scheduler call steps every child, ``loss()`` sums theirs, ``statistics()``
and the compression state hold each child's part.

Example:
    >>> class Const(CompressionController):
    ...     name = "const"
    ...     def __init__(self, value):
    ...         self.value = value
    ...     def loss(self):
    ...         return self.value
    >>> ctrl = CompositeCompressionController([Const(1.0), Const(2.0)])
    >>> ctrl.loss(), ctrl.compression_stage().name
    (3.0, 'UNCOMPRESSED')
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigError
from ._validation import short_repr
from .state import STATE_VERSION, check_state_header

log = logging.getLogger("filterprune")

__all__ = [
    "CompressionStage",
    "CompressionController",
    "CompositeCompressionController",
    "CompositeScheduler",
    "CompositeStatistics",
    "STATE_VERSION",
]

class CompressionStage(enum.IntEnum):
    """How far the compression in place is from its target."""

    UNCOMPRESSED = 0
    PARTIALLY_COMPRESSED = 1
    FULLY_COMPRESSED = 2


class _NoSchedule:
    """The scheduler of an algorithm that does not change over training."""

    def epoch_step(self, next_epoch: int | None = None) -> None:
        """Nothing to do."""

    def step(self, next_step: int | None = None) -> None:
        """Nothing to do."""

    def get_state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""


class CompressionController:
    """One algorithm on one model: what the training loop talks to.

    Subclasses set ``name`` (the ``algorithm`` key) and override what applies. The
    workflow (:func:`filterprune.core.workflow.create_compressed_model`) calls
    :meth:`start` once after construction, then :meth:`initialize` on fresh runs.

    Attributes:
        name: The algorithm's name in the config.
        scheduler: ``epoch_step()``/``step()`` protocol; a no-op by default.
    """

    name = "none"
    scheduler: Any = _NoSchedule()
    #: Key path of this controller's state in messages (a composite sets its children's).
    state_where = "compression_state"

    # -- workflow hooks --------------------------------------------------------------------
    def start(self, compression_state: dict[str, Any] | None) -> bool:
        """Restore ``compression_state`` or put the initial compression in place.

        Returns:
            True when the model's function changed so that BatchNorm statistics should be
            re-estimated before :meth:`initialize`.

        Raises:
            ConfigError: If the state is not this algorithm's, or of another version.
        """
        if compression_state is not None:
            check_state_header(compression_state, self.name, self.state_where)
            self.load_state(compression_state)
        return False

    def initialize(self, data: Any) -> None:
        """Data-driven initialisation on a fresh run (``data``: the frontend's init batches,
        or ``None`` when none were registered)."""

    @property
    def bn_adaptation_samples(self) -> int:
        """Samples to re-estimate BatchNorm statistics with when :meth:`start` asks."""
        return 0

    def get(self, name: str) -> CompressionController:
        """This controller if it runs algorithm ``name``, as a composite returns its child
        of that name: code written for several algorithms runs on one.

        Raises:
            KeyError: If it runs another algorithm; the message names the one it runs.
        """
        if name == self.name:
            return self
        raise KeyError(f"No {name!r} controller here. Algorithms: {[self.name]}.")

    # -- training --------------------------------------------------------------------------
    def loss(self) -> Any:
        """The algorithm's term of the training loss."""
        return 0.0

    def distributed(self) -> None:
        """Prepare for data-parallel training (before the training loop)."""

    def compression_stage(self) -> CompressionStage:
        return CompressionStage.UNCOMPRESSED

    def statistics(self, quickly_collected_only: bool = False) -> Any:
        return {}

    # -- state -----------------------------------------------------------------------------
    def get_compression_state(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "algorithm": self.name}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_compression_state` output."""

    # -- output ----------------------------------------------------------------------------
    def strip_model(self, model: Any, **kwargs: Any) -> Any:
        """``model`` (a copy the caller owns) with this algorithm's training parts made
        plain; returns the result (may be a new object)."""
        return model


class CompositeScheduler:
    """Steps every child's scheduler, in ``compression`` order."""

    def __init__(self, schedulers: Sequence[Any]) -> None:
        self.schedulers = list(schedulers)

    def epoch_step(self, next_epoch: int | None = None) -> None:
        for s in self.schedulers:
            s.epoch_step(next_epoch)

    def step(self, next_step: int | None = None) -> None:
        for s in self.schedulers:
            s.step(next_step)

    def __getattr__(self, name: str) -> Any:
        # levels, epochs and targets of the child that has them (pruning's, usually)
        for s in self.__dict__.get("schedulers", []):
            if hasattr(s, name):
                return getattr(s, name)
        raise AttributeError(name)


class CompositeStatistics:
    """Each algorithm's statistics, as attributes named by algorithm.

    ``stats.filter_pruning.flops_kept``, ``stats.quantization.num_quantizers``; ``str()``
    prints every part.
    """

    def __init__(self, parts: dict[str, Any]) -> None:
        self.parts = parts

    def __getattr__(self, name: str) -> Any:
        parts = self.__dict__.get("parts", {})
        if name in parts:
            return parts[name]
        for part in parts.values():  # pruning's flops_kept etc. stay one hop away
            if hasattr(part, name):
                return getattr(part, name)
        raise AttributeError(name)

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in self.parts.items()}

    def __str__(self) -> str:
        return "\n\n".join(str(v) for v in self.parts.values())


class CompositeCompressionController(CompressionController):
    """Several algorithms on one model, run in the order of the ``compression`` list.

    Args:
        children: One controller per algorithm, in list order.
        frontend: What strips and exports the model (``strip``/``export_model`` taking
            this controller); ``None`` where only the training protocol is used.

    Attributes:
        child_ctrls: The children.
    """

    name = "composite"

    def __init__(self, children: Sequence[CompressionController], frontend: Any = None) -> None:
        self.child_ctrls = list(children)
        self.frontend = frontend
        self.scheduler = CompositeScheduler([c.scheduler for c in self.child_ctrls])

    def get(self, name: str) -> CompressionController:
        """The child controller of algorithm ``name``.

        Raises:
            KeyError: If no child runs ``name``; the message lists those that do.
        """
        for c in self.child_ctrls:
            if c.name == name:
                return c
        raise KeyError(f"No {name!r} controller here. Algorithms: {self._names()}.")

    def _names(self) -> list[str]:
        return [c.name for c in self.child_ctrls]

    def start(self, compression_state: dict[str, Any] | None) -> bool:
        states = self._split_state(compression_state)
        return any([c.start(s) for c, s in zip(self.child_ctrls, states, strict=True)])

    def initialize(self, data: Any) -> None:
        for c in self.child_ctrls:
            c.initialize(data)

    @property
    def bn_adaptation_samples(self) -> int:
        """BatchNorm adaptation runs once, with the most samples any entry asks for; entries
        that ask for different counts are told (a 0 in one entry alone disables nothing)."""
        base = CompressionController.bn_adaptation_samples
        counts = {c.name: c.bn_adaptation_samples for c in self.child_ctrls
                  if type(c).bn_adaptation_samples is not base} or {"": 0}  # with a setting
        if len(set(counts.values())) > 1 and not getattr(self, "_bn_said", False):
            self._bn_said = True
            shown = ", ".join(f"{name} {n}" for name, n in counts.items())
            log.warning("The compression entries ask for different BatchNorm adaptation "
                        "sample counts (%s): it runs once, with %d. Set "
                        "`initializer.batchnorm_adaptation.num_bn_adaptation_samples` alike in "
                        "every entry (0 in all of them to skip it).",
                        shown, max(counts.values()))  # fmt: skip
        return max(counts.values())

    def set_grad_scaler(self, scaler: Any) -> None:
        """Hand a mixed-precision loss scaler to the algorithms that read gradients."""
        for c in self.child_ctrls:
            if hasattr(c, "set_grad_scaler"):
                c.set_grad_scaler(scaler)

    def loss(self) -> Any:
        total = self.child_ctrls[0].loss()
        for c in self.child_ctrls[1:]:
            total = total + c.loss()
        return total

    def distributed(self) -> None:
        for c in self.child_ctrls:
            c.distributed()

    def compression_stage(self) -> CompressionStage:
        stages = {c.compression_stage() for c in self.child_ctrls}
        if stages == {CompressionStage.UNCOMPRESSED}:
            return CompressionStage.UNCOMPRESSED
        if stages == {CompressionStage.FULLY_COMPRESSED}:
            return CompressionStage.FULLY_COMPRESSED
        return CompressionStage.PARTIALLY_COMPRESSED

    def statistics(self, quickly_collected_only: bool = False) -> CompositeStatistics:
        return CompositeStatistics(
            {c.name: c.statistics(quickly_collected_only) for c in self.child_ctrls}
        )

    def get_compression_state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "algorithm": self.name,
            "children": [c.get_compression_state() for c in self.child_ctrls],
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Each child's part, in order; when a child refuses its part, the children loaded
        before it get their own states back, so a refused state changes nothing."""
        parts = self._split_state(state)
        loaded: list[tuple[CompressionController, dict[str, Any]]] = []
        try:
            for c, s in zip(self.child_ctrls, parts, strict=True):
                own = c.get_compression_state()
                c.load_state(s)
                loaded.append((c, own))
        except BaseException:
            for c, own in reversed(loaded):
                c.load_state(own)
            raise

    def _split_state(self, state: dict[str, Any] | None) -> list[dict[str, Any] | None]:
        """Each child's part of ``state``, checked: header, one part per child, none extra."""
        if state is None:
            return [None] * len(self.child_ctrls)
        if len(self.child_ctrls) == 1 and isinstance(state, Mapping) \
                and state.get("algorithm") != self.name:  # fmt: skip
            check_state_header(state, self._names()[0], self.state_where)
            return [state]  # saved while one algorithm was its own controller
        check_state_header(state, self.name, self.state_where, self._names())
        children = state.get("children")
        if not isinstance(children, list):
            raise ConfigError(
                f"`{self.state_where}.children` must be a list of the states of "
                f"{self._names()}. Received: children={short_repr(children)}."
            )
        found: dict[str, tuple[str, Mapping[str, Any]]] = {}
        for i, child in enumerate(children):
            where = f"{self.state_where}.children[{i}]"
            name = child.get("algorithm") if isinstance(child, Mapping) else None
            if not isinstance(name, str):
                got = f"algorithm={short_repr(name)}" if name is not None else short_repr(child)
                raise ConfigError(f"`{where}` must be the state of one of {self._names()}. "
                                  f"Received: {got}.")  # fmt: skip
            check_state_header(child, name, where)
            if name in found:
                raise ConfigError(f"`{where}` must be the only state of {name!r}. Received: "
                                  f"a second one (first at {found[name][0]}).")  # fmt: skip
            found[name] = (where, child)
        missing = [n for n in self._names() if n not in found]
        extra = [n for n in found if n not in self._names()]
        if missing or extra:
            raise ConfigError(
                f"`{self.state_where}.children` must hold one state per algorithm of the "
                f"config, {self._names()}. Received: no state for {missing}; states of "
                f"algorithms the config does not run: {extra}."
            )
        for c in self.child_ctrls:
            c.state_where = found[c.name][0]
        return [found[n][1] for n in self._names()]

    def strip_model(self, model: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("kept_channels", self._kept_channels)
        for c in self.child_ctrls:
            model = c.strip_model(model, **kwargs)
        return model

    def register_optimizer(self, optimizer: Any) -> None:
        """Hand ``optimizer`` to every child that follows one (``shrink_when_frozen``)."""
        takers = [c for c in self.child_ctrls if hasattr(c, "register_optimizer")]
        if not takers:
            raise AttributeError(
                "register_optimizer: no algorithm of this controller takes an optimizer "
                f"(algorithms: {[c.name for c in self.child_ctrls]})."
            )
        for c in takers:
            c.register_optimizer(optimizer)

    def register_copy(self, copy: Any) -> None:
        """Hand a copy of the model (an EMA's) to every child that cuts the model."""
        takers = [c for c in self.child_ctrls if hasattr(c, "register_copy")]
        if not takers:
            raise AttributeError("register_copy: no algorithm of this controller cuts the model "
                                 f"(algorithms: {[c.name for c in self.child_ctrls]}).")
        for c in takers:
            c.register_copy(copy)

    def _kept_channels(self, node: str, axis: int) -> Any:
        """What a pruning child keeps of a tensor (``None``: none cuts it), for the children
        that strip per-channel state of tensors (quantizer ranges)."""
        for c in self.child_ctrls:
            kept = getattr(c, "kept_channels", None)
            found = kept(node, axis) if kept is not None else None
            if found is not None:
                return found
        return None

    def strip(self, **kwargs: Any) -> Any:
        """The deployable model: every child's training parts made plain, in list order
        (see the frontend's ``strip`` for the arguments)."""
        return self.frontend.strip(self, **kwargs)

    def export_model(self, save_path: str, *args: Any, **kwargs: Any) -> None:
        """Export the stripped model (see the frontend's ``export_model`` for the formats)."""
        self.frontend.export_model(self, save_path, *args, **kwargs)

    @property
    def model(self) -> Any:
        """The model every child works on."""
        return self.child_ctrls[0].model

    @property
    def captured(self) -> Any:
        """The model's capture, shared by the children."""
        return self.child_ctrls[0].captured
