"""Progress bars that stay quiet where nobody watches (CI, pipes)."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Any

__all__ = ["progress", "progress_enabled"]


def progress_enabled() -> bool:
    if os.environ.get("CI") or os.environ.get("FILTERPRUNE_NO_PROGRESS"):
        return False
    return sys.stderr.isatty()


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def reset(self, total: int | None = None) -> None:
        pass


@contextmanager
def progress(total: int | None = None, desc: str = "", **kwargs: Any):
    """A tqdm bar when attached to a terminal, else an object that ignores updates."""
    if not progress_enabled():
        yield _Silent()
        return
    try:
        from tqdm import tqdm
    except ImportError:
        yield _Silent()
        return
    with tqdm(total=total, desc=desc, leave=False, **kwargs) as bar:
        yield bar
