"""``python -m rawstream serve``."""

import sys

from rawstream.cli import main

sys.exit(main())
