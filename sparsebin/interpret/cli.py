"""`encode`: which bits any phrase switches on in a finished run, and its nearest concepts; `edit`, `effect`,
`query` and `contrast`: what switching bits does, and concepts by their bits (`interpret.interventions`)."""

import argparse
import json
import math

from sparsebin.datasets import load_dataset
from sparsebin.errors import JobError
from sparsebin.interpret import interventions
from sparsebin.interpret.bits import RunContext, bit_table, labels_for
from sparsebin.interpret.crossing import CrossIndex, describe_across
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
    add_intervention_commands(subparsers)
    add_across_command(subparsers)


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


def add_intervention_commands(subparsers) -> None:
    edit = subparsers.add_parser(
        "edit", help="switch bits of a concept's code off or on; its neighbours before and after"
    )
    edit.add_argument("run", help="run id (see `runs`)")
    edit.add_argument("concept", help="concept id, or its whole name quoted")
    edit.add_argument("--off", type=int, nargs="+", default=[], metavar="BIT", help="active bits to switch off")
    edit.add_argument("--on", type=int, nargs="+", default=[], metavar="BIT", help="bits to switch on")
    edit.add_argument("--k", type=int, default=10, help="neighbours listed before and after (default: 10)")
    edit.set_defaults(func=edit_command)
    effect = subparsers.add_parser(
        "effect", help="what switching a bit off does where it fires: its label by intervention"
    )
    effect.add_argument("run", help="run id (see `runs`)")
    effect.add_argument("bit", type=int, help="bit number")
    effect.set_defaults(func=effect_command)
    query = subparsers.add_parser("query", help="concepts whose code satisfies a bit expression, e.g. '405 & ~12'")
    query.add_argument("run", help="run id (see `runs`)")
    query.add_argument("expression", help="bit numbers with & (and), | (or), ~ (not) and brackets, quoted")
    query.add_argument("--limit", type=int, default=20, help="matching concepts listed (default: 20; all are counted)")
    query.set_defaults(func=query_command)
    contrast = subparsers.add_parser("contrast", help="the bits two concepts share and the bits each has alone")
    contrast.add_argument("run", help="run id (see `runs`)")
    contrast.add_argument("first", help="concept id or whole name")
    contrast.add_argument("second", help="concept id or whole name")
    contrast.set_defaults(func=contrast_command)


def finished_context(run_id: str) -> RunContext:
    """The context of a finished run, as `encode` finds it; a JobError for a run without codes yet."""
    store = Store()
    job = store.job_for_run(run_id)
    if job.status != Status.DONE:
        raise JobError(f"run {run_id} is {job.status.name.lower()}; only a finished run has codes to look at.")
    return RunContext.load(store.run_folder(job.run_id), load_dataset(job.dataset))


def edit_command(args: argparse.Namespace) -> int:
    context = finished_context(args.run)
    edit = interventions.edit_code(context, args.concept, off=args.off, on=args.on, k=args.k)
    print(describe_edit(edit, context))
    return 0


def describe_edit(edit: interventions.Edit, context: RunContext) -> str:
    concept = edit.concept
    switched = [
        f"off {', '.join(map(str, edit.switched_off))}" if edit.switched_off else "",
        f"on {', '.join(map(str, edit.switched_on))}" if edit.switched_on else "",
    ]
    lines = [
        f"{concept.name} ({concept.id}, {concept.category or 'no category'}): {len(edit.bits_before)} active bits, "
        f"{len(edit.bits_after)} after switching {' and '.join(part for part in switched if part) or 'nothing'}",
        f"  decoded vector after against before: cosine {edit.cosine:.3f}",
    ]
    labels = labels_for(context, [*edit.switched_off, *edit.switched_on])
    for bit, label in zip([*edit.switched_off, *edit.switched_on], labels["label"], strict=True):
        lines.append(f"  bit {bit:>5} ({'off' if bit in edit.switched_off else 'on'}): {label or 'no clear label'}")
    for title, before, after, score, which in (
        (
            "by cosine of the decoded vector to the dense embeddings",
            edit.dense_before,
            edit.dense_after,
            "cosine",
            "dense",
        ),
        ("among the stored codes (Hamming distance)", edit.code_before, edit.code_after, "hamming", "code"),
    ):
        lines.append(f"  nearest {len(before)} concepts {title}, before | after:")
        for left, right in zip(_cells(before, score), _cells(after, score), strict=False):
            lines.append(f"    {left:<56} | {right}")
        changes = edit.changes[edit.changes["list"] == which]
        for change in ("gained", "lost"):
            picked = changes[changes["change"] == change]
            listed = "; ".join(f"{row.name} ({row.id}, {row.category})" for row in picked.itertuples()) or "none"
            lines.append(f"  {change} ({len(picked)}): {listed}")
    return "\n".join(lines)


def _cells(table, score: str) -> list[str]:
    form = "{:.3f}" if score == "cosine" else "{:.0f}"
    return [f"{str(row['name'])[:34]} ({row['id']}) {form.format(row[score])}" for _, row in table.iterrows()]


def effect_command(args: argparse.Namespace) -> int:
    effect = interventions.bit_effect(finished_context(args.run), args.bit)
    print(describe_effect(effect))
    return 0


def describe_effect(effect: interventions.BitEffect) -> str:
    if effect.n_sampled == 0:
        return f"bit {effect.bit} fires for no concept, so switching it off changes nothing."
    agree = {True: "agree", False: "differ", None: "cannot be compared"}[effect.agree]
    lines = [
        f"bit {effect.bit}: switched off in {effect.n_sampled:,} of the {effect.n_active:,} concepts where it fires "
        f"(seeded sample); the decoded vector turns by a mean 1 - cosine of {effect.mean_movement:.4f}",
        f"  label by firing: {effect.firing_label or 'none'} (category {effect.firing_category or '-'})",
        f"  label by intervention: {effect.intervention_label or 'none'} (category lost most often: "
        f"{effect.intervention_category or '-'}); the two categories {agree}",
        f"  dense neighbours lost, {effect.n_lost:,} over the sampled concepts, by category:",
    ]
    lines += [
        f"    {row.category}: {row.lost} ({row.share:.0%})" for row in effect.lost_categories.head(5).itertuples()
    ]
    return "\n".join(lines)


def query_command(args: argparse.Namespace) -> int:
    context = finished_context(args.run)
    result = interventions.query_codes(context, args.expression, limit=args.limit)
    print(f"{args.expression!r}, read as {result.expression}: {result.count:,} of {result.n_rows:,} concepts")
    for row in result.concepts.itertuples():
        print(f"  {row.id}  {row.name}  ({row.category}; {row.active} active bits)")
    if result.count > len(result.concepts):
        print(f"  ... and {result.count - len(result.concepts):,} more (see --limit)")
    return 0


def contrast_command(args: argparse.Namespace) -> int:
    contrast = interventions.contrast(finished_context(args.run), args.first, args.second)
    first, second = contrast.first, contrast.second
    for title, table in (
        ("both share", contrast.shared),
        (f"only {first.name} ({first.id}) has", contrast.first_only),
        (f"only {second.name} ({second.id}) has", contrast.second_only),
    ):
        print(f"{len(table)} bits {title}:")
        for row in table.itertuples():
            print(f"  bit {row.bit:>5}  {row.label or 'no clear label'}  (fires for {row.firing_rate:.2%} of concepts)")
    return 0


def add_across_command(subparsers) -> None:
    across = subparsers.add_parser(
        "across", help="a concept's nearest concepts of the other terminologies by shared bits (joined datasets)"
    )
    across.add_argument("run", help="run id (see `runs`) on a dataset joining terminologies, such as hpo-icd10cm")
    across.add_argument("concept", help="concept id, or its whole name quoted")
    across.add_argument("--k", type=int, default=10, help="nearest concepts listed (default: 10)")
    across.add_argument("--metric", choices=METRICS, default="jaccard", help="code distance (default: jaccard)")
    across.set_defaults(func=across_command)


def across_command(args: argparse.Namespace) -> int:
    context = finished_context(args.run)
    concept_id = str(context.concepts["id"].iloc[interventions.find_row(context, args.concept)])
    crossing = CrossIndex(context.codes, context.n_bits, context.concepts)
    crossing.neighbours(concept_id, 1, args.metric)  # a one-terminology dataset says so before bits are labelled
    crossing.labels = bit_table(context)["label"].to_numpy()
    print(describe_across(crossing.neighbours(concept_id, args.k, args.metric)))
    return 0
