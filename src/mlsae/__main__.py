"""``python -m mlsae``: the command line (:mod:`mlsae.cli`)."""

import sys

from mlsae.cli import main

sys.exit(main())
