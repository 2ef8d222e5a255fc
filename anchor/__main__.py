"""``python -m anchor`` is the ``cityanchor`` command."""

import sys

from anchor.cli import main

sys.exit(main())
