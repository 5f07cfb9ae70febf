"""The only module of the scheduler that calls Ray.

It reads the cluster (nodes, their labels and resources), turns placements into placement groups
whose bundles are pinned to nodes by the `mesh/node` label, starts workload actors inside them,
watches them, and releases them. Placement groups and workload actors are detached and named
after the job, so a restarted controller finds them again and no running work dies with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.labels import NODE
from workloads import serving
from workloads.artifacts import store_actor
from workloads.runner import NAMESPACE, WorkloadActor, WorkloadError, worker_name

CONTROLLER = "mesh-controller"
GROUP_PREFIX = "mesh:"
# Ray refuses a bundle with no resources; a CPU-less, GPU-less bundle asks for this much CPU.
MIN_BUNDLE_CPU = 0.01

Ref = Any  # ray.ObjectRef
Worker = Any  # an ActorHandle of WorkloadActor

_Workload = ray.remote(WorkloadActor)


@dataclass(frozen=True)
class RayNode:
    """A Ray node as the controller sees it."""

    node_id: str
    alive: bool
    labels: dict[str, str]
    cpus: float
    memory_gb: float
    gpus: int

    @property
    def name(self) -> str | None:
        return self.labels.get(NODE)


@dataclass(frozen=True)
class BundleRequest:
    node: str
    cpus: float
    gpus: float  # a count, or a fraction of one GPU

    def resources(self) -> dict[str, float]:
        res: dict[str, float] = {}
        if self.cpus > 0:
            res["CPU"] = self.cpus
        if self.gpus > 0:
            res["GPU"] = self.gpus
        return res or {"CPU": MIN_BUNDLE_CPU}


def group_name(job: str, run: int, attempt: int) -> str:
    """`mesh:community/name:run.attempt`: one placement group per placement of a job."""
    return f"{GROUP_PREFIX}{job}:{run}.{attempt}"


def head_node_id() -> str:
    return str(ray.get_runtime_context().get_node_id())


def cluster_nodes() -> list[RayNode]:
    """Every node Ray knows, alive or dead."""
    nodes = []
    for n in ray.nodes():
        res = n.get("Resources", {})
        nodes.append(
            RayNode(
                node_id=n["NodeID"],
                alive=bool(n["Alive"]),
                labels=dict(n.get("Labels") or {}),
                cpus=float(res.get("CPU", 0.0)),
                memory_gb=float(res.get("memory", 0.0)) / 2**30,
                gpus=int(res.get("GPU", 0)),
            )
        )
    return nodes


def reserve(name: str, bundles: Sequence[BundleRequest]) -> tuple[PlacementGroup, Ref]:
    """A detached placement group with each bundle pinned to its node; and its ready ref."""
    pg = placement_group(
        [b.resources() for b in bundles],
        strategy="PACK",
        name=name,
        lifetime="detached",
        bundle_label_selector=[{NODE: b.node} for b in bundles],
    )
    return pg, pg.ready()


def start_workers(
    pg: PlacementGroup | None,
    group: str,
    job: str,
    kind: str,
    spec: dict[str, Any],
    bundles: Sequence[BundleRequest],
    contexts: Sequence[dict[str, Any]],
    first: int = 0,
) -> list[Worker]:
    """One detached workload actor per bundle, each in its own bundle of `pg`.

    `contexts[i]`: what bundle i's workload is told beyond the spec (`WorkContext` fields).
    The bundles are numbered from `first` (a Service replica placed again alone).
    Without `pg` (a Service: each replica's Serve application holds its bundle), each actor
    is a keeper that holds nothing, pinned to its bundle's node.
    """
    workers = []
    for i, (b, context) in enumerate(zip(bundles, contexts, strict=True), start=first):
        res = b.resources()
        where: dict[str, Any] = (
            {
                "num_cpus": res.get("CPU", 0.0),
                "num_gpus": res.get("GPU", 0.0),
                "scheduling_strategy": PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=i - first
                ),
            }
            if pg is not None
            else {"num_cpus": 0, "label_selector": {NODE: b.node}}
        )
        workers.append(
            _Workload.options(
                name=worker_name(group, i),
                namespace=NAMESPACE,
                lifetime="detached",
                max_restarts=0,
                max_concurrency=4,
                **where,
            ).remote(job, kind, spec, i, b.node, context)
        )
    return workers


def pings(workers: Sequence[Worker]) -> list[Ref]:
    """Refs that resolve once each worker runs (its workload has started)."""
    return [w.ping.remote() for w in workers]


def waits(workers: Sequence[Worker]) -> list[Ref]:
    """Refs that resolve when each worker's workload ends."""
    return [w.wait.remote() for w in workers]


def request_stop(workers: Sequence[Worker]) -> None:
    """Ask workloads to checkpoint and stop (a drain); fire and forget: each one's `wait`
    then returns a report with `stopped`."""
    for w in workers:
        w.request_stop.remote()


def log_refs(workers: Sequence[Worker], since: Sequence[int]) -> list[Ref]:
    return [w.logs.remote(s) for w, s in zip(workers, since, strict=True)]


def ready(refs: Sequence[Ref], timeout: float) -> list[Ref]:
    """The refs among `refs` that are ready within `timeout` seconds (all that are, at once)."""
    if not refs:
        return []
    done, _ = ray.wait(list(refs), num_returns=1, timeout=timeout, fetch_local=False)
    if not done:
        return []
    done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0, fetch_local=False)
    return list(done)


@dataclass(frozen=True)
class Outcome:
    """How a workload ended: `report` on success, else `error`; `lost` when its actor died."""

    report: dict[str, Any] | None = None
    error: str | None = None
    lost: bool = False


def outcome(ref: Ref) -> Outcome:
    try:
        report: dict[str, Any] = ray.get(ref, timeout=10)  # type: ignore[assignment]  # one ref, one value
        return Outcome(report=report)
    except RayTaskError as e:
        cause = e.cause if isinstance(e.cause, Exception) else e
        if isinstance(cause, WorkloadError):
            return Outcome(error=str(cause))
        return Outcome(error=f"{type(cause).__name__}: {cause}")
    except (RayActorError, GetTimeoutError) as e:
        return Outcome(error=f"the workload's process died: {type(e).__name__}", lost=True)
    except RayError as e:  # NodeDiedError, ObjectLostError...: its node went away
        return Outcome(error=f"{type(e).__name__}", lost=True)


def answered(ref: Ref) -> bool:
    """Whether a ready ping ref holds an answer (False: the worker or its node died)."""
    try:
        ray.get(ref, timeout=5)
        return True
    except RayError:
        return False


def fetch(ref: Ref) -> Any:
    """The value of a ready ref, or None when it failed."""
    try:
        return ray.get(ref, timeout=5)
    except RayError:
        return None


def groups() -> dict[str, dict[str, Any]]:
    """Our placement groups that Ray still has, by name: {"id", "state", "bundles"}."""
    found = {}
    for pg_id, info in ray.util.placement_group_table().items():
        name = info.get("name", "")
        if name.startswith(GROUP_PREFIX) and info.get("state") != "REMOVED":
            found[name] = {
                "id": pg_id,
                "state": info.get("state"),
                "bundles": len(info.get("bundles") or {}),
            }
    return found


def group_handle(pg_id: str) -> PlacementGroup:
    return PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id)))


def find_workers(group: str, count: int) -> list[Worker | None]:
    """The workload actors of a placement group, by name; None where one is gone."""
    found: list[Worker | None] = []
    for i in range(count):
        try:
            found.append(ray.get_actor(worker_name(group, i), namespace=NAMESPACE))
        except ValueError:
            found.append(None)
    return found


def release(pg: PlacementGroup | None, workers: Sequence[Worker | None]) -> None:
    """Stop a job's workload actors and free its placement group. Safe to repeat."""
    for w in workers:
        if w is not None:
            try:
                ray.kill(w, no_restart=True)
            except (RayError, ValueError):
                pass
    if pg is not None:
        try:
            remove_placement_group(pg)
        except Exception:  # already removed: nothing left to free
            pass


def controller() -> Any:
    """The running controller actor's handle; ValueError when there is none."""
    return ray.get_actor(CONTROLLER, namespace=NAMESPACE)


def release_named(group: str, count: int) -> None:
    """Release a placement group and its workers found by name (orphans, cancellations)."""
    info = groups().get(group)
    release(group_handle(info["id"]) if info else None, find_workers(group, count))


def delete_replica(group: str, bundle: int) -> None:
    """Delete a Service replica's application from Serve (skipped when it is gone)."""
    serving.delete_apps([serving.app_name(group, bundle)])


def delete_orphan_replicas(keep: set[tuple[str, int]]) -> None:
    """Delete the replica applications of no (group, bundle) in `keep`."""
    wanted = {serving.app_name(g, i) for g, i in keep}
    serving.delete_apps([a for a in serving.service_apps() if a not in wanted])


def artifacts_missing(digests: Sequence[str]) -> list[str]:
    """The digests among `digests` that the artifact store does not hold (complete)."""
    if not digests:
        return []
    try:
        store = store_actor()
    except ValueError:
        return list(digests)
    found: list[Any] = ray.get([store.stat.remote(d) for d in digests], timeout=30)
    return [d for d, stat in zip(digests, found, strict=True) if stat is None]


def artifact_bytes(digest: str, limit: int) -> bytes | None:
    """A small blob's bytes (a tree's manifest), None when absent or larger than `limit`."""
    try:
        store = store_actor()
        stat: Any = ray.get(store.stat.remote(digest), timeout=30)
        if stat is None or stat["size"] > limit:
            return None
        data: bytes = ray.get(store.read.remote(digest, 0, stat["size"]), timeout=30)
        return data
    except (ValueError, RayError):
        return None
