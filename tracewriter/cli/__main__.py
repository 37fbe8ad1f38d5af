"""``python -m tracewriter.cli``: the same as the ``tracewriter`` console script."""

import sys

from tracewriter.cli import main

sys.exit(main())
