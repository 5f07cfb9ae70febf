"""What the policy sees of a cluster (`ClusterSnapshot`, `Node`, `Gpu`) and the cluster file.

The controller builds a snapshot from Ray's nodes and their labels; `meshctl plan`, `meshctl sim`
and the simulated local mesh build one from a cluster description file with `load_cluster`:

```yaml
communities:                       # optional; fair-share weights (default 1.0 each)
  swahili-nlp: {weight: 2}
nodes:
  - name: alice-4090               # DNS label, unique
    cpus: 16
    memory_gb: 64
    gpus: {model: RTX-4090, count: 1}      # or a list of {model, count, memory_gb}
    owner: swahili-nlp             # optional
    availability: 0.6              # optional, 0..1
    mtbf_h: 36                     # optional, > 0
```

GPUs declared in a file are not probed, so every node loaded from one is marked `simulated`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator

from scheduler import gpus
from scheduler.documents import SpecError, load_documents, validate_document

__all__ = [
    "ClusterFile",
    "ClusterSnapshot",
    "Gpu",
    "Node",
    "cluster_from_dict",
    "load_cluster",
]


# --- value types the policy reads ---------------------------------------------------------------


@dataclass(frozen=True)
class Gpu:
    """One GPU of a node; `index` is its position within the node (0..)."""

    index: int
    model: str
    memory_gb: float
    compute_capability: tuple[int, int]


@dataclass(frozen=True)
class Node:
    """One machine: its resources, its GPUs and what is known of its reliability."""

    name: str
    cpus: float
    memory_gb: float
    gpus: tuple[Gpu, ...] = ()
    owner: str | None = None
    availability: float | None = None
    mtbf_h: float | None = None
    simulated: bool = False
    schedulable: bool = True

    @property
    def gpu_models(self) -> tuple[str, ...]:
        """The distinct GPU models of the node, in index order."""
        return tuple(dict.fromkeys(g.model for g in self.gpus))

    @cached_property
    def gpu_kinds(
        self,
    ) -> tuple[tuple[str, ...], tuple[float, ...], tuple[tuple[int, int], ...]]:
        """Model, memory (GB) and compute capability of each GPU, in index order: what the
        policy reads of every node in every round, worked out once per node."""
        return (
            tuple(g.model for g in self.gpus),
            tuple(g.memory_gb for g in self.gpus),
            tuple(g.compute_capability for g in self.gpus),
        )


@dataclass(frozen=True)
class ClusterSnapshot:
    """The nodes of a cluster at one moment, with the fair-share weights of its communities.

    `community_weights`: a community not listed has weight 1.0. `speeds`: optional estimates of a
    job's ("community/name") speed on a GPU model, relative to the catalogue's reference.
    """

    nodes: tuple[Node, ...]
    community_weights: Mapping[str, float] = field(default_factory=dict)
    speeds: Mapping[tuple[str, str], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self._by_name) != len(self.nodes):
            names = [n.name for n in self.nodes]
            twice = next(name for i, name in enumerate(names) if name in names[:i])
            raise ValueError(f"two nodes are named '{twice}'")

    @cached_property
    def _by_name(self) -> Mapping[str, Node]:
        return {n.name: n for n in self.nodes}

    def node(self, name: str) -> Node:
        """The node called `name`; KeyError if there is none."""
        return self._by_name[name]

    @property
    def total_gpus(self) -> int:
        return sum(len(n.gpus) for n in self.nodes)


# --- the cluster description file -----------------------------------------------------------------

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
MAX_GPUS_PER_GROUP = 64
MAX_NODES = 20_000


def _check_dns_label(value: str, what: str) -> str:
    if not _DNS_LABEL.fullmatch(value):
        raise ValueError(
            f"'{value}' is not a valid {what}: use at most 63 lower-case letters, digits and '-',"
            " starting and ending with a letter or digit"
        )
    return value


class GpuGroupSpec(BaseModel):
    """`count` GPUs of one model in a node."""

    # `model: 4090` is read by YAML as a number; it names a GPU all the same
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    model: Annotated[
        str,
        Field(
            description="GPU model: a catalogue name or alias (`meshctl gpus` lists them)",
            min_length=1,
            max_length=100,
        ),
    ]
    count: Annotated[
        int, Field(description="how many GPUs of this model", ge=1, le=MAX_GPUS_PER_GROUP)
    ] = 1
    memory_gb: Annotated[
        float | None,
        Field(description="memory of one GPU in GB; default: the catalogue's", ge=1, le=4096),
    ] = None

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return gpus.resolve(value).name


def _gpus_form(value: Any) -> str | None:
    if isinstance(value, dict | GpuGroupSpec):
        return "function-one"
    if isinstance(value, list):
        return "function-many"
    return None


# The tags name the two forms of `gpus`; `scheduler.documents` leaves tags starting with
# "function-" out of error paths, so errors read `nodes[0].gpus.model`, not `nodes[0].gpus.one...`.
GpuGroups = Annotated[
    Annotated[GpuGroupSpec, Tag("function-one")]
    | Annotated[list[GpuGroupSpec], Tag("function-many")],
    Discriminator(
        _gpus_form,
        custom_error_type="gpus_form",
        custom_error_message="give {model, count} or a list of them",
    ),
]


class NodeSpec(BaseModel):
    """One machine of the cluster file."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[
        str, Field(description="node name: a DNS label, unique in the cluster", max_length=63)
    ]
    cpus: Annotated[float, Field(description="CPU cores", gt=0, le=4096)]
    memory_gb: Annotated[float, Field(description="host memory in GB", gt=0, le=65536)]
    gpus: Annotated[
        GpuGroups | None,
        Field(description="the node's GPUs: {model, count} or a list of them; none: CPU only"),
    ] = None
    owner: Annotated[
        str | None, Field(description="the community that volunteers the node", max_length=63)
    ] = None
    availability: Annotated[
        float | None, Field(description="fraction of the time the node is up, 0..1", ge=0, le=1)
    ] = None
    mtbf_h: Annotated[
        float | None, Field(description="mean time between failures in hours", gt=0, le=1_000_000)
    ] = None

    @field_validator("name")
    @classmethod
    def _name_is_label(cls, value: str) -> str:
        return _check_dns_label(value, "node name")

    @field_validator("owner")
    @classmethod
    def _owner_is_label(cls, value: str | None) -> str | None:
        return None if value is None else _check_dns_label(value, "community name")

    def gpu_groups(self) -> list[GpuGroupSpec]:
        if self.gpus is None:
            return []
        return [self.gpus] if isinstance(self.gpus, GpuGroupSpec) else list(self.gpus)


class CommunitySpec(BaseModel):
    """A community's settings in the cluster file."""

    model_config = ConfigDict(extra="forbid")

    weight: Annotated[
        float,
        Field(
            description="fair-share weight (default 1.0 for communities not listed)",
            gt=0,
            le=1000,
        ),
    ] = 1.0


class ClusterFile(BaseModel):
    """A cluster description file: its nodes and, optionally, community weights."""

    model_config = ConfigDict(extra="forbid")

    communities: Annotated[
        dict[str, CommunitySpec],
        Field(description="fair-share weights by community; default: equal", max_length=10_000),
    ] = {}
    nodes: Annotated[
        list[NodeSpec],
        Field(description="the machines of the cluster", max_length=MAX_NODES),
    ]

    @field_validator("communities")
    @classmethod
    def _community_names(cls, value: dict[str, CommunitySpec]) -> dict[str, CommunitySpec]:
        for name in value:
            _check_dns_label(name, "community name")
        return value

    @field_validator("nodes")
    @classmethod
    def _unique_names(cls, value: list[NodeSpec]) -> list[NodeSpec]:
        if not value:
            raise ValueError("a cluster needs at least one node")
        first: dict[str, int] = {}
        for i, node in enumerate(value):
            if node.name in first:
                raise ValueError(
                    f"duplicate node name '{node.name}' (nodes[{first[node.name]}] and nodes[{i}])"
                )
            first[node.name] = i
        return value


def _node_from_spec(spec: NodeSpec) -> Node:
    devices: list[Gpu] = []
    for group in spec.gpu_groups():
        model = gpus.resolve(group.model)
        memory = group.memory_gb if group.memory_gb is not None else model.memory_gb
        for _ in range(group.count):
            devices.append(Gpu(len(devices), model.name, memory, model.compute_capability))
    return Node(
        name=spec.name,
        cpus=spec.cpus,
        memory_gb=spec.memory_gb,
        gpus=tuple(devices),
        owner=spec.owner,
        availability=spec.availability,
        mtbf_h=spec.mtbf_h,
        simulated=True,
    )


def cluster_from_dict(data: Any, *, source: str) -> ClusterSnapshot:
    """A snapshot from one parsed cluster document; raises SpecError naming `source`."""
    if not isinstance(data, dict):
        raise SpecError(
            f"{source}: expected a mapping with a `nodes:` list, got {type(data).__name__}"
        )
    spec = validate_document(ClusterFile, data, source=source)
    return ClusterSnapshot(
        nodes=tuple(_node_from_spec(n) for n in spec.nodes),
        community_weights={name: c.weight for name, c in spec.communities.items()},
    )


def load_cluster(path: str | Path) -> ClusterSnapshot:
    """The cluster described by the YAML file at `path`; raises SpecError naming the file."""
    source = Path(path).name
    documents = load_documents(path)
    if not documents:
        raise SpecError(f"{source}: empty; a cluster file needs a `nodes:` list")
    if len(documents) > 1:
        raise SpecError(
            f"{source}: holds {len(documents)} YAML documents; a cluster file holds one"
        )
    return cluster_from_dict(documents[0], source=source)
