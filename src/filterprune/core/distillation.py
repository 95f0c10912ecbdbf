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

__all__ = ["KnowledgeDistillationParams", "KD_TYPES", "DistillationStatistics", "check_pairs",
           "check_classes"]

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


def check_pairs(student: list[tuple], teacher: list[tuple]) -> int:
    """How many output tensors to compare, given their shapes in order: the teacher's
    (eval mode) count; a student with more (a training-mode auxiliary head) is compared
    on its first ones.

    Raises:
        ValueError: If the student has fewer, or a pair's shapes differ.
    """
    n = len(teacher)
    if len(student) < n or any(a != b for a, b in zip(student, teacher, strict=False)):
        raise ValueError(
            f"distillation compares the model's outputs in training mode (the student: "
            f"{student}) with those in eval mode (the teacher: {teacher}), in order, and "
            "they do not match. Return the same tensors in both modes."
        )
    return n


def check_classes(shape: tuple, axis: int) -> None:
    """Refuse a softmax over an axis of one entry (or none): it is constant."""
    if len(shape) < 2 or shape[axis] == 1:
        raise ValueError(
            f"softmax distillation needs a class axis (axis {axis}) of 2 or more entries: "
            f"the model returns a tensor of shape {shape}, whose softmax is constant. Use "
            '"type": "mse" for such outputs.'
        )
