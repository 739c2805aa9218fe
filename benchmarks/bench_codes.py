"""Each remedy alone, and the presets, against the paper's setting and sign bits: one table.

    python benchmarks/bench_codes.py --data hpo --epochs 6                 # every setting on hpo
    python benchmarks/bench_codes.py --data hpo+icd10cm --epochs 2 --settings paper recommended
    python benchmarks/bench_codes.py --data hpo --settings recommended --seeds 0 1 2   # and mean +- sd over seeds
    python benchmarks/bench_codes.py --data hpo --settings recommended --n-bits 8192 --k 40   # 48 bytes Elias-Fano
    python benchmarks/bench_codes.py --table                                # print what was measured so far

Every run trains with the paper's defaults (lr, batch, init) at N=4096, K=32
unless told otherwise, changing only the named setting, and is written to
`--home` (reused when the script runs again, so a long benchmark can be done
in parts). Results accumulate in `<home>/results.jsonl`; the table shows
them all, with the epochs each run had (the CPU budget decides them, so they
are stated, not hidden). With `--seeds`, each setting trains once per training
seed (the held-out rows and queries stay those of the fixed split seed), and a
second table gives the mean +- sample sd over the seeds.

Columns (rows = all rows of the data set unless said):
- N, K: code length and target active bits (--n-bits, --k)
- recon, topk recon: cosine reconstruction loss on the validation part, with
  the hard bits and with the TopK mask as the code
- active: active bits per concept over all rows, mean +- std
- dead, dense: bits that fire for no row / for more than half of all rows
- bytes: bytes per vector as a plain list of active indices (active mean *
  ceil(log2 N) bits / 8: 12 bits an index at N = 4096) over all rows; for sign
  bits the bitmap (one bit per component)
- EF: bytes per vector as an Elias-Fano coded index list (what `export` writes,
  `sparsebin.search.elias_fano`), mean over all rows; beside each preset run, sign
  bits cut to those bytes ("sign, equal EF bytes")
- R@10 ham / jac / asym: recall@10 against exact cosine neighbours, 500 seeded
  validation queries searched against every row; asymmetric = the dense query
  scored through the decoder (sign bits: the rotated query against the bits)
- settle: the first epoch from which the epoch's mean active count stays
  within 5 % (at least 1 bit) of the last epoch's, out of the epochs trained;
  a run still moving at its end settles at its last epoch by this rule
- rec-settle: the same for the epoch's mean training reconstruction loss
  (within 5 %): under rigid TopK the active count is K from the first step,
  so this says when such a run has done its learning
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from sparsebin import runfolder  # noqa: E402
from sparsebin.config import PRESETS, TrainConfig  # noqa: E402
from sparsebin.datasets import load_dataset  # noqa: E402
from sparsebin.experiment import run_experiment, sign_baselines  # noqa: E402
from sparsebin.metrics import ASYMMETRIC_SCORE, firing_frequency, normalized_rows  # noqa: E402
from sparsebin.search import elias_fano  # noqa: E402
from sparsebin.search.codes import active_counts, bit_counts, sample_queries  # noqa: E402

SETTINGS = {
    "paper": {},
    "centre mean": {"centre": "mean"},
    "centre learned-median": {"centre": "learned-median"},
    "rate balance": {"rate_control": "balance"},
    "rate bounds": {"rate_control": "bounds"},
    "revive auxk": {"revive": "auxk"},
    "revive reinit": {"revive": "reinit"},
    "unit decoder": {"unit_decoder": True},
    "tied init": {"tied_init": True},
    "k schedule": {"k_start": -1, "k_anneal_epochs": -1},  # -1: 8 K, over half the epochs
    "rigid topk": {"sparsity": "hard-topk"},  # the paper's own ablation, no remedy
    # The first preset: every remedy on the paper's alignment (active ~50 at K = 32 whatever the weights).
    "align + remedies": {
        "centre": "mean",
        "rate_control": "balance",
        "rate_weight": 0.1,
        "revive": "auxk",
        "unit_decoder": True,
        "tied_init": True,
    },
    # The preset's scheme and remedies; N and K are the script's (--n-bits, --k), as for every setting.
    "recommended": {name: value for name, value in PRESETS["recommended"].items() if name not in ("n_bits", "k")},
}


# What tells two results apart (the newest of each is shown); a row written before n_bits / k were
# recorded counts as the script's default N and K.
RUN_KEY = (("data", None), ("setting", None), ("n_bits", 4096), ("k", 32), ("epochs", None), ("seed", 0))


def load_embeddings(spec: str) -> np.ndarray:
    """A built dataset's embeddings, or several joined by '+' stacked in that order."""
    parts = [np.asarray(load_dataset(name).embeddings, dtype=np.float32) for name in spec.split("+")]
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def settle_epoch(history: list[dict], key: str = "active_mean", floor: float = 1.0) -> tuple[int, int]:
    """(epoch from which the epoch's mean `key` stays within 5 % (at least `floor`) of its last value, epochs)."""
    by_epoch: dict[int, list[float]] = {}
    for event in history:
        by_epoch.setdefault(event["epoch"], []).append(event[key])
    means = [float(np.mean(by_epoch[epoch])) for epoch in sorted(by_epoch)]
    final = means[-1]
    tolerance = max(0.05 * abs(final), floor)
    settled = len(means)
    for index in range(len(means) - 1, -1, -1):
        if abs(means[index] - final) > tolerance:
            break
        settled = index + 1
    return settled, len(means)


def measure(data: str, name: str, config: TrainConfig, folder: Path, embeddings: np.ndarray, queries: int) -> dict:
    started = time.perf_counter()
    if not (folder / "metrics.json").exists():
        run_experiment(embeddings, config, folder, n_queries=queries)
    elif runfolder.load_config(folder) != config:
        sys.exit(f"{folder} holds a run of another config (a setting's definition changed?); use another --home.")
    metrics = runfolder.load_metrics(folder)
    if metrics["validation"].get("asymmetric_score") != ASYMMETRIC_SCORE:
        sys.exit(f"{folder} was measured before asymmetric recall was a cosine; use another --home.")
    codes = runfolder.load_codes(folder, mmap=False)
    active = active_counts(codes)
    firing = firing_frequency(bit_counts(codes, config.n_bits), len(codes))
    validation = metrics["validation"]
    history = runfolder.load_history(folder)
    settled, epochs = settle_epoch(history)
    recon_settled, _ = settle_epoch(history, "reconstruction_loss", floor=0.0)
    row = {
        "data": data,
        "setting": name,
        "epochs": epochs,
        "recon": validation["recon_loss"],
        "topk_recon": validation["fixed_topk_recon_loss"],
        "active_mean": float(active.mean()),
        "active_std": float(active.std()),
        "dead": int((firing == 0).sum()),
        "dense": int((firing > 0.5).sum()),
        "n_bits": config.n_bits,
        "k": config.k,
        "bytes": float(active.mean()) * math.ceil(math.log2(config.n_bits)) / 8,
        "ef_bytes": float(elias_fano.row_bytes(active, config.n_bits).mean()),
        "hamming": validation["recall_at_10_hamming"],
        "jaccard": validation["recall_at_10_jaccard"],
        "asymmetric": validation["recall_at_10_asymmetric"],
        "settle": settled,
        "recon_settle": recon_settled,
        "rows": len(codes),
        "seconds": time.perf_counter() - started,
    }
    if name in PRESETS:
        metrics["sign_equal_ef"] = sign_at_bits(embeddings, config, folder, 8 * row["ef_bytes"], queries)
    signs = []
    for key, label in (
        ("sign_validation", "sign, 1 bit/dim"),
        ("sign_validation_equal_storage", "sign, equal bytes"),
        ("sign_equal_ef", "sign, equal EF bytes"),
    ):
        if key not in metrics:
            continue
        sign = metrics[key]
        signs.append(
            {
                "data": data,
                "setting": f"{label} (vs {name})" if key != "sign_validation" else label,
                "bytes": sign["n_bits"] / 8,
                "dense": sign["dense_bits"],
                "dead": sign["dead_bits"],
                "active_mean": sign["active_mean"],
                "active_std": sign["active_std"],
                "hamming": sign["recall_at_10_hamming"],
                "jaccard": sign["recall_at_10_jaccard"],
                "asymmetric": sign["recall_at_10_asymmetric"],
            }
        )
    return {"run": row, "signs": signs}


def sign_at_bits(embeddings: np.ndarray, config: TrainConfig, folder: Path, bits: float, queries: int) -> dict:
    """Sign bits cut to `bits` PCA components (at most D), on the run's own queries and rows, as the run's
    sign baseline is measured."""
    vectors = normalized_rows(embeddings, np.arange(len(embeddings)), config.normalize)
    train, validation = runfolder.load_split_rows(folder, len(vectors))
    chosen = validation[sample_queries(len(validation), queries, config.split_seed)]
    signs = sign_baselines(vectors, vectors[train], {"bits_index_list": bits}, "validation", chosen, validation)
    return signs["sign_validation_equal_storage"]


def ef_cell(run: dict) -> str:
    """The Elias-Fano bytes, or - for a run measured before the column existed."""
    return f"{run['ef_bytes']:>6.1f}" if "ef_bytes" in run else f"{'-':>6}"


def recall_cells(row: dict) -> str:
    return " ".join(f"{row[key]:>6.3f}" for key in ("hamming", "jaccard", "asymmetric"))


def table(results: list[dict]) -> str:
    header = (
        f"{'data':<12} {'setting':<38} {'N':>5} {'K':>3} {'ep':>3} {'recon':>6} {'topk':>6} {'active':>13} {'dead':>5} "
        f"{'dense':>5} {'bytes':>6} {'EF':>6} {'ham':>6} {'jac':>6} {'asym':>6} {'settle':>7} {'rec-settle':>10}"
    )
    lines = [header, "-" * len(header)]
    shown_signs = set()
    for result in results:
        run = result["run"]
        setting = run["setting"] + (f", seed {run['seed']}" if run.get("seed") else "")
        lines.append(
            f"{run['data']:<12} {setting:<38} {run.get('n_bits', 4096):>5} {run.get('k', 32):>3} {run['epochs']:>3} "
            f"{run['recon']:>6.3f} {run['topk_recon']:>6.3f} {run['active_mean']:>6.1f} +-{run['active_std']:>5.1f} "
            f"{run['dead']:>5} {run['dense']:>5} {run['bytes']:>6.1f} {ef_cell(run)} {recall_cells(run)} "
            f"{run['settle']:>3}/{run['epochs']:<3} {run.get('recon_settle', float('nan')):>6}/{run['epochs']:<3}"
        )
        for sign in result["signs"]:
            key = (sign["data"], sign["setting"], round(sign["bytes"], 1))
            if key in shown_signs or ("vs" in sign["setting"] and run["setting"] not in ("paper", "recommended")):
                continue
            shown_signs.add(key)
            lines.append(
                f"{sign['data']:<12} {sign['setting']:<38} {'-':>5} {'-':>3} {'-':>3} {'-':>6} {'-':>6} "
                f"{sign['active_mean']:>6.1f} +-{sign['active_std']:>5.1f} {sign['dead']:>5} {sign['dense']:>5} "
                f"{sign['bytes']:>6.1f} {'-':>6} {recall_cells(sign)} "
                f"{'-':>7} {'-':>10}"
            )
    return "\n".join(lines)


def seed_table(runs: list[dict]) -> str:
    """Mean +- sample sd over the training seeds of each setting measured with more than one."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault(tuple(run.get(key, default) for key, default in RUN_KEY if key != "seed"), []).append(run)
    header = f"{'data':<12} {'setting':<38} {'N':>5} {'K':>3} {'ep':>3} {'seeds':>5} " + " ".join(
        f"{name:>13}" for name in ("recon", "ham", "jac", "asym")
    )
    lines = ["Over training seeds (mean +- sample sd):", header, "-" * len(header)]
    for (data, setting, n_bits, k, epochs), group in groups.items():
        if len(group) < 2:
            continue
        cells = [
            f"{np.mean(values):.3f} +-{np.std(values, ddof=1):.3f}"
            for values in ([run[key] for run in group] for key in ("recon", "hamming", "jaccard", "asymmetric"))
        ]
        lines.append(
            f"{data:<12} {setting:<38} {n_bits:>5} {k:>3} {epochs:>3} {len(group):>5} "
            + " ".join(f"{c:>13}" for c in cells)
        )
    return "\n".join(lines) if len(lines) > 3 else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="hpo", help="a built dataset, or several joined by + (hpo+icd10cm)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), help=f"of: {', '.join(SETTINGS)}")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--n-bits", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="training seeds of each setting (the split stays fixed)"
    )
    parser.add_argument("--home", type=Path, default=Path("/tmp/bench-codes"))
    parser.add_argument("--table", action="store_true", help="only print the table of earlier results")
    args = parser.parse_args()
    args.home.mkdir(parents=True, exist_ok=True)
    results_path = args.home / "results.jsonl"
    if not args.table:
        unknown = [name for name in args.settings if name not in SETTINGS]
        if unknown:
            parser.error(f"unknown setting {unknown[0]!r}; known: {', '.join(SETTINGS)}")
        embeddings = load_embeddings(args.data)
        for name in args.settings:
            changes = dict(SETTINGS[name])
            if changes.get("k_start") == -1:
                changes |= {"k_start": 8 * args.k, "k_anneal_epochs": max(1, args.epochs // 2)}
            for seed in args.seeds:
                config = TrainConfig(n_bits=args.n_bits, k=args.k, epochs=args.epochs, seed=seed, **changes)
                stem = f"{args.data}-n{args.n_bits}-k{args.k}-e{args.epochs}-{name.replace(' ', '-')}"
                folder = args.home / (stem + (f"-seed{seed}" if seed else ""))  # seed 0: the name as before
                result = measure(args.data, name, config, folder, embeddings, args.queries)
                result["run"]["seed"] = seed
                with open(results_path, "a") as handle:
                    handle.write(json.dumps(result) + "\n")
                print(f"{args.data} {name}, seed {seed}: done in {result['run']['seconds']:.0f} s", flush=True)
    results = [json.loads(line) for line in results_path.read_text().splitlines()] if results_path.exists() else []
    latest = {tuple(r["run"].get(key, default) for key, default in RUN_KEY): r for r in results}
    print(table(list(latest.values())))
    print(seed_table([result["run"] for result in latest.values()]))


if __name__ == "__main__":
    main()
