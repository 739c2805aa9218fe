"""python -m sparsebin: one sub-command per task.

Each area of the library adds its own sub-commands through an
`add_commands(subparsers)` function in the module named in COMMAND_MODULES;
each sub-command's `func(args)` returns the exit code.
"""

import argparse
import importlib
import sys

from sparsebin.runfolder import RunFileError

COMMAND_MODULES = (
    "sparsebin.training_cli",
    "sparsebin.datasets.cli",
    "sparsebin.jobs.cli",
    "sparsebin.interpret.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sparsebin",
        description="Sparse binary codes for dense concept embeddings (Binary Sparsity Alignment).",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RunFileError) as error:  # the library's user-facing errors (ConfigError, DataError, ...)
        print(f"error: {error}", file=sys.stderr)
        return 2
