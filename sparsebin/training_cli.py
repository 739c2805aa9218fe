"""`train` and `eval`: train one run in the foreground, or evaluate a finished run.

Also the options made from the training settings' own descriptions (sparsebin.config),
which `submit` (sparsebin.jobs.cli) shares.
"""

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from sparsebin import runfolder
from sparsebin.config import PRESETS, SETTING_CHOICES, SETTING_HELP, TrainConfig, parse_setting, preset_config
from sparsebin.datasets import load_dataset
from sparsebin.datasets.importing import is_embeddings_path, read_embeddings_file
from sparsebin.errors import ConfigError, DataError
from sparsebin.experiment import interpretability_group, run_experiment
from sparsebin.health import convergence_word, health_lines
from sparsebin.interpret.scores import MIN_ACTIVE
from sparsebin.metrics import HEADLINE_METRICS, RowView, evaluate_model
from sparsebin.paths import home_dir
from sparsebin.progress import ProgressEvent
from sparsebin.train import check_embeddings, split_rows

PRESET_HELP = (
    "a named starting setting the options change: paper (every remedy off) or recommended "
    "(rigid TopK with a firing-rate balance at N=8192, K=40: 48 bytes a concept, Elias-Fano coded)"
)


def add_commands(subparsers) -> None:
    train = subparsers.add_parser("train", help="train one run in the foreground and write its run folder")
    train.add_argument(
        "data", help="embeddings: a .npy, .npz, .parquet or .csv file, a dataset folder or a dataset's name"
    )
    train.add_argument("--out", type=Path, help="run folder to write (default: <home>/runs/cli-<time>)")
    train.add_argument("--queries", type=int, default=500, help="retrieval queries sampled per evaluated part")
    train.add_argument("--preset", choices=list(PRESETS), default="paper", help=f"{PRESET_HELP} (default: paper)")
    add_setting_options(train, defaults=False)
    train.set_defaults(func=train_command)

    evaluate = subparsers.add_parser("eval", help="metrics of a finished run on a given set of embeddings")
    evaluate.add_argument("run", type=Path, help="run folder")
    evaluate.add_argument(
        "data", help="embeddings: a .npy, .npz, .parquet or .csv file, a dataset folder or a dataset's name"
    )
    evaluate.add_argument("--queries", type=int, default=500, help="retrieval queries sampled from the set")
    evaluate.add_argument("--json", action="store_true", help="print every metric as JSON")
    evaluate.set_defaults(func=eval_command)


def add_setting_options(parser: argparse.ArgumentParser, *, lists: tuple[str, ...] = (), defaults: bool = True) -> None:
    """An option per TrainConfig field, read as the field's kind; those in `lists` take one or more values.

    Without `defaults` an option left out reads as None, so a base config (`submit --config`) keeps its value.
    """
    for field in dataclasses.fields(TrainConfig):
        listed = field.name in lists
        text = SETTING_HELP[field.name]
        if field.name in SETTING_CHOICES:
            text += f"; one of {', '.join(SETTING_CHOICES[field.name])}"
        if listed:
            text += " (one or more values; several make a grid)"
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            dest=field.name,
            type=_setting_reader(field.name),
            nargs="+" if listed else None,
            default=field.default if defaults else None,
            help=f"{text} (default: {field.default})",
        )


def _setting_reader(name: str):
    """An argparse type reading one value of setting `name`; a bad value is named in argparse's usage error."""

    def read(text: str):
        try:
            return parse_setting(name, text)
        except ConfigError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return read


def load_embeddings(source: str, say=print) -> np.ndarray:
    """An embeddings file (.npy memory-mapped; .npz, .parquet, .csv read whole) or a dataset folder / name.

    A file is read as it is, checked like an import, and not stored as a dataset;
    `say` gets one sentence saying so.
    """
    return load_data(source, say)[0]


def load_data(source: str, say=print) -> tuple[np.ndarray, pd.DataFrame | None]:
    """`load_embeddings`' rows and the dataset's concept table; a bare embeddings file has none (None)."""
    if is_embeddings_path(source):
        path = Path(source)
        array = read_embeddings_file(path)
        say(f"read {path.name} as it is ({array.shape[0]:,} rows x {array.shape[1]} dims; not stored as a dataset)")
        return array, None
    dataset = load_dataset(source)
    return dataset.embeddings, dataset.concepts


def train_command(args: argparse.Namespace) -> int:
    given = {field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig)}
    config = preset_config(args.preset, **{name: value for name, value in given.items() if value is not None})
    embeddings, concepts = load_data(args.data)
    config.validate(n_rows=len(embeddings))
    out = args.out or home_dir() / "runs" / time.strftime("cli-%Y%m%d-%H%M%S")
    with tqdm(total=None, unit="step", desc="training") as bar:

        def progress(event: ProgressEvent) -> None:
            bar.total = event.total_steps
            bar.n = event.step
            bar.set_postfix(epoch=event.epoch, loss=f"{event.loss:.4f}", active=f"{event.active_mean:.1f}")

        run_experiment(embeddings, config, out, progress=progress, n_queries=args.queries, concepts=concepts)
    full = runfolder.load_metrics(out)
    _, metrics = runfolder.evaluated_part(full)
    print(f"run folder: {out}")
    print(summary(metrics))
    health = full.get("bit_health", {})
    print(f"bit health over all {len(embeddings)} rows:")
    print("\n".join(health_lines(health)))
    print(interpretability_summary(full.get("interpretability") or {}))
    state = full.get("convergence", {})
    print(f"{convergence_word(state.get('converged'))}: {state.get('reason')}")
    return 0


def eval_command(args: argparse.Namespace) -> int:
    model = runfolder.load_model(args.run, device=runfolder.evaluation_device(args.run))
    config = runfolder.load_config(args.run)
    embeddings, concepts = load_data(args.data, say=lambda text: print(text, file=sys.stderr))
    check_embeddings(embeddings, config.normalize)
    if embeddings.shape[1] != model.d_in:
        raise DataError(f"the run expects {model.d_in}-d embeddings, but {args.data} has {embeddings.shape[1]}.")
    vectors = RowView(embeddings, config.normalize)  # as trained, read in chunks: no whole float copy
    evaluation = evaluate_model(model, vectors, split=f"all of {args.data}", n_queries=args.queries)
    metrics = evaluation.metrics
    # The probe chooses on one part of these rows and scores on the other: the run's own split of its data set.
    split = split_rows(len(embeddings), config.val_fraction, config.split_seed)
    metrics["interpretability"], _ = interpretability_group(evaluation.packed, model.n_bits, vectors, concepts, split)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(summary(metrics))
        print(interpretability_summary(metrics["interpretability"]))
    return 0


def summary(metrics: dict) -> str:
    """The headline metrics, one per line, each naming the part of the rows it was measured on."""
    split = metrics.get("split")
    part = f"{split} part, {metrics.get('n_rows')} rows"
    searched = f"{metrics.get('n_queries')} queries of the {split} part against {metrics.get('n_index_rows')} rows"
    lines = []
    for key in HEADLINE_METRICS:
        value = metrics.get(key)
        shown = f"{value:.4f}" if isinstance(value, float) else f"{value}"
        lines.append(f"{key:>24}  {shown:<10}  ({searched if key.startswith('recall_') else part})")
    return "\n".join(lines)


def interpretability_summary(group: dict) -> str:
    """The interpretability group (`experiment.interpretability_group`) in one sentence; a figure that could not
    be measured shows as n/a, and the group's note says why."""
    if not group:
        return "interpretability: not measured."

    def shown(name: str) -> str:
        value = group.get(name)
        return "n/a" if value is None else f"{value:.3f}"

    text = (
        f"interpretability over all rows: coherent share {shown('coherent_share')} of the "
        f"{group.get('n_bits_judged')} bits firing for {MIN_ACTIVE} concepts or more (median chance-corrected "
        f"coherence {shown('coherence_median')}; root-labelled share {shown('root_labelled_share')}); "
        f"probe F1 {shown('probe_f1')} on held-out rows (chance {shown('probe_f1_chance')}, the dense embedding "
        f"{shown('dense_probe_f1')}) over {group.get('probe_categories')} categories"
    )
    note = group.get("interpretability_note")
    return f"{text}. {note}" if note else f"{text}."
