"""Nodes on this machine: the head as a node, and a local Ray cluster of declared nodes.

`meshctl up --nodes`, the integration tests and the benchmarks start their clusters here, so
that every local mesh labels its nodes the same way (DESIGN.md "Node labels").
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cluster.labels import labels_for
from scheduler import gpus
from scheduler.cluster import Gpu, Node

OBJECT_STORE_BYTES = 75 * 1024**2  # per declared node; they share this machine's memory
HEAD_OBJECT_STORE_BYTES = 256 * 1024**2


def host_node_name(hostname: str | None = None) -> str:
    """This machine's name made a DNS label (`mesh/node` of the head)."""
    name = (hostname if hostname is not None else socket.gethostname()).split(".")[0].lower()
    name = re.sub(r"[^a-z0-9-]+", "-", name).strip("-")[:63].strip("-")
    return name or "head"


def _memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return 1.0


def detected_gpus() -> tuple[Gpu, ...]:
    """This machine's NVIDIA GPUs as Ray detects them; () when there are none.

    A model missing from the catalogue is reported as no GPUs rather than guessed at; the
    node agent's probe (pynvml) reads name and memory exactly.
    """
    from ray._private.accelerators import NvidiaGPUAcceleratorManager

    count = NvidiaGPUAcceleratorManager.get_current_node_num_accelerators()
    kind = NvidiaGPUAcceleratorManager.get_current_node_accelerator_type()
    model = gpus.find(kind) if count and kind else None
    if model is None:
        return ()
    return tuple(
        Gpu(i, model.name, model.memory_gb, model.compute_capability) for i in range(count)
    )


def host_node(name: str | None = None) -> Node:
    """This machine: its CPUs, memory and the GPUs Ray detects on it."""
    return Node(
        name=name or host_node_name(),
        cpus=float(os.cpu_count() or 1),
        memory_gb=round(_memory_gb(), 1),
        gpus=detected_gpus(),
    )


def declared_node_args(node: Node) -> dict[str, Any]:
    """`Cluster.add_node` arguments for a node whose GPUs are declared, not real (simulated)."""
    return {
        "num_cpus": node.cpus,
        "num_gpus": len(node.gpus),
        "memory": int(node.memory_gb * 2**30),
        "object_store_memory": OBJECT_STORE_BYTES,
        "labels": labels_for(dataclasses.replace(node, simulated=True)),
    }


def start_cluster(
    head: Node,
    declared: Sequence[Node] = (),
    *,
    system_config: dict[str, Any] | None = None,
    progress: Callable[[str], None] = lambda message: None,
    ray_host: str | None = None,
    ray_port: int = 0,
) -> Any:
    """A Ray cluster on this machine: `head` (real) and one Ray node per declared node.

    Returns the `ray.cluster_utils.Cluster`; its `shutdown()` stops every process it started.
    Ray picks free ports (the head's GCS port is `ray_port` when given), so it never collides
    with another Ray cluster on the machine. `ray_host`: the address the head advertises to
    joining volunteers (default: Ray's choice, this machine's primary address).
    """
    from ray.cluster_utils import Cluster

    head_args: dict[str, Any] = {
        "num_cpus": head.cpus,
        "num_gpus": len(head.gpus),
        "include_dashboard": False,
        "object_store_memory": HEAD_OBJECT_STORE_BYTES,
        "gcs_server_port": ray_port,
        "dashboard_port": None,
        "dashboard_agent_listen_port": None,
        "labels": labels_for(head),
    }
    # Ray runs its workers at nice 15 by default: beside any other work a training step then
    # stalls (0.2x of a plain process in benchmarks/finetune_overhead.py); the mesh's workloads
    # are what its machines are lent for, so they run at the plain priority.
    head_args["_system_config"] = {"worker_niceness": 0, **(system_config or {})}
    if ray_host:
        head_args["node_ip_address"] = ray_host
    progress(f"starting the Ray head on this machine ({head.name}, {head.cpus:g} CPUs)")
    cluster = Cluster(initialize_head=True, head_node_args=head_args)
    try:
        for i, node in enumerate(declared, 1):
            what = f"{len(node.gpus)} x {node.gpus[0].model}" if node.gpus else "no GPUs"
            progress(f"adding node {i}/{len(declared)}: {node.name} ({what}, simulated)")
            cluster.add_node(**declared_node_args(node))
        progress(f"waiting for {1 + len(declared)} Ray nodes")
        cluster.wait_for_nodes()
    except BaseException:
        cluster.shutdown()
        raise
    return cluster


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextmanager
def local_mesh(
    head: Node,
    declared: Sequence[Node],
    *,
    home: Path,
    admin_token: str,
    settings: dict[str, Any] | None = None,
    system_config: dict[str, Any] | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> Iterator[tuple[Any, str]]:
    """A whole mesh on this machine for tests and benchmarks: `start_cluster`, this process
    connected to it, the controller and the API on a free port. Yields (cluster, API URL);
    stops everything on exit."""
    import ray
    from ray import serve

    from scheduler.deploy import start_services

    cluster = start_cluster(head, declared, system_config=system_config, progress=progress)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        try:
            api = start_services(
                home=home, port=free_port(), admin_token=admin_token, settings=settings
            )
            yield cluster, api
        finally:
            serve.shutdown()
            ray.shutdown()
    finally:
        cluster.shutdown()
