"""The small exception tree of filterprune.

Every error says what was wrong, what is expected and what was received, e.g.
``compression[0].params.pruning_target must be a number in [0, 1). Received: 1.5.``
"""

__all__ = ["FilterPruneError", "ConfigError", "AnalysisError", "ConversionError"]


class FilterPruneError(Exception):
    """Base class of every error raised on purpose by filterprune."""


class ConfigError(FilterPruneError, ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


class AnalysisError(FilterPruneError, RuntimeError):
    """A model could not be read into the channel-dependency graph."""


class ConversionError(FilterPruneError, ValueError):
    """An exported model file cannot be read or rewritten."""
