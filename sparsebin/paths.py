"""Where sparsebin keeps its files.

`SPARSEBIN_HOME` holds the job database and the run folders; `SPARSEBIN_DATA`
holds built and imported datasets. Both default to git-ignored folders in the
project, and tests point them at temporary folders.
"""

import os
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent


def home_dir() -> Path:
    """The folder for the job database, run folders and worker logs."""
    return Path(os.environ.get("SPARSEBIN_HOME", PROJECT_DIR / ".sparsebin"))


def data_dir() -> Path:
    """The folder holding one sub-folder per dataset."""
    return Path(os.environ.get("SPARSEBIN_DATA", PROJECT_DIR / "data"))
