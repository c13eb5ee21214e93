"""``python -m simdiff_core ...`` — see ``simdiff_core/cli/__init__.py`` (the subcommand registry)."""

import sys

from .cli import main

sys.exit(main())
