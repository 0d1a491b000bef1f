"""The ``vimamba`` command: builds the parser from the subcommand modules and turns errors into one line.

A subcommand is a module of this package with ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int`` (its docstring becomes the subcommand's description); listing it in ``SUBCOMMANDS``
plugs it in.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from PIL import UnidentifiedImageError

from .. import __version__
from ..models import CheckpointError
from .common import CLIError

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

SUBCOMMANDS = ("info", "predict", "convert", "bench", "train", "eval", "seg", "det")

# Failures that come from the user's input or environment: shown as one line, exit status 2. Anything else
# is a bug and keeps its traceback. (BrokenPipeError, an OSError, is handled before these.)
USER_ERRORS = (CLIError, CheckpointError, FileNotFoundError, UnidentifiedImageError, OSError, ValueError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vimamba",
        description="Vision Mamba (Vim) for timm users: models, training, evaluation, prediction, conversion, "
                    "benchmarks, segmentation and detection.")
    parser.add_argument("--version", action="version", version=f"vimamba {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"{__package__}.{name}")
        sub = subparsers.add_parser(
            module.NAME, help=module.HELP, description=(module.__doc__ or "").strip() or None)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run, _prog=sub.prog)
    return parser


def one_line(err: BaseException) -> str:
    """The error's message on one line (multi-line reports are joined with '; ')."""
    text = ""
    for line in (s.strip() for s in str(err).splitlines()):
        if line:
            text += (" " if not text or text.endswith(":") else "; ") + line
    return text.strip() or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the exit status: 0 done, 2 bad input or usage, 1 pipe closed, 130 interrupted."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version and usage errors (argparse already printed them)
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"{args._prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        try:  # so the interpreter's final flush of stdout does not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a real file (captured)
            pass
        return 1
    except USER_ERRORS as err:
        if args.debug:
            raise
        print(f"{args._prog}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - out of memory is the user's batch size, not a bug
        import torch

        if isinstance(err, torch.OutOfMemoryError) and not args.debug:
            print(f"{args._prog}: error: out of memory ({one_line(err)[:200]}); try a smaller --batch-size",
                  file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
