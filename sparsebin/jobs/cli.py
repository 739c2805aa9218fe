"""Sub-commands for background training: submit, status, cancel, resume, runs, remeasure, export, worker."""

import argparse
import json
import logging
import time
from dataclasses import fields
from pathlib import Path

from sparsebin import runfolder
from sparsebin.config import GRID_SETTINGS, PRESETS, TrainConfig, plan_grid
from sparsebin.datasets import load_dataset
from sparsebin.datasets.importing import import_for_command, is_embeddings_path
from sparsebin.errors import ConfigError, DataError, DuplicateRunError, JobError, RunFileError, SparsebinError
from sparsebin.experiment import remeasure_run
from sparsebin.export import export_run
from sparsebin.health import HEALTH_COLUMNS, HEALTH_LABELS
from sparsebin.jobs.beats import worker_status
from sparsebin.jobs.launch import run_device_workers, visible_cuda_devices
from sparsebin.jobs.overview import overview
from sparsebin.jobs.queue import Job, Status, Store, count_rows
from sparsebin.jobs.service import ServiceSettings, run_summary, service_settings
from sparsebin.jobs.worker import run_worker
from sparsebin.metrics import ASYMMETRIC_SCORE
from sparsebin.study import PAPER_SETTING, SWEEP, study_configs, sweep_configs
from sparsebin.training_cli import PRESET_HELP, add_setting_options

RUN_COLUMNS = [
    "job_id",
    "run_id",
    "status",
    "label",
    "preset",
    "n_bits",
    "k",
    "alpha",
    "loss",
    "sparsity",
    "recon_loss",
    "active_mean",
]
# Bit health as every page and the report name it: over all rows, on held-out rows, and rare.
RUN_FACT_COLUMNS = HEALTH_COLUMNS | {"converged": "converged"}


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    submit = subparsers.add_parser("submit", help="queue a training run, or a grid of runs, for the worker")
    submit.add_argument(
        "dataset",
        help="a dataset's name or folder, or an embeddings file (.npy, .npz, .parquet, .csv), "
        "imported first under a name made from the file's",
    )
    submit.add_argument("--config", type=Path, help="a config.json to start from")
    submit.add_argument("--label", default="", help="a note shown beside the run")
    submit.add_argument(
        "--again",
        action="store_true",
        help="queue runs even when one identical in every setting and seed is queued, running or finished",
    )
    submit.add_argument("--preset", choices=list(PRESETS), help=f"{PRESET_HELP}; applied on top of --config")
    add_setting_options(submit, lists=GRID_SETTINGS, defaults=False)
    submit.add_argument(
        "--study",
        type=int,
        metavar="SEEDS",
        help="queue the one-click ablation study at these settings, each setting for SEEDS training seeds",
    )
    submit.add_argument(
        "--sweep",
        type=int,
        nargs="?",
        const=1,
        metavar="SEEDS",
        help=f"queue the paper's N x K sweep at the paper's setting (N {', '.join(map(str, SWEEP['n_bits']))} "
        f"by K {', '.join(map(str, SWEEP['k']))}), for SEEDS training seeds (default 1); the other settings as "
        "given, runs already queued, running or finished left out",
    )
    submit.set_defaults(func=submit_command)

    status = subparsers.add_parser("status", help="show queued and recent jobs, or one job in full")
    status.add_argument("job", nargs="?", type=int, help="a job id for its details and error")
    status.add_argument("--limit", type=int, default=20)
    status.set_defaults(func=status_command)

    for name, handler, text in (
        ("cancel", cancel_command, "cancel queued or running jobs"),
        ("resume", resume_command, "requeue interrupted, failed or cancelled jobs from their checkpoints"),
    ):
        parser = subparsers.add_parser(name, help=text)
        parser.add_argument("jobs", nargs="+", type=int, metavar="JOB")
        parser.set_defaults(func=handler)

    runs = subparsers.add_parser("runs", help="a table of runs with their key validation metrics")
    runs.add_argument("--dataset", help="only runs on this dataset")
    runs.set_defaults(func=runs_command)

    remeasure = subparsers.add_parser(
        "remeasure",
        help="measure finished runs again by today's metric definitions (by default every run measured by an "
        "older one, such as asymmetric recall as a plain sum); model, codes and split are kept",
    )
    remeasure.add_argument("runs", nargs="*", metavar="RUN", help="run ids (default: every outdated finished run)")
    remeasure.set_defaults(func=remeasure_command)

    export = subparsers.add_parser("export", help="write a run's codes, encoder, metrics and concept table")
    export.add_argument("run", help="run id (see `runs`)")
    export.add_argument("--out", type=Path, help="output folder (default: ./export-RUN)")
    export.set_defaults(func=export_command)

    worker = subparsers.add_parser(
        "worker",
        help="train queued jobs until stopped: in this process, one process per GPU, or on a Ray cluster",
    )
    worker.add_argument(
        "--device",
        help="device for jobs whose config says auto (default: best present); "
        "`all` starts one worker process per visible CUDA device",
    )
    worker.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="dispatch jobs to a Ray cluster instead of training here: `local` starts a local Ray instance, "
        "an address joins a cluster; without one, RAY_ADDRESS, else local",
    )
    worker.add_argument("--ray-cpus", type=int, help="CPUs a local Ray instance offers (default: all)")
    worker.add_argument("--tasks", type=int, help="with --ray: jobs run at once (default: the cluster's CPUs)")
    worker.add_argument("--cpus-per-task", type=int, default=1, help="with --ray: CPUs each job reserves")
    worker.add_argument("--once", action="store_true", help="exit when the queue is empty")
    worker.add_argument("--max-jobs", type=int)
    worker.add_argument(
        "--idle-sleep",
        type=float,
        default=ServiceSettings.idle_sleep,
        help="seconds between looks at an empty queue",
    )
    worker.add_argument(
        "--stale-after",
        type=float,
        default=ServiceSettings.stale_after,
        help="seconds without a heartbeat before a job is interrupted",
    )
    worker.add_argument(
        "--progress-every",
        type=float,
        default=ServiceSettings.progress_every,
        help="seconds between progress writes",
    )
    worker.add_argument("--single", action="store_true", help="exit if another worker holds the device's lock")
    worker.add_argument("--lock-fd", type=int, help=argparse.SUPPRESS)  # the device lock ensure_worker hands over
    worker.add_argument(
        "--no-auto-resume",
        dest="auto_resume",
        action="store_false",
        default=None,
        help="leave interrupted jobs for `resume` (also: SPARSEBIN_AUTO_RESUME=0)",
    )
    worker.set_defaults(func=worker_command)


def read_config_file(path: Path) -> TrainConfig:
    """A TrainConfig from a JSON file, with one sentence for each way the file can be wrong."""
    if path.is_dir():
        raise ConfigError(f"--config {path.name}: is a folder, not a config.json file.")
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path.name}: not UTF-8 text; a config is a JSON file.") from None
    try:
        return TrainConfig.from_json(text).validate()
    except ConfigError as error:
        raise ConfigError(f"--config {path.name}: {error}") from None


def submit_command(args: argparse.Namespace) -> int:
    given = {field.name: getattr(args, field.name) for field in fields(TrainConfig)}
    given = {name: value for name, value in given.items() if value is not None}
    lists = {name: values for name, values in given.items() if name in GRID_SETTINGS}
    base = read_config_file(args.config) if args.config else TrainConfig()
    if args.preset:
        base = base.replace(**PRESETS[args.preset])
    base = base.replace(**{name: given[name] for name in given.keys() - lists.keys()})
    if is_embeddings_path(args.dataset):
        args.dataset, sentence = import_for_command(args.dataset)
        print(sentence)
    store = Store()
    if args.study is not None and args.sweep is not None:
        raise ConfigError("--study and --sweep each queue a plan of their own; give one of them.")
    if args.study is not None or args.sweep is not None:
        planned = plan_of(args, given, lists, base)
        if not args.again:  # a plan queues what is missing: more seeds later add only the new ones
            kept = store.missing(args.dataset, planned)
            if len(kept) < len(planned):
                plan = "study" if args.study is not None else "sweep"
                print(
                    f"{len(planned) - len(kept)} of the {plan}'s {len(planned)} runs are already queued, running or "
                    f"finished on {args.dataset} (the same in every setting and seed); left out."
                )
            planned = kept
            if not planned:
                return 0
    elif any(len(values) > 1 for values in lists.values()):
        planned = plan_grid(base, lists, count_rows(args.dataset))
    else:
        planned = [(args.label, base.replace(**{name: values[0] for name, values in lists.items()}))]
    configs, labels = [config for _, config in planned], [label for label, _ in planned]
    try:
        jobs = store.submit_many(args.dataset, configs, labels, again=args.again)
    except DuplicateRunError as error:
        raise DuplicateRunError(f"{error}; pass --again to queue it anyway.") from None
    for job in jobs:
        print(f"queued job {job.id}  run {job.run_id}  {job.label}".rstrip())
    if worker_status() is None:
        print("no worker is running; start one with `python -m sparsebin worker`.")
    return 0


def plan_of(args: argparse.Namespace, given: dict, lists: dict, base: TrainConfig) -> list[tuple[str, TrainConfig]]:
    """The study's or the sweep's (label, config) runs at the given settings; each sets the paper's setting
    and the seed itself (the sweep N and K too), so giving one of those, or several values, is refused."""
    sweep = args.study is None
    pinned = {*PAPER_SETTING, "seed", *(SWEEP if sweep else ())}
    own = sorted(set(given) & pinned)
    if own or any(len(values) > 1 for values in lists.values()):
        raise ConfigError(
            f"{'--sweep' if sweep else '--study'} sets loss, rounding, sparsity, init{', n-bits, k' if sweep else ''} "
            "and seed itself and takes one value per other setting"
            f"{' (got --' + ', --'.join(name.replace('_', '-') for name in own) + ')' if own else ''}."
        )
    one = base.replace(**{name: values[0] for name, values in lists.items()})
    return sweep_configs(one, args.sweep) if sweep else study_configs(one, args.study)


def status_command(args: argparse.Namespace) -> int:
    store = Store()
    if args.job is not None:
        print(describe_job(store.job(args.job)))
        return 0
    services = overview(store).services
    for service in services:
        if service.kind == "ray-dispatcher":
            print(f"ray dispatcher: {service.name} on cluster {service.address}")
        else:
            print(f"worker: pid {service.pid} on {service.device}" + (f" ({service.host})" if service.host else ""))
    if not services:
        print("worker: none running")
    for job in store.jobs(limit=args.limit):
        print(job_line(job))
    return 0


def job_line(job: Job) -> str:
    line = f"{job.id:>5}  {job.status.name.lower():<11}  {job.run_id}  {job.label}"
    if job.progress:
        progress = job.progress
        eta = progress.get("eta_s")
        line += f"  epoch {progress['epoch']}/{job.config.epochs}  step {progress['step']}/{progress['total_steps']}"
        line += f"  loss {progress['loss']:.4f}" + (f"  eta {eta:.0f} s" if eta is not None else "")
    if job.attempts > 1:
        line += f"  attempt {job.attempts}"
    if job.status == Status.RUNNING and job.node:
        line += f"  on {job.node} {job.device}"
    if job.error:
        line += f"  ({job.error})"
    return line


def describe_job(job: Job) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.created_at))
    lines = [
        f"job {job.id}: {job.status.name.lower()}",
        f"run: {job.run_id}",
        f"dataset: {job.dataset}",
        f"submitted: {started}",
        f"config: {json.dumps(job.config.to_dict())}",
    ]
    if job.progress:
        lines.append(f"progress: {json.dumps(job.progress)}")
    if job.error:
        lines.append(f"error: {job.error}")
    if job.traceback:
        lines.append(job.traceback.rstrip())
    return "\n".join(lines)


def cancel_command(args: argparse.Namespace) -> int:
    return change_jobs(args.jobs, Store().cancel)


def resume_command(args: argparse.Namespace) -> int:
    return change_jobs(args.jobs, Store().resume)


def change_jobs(job_ids: list[int], change) -> int:
    """Apply `change` (Store.cancel or Store.resume) to each job and print its new state."""
    for job_id in job_ids:
        job = change(job_id)
        state = "cancel requested" if job.cancel_requested else job.status.name.lower()
        print(f"job {job.id}: {state}")
    return 0


def runs_command(args: argparse.Namespace) -> int:
    table = Store().list_runs(args.dataset)
    if table.empty:
        print("no runs yet.")
    else:
        shown = table[RUN_COLUMNS + list(RUN_FACT_COLUMNS)].rename(columns=RUN_FACT_COLUMNS)
        print(shown.to_string(index=False))
        print("recon_loss, active_mean: validation part. " + "; ".join(HEALTH_LABELS.values()) + ".")
    return 0


def remeasure_command(args: argparse.Namespace) -> int:
    """Measure the named runs, or every outdated finished run, again; print each one's asymmetric recall."""
    store = Store()
    if args.runs:
        jobs = [store.job_for_run(run_id) for run_id in args.runs]
    else:
        done = reversed(store.jobs([Status.DONE]))  # oldest first
        jobs = [job for job in done if is_outdated(store.run_folder(job.run_id))]
        if not jobs:
            print("every finished run is measured by today's definitions.")
            return 0
    failed = 0
    for job in jobs:
        folder = store.run_folder(job.run_id)
        try:
            if job.status != Status.DONE:
                raise JobError(f"job {job.id} is {job.status.name.lower()}; only a finished run can be measured.")
            before = runfolder.evaluated_part(runfolder.load_metrics(folder))[1]
            dataset = load_dataset(job.dataset)
            metrics = remeasure_run(dataset.embeddings, folder, concepts=dataset.concepts)
            part, after = runfolder.evaluated_part(metrics)
            store.set_summary(job.id, run_summary(folder))
        except SparsebinError as error:
            print(f"run {job.run_id}: not measured: {error}")
            failed += 1
            continue
        print(
            f"run {job.run_id}: recall@10 asymmetric {after['recall_at_10_asymmetric']:.4f} by the cosine "
            f"({earlier_asymmetric(before)}); {part} part, {after['n_queries']} queries against all "
            f"{after['n_index_rows']} rows."
        )
        health, judged = metrics["bit_health"], metrics["interpretability"]
        probe = (
            "n/a"
            if judged["probe_f1"] is None
            else f"{judged['probe_f1']:.3f} (chance {judged['probe_f1_chance']:.3f})"
        )
        print(
            f"  alignment_cosine {after['alignment_cosine']:.4f}; {health['silent_held_out']} bits silent on held-out "
            f"rows, {health['silent_held_out_expected']:.1f} expected by chance; probe F1 {probe}."
        )
    return 2 if failed else 0


def earlier_asymmetric(part: dict) -> str:
    """What a part's metrics said of asymmetric recall before it was measured again."""
    value = part.get("recall_at_10_asymmetric")
    if value is None:
        return "not measured before"
    how = "" if part.get("asymmetric_score") == ASYMMETRIC_SCORE else " by the plain sum"
    return f"was {value:.4f}{how}"


def is_outdated(folder: Path) -> bool:
    """Whether a finished run's metrics predate today's definitions: its asymmetric recall a plain sum, or
    no Elias-Fano storage size, sparsity alignment, silent bits against chance or interpretability group.

    A run whose metrics cannot be read counts as outdated: measuring it then says what is wrong with it.
    """
    try:
        metrics = runfolder.load_metrics(folder)
    except RunFileError:
        return True
    part = runfolder.evaluated_part(metrics)[1]
    return (
        part.get("asymmetric_score") != ASYMMETRIC_SCORE
        or "bits_elias_fano" not in part
        or "alignment_cosine" not in part
        or "silent_held_out_expected" not in (metrics.get("bit_health") or {})
        or "interpretability" not in metrics
    )


def export_command(args: argparse.Namespace) -> int:
    store = Store()
    job = store.job_for_run(args.run)
    try:
        concepts = load_dataset(job.dataset).concepts
    except DataError as error:
        print(f"warning: exporting without concept names: {error}")
        concepts = None
    out_dir = args.out or Path(f"export-{job.run_id}")
    for kind, path in export_run(store.run_folder(job.run_id), out_dir, concepts).items():
        print(f"{kind}: {path}")
    return 0


def worker_command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.ray is not None:
        return ray_command(args)
    for name, given in (("--ray-cpus", args.ray_cpus), ("--tasks", args.tasks)):
        if given is not None:
            raise ConfigError(f"{name} applies to the Ray dispatcher only; add --ray.")
    if args.device == "all":
        devices = visible_cuda_devices()
        if not devices:
            raise ConfigError("--device all starts one worker per CUDA device, but no CUDA device is visible.")
        return run_device_workers(devices, worker_arguments(args))
    run_worker(
        settings=settings_of(args), device=args.device, max_jobs=args.max_jobs, single=args.single, lock_fd=args.lock_fd
    )
    return 0


def settings_of(args: argparse.Namespace) -> ServiceSettings:
    """The service settings `worker` was given (an option left out keeps ServiceSettings' value)."""
    return service_settings(
        once=args.once,
        idle_sleep=args.idle_sleep,
        stale_after=args.stale_after,
        progress_every=args.progress_every,
        auto_resume=args.auto_resume,
    )


def ray_command(args: argparse.Namespace) -> int:
    """`worker --ray`: imported here, so the other commands never pay for importing Ray."""
    for name, given in (("--single", args.single), ("--max-jobs", args.max_jobs is not None)):
        if given:
            raise ConfigError(f"{name} applies to a local worker, not to the Ray dispatcher.")
    if args.device == "all":
        raise ConfigError("--device all starts local workers; with --ray, Ray places each job on a GPU itself.")
    if args.tasks is not None and args.tasks < 1:
        raise ConfigError(f"--tasks must be at least 1, got {args.tasks}.")
    if args.cpus_per_task < 1:
        raise ConfigError(f"--cpus-per-task must be at least 1, got {args.cpus_per_task}.")
    from sparsebin.jobs.dispatcher import run_dispatcher

    run_dispatcher(
        address=args.ray or None,
        num_cpus=args.ray_cpus,
        device=args.device,
        settings=settings_of(args),
        max_tasks=args.tasks,
        cpus_per_task=args.cpus_per_task,
    )
    return 0


def worker_arguments(args: argparse.Namespace) -> list[str]:
    """The options a `--device all` worker passes on to each of its per-device workers."""
    arguments = ["--idle-sleep", str(args.idle_sleep), "--stale-after", str(args.stale_after)]
    arguments += ["--progress-every", str(args.progress_every)]
    if args.once:
        arguments.append("--once")
    if args.max_jobs is not None:
        arguments += ["--max-jobs", str(args.max_jobs)]
    if args.auto_resume is False:
        arguments.append("--no-auto-resume")
    return arguments
