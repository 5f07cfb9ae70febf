"""How often a job should checkpoint: Young's and Daly's interval from its placement's MTBF.

Pure arithmetic; the controller (FineTune's `checkpoint_every: auto`) and the simulator's `mesh`
policy call the same functions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

# A node whose reliability is unknown (no mtbf_h, no history yet) is assumed to fail once a week.
DEFAULT_MTBF_H = 168.0


def placement_mtbf_s(mtbf_h: Iterable[float | None]) -> float:
    """MTBF of a job spread over nodes with these MTBFs (any failure stops it): 1 / sum(1/m)."""
    rate = sum(1.0 / ((m if m and m > 0 else DEFAULT_MTBF_H) * 3600.0) for m in mtbf_h)
    return 1.0 / rate if rate > 0 else math.inf


def young_daly_interval_s(checkpoint_cost_s: float, mtbf_s: float) -> float:
    """The compute time between checkpoints that loses the least expected time.

    Daly's higher-order estimate (2006) of the optimum, sqrt(2 C M) (1 + sqrt(C / 2M) / 3 +
    C / 18M) - C, for a checkpoint cost C below twice the MTBF M; M itself otherwise. Young's
    first-order sqrt(2 C M) is its leading term. A free checkpoint (C = 0) is taken constantly
    (0); a node that never fails (M infinite) never needs one (inf).
    """
    c, m = checkpoint_cost_s, mtbf_s
    if c <= 0:
        return 0.0
    if math.isinf(m):
        return math.inf
    if c >= 2 * m:
        return m
    return math.sqrt(2 * c * m) * (1 + math.sqrt(c / (2 * m)) / 3 + c / (18 * m)) - c
