"""Datasets: the built-in HPO and ICD-10-CM concept embeddings, and users' own files."""

from sparsebin.datasets.builtin import BUILTIN_DATASETS, build_dataset
from sparsebin.datasets.importing import import_dataset
from sparsebin.datasets.joined import BUILDABLE_DATASETS, JOINED_DATASETS, build_named
from sparsebin.datasets.status import build_status, start_build
from sparsebin.datasets.store import Dataset, list_datasets, load_dataset

__all__ = [
    "BUILDABLE_DATASETS",
    "BUILTIN_DATASETS",
    "JOINED_DATASETS",
    "Dataset",
    "build_dataset",
    "build_named",
    "build_status",
    "import_dataset",
    "list_datasets",
    "load_dataset",
    "start_build",
]
