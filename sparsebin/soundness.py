"""Is a run's answer worth showing? Collapsed codes and unconverged training, in a sentence each.

The pages that show one run open on the newest run whose codes did not
collapse, and show these sentences above it, so a newcomer is not handed a
broken ablation (after the one-click study, `rounding hard`: every concept the
same 16 bits) as the method's answer. Both read the runs table's row of the
run (`Store.list_runs`), which holds its headline metrics and facts.
"""

import math
from collections.abc import Mapping

import pandas as pd

MOSTLY_DEAD = 0.5  # codes collapsed when more than this share of the bits never fires on any row
SAME_BITS_STD = 0.5  # ... or when every live bit fires for most concepts and the active count hardly varies


def _number(row: Mapping, name: str) -> float:
    value = row.get(name)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value


def collapse_reason(row: Mapping) -> str | None:
    """Why the run's codes collapsed, or None: most bits dead, or every concept firing the same bits.

    Dead bits are counted over every row (`dead_all_rows`) when the run has the
    figure, else on the evaluated part (`dead_bits`).
    """
    n_bits = _number(row, "n_bits")
    dead = _number(row, "dead_all_rows")
    if math.isnan(dead):
        dead = _number(row, "dead_bits")
    if math.isnan(n_bits) or math.isnan(dead) or n_bits <= 0:
        return None
    if _number(row, "active_mean") == 0:
        return "its codes collapsed: no concept fires any bit"
    live = n_bits - dead
    if live > 0 and _number(row, "dense_bits") >= live and _number(row, "active_std") < SAME_BITS_STD:
        return (
            f"its codes collapsed: every concept fires (nearly) the same {live:.0f} bits, "
            "so its bits tell no concepts apart"
        )
    if dead > MOSTLY_DEAD * n_bits:
        return f"its codes collapsed: {dead:.0f} of its {n_bits:.0f} bits never fire ({dead / n_bits:.0%})"
    return None


def run_warnings(row: Mapping, convergence: Mapping | None = None) -> list[str]:
    """The sentences to show above a run: collapsed codes, training that did not settle.

    `convergence` is the run's metrics.json group of that name (it says why);
    without it the runs table's `converged` flag is read.
    """
    warnings = []
    collapsed = collapse_reason(row)
    if collapsed:
        warnings.append(f"This run is broken as an answer: {collapsed}. Read it as a failed setting.")
    converged = (convergence or {}).get("converged", row.get("converged"))
    if converged is False or converged == 0.0:
        reason = (convergence or {}).get("reason")
        warnings.append(
            "This run did not converge" + (f" ({reason})" if reason else "") + ": its figures may still move "
            "with more epochs."
        )
    return warnings


def default_run_position(table: pd.DataFrame) -> int:
    """Row position of the run a page opens on: the first (newest) whose codes did not collapse, else 0."""
    for position, (_, row) in enumerate(table.iterrows()):
        if collapse_reason(row) is None:
            return position
    return 0
