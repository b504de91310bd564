"""The one configuration engine of hepms: typed keys, validation, YAML files with ``extends:``.

Three configurations use it: the run configuration of ``hepms train`` / ``scan`` / ``evaluate``
(:mod:`hepms.config`), the model-selection study of ``hepms select`` (:mod:`hepms.select.config`)
and the generator settings (:mod:`hepms.generate.config`, whose keys also document the
``data.generate`` sections of the other two). A configuration is a nested mapping; its schema is a
nested dict whose leaves are :class:`Key` objects, each with a default, one line of documentation
and a Python type (``int``, ``float``, ``str``, ``bool``, ``list[int]``, ``list[float]``,
``list[str]``, ``dict`` for a free-form mapping, ``list`` for a free-form list).

YAML is read by :func:`read_yaml`, which differs from ``yaml.safe_load`` in two ways: a key given
twice in one mapping is an error naming the file and both lines (PyYAML keeps the last one
silently, so a second ``trainer:`` block used to drop the first), and ``1e-3`` is a number (YAML
1.1, which PyYAML implements, wants ``1.0e-3`` and reads ``1e-3`` as a string).

Example:
    >>> spec = {"epochs": Key(100, "maximum epochs", int), "lr": Key(1e-3, "learning rate", float)}
    >>> check_section("trainer", spec, {"lr": 3})
    {'epochs': 100, 'lr': 3.0}
    >>> check_section("trainer", spec, {"epoch": 3})
    Traceback (most recent call last):
    ...
    hepms.config_engine.ConfigError: trainer.epoch: unknown key; allowed keys in trainer: ['epochs', 'lr']
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import numbers
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

__all__ = [
    "ConfigError",
    "Key",
    "type_name",
    "check_value",
    "check_section",
    "defaults",
    "get",
    "set_key",
    "parse_override",
    "apply_overrides",
    "merge",
    "read_yaml",
    "read_yaml_chain",
    "describe",
    "dump_yaml",
    "settings_hash",
]

PathLike = Union[str, Path]


class ConfigError(ValueError):
    """A configuration problem; the message starts with the dotted key (or the file) at fault."""


@dataclass(frozen=True)
class Key:
    """One configuration key.

    Attributes:
        default: value when the key is absent (deep-copied).
        doc: one line of documentation.
        type: ``int``, ``float``, ``str``, ``bool``, ``list[int]``, ``list[float]``, ``list[str]``,
            ``dict`` (a free-form mapping) or ``list`` (a free-form list).
        choices: allowed values (for lists: allowed items).
        nullable: ``None`` (YAML ``null``) is allowed.
        check: extra check returning an error message, or None when the value is fine.
    """

    default: Any
    doc: str
    type: Any
    choices: Optional[Sequence[Any]] = None
    nullable: bool = False
    check: Optional[Callable[[Any], Optional[str]]] = None

    def __post_init__(self) -> None:
        item = _item_type(self.type)
        if self.type not in (int, float, str, bool, dict, list) and item not in (int, float, str, bool):
            raise TypeError(f"Key type {self.type!r} is not supported")

    def with_default(self, default: Any) -> "Key":
        """The same key with another default (a section that documents the same setting)."""
        return dataclasses.replace(self, default=default)


def _item_type(tp: Any) -> Any:
    """``list[int]`` -> ``int``; None for anything else."""
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        return item
    return None


def type_name(tp: Any) -> str:
    """How ``hepms config --keys`` names a type: ``int``, ``list[str]``, ``mapping``, ``list``."""
    if tp is dict:
        return "mapping"
    item = _item_type(tp)
    return f"list[{item.__name__}]" if item is not None else tp.__name__


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------
def _check_scalar(key: str, value: Any, tp: type) -> Any:
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(float(value)):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    raise AssertionError(tp)


def check_value(key: str, spec: Key, value: Any) -> Any:
    """``value`` checked against ``spec`` and converted (an integral float to int, an int to float).

    Raises:
        ConfigError: naming ``key``, the value and what was expected.
    """
    if value is None:
        if spec.nullable:
            return None
        raise ConfigError(f"{key}: null is not allowed (expected {type_name(spec.type)})")
    if spec.type is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return copy.deepcopy(dict(value))
    item = _item_type(spec.type)
    if spec.type is list or item is not None:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if item is None:
            return list(value)
        items = [_check_scalar(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
        if spec.choices is not None:
            bad = [v for v in items if v not in spec.choices]
            if bad:
                raise ConfigError(f"{key}: {bad[0]!r} is not allowed; choose from {list(spec.choices)}")
        value = items
    else:
        value = _check_scalar(key, value, spec.type)
        if spec.choices is not None and value not in spec.choices:
            raise ConfigError(f"{key}: {value!r} is not allowed; choose from {list(spec.choices)}")
    if spec.check is not None:
        try:
            problem = spec.check(value)
        except TypeError:
            problem = "has the wrong type"
        if problem:
            raise ConfigError(f"{key}: {value!r} {problem}")
    return value


def check_section(prefix: str, section: Mapping[str, Any], given: Any) -> dict[str, Any]:
    """``given`` checked against the schema ``section``, with the defaults filled in.

    Raises:
        ConfigError: an unknown key (with the allowed ones) or a bad value, naming the dotted key.
    """
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of keys, got {given!r}")
    unknown = [k for k in given if k not in section]
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"{where}{unknown[0]}: unknown key; allowed keys{' in ' + prefix if prefix else ''}: "
            f"{sorted(section)}"
        )
    out: dict[str, Any] = {}
    for name, spec in section.items():
        key = f"{prefix}.{name}" if prefix else name
        if isinstance(spec, Mapping):
            out[name] = check_section(key, spec, given.get(name))
        elif name in given:
            out[name] = check_value(key, spec, given[name])
        else:
            out[name] = copy.deepcopy(spec.default)
    return out


def defaults(section: Mapping[str, Any]) -> dict[str, Any]:
    """The defaults of a schema (section), nested like it."""
    return check_section("", section, {})


# ----------------------------------------------------------------------------------------------
# Dotted keys and overrides
# ----------------------------------------------------------------------------------------------
def get(cfg: Mapping[str, Any], key: str) -> Any:
    """The value at dotted ``key`` (``"trainer.epochs"``)."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(f"{key}: no such key")
        node = node[part]
    return node


def _schema_node(schema: Mapping[str, Any], key: str) -> Any:
    node: Any = schema
    parts = key.split(".")
    for i, part in enumerate(parts):
        if isinstance(node, Key):
            if node.type is dict:
                return node  # free-form below this point
            raise ConfigError(f"{'.'.join(parts[:i])}: is a value, not a section (no key {part!r})")
        if part not in node:
            where = ".".join(parts[:i])
            raise ConfigError(
                f"{key}: unknown key; allowed keys{' in ' + where if where else ''}: {sorted(node)}"
            )
        node = node[part]
    return node


def set_key(schema: Mapping[str, Any], cfg: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted ``key`` in ``cfg`` in place; keys unknown to ``schema`` raise.

    Keys inside free-form mappings (``trainer.balancer_options.weights.tau``) are allowed.
    """
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"{key!r}: malformed key (expected section.key)")
    _schema_node(schema, key)
    parts = key.split(".")
    node = cfg
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def parse_override(text: str) -> tuple[str, Any]:
    """``"trainer.epochs=5"`` -> ``("trainer.epochs", 5)``; the value is read as YAML (:func:`read_yaml`'s
    dialect: ``trainer.lr=1e-3`` is a number)."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. trainer.epochs=5")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.load(raw, Loader=_loader()) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"{key}: cannot parse value {raw!r}: {error}") from None
    return key, value


def apply_overrides(schema: Mapping[str, Any], cfg: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of the raw ``cfg`` with ``key=value`` overrides applied (not yet validated)."""
    out = copy.deepcopy(dict(cfg))
    for text in overrides:
        key, value = parse_override(text)
        set_key(schema, out, key, value)
    return out


def merge(base: Mapping[str, Any], top: Mapping[str, Any], replaced: frozenset[str] = frozenset()) -> dict[str, Any]:
    """``top`` merged into a copy of ``base``, recursively; mappings under a name in ``replaced`` are
    replaced whole (merging two option sets key by key would silently mix configurations)."""
    out = copy.deepcopy(dict(base))
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and key not in replaced:
            out[key] = merge(out[key], value, replaced)
        else:
            out[key] = copy.deepcopy(value)
    return out


# ----------------------------------------------------------------------------------------------
# YAML
# ----------------------------------------------------------------------------------------------
# YAML 1.2's float syntax: PyYAML's (1.1) needs a dot and a signed exponent, so "1e-3" or "5e4"
# would stay strings and a learning rate of 1e-3 would be rejected as "expected a number".
_FLOAT_1_2 = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)$")

_LOADER: Any = None


def _loader() -> Any:
    """A SafeLoader that rejects duplicate keys and reads YAML 1.2 exponent floats (built once)."""
    global _LOADER
    if _LOADER is not None:
        return _LOADER
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def construct_mapping(loader: Any, node: Any, deep: bool = False) -> dict:
        loader.flatten_mapping(node)
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key in seen:
                first = seen[key]
                raise ConfigError(
                    f"{key_node.start_mark.name}:{key_node.start_mark.line + 1}: key {key!r} given twice "
                    f"in one mapping (first on line {first.line + 1}); the second would silently replace "
                    "the first: merge them into one"
                )
            seen[key] = key_node.start_mark
        return loader.construct_mapping(node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_1_2, list("-+0123456789."))
    _LOADER = Loader
    return Loader


def read_yaml(path: PathLike) -> Any:
    """The content of a YAML file (see the module docstring for how it differs from ``safe_load``).

    Raises:
        ConfigError: the file is missing or not valid YAML, or a mapping repeats a key (naming the
            file and the lines).
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        with open(path) as f:
            return yaml.load(f, Loader=_loader())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None


def read_yaml_chain(path: PathLike, replaced: frozenset[str] = frozenset(),
                    _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML configuration file (a mapping of sections) with its ``extends:`` chain resolved.

    A top-level ``extends: other.yaml`` (relative to the file) is read first and this file's keys
    are merged on top (:func:`merge` with ``replaced``).

    Raises:
        ConfigError: unreadable file, bad YAML, a repeated key, a cyclic ``extends``, or a top
            level that is not a mapping.
    """
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"extends: cycle through {path}")
    data = read_yaml(path) or {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    data = dict(data)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"extends: expected a file name, got {parent!r}")
    base = read_yaml_chain(path.parent / parent, replaced, _seen + (path,))
    return merge(base, data, replaced)


def dump_yaml(cfg: Mapping[str, Any]) -> str:
    """YAML text of a configuration (keys in schema order)."""
    import yaml

    return yaml.safe_dump(json.loads(json.dumps(cfg)), sort_keys=False, default_flow_style=None, width=100)


# ----------------------------------------------------------------------------------------------
# Documentation and hashes
# ----------------------------------------------------------------------------------------------
def describe(schema: Mapping[str, Any]) -> str:
    """Every key of ``schema`` with its default, type and documentation, as text."""
    lines: list[str] = []

    def walk(prefix: str, node: Mapping[str, Any]) -> None:
        for name, spec in node.items():
            key = f"{prefix}.{name}" if prefix else name
            if isinstance(spec, Mapping):
                walk(key, spec)
                continue
            allowed = f"; one of {list(spec.choices)}" if spec.choices else ""
            lines.append(f"{key} = {json.dumps(spec.default)}  ({type_name(spec.type)}{allowed})\n    {spec.doc}")

    walk("", schema)
    return "\n".join(lines)


def settings_hash(settings: Any, length: int = 12) -> str:
    """Short SHA-256 of a JSON-able value (keys sorted): identifies a configuration."""
    text = json.dumps(settings, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]
