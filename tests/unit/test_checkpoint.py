"""The checkpoint interval: Daly's optimum from the checkpoint cost and the placement's MTBF."""

from __future__ import annotations

import math

import pytest

from scheduler.policy.checkpoint import DEFAULT_MTBF_H, placement_mtbf_s, young_daly_interval_s


def test_a_placement_fails_when_any_of_its_nodes_does() -> None:
    assert placement_mtbf_s([10.0, 10.0]) == pytest.approx(5 * 3600)
    assert placement_mtbf_s([None]) == pytest.approx(DEFAULT_MTBF_H * 3600)


def test_daly_refines_young_for_a_cheap_checkpoint() -> None:
    c, m = 60.0, 24 * 3600.0
    young = math.sqrt(2 * c * m)
    assert young_daly_interval_s(c, m) == pytest.approx(
        young * (1 + math.sqrt(c / (2 * m)) / 3 + c / (18 * m)) - c
    )
    assert abs(young_daly_interval_s(c, m) - young) < 0.05 * young


def test_the_edges_are_what_they_should_be() -> None:
    assert young_daly_interval_s(0.0, 3600.0) == 0.0
    assert young_daly_interval_s(60.0, math.inf) == math.inf
    assert young_daly_interval_s(7200.0, 3600.0) == 3600.0


def test_less_reliable_nodes_checkpoint_more_often() -> None:
    assert young_daly_interval_s(60, placement_mtbf_s([2.0])) < young_daly_interval_s(
        60, placement_mtbf_s([200.0])
    )
