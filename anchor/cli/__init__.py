"""The ``cityanchor`` command: every subcommand, the demos, ``up`` and ``audit``.

``anchor.cli:main`` is the console script's entry point (setup.py), kept stable.
"""

from anchor.cli.commands import main

__all__ = ["main"]
