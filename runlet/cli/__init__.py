"""`runlet`: the command line; `main` parses it, runs one command and returns its exit status.

The parser is in `parser`, the commands in `commands` (which pick a role's root from the config).

Exit statuses: a job's own status for `run` and `attach` (128+N when a signal N ended it;
124 timed out; 75 expired, interrupted or lost; 65 rejected); otherwise 0 success, 64 bad
usage, 65 bad data, 68 no such node or job, 69 broker unavailable, 77 key problem, 78 bad
config, 130 interrupted by the user.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from runlet.cli.commands import command_name
from runlet.cli.completion import autocomplete
from runlet.cli.parser import build_parser
from runlet.errors import EXIT_CANCELLED, RunletError, UsageError

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    autocomplete(parser)  # answers a shell's TAB and exits; nothing otherwise
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except UsageError as exc:  # said as argparse says it: the command, then what is wrong
        print(f"runlet {command_name(func)}: {exc}", file=sys.stderr)
        return exc.exit_code
    except RunletError as exc:
        print(f"runlet: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("runlet: interrupted", file=sys.stderr)
        return EXIT_CANCELLED
