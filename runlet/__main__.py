"""`python -m runlet` is the same program as the `runlet` console script."""

import sys

from runlet.cli import main

sys.exit(main())
