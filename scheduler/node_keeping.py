"""The controller's side of nodes: who is up, what each node is trusted with, and drains.

Mixed into `MeshController`. Each round it:
- observes Ray's nodes and records joins and losses with their history (availability, MTBF);
- gives each node a state: SIMULATED, VERIFYING, READY or SUSPECT (`scheduler.verify`), and
  DRAINING or DRAINED while a drain runs; only SIMULATED and READY nodes get work;
- places the Probe that verifies a newly joined node's GPUs there itself (the policy never sees
  it: the node takes no other work until it is verified), and judges the Probe's reports;
- drains: a draining node gets nothing new; its fine-tunes checkpoint and go back to the queue,
  its Service replicas are placed again elsewhere, its other work goes back to the queue.
  Once nothing of the mesh runs there, it is DRAINED and its volunteer may leave.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from cluster.labels import LabelError, node_from_labels
from scheduler import actuator, verify
from scheduler.cluster import Node
from scheduler.jobio import queue_job
from scheduler.policy import BundleAssignment
from scheduler.spec import parse_job
from scheduler.store import State, Store

if TYPE_CHECKING:
    from scheduler.controller import Active, Settings

NODE_REFRESH_S = 30.0  # how often an alive node's last_seen is written
UNLIST_S = 3.0  # a moved replica's old copy stops this long after it left the serving table
DRAINING = "DRAINING"
DRAINED = "DRAINED"


@dataclasses.dataclass(frozen=True)
class NodeState:
    state: str
    why: str
    schedulable: bool


class NodeKeeping:
    """Node observation, verification and drains (see the module docstring)."""

    store: Store
    settings: Settings
    active: dict[str, Active]
    _lock: threading.RLock
    _wake: threading.Event

    def _init_nodes(self) -> None:
        self._nodes: dict[str, Node] = {}  # alive mesh nodes by name, as the policy sees them
        self._node_states: dict[str, NodeState] = {}
        self._seen: dict[str, tuple[str, float]] = {}  # name -> (Ray node id, last written)
        self._known_alive: set[str] | None = None
        self._ignored: set[str] = set()  # Ray nodes without mesh labels, reported once

    # --- what is up -------------------------------------------------------------------------

    def _observe_nodes(self, now: float) -> set[str]:
        """Refresh the alive mesh nodes and their states; record joins and losses; the names
        lost. The store is written only when something changed, or to refresh a node's
        last_seen every NODE_REFRESH_S."""
        alive: dict[str, Node] = {}
        for rn in actuator.cluster_nodes():
            if rn.name is None or not rn.alive:
                continue
            try:
                alive[rn.name] = node_from_labels(rn.labels, rn.cpus, rn.memory_gb, rn.gpus)
            except LabelError as e:
                if rn.node_id not in self._ignored:
                    print(f"mesh: ignoring Ray node {rn.node_id[:12]}: {e}", file=sys.stderr)
                    self._ignored.add(rn.node_id)
                continue
            seen = self._seen.get(rn.name)
            if seen is None or seen[0] != rn.node_id or now - seen[1] >= NODE_REFRESH_S:
                self.store.node_up(
                    rn.name,
                    ray_node_id=rn.node_id,
                    labels=rn.labels,
                    cpus=rn.cpus,
                    memory_gb=rn.memory_gb,
                    gpus=rn.gpus,
                    now=now,
                )
                self._seen[rn.name] = (rn.node_id, now)
        info = {n["name"]: n for n in self.store.nodes(now)}
        if self._known_alive is None:  # first round: the nodes the store last saw alive
            self._known_alive = {name for name, n in info.items() if n["alive"]}
        lost = self._known_alive - set(alive)
        for name in lost:
            if info.get(name, {}).get("drain_since") is not None:
                self.store.node_down(name, now, "left after a drain", event="leave")
            else:
                self.store.node_down(name, now, "Ray reports the node dead or gone")
            self._seen.pop(name, None)
        self._known_alive = set(alive)
        self._node_states = {
            name: self._state_of(node, info.get(name, {}), now) for name, node in alive.items()
        }
        self._nodes = {
            name: dataclasses.replace(
                node,
                schedulable=self._node_states[name].schedulable,
                availability=info.get(name, {}).get("availability"),
                mtbf_h=info.get(name, {}).get("mtbf_h") or node.mtbf_h,
            )
            for name, node in alive.items()
        }
        return lost

    def _state_of(self, node: Node, info: dict[str, Any], now: float) -> NodeState:
        if info.get("drain_since") is not None:
            if info.get("drained"):
                return NodeState(DRAINED, "drained: nothing of the mesh runs here", False)
            return NodeState(DRAINING, f"draining, asked by {info.get('drain_by')}", False)
        if node.simulated:
            return NodeState(verify.SIMULATED, "declared GPUs: never probed", True)
        if not verify.needs_probe(node):
            return NodeState(verify.READY, "no GPUs to verify", True)
        claim = verify.claim_of(node)
        if info.get("claim") != claim or info.get("trust") is None:
            why = f"waiting for the probe of its {len(node.gpus)} x {node.gpus[0].model}"
            self.store.set_node_trust(node.name, verify.VERIFYING, why, claim, now)
            self._submit_verification(node, now)
            return NodeState(verify.VERIFYING, why, False)
        trust = str(info["trust"])
        return NodeState(trust, str(info.get("trust_reason") or ""), trust == verify.READY)

    # --- verification -----------------------------------------------------------------------

    def _submit_verification(self, node: Node, now: float) -> None:
        job_id = verify.verify_job_id(node.name)
        row = self.store.job(job_id)
        if row is not None and not row.state.terminal:
            a = self.active.get(job_id)
            if a is not None:  # a probe of an earlier claim: it no longer counts
                self._requeue(a, State.QUEUED, f"node {node.name} changed its claim", now)
            return
        queue_job(self.store, parse_job(verify.verify_spec(node), source=job_id), now, "controller")

    def _verify_nodes(self, now: float) -> None:
        """Place each VERIFYING node's Probe on it, and judge the Probes that ended."""
        for name, st in self._node_states.items():
            if st.state != verify.VERIFYING:
                continue
            node = self._nodes[name]
            job_id = verify.verify_job_id(name)
            row = self.store.job(job_id)
            if row is None or row.state == State.CANCELLED:
                self._submit_verification(node, now)
            elif row.state == State.QUEUED and job_id not in self.active:
                if not any(name in a.nodes() for a in self.active.values()):
                    bundles = tuple(
                        BundleAssignment(node=name, gpus=(g.index,), gpu_milli=1000)
                        for g in node.gpus
                    )
                    self._place(row, bundles, now)
            elif row.state in (State.SUCCEEDED, State.FAILED):
                if row.state == State.SUCCEEDED:
                    reports = (row.report or {}).get("bundles", [])
                    trust, why = verify.judge(node, reports)
                else:
                    trust, why = verify.SUSPECT, f"the probe failed: {row.reason}"
                self.store.set_node_trust(name, trust, why, verify.claim_of(node), now)
                self._node_states[name] = NodeState(trust, why, trust == verify.READY)
                self._nodes[name] = dataclasses.replace(node, schedulable=trust == verify.READY)

    # --- drains -----------------------------------------------------------------------------

    def _drain_nodes(self, now: float) -> None:
        """Move the work off draining nodes; mark a node DRAINED once none is left there."""
        for name, st in list(self._node_states.items()):
            if st.state != DRAINING:
                continue
            left = 0
            why = f"node {name} drains"
            for a in list(self.active.values()):
                if name not in a.nodes():
                    continue
                left += 1
                if a.kind == "Service" and a.started_at is not None:
                    self._move_replicas(a, name, now)
                elif a.kind == "FineTune" and a.started_at is not None and a.stop_deadline is None:
                    a.stop_reason = why
                    a.stop_deadline = now + self.settings.drain_checkpoint_timeout_s
                    actuator.request_stop([w for w in a.workers if w is not None])
                    self.store.append_logs(a.job, [(now, f"{why}: checkpointing to move")])
                elif a.stop_deadline is not None:
                    if now > a.stop_deadline:
                        timeout = self.settings.drain_checkpoint_timeout_s
                        reason = f"{why}; no checkpoint within {timeout:g} s"
                        self._requeue(a, State.PREEMPTED, reason, now)
                else:
                    self._requeue(a, State.PREEMPTED, why, now)
            if not left:
                self.store.set_node_drain(name, now, by=None, drained=True)
                self._node_states[name] = NodeState(DRAINED, "drained", False)

    def _move_replicas(self, a: Active, name: str, now: float) -> None:
        """A Service's replicas on draining node `name`: each serves on while its replacement is
        placed elsewhere and starts (`_replace`, `_retire_moved`); one that no other node takes
        within `drain_checkpoint_timeout_s` stops and waits for a node like a lost one."""
        timeout = self.settings.drain_checkpoint_timeout_s
        for i, b in enumerate(a.bundles):
            if b.node != name or i in a.missing:
                continue
            since = a.moving.get(i)
            if since is None:
                a.moving[i] = now
                self.store.append_logs(
                    a.job, [(now, f"replica {i}: node {name} drains; starting it elsewhere first")]
                )
                self._wake.set()
            elif now - since > timeout:
                del a.moving[i]
                why = f"node {name} drains and no other node took it within {timeout:g} s"
                self._replica_lost(a, i, why, now)

    def _retire_moved(self, now: float) -> None:
        """Stop the old copy of each moved replica once its replacement serves: out of the
        serving table first, stopped UNLIST_S later (the front reads the table every second)."""
        for a in list(self.active.values()):
            for i, r in list(a.retiring.items()):
                if r.unlisted_at is not None:
                    if now - r.unlisted_at >= UNLIST_S:
                        self._stop_retiring(a, i)
                        self.store.append_logs(
                            a.job, [(now, f"replica {i}: its copy on {r.node} stopped")]
                        )
                    continue
                p = a.bundle_progress.get(i, {})
                serving = p.get("state") == "serving" and p.get("app") != r.app
                if serving or i in a.missing or a.workers[i] is None:
                    r.unlisted_at = now

    def _stop_retiring(self, a: Active, bundle: int) -> None:
        r = a.retiring.pop(bundle)
        actuator.release(None, [r.worker])
        actuator.delete_replica(r.group, bundle)

    def drain_node(self, name: str, by: str = "its volunteer") -> dict[str, Any]:
        """Start draining node `name` (`meshctl leave --drain`); its status."""
        with self._lock:
            if not self.store.set_node_drain(name, time.time(), by=by, drained=False):
                return {"node": name, "state": "UNKNOWN", "why": "no such node is up"}
            self._observe_nodes(time.time())
        self._wake.set()
        return self.node_status(name)

    def node_status(self, name: str) -> dict[str, Any]:
        """A node's state and the jobs that still hold part of it."""
        with self._lock:
            st = self._node_states.get(name)
            jobs = sorted(a.job for a in self.active.values() if name in a.nodes())
        if st is None:
            return {"node": name, "state": "UNKNOWN", "why": "no such node is up", "jobs": []}
        return {"node": name, "state": st.state, "why": st.why, "jobs": jobs}

    # --- provided by the controller ---------------------------------------------------------

    def _place(self, row: Any, bundles: tuple[BundleAssignment, ...], now: float) -> None:
        raise NotImplementedError

    def _requeue(self, a: Active, via: State, reason: str, now: float) -> None:
        raise NotImplementedError

    def _replica_lost(self, a: Active, bundle: int, reason: str, now: float) -> None:
        raise NotImplementedError
