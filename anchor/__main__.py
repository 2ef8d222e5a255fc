"""``python -m anchor`` is the ``cityanchor`` command."""

import sys

from anchor.host.lifetime import inherit_die_with_parent

# First: a child of `up` (or of the demo) must not outlive it, even for the import time.
inherit_die_with_parent()

from anchor.cli.commands import main  # noqa: E402

sys.exit(main())
