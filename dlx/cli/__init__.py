"""The ``dlx`` command: ``dlx info``, ``dlx train``, ``dlx eval``, ``dlx digits``, ``dlx gan``.

Each command is a module here with ``register(subparsers)``, which adds its subparser and
sets ``func``, and ``run(args)``. Errors a user can make (wrong arguments, a missing data
set, an unreadable checkpoint, a device that isn't there) print one line and exit non-zero,
without a traceback.
"""

from __future__ import annotations

import argparse
import sys

from dlx.cli import digits, gan, info, train
from dlx.cli import eval as eval_  # the module dlx/cli/eval.py, not the builtin
from dlx.cli.common import Parser, UsageError

COMMANDS = (info, train, eval_, digits, gan)  # in the order `dlx --help` lists them


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="dlx", description="dlx: a readable deep-learning framework.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv=None) -> int:
    from dlx import DeviceError

    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if getattr(args, "func", None) is None:  # no command given
            parser.print_help()
            return 2
        return args.func(args)
    except UsageError as e:
        print(str(e), file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, DeviceError, FloatingPointError, OSError) as e:
        print("dlx: error: " + " ".join(str(e).split()), file=sys.stderr)
        return 1
    except MemoryError as e:  # NumPy says what: "Unable to allocate 8.00 GiB for an array ..."
        what = " ".join(str(e).split()) or "an allocation"
        print(f"dlx: error: out of memory: {what}; the input (data set, picture, checkpoint) or "
              f"--batch-size is too large for this machine's free memory", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dlx: interrupted", file=sys.stderr)
        return 130


__all__ = ["UsageError", "build_parser", "main"]
