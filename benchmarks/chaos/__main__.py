"""``python -m benchmarks.chaos``: see the package docstring."""

import sys

from benchmarks.chaos._cli import main

sys.exit(main())
