"""Run configuration of ``hepms train`` / ``evaluate`` / ``plot`` / ``scan``: a YAML file, validated.

A configuration is a nested mapping of sections (``data``, ``model``, ``trainer``, ``evaluate``,
``plot``, ``scan``) whose keys are all documented in :func:`schema` (``hepms config --keys`` prints
them). The engine (typed keys, YAML reading, ``extends:``) is :mod:`hepms.config_engine`, shared with the
selection study and the generator settings. Loading:

1. :func:`load_config` reads the YAML file; a top-level ``extends: other.yaml`` (relative to the
   file) is loaded first and this file's keys are merged on top, recursively. A key given twice in
   one mapping is an error naming the file and line; ``1e-3`` is a number.
2. Command-line overrides ``section.key=value`` (:func:`apply_overrides`) are merged next; values
   are parsed as YAML (``trainer.epochs=5``, ``data.fractions=[0.5,0.25,0.25]``,
   ``model.tau={pool: [sum]}``).
3. :func:`validate` fills in the defaults and checks every key and value, the options of
   ``model.tau`` / ``model.event`` (by building the networks on the meta device) and every run of
   ``scan.studies``. Errors are raised as :class:`ConfigError`, naming the dotted key and the
   allowed keys or values.

Example:
    >>> cfg = validate({"trainer": {"epochs": 3}})
    >>> cfg["trainer"]["epochs"], cfg["model"]["connection"]
    (3, 'additional')
    >>> validate({"trainer": {"balancer": "magic"}})
    Traceback (most recent call last):
    ...
    hepms.config_engine.ConfigError: trainer.balancer: 'magic' is not allowed; choose from ['dwa', 'fixed', 'gradnorm', 'uncertainty']
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional, Sequence, Union

from hepms import config_engine
from hepms.config_engine import ConfigError, Key, check_section, dump_yaml, get, read_yaml_chain, settings_hash

__all__ = [
    "ConfigError",
    "Key",
    "schema",
    "load_config",
    "comparison_specs",
    "apply_overrides",
    "validate",
    "get",
    "set_key",
    "settings_hash",
    "describe",
    "dump_yaml",
    "StudyRunConfig",
    "study_run_configs",
]

PathLike = Union[str, Path]


# ----------------------------------------------------------------------------------------------
# Schema
# ----------------------------------------------------------------------------------------------
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
    # Syntax only: whether the device exists is checked by the commands that train (hepms train,
    # hepms scan: every run, before the first one starts), since a run trained on a GPU must stay
    # readable, e.g. by `hepms evaluate`, on a machine without one.
    import torch

    try:
        torch.device(value)
    except (RuntimeError, TypeError):
        return "is not a torch device; use 'cpu', 'cuda' or 'cuda:N'"
    return None


PLOT_STYLES = ("CMS", "ATLAS", "LHCb2", "ALICE", "ROOT", "default")
STUDY_KINDS = ("table", "boxplot")
SAVE_PREDICTIONS = ("first", "all", "none")


def _build_schema() -> dict[str, Any]:
    # Imported here: hepms.features imports awkward, hepms.train torch, which `hepms --help` should
    # not pay for. The defaults of the trainer section are TrainConfig's and those of
    # data.generate the generator's: each default is written once.
    from hepms.features import DEFAULT_CONSTITUENT_FEATURES, DEFAULT_JET_FEATURES, JET_FEATURES
    from hepms.generate.config import GENERATION_KEYS
    from hepms.nn.models import CONNECTIONS
    from hepms.train.balancers import BALANCERS
    from hepms.train.losses import CLASSIFICATION_LOSSES
    from hepms.train.strategies import STRATEGIES
    from hepms.train.trainer import PRECISIONS, TrainConfig

    train = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    return {
        "name": Key("htautau", "name of the study (labels and file names)", str),
        "run_dir": Key("runs/htautau", "output folder of the run (relative: to the working directory)", str),
        "seed": Key(1, "seed of the model initialisation and the batch shuffles (hepms train)", int),
        "threads": Key(None, "torch CPU threads (null: torch's default)", int, nullable=True,
                       check=_positive),
        "progress": Key(True, "show progress bars", bool),
        "data": {
            "path": Key("data/htautau", "folder written by `hepms generate` (holds manifest.json)", str),
            "generate": {
                # The sample is generated when data.path has no manifest.json and this is enabled.
                "enabled": Key(False, "generate the sample when data.path has no manifest.json", bool),
                "events_per_process": GENERATION_KEYS["events_per_process"],
                "mu": GENERATION_KEYS["mu"],
                "seed": GENERATION_KEYS["seed"],
                "workers": Key(None, "generator processes (null: all cores)", int, nullable=True,
                               check=_positive),
                "pileup_pool": GENERATION_KEYS["pileup_pool"],
            },
            "max_jets": Key(8, "leading jets kept per event", int, check=_positive),
            "max_constituents": Key(50, "leading constituents kept per jet", int, check=_positive),
            "min_jets": Key(1, "events with fewer jets are dropped", int, check=_non_negative),
            "max_events": Key(None, "use a random subset of this many events (null: all)", int,
                              nullable=True, check=_positive),
            "jet_features": Key(list(DEFAULT_JET_FEATURES), "per-jet input features", list[str],
                                choices=tuple(sorted(JET_FEATURES))),
            "constituent_features": Key(list(DEFAULT_CONSTITUENT_FEATURES), "per-constituent input features",
                                        list[str], choices=tuple(DEFAULT_CONSTITUENT_FEATURES)),
            "fractions": Key([0.6, 0.2, 0.2], "train / validation / test fractions", list[float],
                             check=_fractions),
            "split_seed": Key(0, "seed of the train/validation/test split (the same for every trial)", int),
            "cache": Key(True, "cache the built dataset under <run_dir>/cache", bool),
        },
        "model": {
            "connection": Key("additional", "how the tau model feeds the event model", str,
                              choices=tuple(CONNECTIONS)),
            "k": Key(2, "intermediate features per jet (direct: must be 1)", int, check=_positive),
            "aux": Key([16], "hidden sizes of the additional NN (k -> tau logit)", list[int]),
            "regression": Key(False, "add the visible-tau momentum regression task", bool),
            "tau": Key({}, "keyword arguments of hepms.nn.TauID (layer sizes, pool, ...)", dict),
            "event": Key({}, "keyword arguments of hepms.nn.EventClassifier", dict),
        },
        "trainer": {
            "strategy": Key(train["strategy"], "training strategy", str, choices=tuple(STRATEGIES)),
            "balancer": Key(train["balancer"], "loss balancer of the joint phase", str,
                            choices=tuple(sorted(BALANCERS))),
            "balancer_options": Key({}, "balancer keyword arguments, e.g. {weights: {tau: 1, event: 1}}", dict),
            "upstream_loss": Key(train["upstream_loss"], "loss of the tau-ID task", str,
                                 choices=tuple(sorted(CLASSIFICATION_LOSSES))),
            "lr": Key(train["lr"], "Adam learning rate", float, check=_positive),
            "batch_size": Key(train["batch_size"], "events per training batch", int, check=_positive),
            # 512 (TrainConfig), not more: on a CPU, larger batches spill the activations out of the
            # caches (and page-fault fresh buffers): 2048 made each validation pass twice as costly.
            "eval_batch_size": Key(train["eval_batch_size"], "events per evaluation batch", int,
                                   check=_positive),
            "epochs": Key(train["max_epochs"], "maximum epochs per training phase", int, check=_positive),
            "patience": Key(train["patience"], "early-stopping patience (epochs)", int, check=_positive),
            "monitor": Key(train["monitor"], "validation quantity for early stopping", str,
                           choices=("total", "tau", "event", "momentum")),
            "device": Key(train["device"], "torch device", str, check=_device_name),
            # Changes the results: enters the settings hash (only when not float32, so the keys of
            # float32 trials stay as they were). Slower on a CPU for the study's model
            # (benchmarks/train.md).
            "precision": Key(train["precision"], "training forward passes in float32, or in bfloat16 "
                             "mixed precision (autocast; weights, optimizer, losses, validation and "
                             "evaluation stay float32)", str, choices=PRECISIONS),
        },
        "evaluate": {
            "tau_efficiency": Key(0.6, "the tau-ID working point (overall tau-jet efficiency): light-jet "
                                  "rejection in hepms evaluate and its tables, efficiency / rejection "
                                  "versus pT in the figures", float, check=_unit_interval),
            "pt_bins": Key([20.0, 30.0, 40.0, 50.0, 70.0, 100.0, 150.0, 300.0], "jet pT bin edges in GeV",
                           list[float], check=_increasing),
        },
        "plot": {
            "formats": Key(["pdf", "png"], "figure file formats", list[str], choices=("pdf", "png", "svg")),
            "style": Key("CMS", "mplhep style", str, choices=PLOT_STYLES),
            "exp": Key("hepms", "experiment label", str),
            "llabel": Key("Simulation", "text after the experiment label", str),
            "rlabel": Key(None, "right label (null: the sample's sqrt(s) and <mu>)", str, nullable=True),
            "dpi": Key(120, "PNG resolution", int, check=_positive),
            "latent_points": Key(20000, "jets drawn in the latent-space figure at most", int, check=_positive),
        },
        "scan": {
            "trials": Key(3, "trials per configuration", int, check=_positive),
            "seed": Key(1000, "trial t of every configuration uses seed + t", int),
            "save_predictions": Key("first", "keep test-set predictions of the first, all or no trials",
                                    str, choices=SAVE_PREDICTIONS),
            "plots": Key(True, "draw the figures at the end of `hepms scan`", bool),
            "studies": Key({}, "named studies: {kind: table|boxplot, title, grid, runs, x}", dict),
            "figures": {
                "showcase": Key(None, "run whose trial-0 predictions give the single-run figures "
                                "(study/label)", str, nullable=True),
                "roc": Key([], "runs overlaid in the ROC figures (study/label)", list[str]),
                "weights": Key([], "runs whose loss weights per epoch are drawn (study/label)", list[str]),
                "latent": Key(None, "run with k = 2 whose latent space is drawn (study/label)", str,
                              nullable=True),
            },
            "reference": Key({}, "published numbers to compare with: {study: {source, values: "
                             "{label: {grid: {auc_tau, auc_event}}}}}", dict),
            "comparisons": Key([], "paired comparisons over trials with the same seed: [{name, title, a: "
                               "study/label, b: study/label or [study/label, ...] (the best of them), columns, "
                               "metric, claim: {expect: better|not_worse, study, source}}]", list),
            "trial_records": Key(None, "folder of committed per-trial results (JSON) shared between machines: "
                                 "trials there with the same settings hash, seed and data fingerprint count as "
                                 "done, finished trials are added (relative: to the working directory)", str,
                                 nullable=True),
        },
    }


_SCHEMA_CACHE: Optional[dict[str, Any]] = None


def schema() -> dict[str, Any]:
    """The configuration schema (a nested dict of :class:`~hepms.config_engine.Key`), built on first use."""
    global _SCHEMA_CACHE
    if _SCHEMA_CACHE is None:
        _SCHEMA_CACHE = _build_schema()
    return _SCHEMA_CACHE


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------
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


# Network settings already built without error: the runs of a scan mostly share them.
_NETWORKS_CHECKED: set[str] = set()


def _check_networks(cfg: Mapping[str, Any]) -> None:
    """Build the tau and event networks of ``cfg["model"]`` on the meta device (no memory, a few
    tens of milliseconds, once per distinct setting): a bad value in ``model.tau`` / ``model.event``
    (a layer size of 0, a string where a list belongs) fails here, naming the section, instead of
    when the run starts training."""
    import json

    import torch

    from hepms.nn.models import EventClassifier, TauID

    model, data = cfg["model"], cfg["data"]
    jets, constituents = len(data["jet_features"]), len(data["constituent_features"])
    key = json.dumps([jets, constituents, model["k"], model["regression"], model["tau"], model["event"]],
                     sort_keys=True, default=repr)
    if key in _NETWORKS_CHECKED:
        return
    builds = (
        ("model.tau", lambda: TauID(constituents, jets, outputs=model["k"],
                                    regression_outputs=3 if model["regression"] else 0, **model["tau"])),
        ("model.event", lambda: EventClassifier(jets, model["k"], **model["event"])),
    )
    for name, build in builds:
        try:
            with torch.device("meta"):
                build()
        except (ValueError, TypeError) as error:
            raise ConfigError(f"{name}: {error}") from None
    _NETWORKS_CHECKED.add(key)


def _check_consistency(cfg: dict[str, Any]) -> None:
    from hepms.nn.models import EventClassifier, TauID
    from hepms.train.balancers import make_balancer
    from hepms.train.strategies import check_balancer

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
    try:
        check_balancer(trainer["strategy"], trainer["balancer"], trainer["balancer_options"])
    except ValueError as error:
        raise ConfigError(f"trainer.balancer: {error}") from None
    _check_module_options("model.tau", model["tau"], TauID,
                          ("constituent_features", "jet_features", "outputs", "regression_outputs"))
    _check_module_options("model.event", model["event"], EventClassifier,
                          ("jet_features", "intermediate_features"))
    _check_pool_modes(model)
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in model["aux"]):
        raise ConfigError(f"model.aux: {model['aux']!r} must be a list of positive integers")
    _check_networks(cfg)
    # The balancer options are checked by building the balancer on the tasks it will see.
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
    cfg = check_section("", schema(), config)
    _check_consistency(cfg)
    if studies:
        study_run_configs(cfg)  # raises ConfigError for a bad study
    return cfg


# ----------------------------------------------------------------------------------------------
# scan.studies: named groups of runs, each run a set of overrides of this configuration
# ----------------------------------------------------------------------------------------------
_STUDY_KEYS = ("kind", "title", "runs", "grid", "x")
_RUN_KEYS = ("label", "group", "set")


class StudyRunConfig(NamedTuple):
    """One run of one study of ``scan.studies`` at one grid point, with its validated configuration.

    (:func:`hepms.study.plan.expand_studies` turns these into the planned runs of a scan.)
    """

    study: str
    label: str
    group: Optional[str]
    grid: dict[str, Any]
    config: dict[str, Any]

    @property
    def ref(self) -> str:
        """``study/label``: how ``scan.figures`` and ``scan.comparisons`` name the run."""
        return f"{self.study}/{self.label}"

    @property
    def column(self) -> str:
        """The grid point as a table column: ``{"trainer.upstream_loss": "mse"}`` -> ``"mse"``."""
        return ",".join(str(v) for v in self.grid.values())


def _check_entry(where: str, entry: Any, allowed: Sequence[str]) -> None:
    """``entry`` (one item of a list-of-mappings setting) is a mapping with only ``allowed`` keys."""
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: expected a mapping with keys {list(allowed)}")
    unknown = [k for k in entry if k not in allowed]
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key; allowed keys in {where}: {list(allowed)}")


def study_run_configs(cfg: Mapping[str, Any]) -> list[StudyRunConfig]:
    """Every (study, run, grid point) of ``cfg["scan"]["studies"]`` with its validated config.

    A study is a mapping with keys ``kind`` (``table`` or ``boxplot``), ``title``, ``runs`` (a list
    of ``{label, group (optional), set: {dotted.key: value}}``), ``grid`` (optional,
    ``{dotted.key: [values]}``: every run is repeated for every combination) and ``x`` (boxplot:
    the dotted key of the x axis). The references of ``scan.figures`` are checked against the runs.

    Raises:
        ConfigError: a malformed study, naming ``scan.studies.<name>...``.
    """
    import itertools

    studies = cfg["scan"]["studies"]
    base = {k: v for k, v in cfg.items() if k != "scan"}
    out: list[StudyRunConfig] = []
    for name, study in studies.items():
        where = f"scan.studies.{name}"
        _check_entry(where, study, _STUDY_KEYS)
        kind = study.get("kind", "table")
        if kind not in STUDY_KINDS:
            raise ConfigError(f"{where}.kind: {kind!r} is not allowed; choose from {list(STUDY_KINDS)}")
        runs = study.get("runs")
        if not isinstance(runs, Sequence) or isinstance(runs, str) or not runs:
            raise ConfigError(f"{where}.runs: expected a non-empty list of {{label, group, set}}")
        grid = study.get("grid") or {}
        if not isinstance(grid, Mapping):
            raise ConfigError(f"{where}.grid: expected a mapping {{dotted.key: [values]}}")
        for key, values in grid.items():
            if not isinstance(values, Sequence) or isinstance(values, str) or not values:
                raise ConfigError(f"{where}.grid.{key}: expected a non-empty list of values")
        if kind == "boxplot" and not isinstance(study.get("x"), str):
            raise ConfigError(f"{where}.x: a boxplot study needs the dotted key of its x axis")
        points = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())] or [{}]
        labels: set[str] = set()
        checked: list[tuple[str, Optional[str], Mapping[str, Any]]] = []
        for i, run in enumerate(runs):
            rwhere = f"{where}.runs[{i}]"
            _check_entry(rwhere, run, _RUN_KEYS)
            label = run.get("label")
            if not isinstance(label, str) or not label:
                raise ConfigError(f"{rwhere}.label: expected a non-empty string")
            if label in labels:
                raise ConfigError(f"{rwhere}.label: {label!r} is used twice in {where}")
            labels.add(label)
            overrides = run.get("set") or {}
            if not isinstance(overrides, Mapping):
                raise ConfigError(f"{rwhere}.set: expected a mapping {{dotted.key: value}}")
            checked.append((label, run.get("group"), overrides))
        # Grid points outermost: a scan stopped early has whole columns (all BCE rows) first.
        for point in points:
            for i, (label, group, overrides) in enumerate(checked):
                raw = copy.deepcopy(base)
                try:
                    for key, value in overrides.items():
                        set_key(raw, str(key), value)
                    for key, value in point.items():
                        set_key(raw, str(key), value)
                    run_cfg = validate(raw, studies=False)
                except ConfigError as error:
                    raise ConfigError(f"{where}.runs[{i}].set: {error}") from None
                run_cfg["scan"] = cfg["scan"]
                if kind == "boxplot":
                    get(run_cfg, study["x"])  # raises for an unknown x key
                out.append(StudyRunConfig(name, label, group, dict(point), run_cfg))
    _check_figure_refs(cfg, out)
    comparison_specs(cfg, out)
    return out


_COMPARISON_KEYS = ("name", "title", "a", "b", "columns", "metric", "claim")
_CLAIM_KEYS = ("expect", "study", "source")
#: What a claim of the reference study says about A - B: ``better`` (A > B), ``not_worse`` (A >= B).
CLAIMS = ("better", "not_worse")
_COMPARABLE_METRICS = ("auc_event", "auc_tau", "rejection_event_50", "rejection_tau_50", "rejection_tau_wp")


def comparison_specs(cfg: Mapping[str, Any], runs: Sequence[Any]) -> list[dict[str, Any]]:
    """``scan.comparisons`` checked and completed: per entry ``name``, ``title``, ``a`` (a run
    reference ``study/label``), ``b`` (a list of references: the best of them by mean is compared),
    ``columns`` (grid columns of ``a``; None: all), ``metric`` (default ``auc_event``) and
    ``claim`` (``{expect, study, source}`` or None).

    Raises:
        ConfigError: a malformed entry or an unknown run, naming ``scan.comparisons[i]...``.
    """
    entries = cfg["scan"].get("comparisons") or []
    refs = {run.ref: run for run in runs}
    names: set[str] = set()
    out = []
    for i, entry in enumerate(entries):
        where = f"scan.comparisons[{i}]"
        _check_entry(where, entry, _COMPARISON_KEYS)
        name = entry.get("name")
        if not isinstance(name, str) or not name or name in names:
            raise ConfigError(f"{where}.name: expected a unique non-empty string, got {name!r}")
        names.add(name)
        a = entry.get("a")
        b = entry.get("b")
        b_list = [b] if isinstance(b, str) else b
        if not isinstance(b_list, Sequence) or isinstance(b_list, str) or not b_list:
            raise ConfigError(f"{where}.b: expected a run (study/label) or a non-empty list of runs")
        for key, ref in [("a", a)] + [("b", r) for r in b_list]:
            if ref not in refs:
                raise ConfigError(f"{where}.{key}: {ref!r} is not a run; choose from {sorted(refs)}")
        columns = entry.get("columns")
        if columns is not None:
            have = {run.column for run in runs if run.ref == a}
            if not isinstance(columns, Sequence) or isinstance(columns, str) or not set(columns) <= have:
                raise ConfigError(f"{where}.columns: {columns!r}; {a!r} has the columns {sorted(have)}")
        metric = entry.get("metric", "auc_event")
        if metric not in _COMPARABLE_METRICS:
            raise ConfigError(f"{where}.metric: {metric!r} is not allowed; choose from {list(_COMPARABLE_METRICS)}")
        claim = entry.get("claim")
        if claim is not None:
            if not isinstance(claim, Mapping) or any(k not in _CLAIM_KEYS for k in claim):
                raise ConfigError(f"{where}.claim: expected a mapping with keys {list(_CLAIM_KEYS)}")
            if claim.get("expect") not in CLAIMS:
                raise ConfigError(f"{where}.claim.expect: {claim.get('expect')!r} is not allowed; choose from {list(CLAIMS)}")
        out.append({"name": name, "title": entry.get("title") or name, "a": a, "b": list(b_list),
                    "columns": None if columns is None else list(columns), "metric": metric,
                    "claim": None if claim is None else dict(claim)})
    return out


def _check_figure_refs(cfg: Mapping[str, Any], runs: Sequence[StudyRunConfig]) -> None:
    refs = {f"{run.study}/{run.label}" for run in runs}
    figures = cfg["scan"]["figures"]
    for key in ("showcase", "latent"):
        ref = figures[key]
        if ref is not None and ref not in refs:
            raise ConfigError(f"scan.figures.{key}: {ref!r} is not a run; choose from {sorted(refs)}")
    for key in ("roc", "weights"):
        for ref in figures[key]:
            if ref not in refs:
                raise ConfigError(f"scan.figures.{key}: {ref!r} is not a run; choose from {sorted(refs)}")
    latent = figures["latent"]
    if latent is not None:
        ks = {run.config["model"]["k"] for run in runs if f"{run.study}/{run.label}" == latent}
        if ks != {2}:
            raise ConfigError(f"scan.figures.latent: {latent!r} has k = {sorted(ks)}; the latent figure needs k = 2")


# ----------------------------------------------------------------------------------------------
# Dotted keys, overrides, files
# ----------------------------------------------------------------------------------------------
def set_key(cfg: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted ``key`` in the (raw or validated) ``cfg`` in place; keys unknown to the schema raise.

    Keys inside free-form mappings (``trainer.balancer_options.weights.tau``) are allowed.
    """
    config_engine.set_key(schema(), cfg, key, value)


def apply_overrides(cfg: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of the raw ``cfg`` with ``key=value`` overrides applied (not yet validated)."""
    return config_engine.apply_overrides(schema(), cfg, overrides)


# Free-form values that replace rather than merge when a preset overrides them: merging two
# balancer_options or two TauID option sets key by key would silently mix configurations.
_REPLACED = frozenset({"balancer_options", "tau", "event"})


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
        ConfigError: unreadable file, bad YAML, a key given twice, cyclic ``extends``, or an
            invalid configuration.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        raw = read_yaml_chain(path / "config.yaml" if path.is_dir() else path, _REPLACED)
    raw = apply_overrides(raw, overrides)
    return validate(raw) if validate_result else raw


def describe() -> str:
    """Every key with its default and documentation, as text (``hepms config --keys``)."""
    return config_engine.describe(schema())
