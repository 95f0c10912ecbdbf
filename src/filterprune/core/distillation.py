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

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from ._validation import enum, setting
from .compression import CompressionController
from .params import ALGORITHMS, Settings

__all__ = ["KnowledgeDistillationParams", "KD_TYPES", "DistillationStatistics", "check_pairs",
           "check_classes", "TeacherState", "fingerprint"]

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
log = logging.getLogger("filterprune")


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


def fingerprint(arrays: Iterable[np.ndarray]) -> str:
    """A short hash of ``arrays`` (dtype, shape and values, in order)."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


class TeacherState(CompressionController):
    """A distillation controller's state: its teacher's fingerprint. The teacher is a copy
    of the model at creation, so a resume from a fresh model would go on with another
    teacher; the fingerprint refuses that. Subclasses set ``teacher_print`` at creation."""

    teacher_print: str = ""

    def get_compression_state(self) -> dict[str, Any]:
        return {**super().get_compression_state(), "teacher": self.teacher_print}

    def load_state(self, state: dict[str, Any]) -> None:
        """Refuse a state saved with another teacher (states without one are taken, with a
        warning).

        Raises:
            ConfigError: If the saved teacher's fingerprint is not this one's.
        """
        saved = state.get("teacher")
        if saved is None:
            log.warning("knowledge_distillation: the state holds no teacher's fingerprint (it "
                        "was saved before states kept one), so the teacher is not checked: it is "
                        "a copy of the model given to create_compressed_model, which must hold "
                        "the weights the run started from.")
        elif saved != self.teacher_print:
            raise ConfigError(
                "knowledge_distillation: the teacher is a copy of the model given to "
                "create_compressed_model, and this one differs from the teacher of the run "
                f"that saved the state (fingerprint {self.teacher_print}, saved {saved}). "
                "To resume, load the weights the run started from (the dense model, not the "
                "checkpoint's) into the model before create_compressed_model, then the "
                "checkpoint's weights after it."
            )
