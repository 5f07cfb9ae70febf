"""The `--running` file of `meshctl plan`: jobs already placed, as the policy's `RunningJob`s.

```yaml
- job: bio-ml/protein-llama-8b
  spec: jobs.yaml              # the job file (relative to this file); may hold several jobs
  bundles:
    - {node: lab-a100, gpus: [0], gpu_fraction: 1.0}
  started_at: -3600            # seconds on the same clock as `--now` (default 0)
  attained_gpu_seconds: 14400
  checkpointed_at: -600        # optional
```
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from scheduler.cluster import ClusterSnapshot
from scheduler.documents import SpecError, load_documents, validate_document
from scheduler.policy.model import GPU_MILLI, BundleAssignment, RunningJob, demand_from_spec
from scheduler.spec import JobSpec, load_jobs


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BundleEntry(_Strict):
    node: Annotated[str, Field(description="Node the bundle runs on", min_length=1)]
    gpus: Annotated[
        list[Annotated[int, Field(ge=0)]],
        Field(default_factory=list, description="GPU indices on that node; [] for CPU-only"),
    ]
    gpu_fraction: Annotated[
        float, Field(default=1.0, gt=0, le=1, description="Share of each listed GPU")
    ]


class RunningEntry(_Strict):
    job: Annotated[str, Field(description="community/name of the running job", min_length=3)]
    spec: Annotated[str, Field(description="Job file holding its spec, relative to this file")]
    bundles: Annotated[list[BundleEntry], Field(description="Where each bundle runs")]
    started_at: Annotated[float, Field(default=0.0, description="Start, in seconds")]
    attained_gpu_seconds: Annotated[
        float, Field(default=0.0, ge=0, description="GPU-seconds used so far")
    ]
    checkpointed_at: Annotated[
        float | None, Field(default=None, description="Time of the last checkpoint")
    ]


class RunningFile(_Strict):
    running: Annotated[list[RunningEntry], Field(description="Jobs already placed")]


def load_running(path: str | Path, cluster: ClusterSnapshot) -> list[RunningJob]:
    """Read a running-jobs file; every job, node and GPU index it names is checked."""
    p = Path(path)
    docs = load_documents(p)
    if not docs:
        return []
    if len(docs) > 1:
        raise SpecError(f"{p.name}: holds {len(docs)} documents; write one YAML list")
    data = docs[0]
    parsed = validate_document(RunningFile, {"running": data}, source=p.name)
    specs: dict[Path, dict[str, JobSpec]] = {}
    out: list[RunningJob] = []
    seen: set[str] = set()
    for i, entry in enumerate(parsed.running):
        where = f"{p.name}: running[{i}]"
        spec_path = (p.parent / entry.spec).resolve()
        if spec_path not in specs:
            try:
                specs[spec_path] = {j.job_id: j for j in load_jobs(spec_path)}
            except SpecError as e:
                raise SpecError(f"{where}.spec: {e}") from None
        spec = specs[spec_path].get(entry.job)
        if spec is None:
            known = ", ".join(sorted(specs[spec_path])) or "none"
            raise SpecError(f"{where}.job: '{entry.job}' is not in {entry.spec} (it has: {known})")
        if entry.job in seen:
            raise SpecError(f"{where}.job: '{entry.job}' is listed twice")
        seen.add(entry.job)
        if len(entry.bundles) != spec.bundle_count:
            raise SpecError(
                f"{where}.bundles: {len(entry.bundles)} given, but the spec has"
                f" {spec.bundle_count} bundle{'s' if spec.bundle_count != 1 else ''}"
            )
        bundles = []
        for j, b in enumerate(entry.bundles):
            bwhere = f"{where}.bundles[{j}]"
            try:
                node = cluster.node(b.node)
            except KeyError:
                raise SpecError(f"{bwhere}.node: no node '{b.node}' in the cluster") from None
            for g in b.gpus:
                if g >= len(node.gpus):
                    raise SpecError(
                        f"{bwhere}.gpus: node '{b.node}' has {len(node.gpus)} GPUs; no index {g}"
                    )
            if len(b.gpus) != spec.gpus_per_bundle:
                raise SpecError(
                    f"{bwhere}.gpus: {len(b.gpus)} listed, but each bundle of"
                    f" {entry.job} holds {spec.gpus_per_bundle}"
                )
            milli = math.ceil(round(b.gpu_fraction * GPU_MILLI, 6))
            bundles.append(BundleAssignment(b.node, tuple(b.gpus), milli))
        out.append(
            RunningJob(
                demand=demand_from_spec(spec, entry.started_at),
                bundles=tuple(bundles),
                started_at=entry.started_at,
                attained_gpu_seconds=entry.attained_gpu_seconds,
                checkpointed_at=entry.checkpointed_at,
            )
        )
    return out
