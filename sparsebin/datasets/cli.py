"""The `build-data` and `import-data` subcommands, added to the main parser by sparsebin.cli.

Also runnable alone (`python -m sparsebin.datasets.cli build-data hpo`), which is how
`start_build` launches background builds.
"""

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence

from tqdm import tqdm

from sparsebin.command import run_command
from sparsebin.datasets.importing import DEFAULT_MAX_BYTES, import_dataset
from sparsebin.datasets.joined import BUILDABLE_DATASETS, build_named
from sparsebin.datasets.status import progress_writer, write_status
from sparsebin.datasets.store import META_FILE
from sparsebin.errors import DataError


def add_commands(subparsers) -> None:
    """Add build-data and import-data to an argparse subparsers object."""
    build = subparsers.add_parser(
        "build-data", help="build a built-in dataset (HPO, ICD-10-CM, or hpo-icd10cm: both joined) offline"
    )
    build.add_argument("name", choices=[*BUILDABLE_DATASETS, "all"])
    build.add_argument("--force", action="store_true", help="rebuild even if already built")
    build.add_argument("--limit", type=int, default=None, help="build an evenly spread sample")
    build.add_argument(
        "--nice", type=int, default=0, help="lower this build's CPU priority by N (the app's background builds: 10)"
    )
    build.set_defaults(func=build_data_command)

    imported = subparsers.add_parser("import-data", help="import your own embeddings")
    imported.add_argument("file", help="embeddings: .npy, .npz, .parquet or .csv")
    imported.add_argument("--labels", default=None, help="labels: .csv or .parquet with id, name")
    imported.add_argument("--name", required=True, help="dataset name (a safe folder name)")
    imported.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES)
    imported.add_argument(
        "--force", "--overwrite", dest="overwrite", action="store_true", help="replace a dataset of that name"
    )
    imported.set_defaults(func=import_data_command)


def build_data_command(args: argparse.Namespace) -> int:
    """Build one or all built-in datasets, with a progress bar and a status file."""
    names = BUILDABLE_DATASETS if args.name == "all" else (args.name,)
    if args.nice > 0:
        os.nice(args.nice)  # training, at normal priority, takes the cores first
    if threading.current_thread() is threading.main_thread():
        # A terminated build (the app cancelling, a shutdown) unwinds like an error:
        # its temporary folder is removed and its status reads failed.
        signal.signal(signal.SIGTERM, _exit_on_terminate)
    for name in names:
        build_one(name, force=args.force, limit=args.limit)
    return 0


def _exit_on_terminate(signal_number, frame) -> None:
    sys.exit(128 + signal_number)


def build_one(name: str, *, force: bool, limit: int | None) -> None:
    """Build one dataset, reporting to the terminal and to the status file."""
    write_status(name, state="running", done=0, total=0, error=None, pid=os.getpid())
    record = progress_writer(name)
    with tqdm(desc=f"build {name}", unit="name", total=0) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)
            record(done, total)

        try:
            folder = build_named(name, force=force, limit=limit, progress=progress)
        except BaseException as error:
            write_status(name, state="failed", error=failure_reason(error))
            raise
    count = json.loads((folder / META_FILE).read_text())["count"]
    write_status(name, state="done", done=count, total=count, error=None)
    print(f"{name}: {count} concepts in {folder}")


def failure_reason(error: BaseException) -> str:
    """What a failed build's status says: the fault's sentence, that it was stopped, or the bug's type and message."""
    if isinstance(error, DataError):
        return str(error)
    if isinstance(error, SystemExit | KeyboardInterrupt):
        return "the build was stopped"
    return f"{type(error).__name__}: {error}"


def import_data_command(args: argparse.Namespace) -> int:
    """Import a user's embeddings file."""
    folder = import_dataset(
        args.file, name=args.name, labels_file=args.labels, max_bytes=args.max_bytes, overwrite=args.overwrite
    )
    print(f"{args.name}: {folder}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsebin.datasets.cli")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
