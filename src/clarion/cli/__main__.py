"""``python -m clarion.cli``."""

import sys

from . import main

sys.exit(main())
