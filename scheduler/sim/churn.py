"""Volunteer churn: when each node of a simulated cluster goes down and comes back.

A churn model is stated as text, e.g. `exp:mtbf=24h,mttr=2h,spread=lognormal:1.0`:

- `exp`: each node alternates up and down periods drawn from exponential distributions, starting
  up at time 0. The mean up period is the node's MTBF, the mean down period the stated `mttr`.
- `mtbf`: the fleet's mean time between failures; `mttr`: the mean time to repair (durations:
  seconds, or `90s`, `45m`, `2h`, `1h30m`, `1d`).
- `spread=lognormal:SIGMA` (optional; default: none): volunteer fleets mix reliable lab servers
  with home PCs, so a node's MTBF is the stated mean times a factor exp(N(0, SIGMA) - SIGMA^2/2),
  drawn once per node. The factor's mean is 1, so the fleet's mean MTBF stays the stated one.

A node whose cluster-file entry sets `mtbf_h` keeps that MTBF (no factor). The per-node factors
are drawn from `random.Random(seed)` in node order (one draw per node, whether or not its MTBF is
set, so adding `mtbf_h` to one node does not change another's); each node's up and down periods
come from its own stream, `random.Random(f"{seed}/{node name}")`, so a node's timeline depends on
neither the horizon nor the other nodes. Same nodes, spec and seed: same timelines.
"""

from __future__ import annotations

import difflib
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from scheduler.cluster import Node
from scheduler.spec_sections import parse_duration

DISTRIBUTIONS = ("exp",)
SPREADS = ("lognormal",)
KEYS = ("mtbf", "mttr", "spread")
EXAMPLE = "exp:mtbf=24h,mttr=2h,spread=lognormal:1.0"


class ChurnError(ValueError):
    """A churn spec that cannot be read; the message says what to write instead."""


def _fail(text: str, problem: str) -> ChurnError:
    return ChurnError(f"churn {text!r}: {problem}. To fix: write e.g. {EXAMPLE}")


@dataclass(frozen=True)
class ChurnSpec:
    """A parsed churn model (see the module docstring); `text` is what the user wrote."""

    distribution: str
    mtbf_s: float
    mttr_s: float
    sigma: float = 0.0  # lognormal spread of the per-node MTBF; 0: every node has the mean
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> ChurnSpec:
        """`exp:mtbf=24h,mttr=2h[,spread=lognormal:1.0]`; ChurnError says what is wrong."""
        dist, sep, rest = text.strip().partition(":")
        if not sep or not dist:
            raise _fail(text, "start with the distribution and a colon")
        if dist not in DISTRIBUTIONS:
            raise _fail(
                text, f"unknown distribution {dist!r}; choose from {', '.join(DISTRIBUTIONS)}"
            )
        values: dict[str, str] = {}
        for part in rest.split(","):
            key, eq, value = (s.strip() for s in part.partition("="))
            if not eq or not key or not value:
                raise _fail(text, f"{part.strip()!r} is not key=value")
            if key not in KEYS:
                close = difflib.get_close_matches(key, KEYS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; the keys are {KEYS}"
                raise _fail(text, f"unknown key {key!r}{hint}")
            if key in values:
                raise _fail(text, f"{key} is given twice")
            values[key] = value
        missing = [k for k in ("mtbf", "mttr") if k not in values]
        if missing:
            raise _fail(text, f"{' and '.join(missing)} missing")
        mtbf = _duration(text, "mtbf", values["mtbf"])
        mttr = _duration(text, "mttr", values["mttr"])
        for key, seconds in (("mtbf", mtbf), ("mttr", mttr)):
            if seconds <= 0:
                raise _fail(text, f"{key} must be more than 0")
        sigma = _spread(text, values["spread"]) if "spread" in values else 0.0
        return cls(dist, mtbf, mttr, sigma, text.strip())

    def availability(self, mtbf_s: float) -> float:
        """The long-run fraction of time up of a node with MTBF `mtbf_s`."""
        return mtbf_s / (mtbf_s + self.mttr_s)


def _duration(text: str, key: str, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as e:
        raise _fail(text, f"{key}: {e}") from None


def _spread(text: str, value: str) -> float:
    kind, sep, raw = value.partition(":")
    if kind not in SPREADS or not sep:
        raise _fail(text, f"spread {value!r}: write lognormal:SIGMA, e.g. lognormal:1.0")
    try:
        sigma = float(raw)
    except ValueError:
        raise _fail(text, f"spread sigma {raw!r} is not a number") from None
    if not math.isfinite(sigma) or sigma < 0:
        raise _fail(text, f"spread sigma must be a number >= 0, got {raw}")
    return sigma


def node_mtbf_s(nodes: Sequence[Node], spec: ChurnSpec, seed: int) -> dict[str, float]:
    """Each node's MTBF in seconds: its `mtbf_h` when set, else the mean times its factor."""
    rng = random.Random(seed)
    out: dict[str, float] = {}
    for node in nodes:
        factor = math.exp(rng.gauss(0.0, spec.sigma) - spec.sigma**2 / 2) if spec.sigma else 1.0
        out[node.name] = node.mtbf_h * 3600.0 if node.mtbf_h is not None else spec.mtbf_s * factor
    return out


def outages(name: str, mtbf_s: float, spec: ChurnSpec, seed: int) -> Iterator[tuple[float, float]]:
    """The node's (down_at, up_at) periods in time order, without end (up first, from 0)."""
    rng = random.Random(f"{seed}/{name}")
    t = 0.0
    while True:
        down = t + rng.expovariate(1.0 / mtbf_s)
        up = down + rng.expovariate(1.0 / spec.mttr_s)
        yield down, up
        t = up


def node_timelines(
    nodes: Sequence[Node], spec: ChurnSpec, seed: int, horizon_s: float
) -> dict[str, list[tuple[float, float]]]:
    """Each node's outages that begin before `horizon_s` (the last may end after it)."""
    mtbf = node_mtbf_s(nodes, spec, seed)
    out: dict[str, list[tuple[float, float]]] = {}
    for node in nodes:
        periods: list[tuple[float, float]] = []
        for down, up in outages(node.name, mtbf[node.name], spec, seed):
            if down >= horizon_s:
                break
            periods.append((down, up))
        out[node.name] = periods
    return out
