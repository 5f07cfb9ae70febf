"""The GPU model catalogue: one table of models with their aliases, memory and speed.

Job specs (`gpu_types`), cluster files, node labels set at join and the public traces all name GPUs
in their own way ("NVIDIA GeForce RTX 4090", "4090", "V100M16", "k80"). Every such name goes through
`resolve`, which returns one `GpuModel` of `CATALOGUE` or raises `UnknownGpuError` listing the
closest names.

Numbers:
- `memory_gb`: the marketed memory of one GPU (one die for the dual-die K80).
- `tflops_16`: dense fp16/bf16 tensor TFLOP/s from the vendor datasheet or whitepaper, without
  sparsity; for GeForce cards the rate with fp32 accumulation (the one training uses), which is half
  the fp16-accumulate rate. GPUs without tensor cores (P100, K80) give their plain fp16 (P100) or
  fp32 (K80) rate.
- `relative_speed`: approximate deep-learning training throughput relative to an A100-80GB, read
  from published training benchmarks (Lambda's GPU benchmarks; Gavel's and Sia's measurements for
  the older cards). It is a prior for the scheduler, not a measurement of any one job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import SequenceMatcher

__all__ = [
    "CATALOGUE",
    "GpuModel",
    "UnknownGpuError",
    "find",
    "format_compute_capability",
    "label_value",
    "parse_compute_capability",
    "resolve",
]


@dataclass(frozen=True)
class GpuModel:
    """One GPU model of the catalogue."""

    name: str
    memory_gb: float
    compute_capability: tuple[int, int]
    relative_speed: float
    tflops_16: float
    bf16: bool
    tier: str
    aliases: tuple[str, ...]
    source: str


TIERS = ("consumer", "workstation", "datacenter", "anonymised")

_LAMBDA = "Lambda GPU benchmarks"
_ASSUMED = "memory, compute capability and speed assumed (T4-like) since the model is anonymised"

# Ambiguous short names resolve to the smaller variant so that memory is never over-estimated:
# "A100" is the A100-40GB, "V100" the V100-16GB. A node's probe reports its real memory anyway.
# "Quadro" is kept in the Quadro RTX 6000's name: without it, "RTX 6000" could be that card, the
# RTX A6000 or the RTX 6000 Ada.
#
# fmt: off
CATALOGUE: tuple[GpuModel, ...] = (
    # name, memory_gb, compute capability, relative_speed, tflops_16, bf16, tier, aliases, source
    # --- consumer (GeForce) ---
    GpuModel("RTX-3060", 12.0, (8, 6), 0.18, 25.6, True, "consumer",
             ("3060", "NVIDIA GeForce RTX 3060"),
             f"NVIDIA Ampere GA10x whitepaper; {_LAMBDA}"),
    GpuModel("RTX-3070", 8.0, (8, 6), 0.28, 40.6, True, "consumer",
             ("3070", "NVIDIA GeForce RTX 3070"),
             f"NVIDIA Ampere GA102 whitepaper; {_LAMBDA}"),
    GpuModel("RTX-3080", 10.0, (8, 6), 0.4, 59.5, True, "consumer",
             ("3080", "NVIDIA GeForce RTX 3080"),
             f"NVIDIA Ampere GA102 whitepaper; {_LAMBDA}"),
    GpuModel("RTX-3090", 24.0, (8, 6), 0.5, 71.0, True, "consumer",
             ("3090", "NVIDIA GeForce RTX 3090"),
             f"NVIDIA Ampere GA102 whitepaper; {_LAMBDA}"),
    GpuModel("RTX-3090-Ti", 24.0, (8, 6), 0.55, 80.0, True, "consumer",
             ("3090-Ti", "NVIDIA GeForce RTX 3090 Ti"),
             f"NVIDIA RTX 3090 Ti specifications; {_LAMBDA}"),
    # The RTX 4060 Ti also exists with 8 GB; the probe reports which one a node has.
    GpuModel("RTX-4060-Ti", 16.0, (8, 9), 0.22, 44.1, True, "consumer",
             ("4060-Ti", "NVIDIA GeForce RTX 4060 Ti", "RTX-4060-Ti-16GB"),
             f"NVIDIA Ada Lovelace whitepaper; {_LAMBDA}"),
    GpuModel("RTX-4070", 12.0, (8, 9), 0.35, 58.3, True, "consumer",
             ("4070", "NVIDIA GeForce RTX 4070"),
             f"NVIDIA Ada Lovelace whitepaper; {_LAMBDA}"),
    GpuModel("RTX-4080", 16.0, (8, 9), 0.55, 97.5, True, "consumer",
             ("4080", "NVIDIA GeForce RTX 4080"),
             f"NVIDIA Ada Lovelace whitepaper; {_LAMBDA}"),
    GpuModel("RTX-4090", 24.0, (8, 9), 0.75, 165.2, True, "consumer",
             ("4090", "NVIDIA GeForce RTX 4090"),
             f"NVIDIA Ada Lovelace whitepaper; {_LAMBDA}"),
    GpuModel("RTX-5090", 32.0, (12, 0), 1.0, 209.5, True, "consumer",
             ("5090", "NVIDIA GeForce RTX 5090"),
             f"NVIDIA RTX Blackwell whitepaper; {_LAMBDA}"),
    # "rtx" is the Sia trace's name for its 8 x RTX 2080 Ti server.
    GpuModel("RTX-2080-Ti", 11.0, (7, 5), 0.3, 56.9, False, "consumer",
             ("2080-Ti", "NVIDIA GeForce RTX 2080 Ti", "rtx"),
             f"NVIDIA Turing whitepaper; {_LAMBDA}; Sia SOSP'23 profiles"),
    # --- workstation ---
    # "quad" is the Sia trace's name for its 4 x Quadro RTX 6000 server.
    GpuModel("Quadro-RTX-6000", 24.0, (7, 5), 0.32, 130.5, False, "workstation",
             ("quad",),
             f"NVIDIA Quadro RTX 6000 datasheet; {_LAMBDA}; Sia SOSP'23 profiles"),
    GpuModel("RTX-A4000", 16.0, (8, 6), 0.28, 76.7, True, "workstation",
             ("A4000", "NVIDIA RTX A4000"),
             f"NVIDIA RTX A4000 datasheet; {_LAMBDA}"),
    GpuModel("RTX-A5000", 24.0, (8, 6), 0.4, 111.1, True, "workstation",
             ("A5000", "NVIDIA RTX A5000"),
             f"NVIDIA RTX A5000 datasheet; {_LAMBDA}"),
    GpuModel("RTX-A6000", 48.0, (8, 6), 0.55, 154.8, True, "workstation",
             ("A6000", "NVIDIA RTX A6000"),
             f"NVIDIA RTX A6000 datasheet; {_LAMBDA}"),
    GpuModel("RTX-6000-Ada", 48.0, (8, 9), 0.85, 364.2, True, "workstation",
             ("6000-Ada", "NVIDIA RTX 6000 Ada Generation"),
             f"NVIDIA RTX 6000 Ada datasheet; {_LAMBDA}"),
    # --- datacenter ---
    GpuModel("L4", 24.0, (8, 9), 0.25, 121.0, True, "datacenter",
             ("NVIDIA L4",),
             f"NVIDIA L4 datasheet; {_LAMBDA}"),
    GpuModel("L40S", 48.0, (8, 9), 0.8, 362.0, True, "datacenter",
             ("NVIDIA L40S",),
             f"NVIDIA L40S datasheet; {_LAMBDA}"),
    GpuModel("T4", 16.0, (7, 5), 0.15, 65.0, False, "datacenter",
             ("Tesla T4",),
             f"NVIDIA T4 datasheet; {_LAMBDA}; Sia SOSP'23 profiles"),
    GpuModel("V100-16GB", 16.0, (7, 0), 0.45, 125.0, False, "datacenter",
             ("V100", "V100M16", "Tesla V100-SXM2-16GB", "Tesla V100-PCIE-16GB",
              "V100-SXM2-16GB"),
             f"NVIDIA V100 datasheet (SXM2); {_LAMBDA}; Gavel OSDI'20 throughputs"),
    GpuModel("V100-32GB", 32.0, (7, 0), 0.45, 125.0, False, "datacenter",
             ("V100M32", "Tesla V100-SXM2-32GB", "Tesla V100-PCIE-32GB", "V100-SXM2-32GB",
              "Tesla V100S-PCIE-32GB"),
             f"NVIDIA V100 datasheet (SXM2); {_LAMBDA}"),
    GpuModel("A10", 24.0, (8, 6), 0.35, 125.0, True, "datacenter",
             ("A10G", "NVIDIA A10", "NVIDIA A10G"),
             f"NVIDIA A10 datasheet; {_LAMBDA}"),
    GpuModel("A100-40GB", 40.0, (8, 0), 0.95, 312.0, True, "datacenter",
             ("A100", "NVIDIA A100-SXM4-40GB", "NVIDIA A100-PCIE-40GB", "A100-SXM4-40GB"),
             f"NVIDIA A100 datasheet; {_LAMBDA}; Sia SOSP'23 profiles"),
    GpuModel("A100-80GB", 80.0, (8, 0), 1.0, 312.0, True, "datacenter",
             ("NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe", "A100-SXM4-80GB",
              "A100-SXM-80GB", "A100-PCIe-80GB"),
             f"NVIDIA A100 datasheet; {_LAMBDA} (the reference, 1.0)"),
    GpuModel("A800-80GB", 80.0, (8, 0), 1.0, 312.0, True, "datacenter",
             ("A800", "A800-SXM4-80GB", "NVIDIA A800-SXM4-80GB", "NVIDIA A800 80GB PCIe"),
             "NVIDIA A800 datasheet (A100 compute, 400 GB/s NVLink); speed as A100-80GB"),
    # "H100 PCIe" (756 TFLOP/s) is folded into the SXM model; the gap is within this table's error.
    GpuModel("H100", 80.0, (9, 0), 1.9, 989.0, True, "datacenter",
             ("H100-80GB", "H100 80GB HBM3", "NVIDIA H100 80GB HBM3", "H100-SXM5-80GB",
              "H100-SXM", "H100 PCIe", "NVIDIA H100 PCIe"),
             f"NVIDIA H100 datasheet (SXM); {_LAMBDA}"),
    GpuModel("H800", 80.0, (9, 0), 1.9, 989.0, True, "datacenter",
             ("H800-80GB", "H800 80GB HBM3", "NVIDIA H800 80GB HBM3", "H800 PCIe"),
             "NVIDIA H800 datasheet (H100 compute, 400 GB/s NVLink); speed as H100"),
    GpuModel("H200", 141.0, (9, 0), 2.1, 989.0, True, "datacenter",
             ("H200-141GB", "NVIDIA H200", "H200 NVL"),
             f"NVIDIA H200 datasheet; {_LAMBDA}"),
    GpuModel("P100", 16.0, (6, 0), 0.2, 18.7, False, "datacenter",
             ("Tesla P100-PCIE-16GB", "Tesla P100-SXM2-16GB"),
             "NVIDIA P100 datasheet (PCIe fp16, no tensor cores); Gavel OSDI'20 throughputs"),
    # Per die: a K80 board holds two dies that the driver shows as two GPUs.
    GpuModel("K80", 12.0, (3, 7), 0.06, 4.4, False, "datacenter",
             ("Tesla K80",),
             "NVIDIA K80 datasheet (fp32 per die, no tensor cores); Gavel OSDI'20 throughputs"),
    # --- anonymised trace models: the public traces do not say what these are ---
    GpuModel("G2", 16.0, (7, 5), 0.15, 65.0, False, "anonymised",
             (),
             f"Alibaba openb trace (FGD, ATC'23); {_ASSUMED}"),
    GpuModel("G3", 16.0, (7, 5), 0.15, 65.0, False, "anonymised",
             (),
             f"Alibaba openb trace (FGD, ATC'23); {_ASSUMED}"),
    GpuModel("GPU-series-1", 16.0, (7, 5), 0.15, 65.0, False, "anonymised",
             (),
             f"Alibaba spot GPU trace (GFS, ASPLOS'26); {_ASSUMED}"),
    GpuModel("GPU-series-2", 16.0, (7, 5), 0.15, 65.0, False, "anonymised",
             (),
             f"Alibaba spot GPU trace (GFS, ASPLOS'26); {_ASSUMED}"),
)
# fmt: on


class UnknownGpuError(ValueError):
    """A GPU name that is not in the catalogue; the message lists the closest names."""

    def __init__(self, name: str, suggestions: tuple[str, ...] = ()) -> None:
        self.name = name
        self.suggestions = suggestions
        if suggestions:
            quoted = [f"'{s}'" for s in suggestions]
            options = (
                quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
            )
            hint = f"did you mean {options}? (meshctl gpus lists the catalogue)"
        else:
            hint = "see `meshctl gpus` for the catalogue"
        super().__init__(f"unknown GPU model '{name}'; {hint}")

    def __reduce__(self) -> tuple[type[UnknownGpuError], tuple[str, tuple[str, ...]]]:
        # rebuilt from its parts, so that the error survives pickling (Ray passes errors on)
        return (type(self), (self.name, self.suggestions))


_SEPARATORS = re.compile(r"[\s_\-]+")
_VENDOR_WORDS = frozenset({"nvidia", "geforce", "tesla"})


def _tokens(name: str) -> list[str]:
    return [t for t in _SEPARATORS.split(name.strip().lower()) if t]


def _key(name: str) -> str:
    """The lookup key: lower case, no separators, without the vendor words."""
    return "".join(t for t in _tokens(name) if t not in _VENDOR_WORDS)


def _build_index(models: tuple[GpuModel, ...]) -> dict[str, GpuModel]:
    index: dict[str, GpuModel] = {}
    for model in models:
        for name in (model.name, *model.aliases):
            key = _key(name)
            other = index.get(key)
            if other is not None and other is not model:
                raise RuntimeError(
                    f"GPU catalogue: '{name}' of {model.name} also names {other.name}"
                )
            index[key] = model
    return index


_INDEX = _build_index(CATALOGUE)


def find(name: str) -> GpuModel | None:
    """The catalogue model that `name` names, or None.

    Case, spaces, dashes and underscores do not matter, nor the words NVIDIA, GeForce and Tesla.
    "Quadro" is dropped only when the name is not known with it ("Quadro RTX A6000" is the RTX
    A6000; "Quadro RTX 6000" is its own model).
    """
    tokens = [t for t in _tokens(name) if t not in _VENDOR_WORDS]
    found = _INDEX.get("".join(tokens))
    if found is None and "quadro" in tokens:
        found = _INDEX.get("".join(t for t in tokens if t != "quadro"))
    return found


def resolve(name: str) -> GpuModel:
    """The catalogue model that `name` names; raises UnknownGpuError with the closest names."""
    found = find(name)
    if found is None:
        raise UnknownGpuError(name, _closest(name))
    return found


def _closest(name: str, limit: int = 3) -> tuple[str, ...]:
    """Catalogue names nearest to `name`, best first, at most `limit`.

    First the models at the smallest edit distance (with transpositions), if that distance is small
    for the length of `name`, ties ordered by similarity, then by catalogue order; then the model
    whose name is the longest start of `name` ("RTX 4090 Laptop GPU" -> RTX-4090).
    """
    key = _key(name)
    if not key:
        return ()
    names: list[str] = []
    best: dict[str, tuple[int, float]] = {}
    for alias_key, model in _INDEX.items():
        score = (_edit_distance(key, alias_key), -SequenceMatcher(None, key, alias_key).ratio())
        best[model.name] = min(score, best.get(model.name, score))
    nearest = min(distance for distance, _ in best.values())
    if nearest <= max(1, len(key) // 3):
        order = {m.name: i for i, m in enumerate(CATALOGUE)}
        tied = [n for n, (distance, _) in best.items() if distance == nearest]
        tied.sort(key=lambda n: (best[n][1], order[n]))
        names.extend(tied)
    prefixes = [k for k in _INDEX if len(k) >= 4 and key.startswith(k)]
    if prefixes:
        longest = _INDEX[max(prefixes, key=len)].name
        if longest not in names:
            names.append(longest)
    return tuple(names[:limit])


def _edit_distance(a: str, b: str) -> int:
    """Optimal string alignment distance: insertions, deletions, substitutions, transpositions."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, start=1):
            cost = 0 if ca == cb else 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[len(b)]


_CC_TEXT = re.compile(r"(\d{1,2})(?:\.(\d{1,2}))?")


def parse_compute_capability(value: str | float | int) -> tuple[int, int]:
    """A CUDA compute capability as (major, minor): "8.6", 8.6, 9 -> (9, 0)."""
    if isinstance(value, bool):
        raise ValueError(f"compute capability {value!r} is not a version like '8.6'")
    text = str(value).strip() if isinstance(value, int | float | str) else ""
    match = _CC_TEXT.fullmatch(text)
    if match is None:
        raise ValueError(f"compute capability {value!r} is not a version like '8.6'")
    major, minor = int(match.group(1)), int(match.group(2) or 0)
    if major < 1:
        raise ValueError(f"compute capability {value!r}: the major version starts at 1")
    return (major, minor)


def format_compute_capability(cc: tuple[int, int]) -> str:
    """(8, 6) -> "8.6"."""
    return f"{cc[0]}.{cc[1]}"


_LABEL_INVALID = re.compile(r"[^A-Za-z0-9._-]+")
_LABEL_MAX = 63


def label_value(text: str) -> str:
    """`text` made a valid Kubernetes label value: [A-Za-z0-9._-], at most 63 characters, starting
    and ending with a letter or digit (or empty). "NVIDIA GeForce RTX 4090" ->
    "NVIDIA-GeForce-RTX-4090"."""
    value = _LABEL_INVALID.sub("-", text)
    value = value.strip("._-")[:_LABEL_MAX]
    return value.rstrip("._-")
