"""``python -m autoprune``: the same command line as the ``autoprune`` console script."""

import sys

from autoprune.cli import main

sys.exit(main())
