"""Reading a study file: bounded bytes, YAML without tags, duplicate keys or alias bombs, ${ENV} expansion, pydantic's
errors as one line in words."""

from __future__ import annotations

import math
import os
import re
import threading
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from hpsearch import signals
from hpsearch.config.messages import _did_you_mean, _error, _shown
from hpsearch.config.rules import _TYPES, _check_cross_fields
from hpsearch.config.base import MAX_ALIAS_VALUES, MAX_ENQUEUE, MAX_STUDY_BYTES
from hpsearch.config.schema import StudyConfig
from hpsearch.errors import ConfigError

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_env(value: str, source: str, where: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise _error(source, where, f"environment variable {name} is not set; export it or write the value")
        return os.environ[name]

    return _ENV_RE.sub(replace, value)


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line = key, line


# libyaml's parser when PyYAML has it: the pure-Python one takes ~3x as long on a large enqueue: list.
_SafeBase: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _AliasBomb(yaml.YAMLError):
    def __init__(self, line: int, why: str) -> None:
        super().__init__(why)
        self.line, self.why = line, why


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_aliases(root: yaml.Node) -> None:
    """Refuse a node graph whose aliases expand to over MAX_ALIAS_VALUES values more than it holds, or a cycle.

    Counted once per node on the composed graph, before anything is built: nine anchors nested nine
    deep are 400 bytes that expand to 387 million values, which every later step would walk.
    """
    distinct = _distinct_nodes(root)
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[key] > distinct + MAX_ALIAS_VALUES:
                raise _AliasBomb(node.start_mark.line + 1, f"YAML aliases expand to over {MAX_ALIAS_VALUES:,} values")
            continue
        if key in sizes:
            continue
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                raise _AliasBomb(node.start_mark.line + 1, "a YAML alias refers to a value that contains it")
            if id(child) not in sizes:
                stack.append((child, False))


def _distinct_nodes(root: yaml.Node) -> int:
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) not in seen:
            seen.add(id(node))
            stack.extend(_children(node))
    return len(seen)


class _StudyLoader(_SafeBase):  # type: ignore[misc, valid-type]
    """safe_load's loader (plain values only, no !!python tags) that refuses a key given twice in one mapping
    and aliases that expand without bound."""

    def construct_document(self, node: yaml.Node) -> Any:
        _check_aliases(node)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<:` merges may repeat keys on purpose; explicit keys still may not
            # A plain string key (nearly all of them) needs no second construction: a third of the load time.
            str_key = key_node.tag == "tag:yaml.org,2002:str" and isinstance(key_node.value, str)
            key = key_node.value if str_key else self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # unhashable: the base class reports it
            if duplicate:
                raise _DuplicateKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.2 reads 1e-3 as a float; PyYAML's YAML 1.1 rules need a dot (1.0e-3) and read '1e-3' as a string,
# which strict numbers would then refuse. Exponent forms only: a plain 10 stays an int.
_StudyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _read_bounded(path: Path) -> bytes:
    with path.open("rb") as file:
        return file.read(MAX_STUDY_BYTES + 1)  # a bounded read: a pipe or device has no size to check first


def _read_bytes(path: Path) -> bytes:
    """The file's first MAX_STUDY_BYTES + 1 bytes; a pipe or device is read where a stop signal can still end the wait.

    A process-wide signal may be delivered to any thread (numpy's BLAS starts some at import), and
    then the main thread's blocking read is never interrupted: so a file that may block is read by a
    helper thread while the main thread waits in short steps, where Python raises the signal.
    """
    if path.is_file():
        return _read_bounded(path)
    result: dict[str, Any] = {}

    def read() -> None:
        try:
            result["data"] = _read_bounded(path)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which raises it
            result["raised"] = exc

    reader = threading.Thread(target=read, name="read-study-file", daemon=True)
    reader.start()
    while reader.is_alive():
        reader.join(0.1)  # Python raises a pending KeyboardInterrupt here, between two waits
        if signals.handling():
            signals.check()  # under run: the recording handler's stop
    if "raised" in result:
        raise result["raised"]
    return result["data"]


def _read_text(path: Path) -> str:
    source = str(path)
    try:
        data = _read_bytes(path)
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such study file; check the path") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the study file ({exc}); check permissions and encoding") from None
    if len(data) > MAX_STUDY_BYTES:
        size = path.stat().st_size if path.is_file() else 0
        shown = f"{size / 2**20:.1f} MiB" if size > MAX_STUDY_BYTES else f"over {MAX_STUDY_BYTES // 2**20} MiB"
        raise ConfigError(f"{source}: the study file is {shown}; study files are limited to "
                          f"{MAX_STUDY_BYTES // 2**20} MiB (enqueue: at most {MAX_ENQUEUE:,} points); "
                          f"keep a few starting points in the file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: cannot read the study file ({exc}); check permissions and encoding") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    source = str(path)
    text = _read_text(path)
    try:
        # The safe constructor refuses !!python tags, so a study file can never build Python objects.
        raw = yaml.load(text, Loader=_StudyLoader)  # noqa: S506 - _StudyLoader is a SafeLoader
    except _DuplicateKey as exc:
        raise ConfigError(f"{source}: line {exc.line}: duplicate key {_shown(exc.key)}; keep one") from None
    except _AliasBomb as exc:
        raise ConfigError(f"{source}: line {exc.line}: {exc.why}; study files may use anchors and aliases, "
                          f"but not nest them this deep or inside themselves; write the values out") from None
    except yaml.constructor.ConstructorError as exc:
        raise ConfigError(f"{source}: line {_line(exc)}: unsupported YAML tag ({exc.problem}); "
                          f"study files hold plain values only") from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}: line {_line(exc)}: YAML syntax error ({problem}); fix the file") from None
    if raw is None:
        raise ConfigError(f"{source}: the study file is empty; start from studies/quickstart.yaml")
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the study file must be a mapping of keys (name:, space:, ...), "
                          f"not a {type(raw).__name__}")
    return raw


def _line(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return str(mark.line + 1) if mark is not None else "?"


def _pydantic_message(source: str, exc: ValidationError) -> ConfigError:
    err = exc.errors()[0]
    walk = _walk(err["loc"])
    loc = walk.keys
    where = ".".join(loc) or "(top level)"
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        fields = [name for name in (walk.owner.model_fields if walk.owner else ()) if name != "source"]
        return _error(source, where, f"unknown key '{loc[-1]}'{_did_you_mean(loc[-1], fields)}; remove it or "
                                     f"check the spelling")
    if kind == "missing":
        return _error(source, where, "required key is missing; add it")
    if kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        return _error(source, f"{where}.type", f"unknown type '{ctx.get('tag')}'; use one of {ctx.get('expected_tags')}")
    if kind == "union_tag_not_found":
        return _error(source, f"{where}.type", "type is missing; add type:")
    if kind in ("int_type", "float_type") and isinstance(value, bool):
        return _error(source, where, f"{str(value).lower()} is not a number; write {_TYPES[kind]}")
    if walk.union is not None:
        where = ".".join(loc[:walk.union_depth])
        return _error(source, where, f"must be {_describe(walk.union)}; change the value")
    message = err["msg"].removeprefix("Value error, ")
    shown = "" if isinstance(value, (dict, list)) or kind == "value_error" else f" (got {_shown(value)})"
    return _error(source, where, f"{message}{shown}")


class _Walk:
    """A pydantic error location read against the schema: the keys a user wrote, without union member labels."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.owner: type[BaseModel] | None = None  # the section holding the last key
        self.union: Any = None  # the innermost plain (not discriminated) union the error went through
        self.union_depth = 0


def _unwrap(annotation: Any) -> Any:
    """`annotation` without Annotated[...] and Optional[...]."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
        elif get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(annotation):
            members = [arg for arg in get_args(annotation) if arg is not type(None)]
            annotation = members[0] if len(members) == 1 else Union[tuple(members)]
        else:
            return annotation


def _member(union: Any, label: str) -> Any:
    """The member of `union` that pydantic labels `label` in an error location (a type tag or a type's name)."""
    for member in get_args(union):
        if isinstance(member, type) and issubclass(member, BaseModel):
            tag = member.model_fields.get("type")
            if label == member.__name__ or (tag is not None and label in get_args(tag.annotation)):
                return member
        origin = get_origin(member)
        name = getattr(origin or member, "__name__", None) or getattr(origin, "_name", "") or ""
        if label == name or label.startswith(f"{name.lower()}["):
            return member
    return None


def _walk(loc: tuple[Any, ...]) -> _Walk:
    walk, annotation = _Walk(), StudyConfig
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            walk.owner = annotation
            walk.keys.append(str(part))
            field = annotation.model_fields.get(str(part))
            annotation = None if field is None else field.annotation
        elif get_origin(annotation) in (Union, types.UnionType):
            member = _member(annotation, str(part))
            plain = not (isinstance(member, type) and issubclass(member, BaseModel))
            if plain:
                walk.union, walk.union_depth = annotation, len(walk.keys)
            annotation = member
        elif get_origin(annotation) in (dict, list):
            walk.keys.append(str(part))
            annotation = get_args(annotation)[-1]
        else:
            walk.keys.append(str(part))
            annotation = None
    return walk


def _either(words: Any) -> str:
    unique = list(dict.fromkeys(words))
    return ", ".join(unique[:-1]) + f" or {unique[-1]}" if len(unique) > 1 else unique[0]


def _words(member: Any, plural: bool) -> list[str]:
    literal = get_origin(member) is Literal
    return [repr(value) for value in get_args(member)] if literal else [_describe(member, plural)]


_NOUNS = {bool: ("true or false", "true/false values"), int: ("an integer", "integers"),
          float: ("a number", "numbers"), str: ("a string", "strings")}


def _describe(annotation: Any, plural: bool = False) -> str:
    """What values `annotation` takes, in words: "'all', 'none' or a list of integers"."""
    annotation = _unwrap(annotation)
    if get_origin(annotation) in (Union, types.UnionType):
        return _either(word for member in get_args(annotation) for word in _words(member, plural))
    if get_origin(annotation) is Literal:
        return _either(_words(annotation, plural))
    if get_origin(annotation) is list:
        return f"lists of {_describe(get_args(annotation)[0], True)}" if plural else \
            f"a list of {_describe(get_args(annotation)[0], True)}"
    if annotation in _NOUNS:
        return _NOUNS[annotation][plural]
    return "mappings" if plural else "a mapping"


def _non_finite(value: Any, path: str = "", clean: set[int] | None = None) -> tuple[str, float] | None:
    """The key path and value of the first NaN or infinity anywhere in `value`, or None.

    A list or mapping shared through YAML aliases is walked once (`clean`: the ids of those already visited).
    """
    if isinstance(value, float) and not math.isfinite(value):
        return path or "(top level)", value
    clean = set() if clean is None else clean
    if id(value) in clean:
        return None
    clean.add(id(value))  # before its items: the first NaN ends the walk, so a visited value is a clean one
    if isinstance(value, dict):
        items: Any = ((f"{path}.{key}" if path else str(key), item) for key, item in value.items())
    elif isinstance(value, list):
        items = ((f"{path}[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    for where, item in items:
        found = _non_finite(item, where, clean)
        if found is not None:
            return found
    return None


def _check_raw(raw: dict[str, Any], source: str) -> None:
    """What must be refused before pydantic sees the mapping: NaN/inf, an oversized enqueue:, the key 'source'."""
    found = _non_finite(raw)
    if found is not None:
        raise _error(source, found[0], f"{found[1]} is not allowed; use a finite number")
    enqueue = raw.get("enqueue")
    if isinstance(enqueue, list) and len(enqueue) > MAX_ENQUEUE:
        raise _error(source, "enqueue", f"{len(enqueue):,} points; at most {MAX_ENQUEUE:,} can be queued; keep the "
                                        f"most promising ones")
    if "source" in raw:
        raise _error(source, "source", "unknown key 'source'; remove it")


def build_config(raw: dict[str, Any], source: str = "<memory>") -> StudyConfig:
    """Validate an already-parsed study mapping; raise ConfigError naming the key path."""
    _check_raw(raw, source)
    raw = dict(raw)
    for key in ("storage", "output_dir"):
        if isinstance(raw.get(key), str):
            raw[key] = _expand_env(raw[key], source, key)
    if isinstance(raw.get("data"), dict) and isinstance(raw["data"].get("root"), str):
        raw["data"] = {**raw["data"], "root": _expand_env(raw["data"]["root"], source, "data.root")}
    try:
        cfg = StudyConfig.model_validate({**raw, "source": source})
    except ValidationError as exc:
        raise _pydantic_message(source, exc) from None
    _check_cross_fields(cfg)
    return cfg


def load_config(path: str | Path, storage: str | None = None) -> StudyConfig:
    """Read and validate a study file; every problem becomes one ConfigError line.

    `storage` (--storage, $HPSEARCH_STORAGE) replaces the file's storage: before it is expanded: a
    ${VAR} in the URL it replaces is never needed.
    """
    path = Path(path)
    with signals.interruptible():  # under `run` a stop signal is only recorded: here it ends the loading at once
        raw = _read_yaml(path)
        if storage is not None:
            raw["storage"] = storage  # before ${VAR} expansion: the file's storage is not used, nor its variables
        return build_config(raw, source=str(path))


def with_overrides(cfg: StudyConfig, **overrides: Any) -> StudyConfig:
    """A copy of `cfg` with command-line overrides (n_trials, timeout, storage, epochs, device, output_dir) applied."""
    raw = cfg.model_dump(mode="json", exclude_unset=True)
    if cfg.sampler_auto:
        raw["sampler"] = "auto"  # chosen again for the new settings
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "epochs":
            raw.setdefault("train", {})["epochs"] = value
        elif key == "budget_epochs":
            raw["budget"] = {**raw.get("budget", {}), "epochs": value}
        else:
            raw[key] = value
    with signals.interruptible():
        return build_config(raw, source=cfg.source)
