"""``python -m offswitch`` (and ``accelerate launch -m offswitch``): the command line."""

import sys

from .cli import main

sys.exit(main())
