"""``python -m benchmarks.compare_routers``: see the package docstring."""

import sys

from benchmarks.compare_routers import main

sys.exit(main())
