"""Small, dependency-free dataset readers used by the examples and tests.

Nothing here downloads anything: the data must already be on disk (for
Fashion-MNIST, the Debian package ``dataset-fashion-mnist``).
"""

from filterprune.datasets.fashion_mnist import CLASSES, DEFAULT_ROOT, ENV_VAR, load_fashion_mnist

__all__ = ["CLASSES", "DEFAULT_ROOT", "ENV_VAR", "load_fashion_mnist"]
