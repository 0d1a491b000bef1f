"""The ``vimamba`` command line: one module per subcommand, plugged in by ``main.SUBCOMMANDS``."""

from .main import main

__all__ = ["main"]
