"""Whole-run facts every page, the CLI and the report show alike: bit health and convergence.

Torch-free, so the questions and the pages can name these counts without loading a model.
"""

import numpy as np
from scipy.special import gammaln

from sparsebin.search.codes import bit_counts

RARE_BELOW = 5  # a bit firing for fewer concepts than this (over all rows) is "rare"
CONVERGED_ACTIVE = 0.05  # not converged: active mean moved by more than 5 % of K over the last tenth
CONVERGED_LOSS = 0.02  # ... or the training loss by more than 2 % of its final value
# The bit-health counts under the names every page, the CLI and the report use.
HEALTH_LABELS = {
    "dead_all_rows": "dead bits (fire on no row)",
    "silent_held_out": "bits silent on held-out rows (fire on training rows only)",
    "rare_bits": f"rare bits (fire for 1-{RARE_BELOW - 1} concepts of all rows)",
    "dense_all_rows": "always-on bits (fire for over half of all rows)",
}
# A count beside the count chance gives for the run's bit sizes (METHOD.md "Bit health against chance").
BY_CHANCE = {"silent_held_out": "silent_held_out_expected"}
HEALTH_COLUMNS = {  # the same counts as short table headers
    "dead_all_rows": "dead (all rows)",
    "silent_held_out": "silent (held-out)",
    "rare_bits": f"rare (<{RARE_BELOW})",
    "dense_all_rows": "always-on (>50 %)",
}


def bit_health(packed: np.ndarray, n_bits: int, validation_rows: np.ndarray, rare_below: int = RARE_BELOW) -> dict:
    """The bit-health counts every page, the CLI and the report show, from the codes of all rows.

    - dead_all_rows: bits that fire for no concept of the whole data set
    - silent_held_out: bits that fire for training concepts only, never on a
      held-out one (memorising, not generalising); 0 when nothing is held out
    - silent_held_out_expected: how many bits of these sizes would be silent on
      held-out by chance (`silent_by_chance`), and silent_held_out_excess the
      count beyond it, which comparisons use
    - rare_bits: bits that fire for at least one but fewer than `rare_below` concepts
    - dense_all_rows: bits that fire for more than half of all concepts (always-on, no information)
    """
    total = bit_counts(packed, n_bits)
    held_out = bit_counts(packed[np.sort(np.asarray(validation_rows, dtype=np.int64))], n_bits)
    silent = int(((total > 0) & (held_out == 0)).sum()) if len(validation_rows) else 0
    expected = silent_by_chance(total, len(packed), len(validation_rows))
    return {
        "dead_all_rows": int((total == 0).sum()),
        "silent_held_out": silent,
        "silent_held_out_expected": expected,
        "silent_held_out_excess": silent - expected,
        "rare_bits": int(((total > 0) & (total < rare_below)).sum()),
        "rare_below": rare_below,
        "dense_all_rows": int((total > len(packed) / 2).sum()),
        "n_rows": int(len(packed)),
        "n_held_out": int(len(validation_rows)),
    }


def silent_by_chance(bit_sizes: np.ndarray, n_rows: int, n_held_out: int) -> float:
    """The bits expected silent on held-out if each bit's concepts were drawn at random: the sum over live bits
    of C(M - V, c) / C(M, c), a bit firing for c of M rows, V of them held out (about (1 - V / M)^c).

    Exact up to float64 rounding (about 1e-9 of itself at M = 10^6), in log space (gammaln), so large M and
    c neither overflow nor lose the small terms; dead bits (c = 0) count 0, as `bit_health` counts them, and
    so does every bit when nothing is held out.
    """
    sizes = np.asarray(bit_sizes, dtype=np.float64)
    sizes = sizes[sizes > 0]
    kept = n_rows - n_held_out  # rows a silent bit's concepts must all lie in
    if n_held_out == 0 or not len(sizes):
        return 0.0
    possible = sizes[sizes <= kept]  # a bit larger than the training rows always fires on a held-out one
    log_share = gammaln(kept + 1) - gammaln(kept - possible + 1) - gammaln(n_rows + 1) + gammaln(n_rows - possible + 1)
    return float(np.exp(log_share).sum())


def health_lines(health: dict) -> list[str]:
    """The counts as the CLI prints them, one per line: the count, its label, and beside a count that chance
    gives too (BY_CHANCE) the chance count, or that it was not measured (a run measured before it was)."""
    lines = []
    for key, label in HEALTH_LABELS.items():
        line = f"{health.get(key)!s:>8}  {label}"
        if key in BY_CHANCE:
            expected = health.get(BY_CHANCE[key])
            line += "; not measured against chance" if expected is None else f"; {expected:.1f} expected by chance"
        lines.append(line)
    return lines


def convergence(history: list[dict], k: int) -> dict:
    """Did the run settle? How far its active mean and loss moved over the last tenth of training.

    "Moved" is the change along a least-squares line through the logged values
    of the last tenth of the steps (a line, so batch noise does not count as
    movement). Not converged: the active mean moved by more than
    CONVERGED_ACTIVE * K, or the loss by more than CONVERGED_LOSS of its final
    value. With fewer than three logged values there the answer is None.
    """
    if not history:
        return {"converged": None, "reason": "no training history"}
    total = history[-1].get("total_steps") or history[-1]["step"]
    tail = [event for event in history if event["step"] >= 0.9 * total]
    if len(tail) < 3 or len({event["step"] for event in tail}) < 3:
        return {"converged": None, "reason": "fewer than 3 logged steps in the last tenth of training"}
    steps = np.array([event["step"] for event in tail], dtype=np.float64)
    span = 0.1 * total
    moved = {}
    for name in ("active_mean", "loss"):
        values = np.array([event[name] for event in tail], dtype=np.float64)
        slope, intercept = np.polyfit(steps, values, 1)
        moved[name] = (float(slope * span), float(slope * steps[-1] + intercept))
    active_moved, _ = moved["active_mean"]
    loss_moved, loss_end = moved["loss"]
    active_limit, loss_limit = CONVERGED_ACTIVE * k, CONVERGED_LOSS * max(abs(loss_end), 1e-6)
    reasons = []
    if abs(active_moved) > active_limit:
        reasons.append(f"active mean moved {active_moved:+.2f} bits (limit {active_limit:.2f})")
    if abs(loss_moved) > loss_limit:
        reasons.append(f"loss moved {loss_moved:+.4f} (limit {loss_limit:.4f})")
    return {
        "converged": not reasons,
        "reason": "; ".join(reasons) if reasons else "settled over the last tenth of training",
        "active_moved": active_moved,
        "loss_moved": loss_moved,
        "active_limit": active_limit,
        "loss_limit": loss_limit,
    }


def convergence_word(converged) -> str:
    """How a table cell names a run's convergence: converged, NOT converged, or unknown (older runs)."""
    if converged is True or converged == 1.0:
        return "converged"
    if converged is False or converged == 0.0:
        return "NOT converged"
    return "unknown"
