"""Running a parsed sub-command: a user's fault prints as one sentence, a bug keeps its traceback.

Shared by `python -m sparsebin` and `python -m sparsebin.datasets.cli` (which the background
builds run, so it stays small and imports no training code).
"""

import argparse
import os
import sys

from sparsebin.errors import SparsebinError


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed sub-command (`args.func`); a user's fault prints as `error: <sentence>` and gives 2.

    Every other exception propagates with its traceback: it is a bug, and a
    friendly line would hide it.
    """
    try:
        return args.func(args)
    except SparsebinError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader left (`status | head`): nothing more to say, and nothing went wrong
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
        return 0
