"""`encode`: which bits any phrase switches on in a finished run, and its nearest concepts."""

import argparse
import json
import math

from sparsebin.datasets import load_dataset
from sparsebin.errors import JobError
from sparsebin.interpret.bits import RunContext
from sparsebin.interpret.ontology import format_q
from sparsebin.interpret.phrases import PhraseView, embed_phrases, phrase_view
from sparsebin.jobs.queue import Status, Store
from sparsebin.search.codes import METRICS


def add_commands(subparsers) -> None:
    encode = subparsers.add_parser(
        "encode",
        help="embed phrases with the run's dataset model (offline) and show their bits and nearest concepts",
    )
    encode.add_argument("run", help="run id (see `runs`)")
    encode.add_argument("phrases", nargs="+", metavar="TEXT", help="one or more phrases, each quoted")
    encode.add_argument("--k", type=int, default=10, help="nearest concepts listed per phrase (default: 10)")
    encode.add_argument("--metric", choices=METRICS, default="jaccard", help="code distance (default: jaccard)")
    encode.add_argument("--json", action="store_true", help="print everything as JSON")
    encode.set_defaults(func=encode_command)


def encode_command(args: argparse.Namespace) -> int:
    store = Store()
    job = store.job_for_run(args.run)
    if job.status != Status.DONE:
        raise JobError(f"run {args.run} is {job.status.name.lower()}; only a finished run has codes to compare with.")
    dataset = load_dataset(job.dataset)
    vectors = embed_phrases(args.phrases, dataset.meta)
    context = RunContext.load(store.run_folder(job.run_id), dataset)
    views = [
        phrase_view(context, phrase, vector, k=args.k, metric=args.metric)
        for phrase, vector in zip(args.phrases, vectors, strict=True)
    ]
    if args.json:
        print(json.dumps([as_json(view) for view in views], indent=2))
        return 0
    for view in views:
        print(describe(view, args.metric))
    return 0


def as_json(view: PhraseView) -> dict:
    return {
        "phrase": view.phrase,
        "bits": [int(bit) for bit in view.bits],
        "active_bits": view.active_bits.to_dict(orient="records"),
        "code_neighbours": view.code_neighbours.to_dict(orient="records"),
        "dense_neighbours": view.dense_neighbours.to_dict(orient="records"),
        "shared": view.shared,
        "overlap": view.overlap,
    }


def describe(view: PhraseView, metric: str) -> str:
    active = view.active_bits
    lines = [f"{view.phrase!r}: {len(active)} active bits"]
    for row in active.itertuples():
        label = row.label if isinstance(row.label, str) and row.label else "no clear label"
        corrected = "n/a" if math.isnan(row.corrected_coherence) else f"{row.corrected_coherence:.2f}"
        scores = f"corrected coherence {corrected}, q-value {format_q(row.q_value)}"
        lines.append(f"  bit {row.bit:>5}  {label}  (fires for {row.firing_rate:.2%} of concepts; {scores})")
    count = len(view.dense_neighbours)
    lines.append(f"  nearest {len(view.code_neighbours)} concepts by code ({metric} distance):")
    lines += [f"    {row.id}  {row.name}  {row.distance:.3f}" for row in view.code_neighbours.itertuples()]
    lines.append(f"  nearest {count} concepts by dense embedding (cosine):")
    lines += [f"    {row.id}  {row.name}  {row.cosine:.3f}" for row in view.dense_neighbours.itertuples()]
    lines.append(f"  the two lists share {view.shared} of {count} concepts ({view.overlap:.0%}).")
    return "\n".join(lines)
