"""Cluster value types and the cluster description file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scheduler.cluster import ClusterSnapshot, Gpu, Node, cluster_from_dict, load_cluster
from scheduler.documents import SpecError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "clusters"


def node_entry(name: str = "alice-4090", **fields: Any) -> dict[str, Any]:
    """One `nodes:` entry of a cluster file, with its required keys filled in."""
    return {"name": name, "cpus": 16, "memory_gb": 64, **fields}


def write_cluster(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(SpecError) as caught:
        load_cluster(write_cluster(tmp_path, text))
    return str(caught.value)


def make_node(name: str, *models: str) -> Node:
    return Node(
        name=name,
        cpus=8,
        memory_gb=32,
        gpus=tuple(Gpu(i, m, 24.0, (8, 6)) for i, m in enumerate(models)),
    )


# --- value types ----


def test_a_node_lists_its_distinct_gpu_models_in_index_order() -> None:
    node = make_node("mixed", "RTX-3090", "RTX-3060", "RTX-3090")
    assert node.gpu_models == ("RTX-3090", "RTX-3060")
    assert make_node("cpu-only").gpu_models == ()


def test_a_snapshot_finds_nodes_by_name_and_counts_gpus() -> None:
    snapshot = ClusterSnapshot(
        nodes=(make_node("a", "RTX-4090"), make_node("b", "A100-80GB", "A100-80GB"))
    )
    assert snapshot.node("b").gpu_models == ("A100-80GB",)
    assert snapshot.total_gpus == 3
    assert snapshot.community_weights == {}
    assert snapshot.speeds == {}
    with pytest.raises(KeyError):
        snapshot.node("c")


def test_a_snapshot_refuses_two_nodes_with_one_name() -> None:
    with pytest.raises(ValueError, match="two nodes are named 'a'"):
        ClusterSnapshot(nodes=(make_node("a"), make_node("b"), make_node("a")))


def test_snapshots_with_the_same_nodes_are_equal() -> None:
    assert ClusterSnapshot(nodes=(make_node("a", "T4"),)) == ClusterSnapshot(
        nodes=(make_node("a", "T4"),)
    )


# --- the example clusters ----


def test_the_gavel_example_has_108_gpus_on_27_nodes() -> None:
    snapshot = load_cluster(EXAMPLES / "gavel-108.yaml")
    assert len(snapshot.nodes) == 27
    assert snapshot.total_gpus == 108
    per_model: dict[str, int] = {}
    for node in snapshot.nodes:
        assert len(node.gpus) == 4
        for gpu in node.gpus:
            per_model[gpu.model] = per_model.get(gpu.model, 0) + 1
    assert per_model == {"V100-16GB": 36, "P100": 36, "K80": 36}
    assert snapshot.node("k80-08").gpus[3] == Gpu(3, "K80", 12.0, (3, 7))


def test_the_volunteer_example_mixes_home_pcs_a_workstation_a_lab_server_and_a_cpu_node() -> None:
    snapshot = load_cluster(EXAMPLES / "volunteers-small.yaml")
    models = {m for node in snapshot.nodes for m in node.gpu_models}
    assert {"RTX-3090", "RTX-4090", "RTX-3060", "RTX-A6000", "A100-80GB"} <= models
    assert snapshot.node("lab-a100").gpu_models == ("A100-80GB",)
    assert len(snapshot.node("lab-a100").gpus) == 4
    assert any(not node.gpus for node in snapshot.nodes)
    assert snapshot.community_weights["swahili-nlp"] == 2
    owners = {node.owner for node in snapshot.nodes}
    assert {"swahili-nlp", "quechua-lm", "bio-ml"} <= owners
    home = [n for n in snapshot.nodes if n.availability is not None]
    assert len(home) >= 3
    assert all(n.mtbf_h is not None and n.mtbf_h > 0 for n in home)
    assert snapshot.total_gpus == sum(len(n.gpus) for n in snapshot.nodes)


def test_the_openb_sample_uses_the_trace_model_names() -> None:
    snapshot = load_cluster(EXAMPLES / "openb-sample.yaml")
    models = {m for node in snapshot.nodes for m in node.gpu_models}
    assert models == {"P100", "G3", "V100-32GB", "V100-16GB", "G2", "T4", "A10"}
    assert snapshot.total_gpus == 63


def test_every_example_cluster_loads() -> None:
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert len(files) >= 2
    for path in files:
        assert load_cluster(path).nodes


# --- reading a cluster file ----


def test_a_cluster_file_becomes_simulated_nodes_with_gpus_indexed_in_order(
    tmp_path: Path,
) -> None:
    path = write_cluster(
        tmp_path,
        """
communities:
  swahili-nlp: {weight: 2}
nodes:
  - name: alice-4090
    cpus: 16
    memory_gb: 64
    gpus: {model: NVIDIA GeForce RTX 4090, count: 1}
    owner: swahili-nlp
    availability: 0.6
    mtbf_h: 36
  - name: mixed-box
    cpus: 8
    memory_gb: 32
    gpus: [{model: RTX-3090, count: 1}, {model: 3060, count: 2, memory_gb: 8}]
  - name: cpu-only
    cpus: 32
    memory_gb: 128
""",
    )
    snapshot = load_cluster(path)
    assert snapshot.node("alice-4090") == Node(
        name="alice-4090",
        cpus=16,
        memory_gb=64,
        gpus=(Gpu(0, "RTX-4090", 24.0, (8, 9)),),
        owner="swahili-nlp",
        availability=0.6,
        mtbf_h=36,
        simulated=True,
    )
    assert snapshot.node("mixed-box").gpus == (
        Gpu(0, "RTX-3090", 24.0, (8, 6)),
        Gpu(1, "RTX-3060", 8.0, (8, 6)),
        Gpu(2, "RTX-3060", 8.0, (8, 6)),
    )
    assert snapshot.node("cpu-only").gpus == ()
    assert all(node.simulated and node.schedulable for node in snapshot.nodes)
    assert snapshot.community_weights == {"swahili-nlp": 2.0}


def test_gpu_count_defaults_to_one() -> None:
    snapshot = cluster_from_dict({"nodes": [node_entry(gpus={"model": "L4"})]}, source="c.yaml")
    assert snapshot.total_gpus == 1


def test_a_misspelt_key_is_named_with_the_key_it_probably_meant(tmp_path: Path) -> None:
    text = """
nodes:
  - {name: a, cpus: 4, memory_gb: 8}
  - {name: b, cpus: 4, memory_gb: 8}
  - {name: c, cpus: 4, memory_gb: 8, gpus: {modle: RTX-4090, count: 1}}
"""
    assert load_error(tmp_path, text) == (
        "cluster.yaml: nodes[2].gpus.model: required\n"
        "cluster.yaml: nodes[2].gpus.modle: unknown key; did you mean 'model'?"
    )


def test_a_misspelt_key_in_a_list_of_gpus_names_its_position() -> None:
    data = {"nodes": [node_entry(gpus=[{"model": "RTX-3090"}, {"model": "T4", "cont": 2}])]}
    with pytest.raises(SpecError) as caught:
        cluster_from_dict(data, source="cluster.yaml")
    assert str(caught.value) == (
        "cluster.yaml: nodes[0].gpus[1].cont: unknown key; did you mean 'count'?"
    )


def test_a_misspelt_top_level_key_is_named(tmp_path: Path) -> None:
    assert load_error(tmp_path, "nodse: []\n") == (
        "cluster.yaml: nodes: required\ncluster.yaml: nodse: unknown key; did you mean 'nodes'?"
    )


def test_an_unknown_gpu_model_suggests_the_closest(tmp_path: Path) -> None:
    text = "nodes:\n  - {name: a, cpus: 4, memory_gb: 8, gpus: {model: RTX-4009, count: 1}}\n"
    assert load_error(tmp_path, text) == (
        "cluster.yaml: nodes[0].gpus.model: unknown GPU model 'RTX-4009'; did you mean "
        "'RTX-4090'? (meshctl gpus lists the catalogue)"
    )


def test_duplicate_node_names_are_named_with_both_positions(tmp_path: Path) -> None:
    text = """
nodes:
  - {name: alice-4090, cpus: 4, memory_gb: 8}
  - {name: bob-3090, cpus: 4, memory_gb: 8}
  - {name: alice-4090, cpus: 4, memory_gb: 8}
"""
    assert load_error(tmp_path, text) == (
        "cluster.yaml: nodes: duplicate node name 'alice-4090' (nodes[0] and nodes[2])"
    )


def test_availability_above_one_is_refused(tmp_path: Path) -> None:
    text = "nodes:\n  - {name: a, cpus: 4, memory_gb: 8, availability: 1.5}\n"
    assert load_error(tmp_path, text) == (
        "cluster.yaml: nodes[0].availability: Input should be less than or equal to 1"
    )


def test_a_node_name_that_is_not_a_dns_label_is_refused() -> None:
    with pytest.raises(SpecError) as caught:
        cluster_from_dict({"nodes": [node_entry("Alice_PC")]}, source="cluster.yaml")
    assert str(caught.value) == (
        "cluster.yaml: nodes[0].name: 'Alice_PC' is not a valid node name: use at most 63 "
        "lower-case letters, digits and '-', starting and ending with a letter or digit"
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"gpus": 3}, "nodes[0].gpus: give {model, count} or a list of them"),
        (
            {"gpus": {"model": "T4", "memory_gb": 0.5}},
            "nodes[0].gpus.memory_gb: Input should be greater than or equal to 1",
        ),
        (
            {"gpus": {"model": "T4", "count": 0}},
            "nodes[0].gpus.count: Input should be greater than or equal to 1",
        ),
        ({"mtbf_h": 0}, "nodes[0].mtbf_h: Input should be greater than 0"),
        ({"cpus": -1}, "nodes[0].cpus: Input should be greater than 0"),
        (
            {"owner": "Bio ML"},
            "nodes[0].owner: 'Bio ML' is not a valid community name: use at most 63 lower-case"
            " letters, digits and '-', starting and ending with a letter or digit",
        ),
    ],
)
def test_out_of_range_node_fields_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as caught:
        cluster_from_dict({"nodes": [node_entry(**fields)]}, source="cluster.yaml")
    assert str(caught.value) == f"cluster.yaml: {message}"


def test_gpu_memory_above_the_catalogue_value_is_allowed() -> None:
    data = {"nodes": [node_entry(gpus={"model": "RTX-4060-Ti", "memory_gb": 32})]}
    assert cluster_from_dict(data, source="c.yaml").nodes[0].gpus[0].memory_gb == 32


def test_community_weights_must_be_positive_and_named_as_labels() -> None:
    data = {"communities": {"bio-ml": {"weight": 0}}, "nodes": [node_entry()]}
    with pytest.raises(SpecError) as caught:
        cluster_from_dict(data, source="c.yaml")
    assert str(caught.value) == "c.yaml: communities.bio-ml.weight: Input should be greater than 0"


def test_a_cluster_without_nodes_is_refused() -> None:
    with pytest.raises(SpecError) as caught:
        cluster_from_dict({"nodes": []}, source="c.yaml")
    assert str(caught.value) == "c.yaml: nodes: a cluster needs at least one node"


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    assert load_error(tmp_path, "# nothing here\n") == (
        "cluster.yaml: empty; a cluster file needs a `nodes:` list"
    )


def test_a_file_with_two_documents_is_refused(tmp_path: Path) -> None:
    one = "nodes:\n  - {name: a, cpus: 1, memory_gb: 1}\n"
    text = one + "---\n" + one
    assert load_error(tmp_path, text) == (
        "cluster.yaml: holds 2 YAML documents; a cluster file holds one"
    )


def test_a_document_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    assert load_error(tmp_path, "- a\n- b\n") == (
        "cluster.yaml: expected a mapping with a `nodes:` list, got list"
    )


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file"):
        load_cluster(tmp_path / "absent.yaml")
