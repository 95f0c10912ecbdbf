"""Triton, torch's GPU kernel compiler, crashes the interpreter (a segfault) when it loads
after TensorFlow. torchvision loads it through ``torch._dynamo``, so a session that
imported TensorFlow (or ``filterprune.tensorflow``) before this package would end there.
Where TensorFlow is loaded and Triton is not yet, Triton is hidden from this process
instead: torch then runs without it (``torch.compile`` loses its GPU kernels)."""

from __future__ import annotations

import importlib.util
import sys
import warnings

__all__ = ["hide_triton_after_tensorflow"]


def hide_triton_after_tensorflow() -> None:
    if "tensorflow" not in sys.modules or "triton" in sys.modules:
        return
    if importlib.util.find_spec("triton") is None:
        return
    sys.modules["triton"] = None  # ``import triton`` raises ImportError: torch does without
    warnings.warn(
        "TensorFlow is loaded, and Triton (torch's GPU kernel compiler) crashes Python when "
        "it loads after TensorFlow, so filterprune.torch hides Triton in this process. "
        "Import torch and filterprune.torch before TensorFlow to keep it, or run the two "
        "frameworks in separate processes.", RuntimeWarning, stacklevel=3)


hide_triton_after_tensorflow()  # on import: filterprune.torch imports this before torchvision
