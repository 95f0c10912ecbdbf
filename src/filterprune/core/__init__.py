"""Framework-free core of filterprune: configuration, schedules, scopes, importance.

Only numpy and jsonschema are imported here; frontends (``filterprune.torch`` and
others) build on these pieces.
"""

from typing import Any

from . import schema
from .config import (
    Config,
    FilterPruningParams,
    LegrParams,
    QuantizationParams,
    QuantizerParams,
)
from .distillation import KnowledgeDistillationParams  # registers knowledge_distillation
from .importance import (
    filter_importance,
    get_importance,
    list_importances,
    normalize,
    register_importance,
)
from .schedule import Scheduler, get_schedule, list_schedules, register_schedule
from .scopes import ScopeMatcher

__all__ = [
    "CONFIG_SCHEMA",
    "Config",
    "FilterPruningParams",
    "KnowledgeDistillationParams",
    "LegrParams",
    "QuantizationParams",
    "QuantizerParams",
    "ScopeMatcher",
    "Scheduler",
    "filter_importance",
    "get_importance",
    "get_schedule",
    "list_importances",
    "list_schedules",
    "normalize",
    "register_importance",
    "register_schedule",
]


def __getattr__(name: str) -> Any:
    """``CONFIG_SCHEMA``, built on access so it lists the schedules and importances
    registered now."""
    if name == "CONFIG_SCHEMA":
        return schema.config_schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
