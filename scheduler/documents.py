"""Reading user YAML safely and turning validation errors into text a user can act on.

Every file a user hands to Mesh (job specs, cluster descriptions, running-job lists) goes through
`load_documents`, and every pydantic model built from them through `validate_document`, so all
errors read the same way: ``job.yaml: resources.gpu: unknown key; did you mean 'gpus'?``.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

MAX_FILE_BYTES = 1024 * 1024
MAX_ALIASES = 64
MAX_NODES = 200_000

M = TypeVar("M", bound=BaseModel)


class SpecError(ValueError):
    """A user-facing error: its message names the file, the path in the document and the rule."""


class _BoundedLoader(yaml.SafeLoader):
    """A SafeLoader that refuses alias bombs before they are expanded.

    PyYAML shares aliased nodes instead of copying them, so loading a "billion laughs" document is
    cheap, but anything that walks the result (validation, JSON encoding) expands it. We count
    alias uses and the nodes they would expand to, and stop early.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: ANN401 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise SpecError(f"more than {MAX_ALIASES} YAML aliases; write the values out")
        node = super().compose_node(parent, index)
        if node is not None and id(node) not in self._sizes:
            self._sizes[id(node)] = self._expanded_size(node)
            if self._sizes[id(node)] > MAX_NODES:
                raise SpecError(
                    f"the document expands to more than {MAX_NODES} values (YAML aliases?)"
                )
        return node

    def _expanded_size(self, node: yaml.Node) -> int:
        if isinstance(node, yaml.ScalarNode):
            return 1
        if isinstance(node, yaml.SequenceNode):
            return 1 + sum(self._sizes.get(id(c), 1) for c in node.value)
        if isinstance(node, yaml.MappingNode):
            return 1 + sum(
                self._sizes.get(id(k), 1) + self._sizes.get(id(v), 1) for k, v in node.value
            )
        return 1


def load_documents(path: str | Path) -> list[Any]:
    """Every YAML document in `path`, read with a safe loader; raises SpecError naming the file."""
    p = Path(path)
    name = p.name
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except OSError as e:
        raise SpecError(f"{path}: cannot read: {e.strerror}") from None
    if p.is_dir():
        raise SpecError(f"{path}: is a folder; give a YAML file")
    if size > MAX_FILE_BYTES:
        raise SpecError(f"{name}: {size} bytes; files over 1 MiB are refused")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{name}: not UTF-8 text") from None
    return load_documents_text(text, source=name)


def load_documents_text(text: str, *, source: str) -> list[Any]:
    """Like `load_documents` for text already in memory (HTTP bodies); `source` names it."""
    if len(text.encode("utf-8")) > MAX_FILE_BYTES:
        raise SpecError(f"{source}: over 1 MiB; documents that large are refused")
    try:
        loader = _BoundedLoader(text)
        try:
            docs = []
            while loader.check_data():
                docs.append(loader.get_data())
        finally:
            loader.dispose()
    except SpecError as e:
        raise SpecError(f"{source}: {e}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise SpecError(f"{source}: {where}: invalid YAML: {e.problem}") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{source}: invalid YAML: {e}") from None
    return [d for d in docs if d is not None]


def _path_text(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(document)"


def _walk(model: type[BaseModel], loc: tuple[int | str, ...]) -> tuple[tuple[int | str, ...], Any]:
    """`loc` without the tags pydantic adds for unions, and the models that may sit at its end.

    Through a union of models (such as a discriminated union of job kinds) pydantic puts the
    member's tag in the location, ``jobs[0].FineTune.resources.gpu``; users never wrote it.
    """
    shown: list[int | str] = []
    current: list[type[BaseModel]] = [model]
    for part in loc:
        if isinstance(part, int):
            shown.append(part)
            continue
        if len(current) > 1:
            tagged = [m for m in current if _has_tag(m, part)]
            if len(tagged) == 1:
                current = tagged
                continue
        shown.append(part)
        info = None
        if len(current) == 1:
            for fname, finfo in current[0].model_fields.items():
                if part in (fname, finfo.alias):
                    info = finfo
                    break
        current = _models_in(info.annotation) if info is not None else []
    return tuple(shown), current


def _has_tag(model: type[BaseModel], tag: str) -> bool:
    """Whether `tag` is how pydantic names `model` in a union: its class or a literal it holds."""
    if model.__name__ == tag:
        return True
    for info in model.model_fields.values():
        if get_origin(info.annotation) is Literal and any(
            getattr(v, "value", v) == tag for v in get_args(info.annotation)
        ):
            return True
    return False


def _fields_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The field names a model accepts at `loc` (its parent's), for "did you mean" hints."""
    _, models = _walk(model, loc)
    if len(models) != 1:
        return []
    return [info.alias or fname for fname, info in models[0].model_fields.items()]


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()) or ():
        found += [m for m in _models_in(arg) if m not in found]
    return found


def format_validation_error(
    source: str, error: ValidationError, model: type[BaseModel] | None = None
) -> str:
    """One line per problem: ``source: path: rule``, with a suggestion for misspelt keys."""
    lines = []
    for item in error.errors(include_url=False):
        loc = tuple(item.get("loc", ()))
        # pydantic puts the names of function validators and the tags of unions into the
        # location; users never wrote them
        loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))
        shown = _walk(model, loc)[0] if model is not None else loc
        kind = item.get("type", "")
        if kind == "extra_forbidden":
            key = str(loc[-1]) if loc else ""
            msg = "unknown key"
            known = _fields_at(model, loc[:-1]) if model is not None else []
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            if close:
                msg += f"; did you mean '{close[0]}'?"
            elif known:
                msg += "; valid keys: " + ", ".join(sorted(known))
        elif kind == "missing":
            msg = "required"
        else:
            msg = str(item.get("msg", "invalid"))
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
        lines.append(f"{source}: {_path_text(shown)}: {msg}")
    return "\n".join(lines)


def validate_document(
    model: type[M], data: Any, *, source: str, context: dict[str, Any] | None = None
) -> M:
    """Build `model` from `data`; raises SpecError with every problem found, one per line."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as e:
        raise SpecError(format_validation_error(source, e, model)) from None
