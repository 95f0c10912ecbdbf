"""Framework-free core of filterprune: configuration, schedules, scopes, importance.

Only numpy and jsonschema are imported here; frontends (``filterprune.torch`` and
others) build on these pieces.
"""

from .config import (
    Config,
    FilterPruningParams,
    LegrParams,
    QuantizationParams,
    QuantizerParams,
)
from .importance import (
    filter_importance,
    get_importance,
    list_importances,
    normalize,
    register_importance,
)
from .schedule import Scheduler, get_schedule, list_schedules, register_schedule
from .schema import CONFIG_SCHEMA
from .scopes import ScopeMatcher

__all__ = [
    "CONFIG_SCHEMA",
    "Config",
    "FilterPruningParams",
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
