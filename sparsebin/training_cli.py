"""`train` and `eval`: train one run in the foreground, or evaluate a finished run.

Also the one table of help for the training settings, and the options made from
it, which `submit` (sparsebin.jobs.cli) shares.
"""

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sparsebin import runfolder
from sparsebin.config import (
    CENTRES,
    DISTANCES,
    INITS,
    PRESETS,
    RATE_CONTROLS,
    REVIVALS,
    ROUNDINGS,
    SPARSITIES,
    TrainConfig,
    parse_setting,
    preset_config,
)
from sparsebin.datasets import load_dataset
from sparsebin.datasets.importing import is_embeddings_path, read_embeddings_file
from sparsebin.errors import ConfigError, DataError
from sparsebin.experiment import run_experiment
from sparsebin.health import HEALTH_LABELS, convergence_word
from sparsebin.metrics import evaluate_model, normalized_rows
from sparsebin.paths import home_dir
from sparsebin.train import check_embeddings

# One line of help per TrainConfig field (a new setting adds its line here); `train --help` and `submit --help` show it.
OPTION_HELP = {
    "n_bits": "code length N",
    "k": "target number of active bits per concept K",
    "alpha": "weight of the sparsity term",
    "loss": f"distance of both loss terms: {', '.join(DISTANCES)} (_sum = per-row sum, scale-fair)",
    "rec_loss": "override the reconstruction distance only",
    "sparsity_loss": "override the alignment distance only",
    "rounding": f"round to bits while training: {', '.join(ROUNDINGS)} (ste = pass-through)",
    "sparsity": f"sparsity scheme: {', '.join(SPARSITIES)} (align = the paper's)",
    "init": f"encoder initialisation: {', '.join(INITS)} (sparse = bias logit(K/N))",
    "normalize": "L2-normalise rows before training (true/false)",
    "val_fraction": "share of rows held out for validation metrics",
    "lr": "Adam learning rate",
    "batch_size": "rows per training step",
    "epochs": "passes over the training rows",
    "seed": "training seed: initialisation and batch order",
    "split_seed": "seed of the held-out rows and the retrieval queries (keep it fixed per dataset)",
    "device": "auto, cpu, cuda, cuda:N or mps",
    "log_every": "steps between progress reports",
    "centre": f"subtract a centre before the encoder, decode around it (c + L r / |r|): {', '.join(CENTRES)}",
    "rate_control": f"penalise each bit's batch firing rate: {', '.join(RATE_CONTROLS)}",
    "rate_weight": "weight of the firing-rate term",
    "rate_min": "bounds: lowest firing rate without penalty",
    "rate_max": "bounds: highest firing rate without penalty",
    "revive": f"bring back bits idle for revive-after steps: {', '.join(REVIVALS)}",
    "revive_after": "steps without firing before a bit counts as dead",
    "aux_k": "auxk: dead bits per row in the auxiliary code (0: 2 K)",
    "aux_weight": "auxk: weight of the auxiliary term",
    "unit_decoder": "keep decoder columns at unit length (true/false)",
    "tied_init": "start the encoder as the decoder's transpose (true/false)",
    "k_start": "K schedule: start the TopK target here, anneal to K (0: off)",
    "k_anneal_epochs": "K schedule: epochs to anneal over",
}
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
        text = OPTION_HELP[field.name] + (" (one or more values; several make a grid)" if listed else "")
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
    if is_embeddings_path(source):
        path = Path(source)
        array = read_embeddings_file(path)
        say(f"read {path.name} as it is ({array.shape[0]:,} rows x {array.shape[1]} dims; not stored as a dataset)")
        return array
    return load_dataset(source).embeddings


def train_command(args: argparse.Namespace) -> int:
    given = {field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig)}
    config = preset_config(args.preset, **{name: value for name, value in given.items() if value is not None})
    embeddings = load_embeddings(args.data)
    config.validate(n_rows=len(embeddings))
    out = args.out or home_dir() / "runs" / time.strftime("cli-%Y%m%d-%H%M%S")
    with tqdm(total=None, unit="step", desc="training") as bar:

        def progress(event: dict) -> None:
            bar.total = event["total_steps"]
            bar.n = event["step"]
            bar.set_postfix(epoch=event["epoch"], loss=f"{event['loss']:.4f}", active=f"{event['active_mean']:.1f}")

        run_experiment(embeddings, config, out, progress=progress, n_queries=args.queries)
    full = runfolder.load_metrics(out)
    _, metrics = runfolder.evaluated_part(full)
    print(f"run folder: {out}")
    print(summary(metrics))
    health = full.get("bit_health", {})
    for key, label in HEALTH_LABELS.items():
        print(f"{health.get(key)!s:>8}  {label}")
    state = full.get("convergence", {})
    print(f"{convergence_word(state.get('converged'))}: {state.get('reason')}")
    return 0


def eval_command(args: argparse.Namespace) -> int:
    model = runfolder.load_model(args.run, device=runfolder.evaluation_device(args.run))
    config = runfolder.load_config(args.run)
    embeddings = load_embeddings(args.data, say=lambda text: print(text, file=sys.stderr))
    check_embeddings(embeddings, config.normalize)
    if embeddings.shape[1] != model.d_in:
        raise DataError(f"the run expects {model.d_in}-d embeddings, but {args.data} has {embeddings.shape[1]}.")
    vectors = normalized_rows(embeddings, np.arange(len(embeddings)), config.normalize)
    metrics = evaluate_model(model, vectors, split=f"all of {args.data}", n_queries=args.queries).metrics
    print(json.dumps(metrics, indent=2) if args.json else summary(metrics))
    return 0


SUMMARY_KEYS = (
    "split",
    "n_rows",
    "recon_loss",
    "fixed_topk_recon_loss",
    "soft_recon_loss",
    "active_mean",
    "active_std",
    "active_min",
    "active_max",
    "topk_overlap",
    "dead_bits",
    "dense_bits",
    "bits_index_list",
    "compression_index_list",
    "bits_elias_fano",
    "recall_at_10_hamming",
    "recall_at_10_jaccard",
    "recall_at_10_asymmetric",
)


def summary(metrics: dict) -> str:
    """The headline metrics, one per line."""
    lines = []
    for key in SUMMARY_KEYS:
        value = metrics.get(key)
        lines.append(f"{key:>24}  {value:.4f}" if isinstance(value, float) else f"{key:>24}  {value}")
    return "\n".join(lines)
