"""Run configuration for the ``hepms`` command line: a YAML file, validated against a schema.

A configuration is a nested mapping of sections (``data``, ``model``, ``trainer``, ``evaluate``,
``plot``, ``scan``) whose keys are all documented in :data:`SCHEMA` (``hepms train --help-config``
prints them). Loading:

1. :func:`load_config` reads the YAML file; a top-level ``extends: other.yaml`` (relative to the
   file) is loaded first and this file's keys are merged on top, recursively.
2. Command-line overrides ``section.key=value`` (:func:`apply_overrides`) are merged next; values
   are parsed as YAML (``trainer.epochs=5``, ``data.fractions=[0.5,0.25,0.25]``,
   ``model.tau={pool: [sum]}``).
3. :func:`validate` fills in the defaults and checks every key and value. Errors are raised as
   :class:`ConfigError`, naming the dotted key and the allowed keys or values.

Example:
    >>> cfg = validate({"trainer": {"epochs": 3}})
    >>> cfg["trainer"]["epochs"], cfg["model"]["connection"]
    (3, 'additional')
    >>> validate({"trainer": {"balancer": "magic"}})
    Traceback (most recent call last):
    ...
    hepms.config.ConfigError: trainer.balancer: 'magic' is not allowed; choose from ['dwa', 'fixed', 'gradnorm', 'uncertainty']
"""
from __future__ import annotations

import copy
import hashlib
import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

__all__ = [
    "ConfigError",
    "Key",
    "SCHEMA",
    "schema",
    "load_config",
    "apply_overrides",
    "parse_override",
    "validate",
    "get",
    "set_key",
    "settings_hash",
    "describe",
    "dump_yaml",
]

PathLike = Union[str, Path]


class ConfigError(ValueError):
    """A configuration problem; the message starts with the dotted key at fault."""


# ----------------------------------------------------------------------------------------------
# Schema
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Key:
    """One configuration key.

    Attributes:
        default: value when the key is absent (deep-copied).
        doc: one line of documentation.
        kind: ``"int"``, ``"float"``, ``"str"``, ``"bool"``, ``"list[int]"``, ``"list[float]"``,
            ``"list[str]"``, ``"mapping"`` (free-form) or ``"list"`` (free-form).
        choices: allowed values (for lists: allowed items).
        nullable: ``None`` (YAML ``null``) is allowed.
        check: extra check returning an error message, or None when the value is fine.
    """

    default: Any
    doc: str
    kind: str
    choices: Optional[Sequence[Any]] = None
    nullable: bool = False
    check: Optional[Callable[[Any], Optional[str]]] = None


def _positive(value: Any) -> Optional[str]:
    return None if value > 0 else "must be > 0"


def _non_negative(value: Any) -> Optional[str]:
    return None if value >= 0 else "must be >= 0"


def _fractions(value: Sequence[float]) -> Optional[str]:
    if len(value) != 3 or any(v <= 0 for v in value) or abs(sum(value) - 1.0) > 1e-6:
        return "must be three positive numbers (train, validation, test) summing to 1"
    return None


def _unit_interval(value: float) -> Optional[str]:
    return None if 0.0 < value < 1.0 else "must be in (0, 1)"


def _increasing(value: Sequence[float]) -> Optional[str]:
    if len(value) < 2 or any(b <= a for a, b in zip(value, value[1:])):
        return "must be at least two strictly increasing numbers"
    return None


def _device_name(value: str) -> Optional[str]:
    # Syntax only: whether the device exists is checked when training starts (a run trained on a
    # GPU must stay readable, e.g. by `hepms evaluate`, on a machine without one).
    import torch

    try:
        torch.device(value)
    except (RuntimeError, TypeError):
        return "is not a torch device; use 'cpu', 'cuda' or 'cuda:N'"
    return None


def _choices_of_names() -> dict[str, tuple[str, ...]]:
    # Imported lazily: hepms.data imports awkward, which `hepms --help` should not pay for.
    from hepms.data import DEFAULT_CONSTITUENT_FEATURES, JET_FEATURES
    from hepms.nn.models import CONNECTIONS
    from hepms.train.balancers import BALANCERS
    from hepms.train.losses import CLASSIFICATION_LOSSES
    from hepms.train.strategies import STRATEGIES

    return {
        "jet_features": tuple(sorted(JET_FEATURES)),
        "constituent_features": tuple(DEFAULT_CONSTITUENT_FEATURES),
        "connections": tuple(CONNECTIONS),
        "balancers": tuple(sorted(BALANCERS)),
        "losses": tuple(sorted(CLASSIFICATION_LOSSES)),
        "strategies": tuple(STRATEGIES),
    }


PLOT_STYLES = ("CMS", "ATLAS", "LHCb2", "ALICE", "ROOT", "default")
STUDY_KINDS = ("table", "boxplot")
SAVE_PREDICTIONS = ("first", "all", "none")


def _build_schema() -> dict[str, Any]:
    names = _choices_of_names()
    from hepms.data import DEFAULT_CONSTITUENT_FEATURES, DEFAULT_JET_FEATURES

    return {
        "name": Key("htautau", "name of the study (labels and file names)", "str"),
        "run_dir": Key("runs/htautau", "output folder of the run (relative: to the working directory)", "str"),
        "seed": Key(1, "seed of the model initialisation and the batch shuffles (hepms train)", "int"),
        "threads": Key(None, "torch CPU threads (null: torch's default)", "int", nullable=True,
                       check=_positive),
        "progress": Key(True, "show progress bars", "bool"),
        "data": {
            "path": Key("data/htautau", "folder written by `hepms generate` (holds manifest.json)", "str"),
            "generate": {
                # The sample is generated when data.path has no manifest.json and this is enabled.
                "enabled": Key(False, "generate the sample when data.path has no manifest.json", "bool"),
                "events_per_process": Key(1000, "events per process (H and Z)", "int", check=_positive),
                "mu": Key(50.0, "mean number of pileup interactions", "float", check=_non_negative),
                "seed": Key(12345, "generator seed", "int"),
                "workers": Key(None, "generator processes (null: all cores)", "int", nullable=True,
                               check=_positive),
                "pileup_pool": Key(None, "minimum-bias events in each split's pileup pool (null: sized from "
                                   "the sample)", "int", nullable=True, check=_positive),
            },
            "max_jets": Key(8, "leading jets kept per event", "int", check=_positive),
            "max_constituents": Key(50, "leading constituents kept per jet", "int", check=_positive),
            "min_jets": Key(1, "events with fewer jets are dropped", "int", check=_non_negative),
            "max_events": Key(None, "use a random subset of this many events (null: all)", "int",
                              nullable=True, check=_positive),
            "jet_features": Key(list(DEFAULT_JET_FEATURES), "per-jet input features", "list[str]",
                                choices=names["jet_features"]),
            "constituent_features": Key(list(DEFAULT_CONSTITUENT_FEATURES), "per-constituent input features",
                                        "list[str]", choices=names["constituent_features"]),
            "fractions": Key([0.6, 0.2, 0.2], "train / validation / test fractions", "list[float]",
                             check=_fractions),
            "split_seed": Key(0, "seed of the train/validation/test split (the same for every trial)", "int"),
            "cache": Key(True, "cache the built dataset under <run_dir>/cache", "bool"),
        },
        "model": {
            "connection": Key("additional", "how the tau model feeds the event model", "str",
                              choices=names["connections"]),
            "k": Key(2, "intermediate features per jet (direct: must be 1)", "int", check=_positive),
            "aux": Key([16], "hidden sizes of the additional NN (k -> tau logit)", "list[int]"),
            "regression": Key(False, "add the visible-tau momentum regression task", "bool"),
            "tau": Key({}, "keyword arguments of hepms.nn.TauID (layer sizes, pool, ...)", "mapping"),
            "event": Key({}, "keyword arguments of hepms.nn.EventClassifier", "mapping"),
        },
        "trainer": {
            "strategy": Key("simultaneous", "training strategy", "str", choices=names["strategies"]),
            "balancer": Key("fixed", "loss balancer of the joint phase", "str", choices=names["balancers"]),
            "balancer_options": Key({}, "balancer keyword arguments, e.g. {weights: {tau: 1, event: 1}}",
                                    "mapping"),
            "upstream_loss": Key("bce", "loss of the tau-ID task", "str", choices=names["losses"]),
            "lr": Key(1e-3, "Adam learning rate", "float", check=_positive),
            "batch_size": Key(128, "events per training batch", "int", check=_positive),
            # 512, not more: on a CPU, larger batches spill the activations out of the caches
            # (and page-fault fresh buffers): 2048 made each validation pass twice as costly.
            "eval_batch_size": Key(512, "events per evaluation batch", "int", check=_positive),
            "epochs": Key(100, "maximum epochs per training phase", "int", check=_positive),
            "patience": Key(10, "early-stopping patience (epochs)", "int", check=_positive),
            "monitor": Key("total", "validation quantity for early stopping", "str",
                           choices=("total", "tau", "event", "momentum")),
            "device": Key("cpu", "torch device", "str", check=_device_name),
        },
        "evaluate": {
            "tau_efficiency": Key(0.6, "the tau-ID working point (overall tau-jet efficiency): light-jet "
                                  "rejection in hepms evaluate and its tables, efficiency / rejection "
                                  "versus pT in the figures", "float", check=_unit_interval),
            "pt_bins": Key([20.0, 30.0, 40.0, 50.0, 70.0, 100.0, 150.0, 300.0], "jet pT bin edges in GeV",
                           "list[float]", check=_increasing),
        },
        "plot": {
            "formats": Key(["pdf", "png"], "figure file formats", "list[str]", choices=("pdf", "png", "svg")),
            "style": Key("CMS", "mplhep style", "str", choices=PLOT_STYLES),
            "exp": Key("hepms", "experiment label", "str"),
            "llabel": Key("Simulation", "text after the experiment label", "str"),
            "rlabel": Key(None, "right label (null: the sample's sqrt(s) and <mu>)", "str", nullable=True),
            "dpi": Key(120, "PNG resolution", "int", check=_positive),
            "latent_points": Key(20000, "jets drawn in the latent-space figure at most", "int", check=_positive),
        },
        "scan": {
            "trials": Key(3, "trials per configuration", "int", check=_positive),
            "seed": Key(1000, "trial t of every configuration uses seed + t", "int"),
            "save_predictions": Key("first", "keep test-set predictions of the first, all or no trials",
                                    "str", choices=SAVE_PREDICTIONS),
            "plots": Key(True, "draw the figures at the end of `hepms scan`", "bool"),
            "studies": Key({}, "named studies: {kind: table|boxplot, title, grid, runs, x}", "mapping"),
            "figures": {
                "showcase": Key(None, "run whose trial-0 predictions give the single-run figures "
                                "(study/label)", "str", nullable=True),
                "roc": Key([], "runs overlaid in the ROC figures (study/label)", "list[str]"),
                "weights": Key([], "runs whose loss weights per epoch are drawn (study/label)", "list[str]"),
                "latent": Key(None, "run with k = 2 whose latent space is drawn (study/label)", "str",
                              nullable=True),
            },
            "reference": Key({}, "published numbers to compare with: {study: {source, values: "
                             "{label: {grid: {auc_tau, auc_event}}}}}", "mapping"),
        },
    }


_SCHEMA_CACHE: Optional[dict[str, Any]] = None


def schema() -> dict[str, Any]:
    """The configuration schema (a nested dict of :class:`Key`)."""
    global _SCHEMA_CACHE
    if _SCHEMA_CACHE is None:
        _SCHEMA_CACHE = _build_schema()
    return _SCHEMA_CACHE


def __getattr__(name: str) -> Any:  # SCHEMA is built on first use (lazy imports)
    if name == "SCHEMA":
        return schema()
    raise AttributeError(name)


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    return repr(value)


def _check_scalar(key: str, value: Any, kind: str) -> Any:
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {_fmt(value)}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {_fmt(value)}")
        if not math.isfinite(float(value)):
            raise ConfigError(f"{key}: expected a finite number, got {_fmt(value)}")
        return float(value)
    if kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_fmt(value)}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_fmt(value)}")
        return value
    raise AssertionError(kind)


def _check_value(key: str, spec: Key, value: Any) -> Any:
    if value is None:
        if spec.nullable:
            return None
        raise ConfigError(f"{key}: null is not allowed (expected {spec.kind})")
    if spec.kind == "mapping":
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {_fmt(value)}")
        return copy.deepcopy(dict(value))
    if spec.kind.startswith("list"):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {_fmt(value)}")
        if spec.kind == "list":
            return list(value)
        item_kind = spec.kind[5:-1]
        items = [_check_scalar(f"{key}[{i}]", v, item_kind) for i, v in enumerate(value)]
        if spec.choices is not None:
            bad = [v for v in items if v not in spec.choices]
            if bad:
                raise ConfigError(
                    f"{key}: {_fmt(bad[0])} is not allowed; choose from {list(spec.choices)}"
                )
        value = items
    else:
        value = _check_scalar(key, value, spec.kind)
        if spec.choices is not None and value not in spec.choices:
            raise ConfigError(f"{key}: {_fmt(value)} is not allowed; choose from {list(spec.choices)}")
    if spec.check is not None:
        try:
            problem = spec.check(value)
        except TypeError:
            problem = "has the wrong type"
        if problem:
            raise ConfigError(f"{key}: {_fmt(value)} {problem}")
    return value


def _validate_section(prefix: str, section: Mapping[str, Any], given: Any) -> dict[str, Any]:
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of keys, got {_fmt(given)}")
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
            out[name] = _validate_section(key, spec, given.get(name))
        elif name in given:
            out[name] = _check_value(key, spec, given[name])
        else:
            out[name] = copy.deepcopy(spec.default)
    return out


def _check_module_options(key: str, options: Mapping[str, Any], cls: type, reserved: Sequence[str]) -> None:
    params = inspect.signature(cls.__init__).parameters
    allowed = sorted(p for p in params if p != "self" and p not in reserved)
    unknown = [k for k in options if k not in allowed]
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown key; allowed keys in {key}: {allowed}")


def _check_pool_modes(model: Mapping[str, Any]) -> None:
    """model.tau.pool / model.event.pool: each a list of hepms.nn.POOLING_MODES (e.g. [attention])."""
    from hepms.nn.layers import POOLING_MODES

    for section in ("tau", "event"):
        if "pool" not in model[section]:
            continue
        modes = model[section]["pool"]
        modes = [modes] if isinstance(modes, str) else modes
        if not isinstance(modes, list) or not modes or any(m not in POOLING_MODES for m in modes):
            raise ConfigError(
                f"model.{section}.pool: {model[section]['pool']!r} must be a non-empty list of "
                f"{list(POOLING_MODES)}"
            )


def _check_consistency(cfg: dict[str, Any]) -> None:
    from hepms.nn.models import EventClassifier, TauID

    model, trainer = cfg["model"], cfg["trainer"]
    if model["connection"] == "direct" and model["k"] != 1:
        raise ConfigError(
            f"model.k: {model['k']} is not allowed with model.connection 'direct' (it passes the tau "
            "probability, k must be 1); use connection 'additional' for k > 1"
        )
    if trainer["strategy"] == "pretrain_truth" and model["connection"] != "direct":
        raise ConfigError(
            "trainer.strategy: 'pretrain_truth' needs model.connection 'direct' (the truth of the "
            "intermediate is the tau label)"
        )
    if trainer["strategy"] == "w1_zero" and (trainer["balancer"] != "fixed" or trainer["balancer_options"]):
        raise ConfigError(
            "trainer.balancer: strategy 'w1_zero' fixes the weights to (0, 1); leave balancer 'fixed' "
            "and balancer_options empty"
        )
    _check_module_options("model.tau", model["tau"], TauID,
                          ("constituent_features", "jet_features", "outputs", "regression_outputs"))
    _check_module_options("model.event", model["event"], EventClassifier,
                          ("jet_features", "intermediate_features"))
    _check_pool_modes(model)
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in model["aux"]):
        raise ConfigError(f"model.aux: {model['aux']!r} must be a list of positive integers")
    # The balancer options are checked by building the balancer on the tasks it will see.
    from hepms.train.balancers import make_balancer

    tasks = ["tau"] + (["momentum"] if model["regression"] else []) + ["event"]
    options = dict(trainer["balancer_options"])
    if trainer["balancer"] != "fixed" or options:
        try:
            make_balancer(trainer["balancer"], tasks, **options)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"trainer.balancer_options: {error}") from None
    if trainer["monitor"] == "momentum" and not model["regression"]:
        raise ConfigError("trainer.monitor: 'momentum' needs model.regression: true")


def validate(config: Optional[Mapping[str, Any]] = None, *, studies: bool = True) -> dict[str, Any]:
    """Fill in defaults and check ``config``; returns a new, complete configuration.

    Args:
        config: the user's (partial) configuration.
        studies: also validate every run of ``scan.studies`` (each applied to this config).

    Raises:
        ConfigError: the first problem found, naming its dotted key.
    """
    config = dict(config or {})
    config.pop("extends", None)
    cfg = _validate_section("", schema(), config)
    _check_consistency(cfg)
    if studies:
        from hepms.study.plan import expand_studies  # local: avoids an import cycle

        expand_studies(cfg)  # raises ConfigError for a bad study
    return cfg


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


def _schema_node(key: str) -> Any:
    node: Any = schema()
    parts = key.split(".")
    for i, part in enumerate(parts):
        if isinstance(node, Key):
            if node.kind == "mapping":
                return node  # free-form below this point
            raise ConfigError(f"{'.'.join(parts[:i])}: is a value, not a section (no key {part!r})")
        if part not in node:
            where = ".".join(parts[:i])
            raise ConfigError(
                f"{key}: unknown key; allowed keys{' in ' + where if where else ''}: {sorted(node)}"
            )
        node = node[part]
    return node


def set_key(cfg: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted ``key`` in the (raw or validated) ``cfg`` in place; unknown keys raise.

    Keys inside free-form mappings (``trainer.balancer_options.weights.tau``) are allowed.
    """
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"{key!r}: malformed key (expected section.key)")
    _schema_node(key)
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
    """``"trainer.epochs=5"`` -> ``("trainer.epochs", 5)``; the value is parsed as YAML."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. trainer.epochs=5")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"{key}: cannot parse value {raw!r}: {error}") from None
    return key, value


def apply_overrides(cfg: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of the raw ``cfg`` with ``key=value`` overrides applied (not yet validated)."""
    out = copy.deepcopy(dict(cfg))
    for text in overrides:
        key, value = parse_override(text)
        set_key(out, key, value)
    return out


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and key not in _REPLACED:
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# Free-form values that replace rather than merge when a preset overrides them: merging two
# balancer_options or two TauID option sets key by key would silently mix configurations.
_REPLACED = {"balancer_options", "tau", "event"}


def load_config(
    path: Optional[PathLike] = None,
    overrides: Sequence[str] = (),
    *,
    validate_result: bool = True,
) -> dict[str, Any]:
    """Read a YAML configuration (following ``extends``), apply overrides, validate.

    Args:
        path: YAML file, or a run directory holding ``config.yaml``; None: the defaults.
        overrides: ``key=value`` strings.
        validate_result: validate and fill in defaults (False: the raw merged mapping).

    Raises:
        ConfigError: unreadable file, bad YAML, cyclic ``extends``, or an invalid configuration.
    """
    raw = _read_yaml_chain(Path(path), ()) if path is not None else {}
    raw = apply_overrides(raw, overrides)
    return validate(raw) if validate_result else raw


def _read_yaml_chain(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    import yaml

    if path.is_dir():
        path = path / "config.yaml"
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"extends: cycle through {path}")
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    data = dict(data)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"extends: expected a file name, got {parent!r}")
    base = _read_yaml_chain((path.parent / parent), seen + (path,))
    return _merge(base, data)


# ----------------------------------------------------------------------------------------------
# Hashes, documentation, YAML output
# ----------------------------------------------------------------------------------------------
def settings_hash(settings: Any, length: int = 12) -> str:
    """Short SHA-256 of a JSON-able value (keys sorted): identifies a configuration."""
    text = json.dumps(settings, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def describe() -> str:
    """Every key with its default and documentation, as text (for ``--help-config``)."""
    lines: list[str] = []

    def walk(prefix: str, node: Mapping[str, Any]) -> None:
        for name, spec in node.items():
            key = f"{prefix}.{name}" if prefix else name
            if isinstance(spec, Mapping):
                walk(key, spec)
                continue
            allowed = f"; one of {list(spec.choices)}" if spec.choices else ""
            lines.append(f"{key} = {json.dumps(spec.default)}  ({spec.kind}{allowed})\n    {spec.doc}")

    walk("", schema())
    return "\n".join(lines)


def dump_yaml(cfg: Mapping[str, Any]) -> str:
    """YAML text of a configuration (keys in schema order)."""
    import yaml

    return yaml.safe_dump(json.loads(json.dumps(cfg)), sort_keys=False, default_flow_style=None, width=100)
