"""``python -m offswitch.cli``: the command line (as ``python -m offswitch``)."""

import sys

from . import main

sys.exit(main())
