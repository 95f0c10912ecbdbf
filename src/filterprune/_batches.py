"""Reading model inputs out of a data loader's batches (any framework)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

from .errors import ConfigError

__all__ = ["batch_inputs", "check_not_empty", "check_callable", "nonempty_batches",
           "adaptation_failed"]  # fmt: skip


def batch_inputs(batch: Any) -> Any:
    """The inputs of a batch: the first item of ``(inputs, targets)``, the first value of
    a dict, or the batch itself."""
    if isinstance(batch, (list, tuple)):
        return batch[0]
    if isinstance(batch, dict):
        return next(iter(batch.values()))
    return batch


def check_not_empty(data: Any, key: str,
                    purpose: str = "initialisation (BatchNorm adaptation, quantizer ranges)",
                    ) -> None:  # fmt: skip
    """Refuse ``data`` at registration when its length says it holds no batch.

    Raises:
        ConfigError: If ``len(data)`` is 0 (data without a length is checked when read).
    """
    if data is None:
        raise ConfigError(f"`{key}` must hold the batches for {purpose}. Received: None.")
    try:
        size = len(data)
    except TypeError:  # a generator, an iterable dataset: checked on first use
        return
    if size == 0:
        raise ConfigError(
            f"`{key}` must hold at least one batch for {purpose}. "
            f"Received: {type(data).__name__} of length 0."
        )


def check_callable(**functions: Any) -> None:
    """Refuse at registration a function argument that cannot be called (``None`` is fine).

    Raises:
        TypeError: Naming the argument.
    """
    for key, fn in functions.items():
        if fn is not None and not callable(fn):
            raise TypeError(f"`{key}` must be callable. Received: {key}={fn!r:.80}.")


def nonempty_batches(data: Iterable[Any], key: str) -> Iterator[Any]:
    """The batches of ``data``, after checking that there is a first one.

    Call it before changing anything the batches are for: an empty or already exhausted
    loader is refused while the model is still as it was.

    Raises:
        ConfigError: If ``data`` yields no batch (or fails to start).
    """
    try:
        batches = iter(data)
        first = next(batches)
    except StopIteration:
        raise ConfigError(
            f"`{key}` must yield at least one batch for initialisation (BatchNorm adaptation, "
            "quantizer ranges). Received: an empty or already exhausted loader. Nothing was "
            "changed; register a loader that can be iterated again (a DataLoader, not a "
            "generator that was used up)."
        ) from None
    except Exception as err:  # noqa: BLE001 - whatever the loader raises, said in our words
        raise ConfigError(
            f"`{key}` must yield batches for initialisation. Received: a loader that "
            f"failed on its first batch: {type(err).__name__}: {err}. Nothing was changed."
        ) from err
    return itertools.chain([first], batches)


def adaptation_failed(err: BaseException, key: str, index: int, samples: int | None) -> ConfigError:
    """The error for batch ``index`` (0-based; of ``samples`` samples) failing in BatchNorm
    adaptation, raised after the statistics were restored."""
    hint = ""
    if samples == 1:
        hint = (" A BatchNorm cannot estimate statistics from one sample in training mode: "
                "use batches of 2 or more samples (e.g. drop_last=True).")  # fmt: skip
    size = f" ({samples} sample{'s' if samples != 1 else ''})" if samples is not None else ""
    return ConfigError(
        f"`{key}` must yield batches the model runs on in training mode. Received: batch "
        f"{index + 1}{size} failed in BatchNorm adaptation: {type(err).__name__}: {err}. Every "
        f"BatchNorm's statistics and momentum were restored.{hint}"
    )
