"""``python -m deeplima ...``: the command line of :mod:`deeplima.cli`."""

import sys

from deeplima.cli import main

sys.exit(main())
