"""Allow ``python -m crossbar_emu``."""

import sys

from .cli import main

sys.exit(main())
