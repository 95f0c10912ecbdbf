"""``python -m filterprune``: the same command line as the ``filterprune`` script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
