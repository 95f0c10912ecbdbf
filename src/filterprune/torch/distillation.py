"""Knowledge distillation for PyTorch: the dense model teaches the compressed one.

At creation the controller keeps a deep copy of the model (before any compression is put
in place) as the teacher, in eval mode and without gradients, and taps the student's
forward: each training-mode forward records its inputs and outputs. ``ctrl.loss()`` then
runs the teacher on the same inputs and returns ``scale`` times the distance between the
two outputs, so the training loop's ``loss = task_loss + ctrl.loss()`` distils with no
other change. Outputs may be tensors or (nested) tuples, lists and dicts of them; every
floating tensor pair counts. Only the last training forward before ``ctrl.loss()`` is
distilled: a step with two forwards (two views) calls it after each, and a forward whose
loss never calls it leaves nothing behind.

Example::

    config["compression"] = [{"algorithm": "filter_pruning", ...},
                             {"algorithm": "knowledge_distillation", "type": "softmax",
                              "temperature": 4}]
    ctrl, model = create_compressed_model(model, config)
    loss = criterion(model(x), y) + ctrl.loss()      # pruning's 0 + the distillation term
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.compression import CompressionStage
from ..core.distillation import (
    DistillationStatistics,
    KnowledgeDistillationParams,
    TeacherState,
    check_classes,
    check_pairs,
    fingerprint,
)
from ._copy import copy_model

__all__ = ["KnowledgeDistillationController", "distillation_loss"]


class _Tap:
    """Forward hook recording the student's last training-mode inputs and outputs.

    Copies of the model (``strip``) share it and ``strip_model`` removes it there; pickling
    the model (``torch.save``) stores an inert tap, never the teacher.
    """

    def __init__(self) -> None:
        self.last: tuple[tuple, dict, Any] | None = None

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if module.training and torch.is_grad_enabled():
            self.last = (args, kwargs, output)

    def __deepcopy__(self, memo: dict) -> _Tap:
        return self

    def __reduce__(self):
        return (_Tap, ())


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() else []
    if isinstance(value, dict):
        return [t for k in sorted(value) for t in _tensors(value[k])]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def distillation_loss(student: Any, teacher: Any, kind: str, temperature: float) -> torch.Tensor:
    """Distance between two outputs: ``"mse"``, or ``"softmax"`` (``T^2`` KL over axis 1,
    the classes, as in ``F.cross_entropy``: a segmentation map's per pixel). The outputs'
    tensors are paired in order (:func:`~filterprune.core.distillation.check_pairs`)."""
    student, teacher = _tensors(student), _tensors(teacher)
    n = check_pairs([tuple(t.shape) for t in student], [tuple(t.shape) for t in teacher])
    total = None
    for s, t in zip(student[:n], teacher, strict=True):
        t = t.detach().to(s.dtype)
        if kind == "mse":
            term = F.mse_loss(s, t)
        else:
            check_classes(tuple(s.shape), 1)
            log_s = F.log_softmax(s / temperature, dim=1).movedim(1, -1).flatten(0, -2)
            log_t = F.log_softmax(t / temperature, dim=1).movedim(1, -1).flatten(0, -2)
            term = F.kl_div(log_s, log_t, log_target=True, reduction="batchmean")
            term = term * temperature**2
        total = term if total is None else total + term
    return total if total is not None else torch.zeros(())


def _bytes(tensor: torch.Tensor) -> Any:
    """The tensor's bytes as a NumPy array of its shape and one more axis, each element's
    bytes (NumPy has no bfloat16)."""
    raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return raw.reshape(*tensor.shape, tensor.element_size())


class KnowledgeDistillationController(TeacherState):
    """The ``knowledge_distillation`` algorithm on a PyTorch model.

    Created by :func:`filterprune.torch.create_compressed_model`; not built directly.

    Attributes:
        teacher: The dense copy taken at creation (eval mode, no gradients).
    """

    name = "knowledge_distillation"

    def __init__(self, model: nn.Module, params: KnowledgeDistillationParams, captured: Any,
                 frontend: Any) -> None:  # fmt: skip
        self.model, self.params, self.captured, self.frontend = model, params, captured, frontend
        self.teacher = copy_model(model).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher_print = fingerprint(_bytes(t) for t in self.teacher.state_dict().values()
                                         if isinstance(t, torch.Tensor))  # fmt: skip
        self._tap = _Tap()
        self._handle = model.register_forward_hook(self._tap, with_kwargs=True)

    def loss(self) -> torch.Tensor:
        """``scale`` x the distance from the last training forward's outputs to the
        teacher's on the same inputs; zero before any training forward."""
        last, self._tap.last = self._tap.last, None
        if last is None:
            ref = next(self.model.parameters(), None)
            return torch.zeros((), device=ref.device if ref is not None else None)
        args, kwargs, output = last
        self._follow_student()
        with torch.no_grad():
            taught = self.teacher(*args, **kwargs)
        kd = distillation_loss(output, taught, self.params.type, self.params.temperature)
        return self.params.scale * kd

    def _follow_student(self) -> None:
        """Keep the teacher on the device and in the dtype the student was moved to after
        creation (``model.cuda()``, ``model.double()``)."""
        mine = next((p for p in self.model.parameters() if p.is_floating_point()), None)
        ref = next((p for p in self.teacher.parameters() if p.is_floating_point()), None)
        if mine is not None and ref is not None and (mine.device, mine.dtype) != (
                ref.device, ref.dtype):  # fmt: skip
            self.teacher.to(device=mine.device, dtype=mine.dtype)

    def compression_stage(self) -> CompressionStage:
        """Always on: distillation does not hold back the other algorithms' stage."""
        return CompressionStage.FULLY_COMPRESSED

    def statistics(self, quickly_collected_only: bool = False) -> dict[str, Any]:
        return DistillationStatistics(type=self.params.type, temperature=self.params.temperature,
                                      scale=self.params.scale)  # fmt: skip

    def strip(self, shrink: bool = True, do_copy: bool = True) -> nn.Module:
        """The model without the tap (the training model keeps it)."""
        return self.frontend.strip(self, shrink=shrink, do_copy=do_copy)

    def export_model(self, save_path: str, *args: Any, **kwargs: Any) -> None:
        """Export the stripped model (see the pruning controller's ``export_model``)."""
        self.frontend.export_model(self, save_path, *args, **kwargs)

    def strip_model(self, model: nn.Module, **_: Any) -> nn.Module:
        """Drop the forward tap from the copy being deployed."""
        model._forward_hooks.pop(self._handle.id, None)
        model._forward_hooks_with_kwargs.pop(self._handle.id, None)
        return model
