"""filterprune: filter (channel) pruning for CNNs, with physical removal of pruned filters."""

from .core.config import Config
from .errors import AnalysisError, ConfigError, ConversionError, FilterPruneError

NNCFConfig = Config  # the name users of the NNCF workflow already write

__version__ = "0.1.0"
__all__ = [
    "Config",
    "NNCFConfig",
    "ConfigError",
    "AnalysisError",
    "ConversionError",
    "FilterPruneError",
    "__version__",
]
