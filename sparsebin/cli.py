"""python -m sparsebin: one sub-command per task.

Each area of the library adds its sub-commands through its `add_commands(subparsers)`;
each sub-command's handler, `<command>_command(args)`, returns the exit code.
"""

import argparse

from sparsebin import training_cli
from sparsebin.command import run_command
from sparsebin.datasets import cli as datasets_cli
from sparsebin.interpret import cli as interpret_cli
from sparsebin.interpret import report
from sparsebin.jobs import cli as jobs_cli
from sparsebin.search import cli as search_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sparsebin",
        description="Sparse binary codes for dense concept embeddings (Binary Sparsity Alignment).",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for commands in (training_cli, datasets_cli, jobs_cli, interpret_cli, report, search_cli):
        commands.add_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv))
