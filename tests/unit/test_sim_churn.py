"""Churn specs: what they parse to, the errors a user reads, and the timelines they draw."""

from __future__ import annotations

import math
from statistics import fmean, median

import pytest

from scheduler.cluster import Node
from scheduler.sim.churn import ChurnError, ChurnSpec, node_mtbf_s, node_timelines

FIX = "To fix: write e.g. exp:mtbf=24h,mttr=2h,spread=lognormal:1.0"


def nodes(count: int, mtbf_h: float | None = None) -> list[Node]:
    return [Node(name=f"n{i:05d}", cpus=8, memory_gb=32, mtbf_h=mtbf_h) for i in range(count)]


def test_a_spec_with_a_spread_parses_to_seconds_and_sigma() -> None:
    spec = ChurnSpec.parse("exp:mtbf=24h,mttr=2h,spread=lognormal:1.0")
    assert spec == ChurnSpec(
        "exp", 86400.0, 7200.0, 1.0, "exp:mtbf=24h,mttr=2h,spread=lognormal:1.0"
    )


def test_a_spec_without_a_spread_gives_every_node_the_mean() -> None:
    spec = ChurnSpec.parse("exp:mtbf=90m,mttr=600")
    assert (spec.mtbf_s, spec.mttr_s, spec.sigma) == (5400.0, 600.0, 0.0)
    assert set(node_mtbf_s(nodes(5), spec, seed=0).values()) == {5400.0}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("mtbf=24h,mttr=2h", "start with the distribution and a colon"),
        ("weibull:mtbf=24h,mttr=2h", "unknown distribution 'weibull'; choose from exp"),
        ("exp:mtbf=24h", "mttr missing"),
        ("exp:mttr=2h", "mtbf missing"),
        ("exp:mtbf=24h,mtr=2h", "unknown key 'mtr'; did you mean 'mttr'?"),
        ("exp:mtbf=24h,mttr=2h,mttr=3h", "mttr is given twice"),
        ("exp:mtbf=24h,mttr", "'mttr' is not key=value"),
        ("exp:mtbf=0,mttr=2h", "mtbf must be more than 0"),
        ("exp:mtbf=1h,mttr=0s", "mttr must be more than 0"),
        ("exp:mtbf=soon,mttr=2h", "mtbf: not a duration: 'soon'; write seconds (5400) or a"),
        ("exp:mtbf=1h,mttr=2h,spread=normal:1", "spread 'normal:1': write lognormal:SIGMA"),
        ("exp:mtbf=1h,mttr=2h,spread=lognormal:wide", "spread sigma 'wide' is not a number"),
        ("exp:mtbf=1h,mttr=2h,spread=lognormal:-1", "spread sigma must be a number >= 0"),
    ],
)
def test_a_bad_spec_says_what_is_wrong_and_what_to_write(text: str, problem: str) -> None:
    with pytest.raises(ChurnError) as e:
        ChurnSpec.parse(text)
    message = str(e.value)
    assert message.startswith(f"churn {text!r}: {problem}")
    assert message.endswith(FIX)


def test_the_lognormal_spread_keeps_the_fleets_mean_mtbf() -> None:
    # exp(N(0, 1) - 1/2) has mean 1 and median exp(-1/2) = 0.61: spread, but mean-preserving.
    spec = ChurnSpec.parse("exp:mtbf=10h,mttr=1h,spread=lognormal:1.0")
    mtbf = list(node_mtbf_s(nodes(20_000), spec, seed=7).values())
    assert fmean(mtbf) == pytest.approx(36_000, rel=0.05)
    assert median(mtbf) == pytest.approx(36_000 * math.exp(-0.5), rel=0.05)
    assert min(mtbf) < 3_600 < 360_000 < max(mtbf)


def test_a_node_with_mtbf_h_in_the_cluster_file_keeps_it() -> None:
    spec = ChurnSpec.parse("exp:mtbf=10h,mttr=1h,spread=lognormal:1.0")
    fleet = [*nodes(3), Node(name="lab", cpus=8, memory_gb=32, mtbf_h=500.0)]
    mtbf = node_mtbf_s(fleet, spec, seed=0)
    assert mtbf["lab"] == 500 * 3600
    # drawing a factor for every node keeps the others' as they were without `lab`
    assert node_mtbf_s(nodes(3), spec, seed=0) == {k: v for k, v in mtbf.items() if k != "lab"}


def test_timelines_alternate_up_and_down_and_are_the_same_for_the_same_seed() -> None:
    spec = ChurnSpec.parse("exp:mtbf=2h,mttr=30m,spread=lognormal:0.5")
    first = node_timelines(nodes(20), spec, seed=3, horizon_s=86400)
    assert first == node_timelines(nodes(20), spec, seed=3, horizon_s=86400)
    assert first != node_timelines(nodes(20), spec, seed=4, horizon_s=86400)
    for periods in first.values():
        ends = [0.0] + [up for _, up in periods]
        assert all(prev < down < up for (down, up), prev in zip(periods, ends, strict=False))
        assert all(down < 86400 for down, _ in periods)


def test_a_longer_horizon_extends_a_nodes_timeline_without_changing_its_start() -> None:
    spec = ChurnSpec.parse("exp:mtbf=2h,mttr=30m")
    short = node_timelines(nodes(5), spec, seed=1, horizon_s=20_000)
    long = node_timelines(nodes(5), spec, seed=1, horizon_s=200_000)
    for name, periods in short.items():
        assert long[name][: len(periods)] == periods


def test_a_node_is_up_mtbf_over_mtbf_plus_mttr_of_the_time() -> None:
    spec = ChurnSpec.parse("exp:mtbf=3h,mttr=1h")
    horizon = 3600.0 * 100_000
    periods = node_timelines(nodes(1), spec, seed=0, horizon_s=horizon)["n00000"]
    down = sum(min(up, horizon) - d for d, up in periods)
    assert 1 - down / horizon == pytest.approx(spec.availability(spec.mtbf_s), abs=0.01)
    assert spec.availability(spec.mtbf_s) == 0.75
