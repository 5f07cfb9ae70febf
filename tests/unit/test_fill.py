"""FGD's fill procedure and the baseline packers, on small hand-built fleets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.gpus import resolve
from scheduler.sim.fill import (
    LISTS,
    NODE_LISTS,
    FleetNode,
    Packer,
    PackerFactory,
    Pod,
    TraceNotFoundError,
    fill,
    pod_type_distribution,
    read_nodes,
    read_pods,
    trace_dir,
)
from scheduler.sim.packers import (
    BestFitPacker,
    FirstFitPacker,
    NodeState,
    NodeStatePacker,
    RayDefaultPacker,
    fits,
)

BASELINES: list[type[NodeStatePacker]] = [FirstFitPacker, BestFitPacker, RayDefaultPacker]


def node(
    name: str, gpus: int, model: str | None = "T4", cpu: int = 64_000, memory: int = 262_144
) -> FleetNode:
    return FleetNode(name=name, cpu_milli=cpu, memory_mib=memory, gpu_count=gpus, gpu_model=model)


def pod(
    gpu_milli: int = 1000,
    num_gpu: int = 1,
    *,
    cpu: int = 1000,
    memory: int = 1024,
    spec: set[str] | None = None,
    name: str = "p",
) -> Pod:
    return Pod(
        name=name,
        cpu_milli=cpu,
        memory_mib=memory,
        num_gpu=num_gpu,
        gpu_milli=gpu_milli if num_gpu else 0,
        gpu_spec=frozenset(spec) if spec else None,
    )


def node_state(gpu_free: list[int], cpu: int = 64_000, model: str | None = "T4") -> NodeState:
    """A node part-used already: `gpu_free` milli left on each of its GPUs."""
    return NodeState(
        name="a",
        index=0,
        cpu_total=cpu,
        memory_total=262_144,
        cpu_free=cpu,
        memory_free=262_144,
        gpu_free=list(gpu_free),
        model=model,
    )


class RecordingPacker:
    """Wraps a packer and records the names of the pods it is offered."""

    def __init__(self, inner: Packer, log: list[str]) -> None:
        self.inner = inner
        self.name = inner.name
        self.log = log

    def place(self, pod: Pod) -> bool:
        self.log.append(pod.name)
        return self.inner.place(pod)

    def allocated_gpu_milli(self) -> int:
        return self.inner.allocated_gpu_milli()


def recording(factory: PackerFactory, log: list[str]) -> PackerFactory:
    def make(nodes: Sequence[FleetNode], distribution: Sequence[tuple[Pod, float]]) -> Packer:
        return RecordingPacker(factory(nodes, distribution), log)

    return make


def test_the_fill_stops_when_the_gpus_requested_reach_130_percent_of_capacity() -> None:
    result = fill([node("a", 10)], [pod(1000)], FirstFitPacker, seed=1)

    assert result.gpus_total == 10
    assert result.arrived_at_130 == 13
    assert (result.failed_at_100, result.failed_at_130) == (0, 3)
    assert (result.unallocated_at_100, result.unallocated_at_130) == (0, 0)
    assert [c.arrived for c in result.checkpoints] == [10, 13]


def test_fractional_pods_leave_fractional_gpus_unallocated_at_each_checkpoint() -> None:
    # 300 milli each on one GPU: 900 fit; the 4th pod (1200 requested) reaches 100% and fails,
    # the 5th (1500) reaches 130% and fails too.
    result = fill([node("a", 1)], [pod(300)], FirstFitPacker, seed=1)

    assert [c.arrived for c in result.checkpoints] == [4, 5]
    assert result.unallocated_at_100 == pytest.approx(0.1)
    assert result.unallocated_fraction_130 == pytest.approx(0.1)
    assert (result.failed_at_100, result.failed_at_130) == (1, 2)


def test_the_fill_refuses_checkpoints_without_100_and_130_percent() -> None:
    with pytest.raises(ValueError, match="checkpoints must include 1.0 and 1.3"):
        fill([node("a", 1)], [pod(300)], FirstFitPacker, seed=1, checkpoints=(0.5, 1.0))


@pytest.mark.parametrize("packer", BASELINES)
def test_a_pod_that_fits_nowhere_fails_and_allocates_nothing(
    packer: type[NodeStatePacker],
) -> None:
    p = packer([node("a", 1)])
    assert p.place(pod(600))
    before = (p.nodes[0].cpu_free, p.nodes[0].memory_free, list(p.nodes[0].gpu_free))

    assert not p.place(pod(600, cpu=2000))

    assert p.allocated_gpu_milli() == 600
    assert (p.nodes[0].cpu_free, p.nodes[0].memory_free, p.nodes[0].gpu_free) == before
    assert len(p.placements) == 1


def test_the_same_seed_gives_the_same_arrivals_to_every_packer() -> None:
    fleet = [node("a", 2), node("b", 4)]
    pods = [pod(m, name=f"p{m}") for m in (100, 250, 500, 1000)] + [pod(num_gpu=0, name="cpu")]
    first: list[str] = []
    ray: list[str] = []
    other_seed: list[str] = []

    fill(fleet, pods, recording(FirstFitPacker, first), seed=42)
    fill(fleet, pods, recording(RayDefaultPacker, ray), seed=42)
    fill(fleet, pods, recording(FirstFitPacker, other_seed), seed=43)

    assert first == ray
    assert first != other_seed


def test_first_fit_best_fit_and_ray_each_choose_a_different_node() -> None:
    # After a 500-milli pod: a keeps 1500 free (first in order), b keeps 500 (the least),
    # c keeps 7500 (the most free share: Ray's worst-fit).
    fleet = [node("a", 2), node("b", 1), node("c", 8)]
    chosen = {}
    for packer in BASELINES:
        p = packer(fleet)
        assert p.place(pod(500))
        chosen[p.name] = p.placements[-1].node

    assert chosen == {"first-fit": "a", "best-fit": "b", "ray-2.60": "c"}


def test_ray_sees_only_summed_free_gpu_and_fails_a_pod_sent_to_a_fragmented_node() -> None:
    fleet = [node("fragmented", 4), node("whole", 1)]
    share = pod(450)
    packers = {packer.name: packer(fleet) for packer in (RayDefaultPacker, BestFitPacker)}
    for p in packers.values():
        for i in range(4):  # 400 milli left on each of the 4 GPUs: 1600 in all
            p.nodes[0].take(pod(600, cpu=0, memory=0), [i])
    ray, best = packers["ray-2.60"], packers["best-fit"]
    assert isinstance(ray, RayDefaultPacker)

    assert not ray.place(share)
    assert ray.stuck_on_fragments == 1
    assert ray.allocated_gpu_milli() == 4 * 600
    assert best.place(share)
    assert best.placements[-1].node == "whole"


@pytest.mark.parametrize("packer", BASELINES)
@pytest.mark.parametrize("exhausted", ["cpu", "memory"])
def test_cpu_or_memory_exhaustion_fails_a_pod_even_with_free_gpus(
    packer: type[NodeStatePacker], exhausted: str
) -> None:
    p = packer([node("a", 4, cpu=4000, memory=4096)])
    big = pod(cpu=3000) if exhausted == "cpu" else pod(memory=3072)

    assert p.place(big)
    assert not p.place(big)
    assert p.nodes[0].whole_gpus_free == 3


@pytest.mark.parametrize("packer", BASELINES)
def test_a_gpu_spec_constraint_is_honoured(packer: type[NodeStatePacker]) -> None:
    p = packer([node("t4", 8, model="T4"), node("v100", 1, model="V100-32GB")])

    assert p.place(pod(spec={"V100-16GB", "V100-32GB"}))
    assert p.placements[-1].node == "v100"
    assert not p.place(pod(spec={"V100-16GB", "V100-32GB"}))
    assert p.place(pod(num_gpu=0, spec=None))  # CPU-only pods ignore GPU models


def test_a_share_goes_to_the_fullest_gpu_that_holds_it_whole_gpus_to_the_lowest_free() -> None:
    state = node_state([1000, 300, 600, 600])

    assert fits(pod(250), state) == [1]
    assert fits(pod(500), state) == [2]
    assert fits(pod(700), state) == [0]
    assert fits(pod(1000), state) == [0]
    assert fits(pod(num_gpu=2), state) is None


@given(
    free=st.lists(st.sampled_from([0, 100, 300, 450, 600, 1000]), max_size=8),
    num_gpu=st.integers(0, 3),
    gpu_milli=st.integers(1, 1000),
    cpu=st.integers(0, 8000),
)
def test_the_quick_fit_check_agrees_with_the_gpus_fits_chooses(
    free: list[int], num_gpu: int, gpu_milli: int, cpu: int
) -> None:
    state = node_state(free, cpu=4000)
    p = pod(gpu_milli if num_gpu == 1 else 1000, num_gpu, cpu=cpu)

    gpus = fits(p, state)

    assert state.can_fit(p) == (gpus is not None)
    if gpus is not None:
        assert len(gpus) == num_gpu
        assert all(state.gpu_free[i] >= p.gpu_milli for i in gpus)


@pytest.mark.parametrize("packer", BASELINES)
@given(
    shapes=st.lists(
        st.tuples(st.integers(0, 4), st.integers(1, 1000), st.integers(0, 6000)), max_size=40
    )
)
def test_no_packer_ever_overcommits_a_gpu_cpu_or_memory(
    packer: type[NodeStatePacker], shapes: list[tuple[int, int, int]]
) -> None:
    p = packer([node("a", 2, cpu=8000), node("b", 4, cpu=16_000), node("c", 1, cpu=4000)])
    placed = 0
    for num_gpu, milli, cpu in shapes:
        offered = pod(milli if num_gpu == 1 else 1000, num_gpu, cpu=cpu)
        if p.place(offered):
            placed += offered.gpu_demand_milli

    for state in p.nodes:
        assert all(0 <= free <= 1000 for free in state.gpu_free)
        assert state.cpu_free >= 0
        assert state.memory_free >= 0
    assert p.allocated_gpu_milli() == placed


def test_the_pod_type_distribution_counts_each_shape_most_common_first() -> None:
    pods = [pod(500, name="x1"), pod(1000, name="y1"), pod(1000, name="y2"), pod(1000, cpu=2000)]

    distribution = pod_type_distribution(pods)

    assert [(p.name, w) for p, w in distribution] == [("y1", 0.5), ("x1", 0.25), ("p", 0.25)]


def test_a_missing_trace_folder_says_how_to_fix_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESH_TRACES", str(tmp_path))

    with pytest.raises(TraceNotFoundError, match="To fix: set MESH_TRACES"):
        trace_dir()


def test_the_default_openb_list_has_8152_pods_and_every_gpu_model_resolves() -> None:
    try:
        folder = trace_dir()
    except TraceNotFoundError as e:
        pytest.skip(str(e))
    catalogue = {resolve(name).name for name in ("P100", "T4", "V100M16", "V100M32", "A10")}

    pods = read_pods(folder / LISTS["default"])
    constrained = read_pods(folder / LISTS["gpuspec10"])  # the default list names no models
    nodes = read_nodes(folder / NODE_LISTS["gpu_node"])

    assert len(pods) == 8152
    assert sum(n.gpu_count for n in nodes) == 6212
    models = {m for p in pods + constrained if p.gpu_spec for m in p.gpu_spec}
    models |= {n.gpu_model for n in nodes if n.gpu_model}
    assert models >= catalogue
    assert all(resolve(m).name == m for m in models)
