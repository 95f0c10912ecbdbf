"""Settings of ``knowledge_distillation``: the dense model teaches the compressed one.

Example config entry, beside ``filter_pruning`` in the ``compression`` list::

    {"algorithm": "knowledge_distillation", "type": "softmax", "temperature": 4, "scale": 1}

``type`` ``"mse"`` matches the outputs directly; ``"softmax"`` matches the teacher's
softened class probabilities (Hinton et al. 2015: ``T^2 * KL(teacher || student)`` at
temperature ``T``). ``scale`` multiplies the term ``ctrl.loss()`` returns.

Example:
    >>> KnowledgeDistillationParams(type="softmax", temperature=4.0).temperature
    4.0
"""

from __future__ import annotations

from dataclasses import dataclass

from ._validation import enum, setting
from .params import ALGORITHMS, Settings

__all__ = ["KnowledgeDistillationParams", "KD_TYPES", "DistillationStatistics"]

KD_TYPES = ("softmax", "mse")
_POSITIVE = {"type": "number", "exclusiveMinimum": 0}


@dataclass(frozen=True, kw_only=True)
class KnowledgeDistillationParams(Settings):
    """Every ``knowledge_distillation`` setting, resolved with its default.

    Raises:
        ConfigError: On construction, for an invalid value.
    """

    ALGORITHM = "knowledge_distillation"

    type: str = setting("type", enum(KD_TYPES), "softmax")
    temperature: float = setting(
        "temperature", {**_POSITIVE, "description": "Softening of the softmax type."}, 1.0
    )
    scale: float = setting("scale", {**_POSITIVE, "description": "Weight of the term."}, 1.0)


ALGORITHMS[KnowledgeDistillationParams.ALGORITHM] = KnowledgeDistillationParams


class DistillationStatistics(dict):
    """The distillation settings (``type``, ``temperature``, ``scale``) as a dict that
    prints like the other algorithms' statistics."""

    def __str__(self) -> str:
        lines = ["Knowledge distillation statistics"]
        lines += [f"  {key:<12}: {value}" for key, value in self.items()]
        return "\n".join(lines)
