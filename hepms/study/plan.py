"""Expanding ``scan.studies`` into the list of runs (configuration x trial) to train.

The studies are checked and their run configurations built by :func:`hepms.config.study_run_configs`
(a configuration is valid only if all its studies are); this module names and keys them. A study is
a mapping with keys:

* ``kind``: ``table`` (rows = runs, columns = grid points; mean +- std over trials) or
  ``boxplot`` (downstream AUC per run, grouped by ``group``, on the x axis ``x``);
* ``title``: a heading for tables and figures;
* ``runs``: a list of ``{label, group (optional), set: {dotted.key: value}}``; each run's ``set``
  is applied on top of the base configuration;
* ``grid`` (optional): ``{dotted.key: [values]}``; every run is repeated for every combination
  (the columns of a table, e.g. the upstream loss BCE and MSE);
* ``x`` (boxplot): the dotted key whose value is the x axis (e.g. ``model.k``).

Runs whose settings coincide (in the same or in different studies) are trained once and shared:
their identity is a hash of the settings that change the result (:func:`run_settings`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from hepms.config import schema, study_run_configs
from hepms.config_engine import Key, settings_hash

__all__ = ["PlannedRun", "expand_studies", "run_settings", "unique_runs", "grid_label", "slug",
           "ensure_inside", "output_path"]

@dataclass
class PlannedRun:
    """One configuration of a study (trained ``scan.trials`` times).

    Attributes:
        study: the study's name.
        label: the run's row label (``study/label`` names it in ``scan.figures``).
        group: the box-plot group (None for tables).
        column: the grid point's label (``""`` without a grid), e.g. ``"bce"``.
        grid: the grid point, ``{dotted.key: value}``.
        config: the complete, validated configuration of the run.
        key: hash of :func:`run_settings`: runs with the same key are one configuration.
        slug: a readable folder-name prefix.
    """

    study: str
    label: str
    group: Optional[str]
    column: str
    grid: dict[str, Any]
    config: dict[str, Any] = field(repr=False)
    key: str = ""
    slug: str = ""

    @property
    def ref(self) -> str:
        return f"{self.study}/{self.label}"

    @property
    def name(self) -> str:
        """``study/label [column]`` (``study/label`` without a grid): one grid point of a run, as logs
        print it and ``--only`` accepts it."""
        return f"{self.ref} [{self.column}]" if self.column else self.ref

    @property
    def folder(self) -> str:
        return f"{self.slug}-{self.key[:8]}"


# The keys of each results-defining section when run keys were introduced (run-key version 1).
# These always enter the hash. A key added to the schema later enters it only when it is set away
# from its default: a new option with a default then leaves the keys (and the folders) of every
# finished trial unchanged, instead of orphaning the whole study. Never edit these sets; add the
# new key to the schema only.
_V1_DATA_KEYS = frozenset({"path", "max_jets", "max_constituents", "min_jets", "max_events", "jet_features",
                           "constituent_features", "fractions", "split_seed"})
_V1_GENERATE_KEYS = frozenset({"events_per_process", "mu", "seed", "pileup_pool"})
_V1_MODEL_KEYS = frozenset({"connection", "k", "aux", "regression", "tau", "event"})
_V1_TRAINER_KEYS = frozenset({"strategy", "balancer", "balancer_options", "upstream_loss", "lr", "batch_size",
                              "epochs", "patience", "monitor"})


def _stable_section(values: Mapping[str, Any], defaults: Mapping[str, Any], v1_keys: frozenset[str],
                    ignored: Sequence[str]) -> dict[str, Any]:
    """``values`` without ``ignored`` keys and without post-v1 keys left at their default."""
    out = {}
    for name, value in values.items():
        if name in ignored:
            continue
        if name not in v1_keys and isinstance(defaults.get(name), Key) and value == defaults[name].default:
            continue
        out[name] = value
    return out


def run_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that define a configuration's results (not where or how fast it runs).

    Their hash is the run key that names a configuration's folder and lets scans reuse finished
    trials, also trials made on other machines: it holds no path and nothing machine-specific.
    Keys added to the schema after run-key version 1 count only when set away from their default,
    so adding an option does not change the key of any existing configuration.
    """
    spec = schema()
    # Not data.path: where the sample lies differs from machine to machine; which events it holds
    # is the data fingerprint's business (recorded next to the settings in every result).
    data = _stable_section(cfg["data"], spec["data"], _V1_DATA_KEYS, ("cache", "generate", "path"))
    generate = _stable_section(cfg["data"]["generate"], spec["data"]["generate"], _V1_GENERATE_KEYS,
                               ("enabled", "workers"))
    model = _stable_section(cfg["model"], spec["model"], _V1_MODEL_KEYS, ())
    trainer = _stable_section(cfg["trainer"], spec["trainer"], _V1_TRAINER_KEYS, ("device", "eval_batch_size"))
    if trainer["strategy"] == "w1_zero":
        # The upstream loss has weight 0, so its form (BCE or MSE) cannot change the training:
        # both are one configuration, trained once.
        trainer["upstream_loss"] = "bce"
    return {"data": data, "generate": generate, "model": model, "trainer": trainer}


def grid_label(point: Mapping[str, Any]) -> str:
    """``{"trainer.upstream_loss": "mse"}`` -> ``"mse"``; several keys joined with ``,``."""
    return ",".join(str(v) for v in point.values())


def slug(text: str, fallback: str = "run", max_length: int = 60) -> str:
    """A file-name stem from configuration text: no path separators, no leading dot, at most
    ``max_length`` characters (``"../../x"`` -> ``"x"``, ``"/abs/x"`` -> ``"abs_x"``)."""
    text = re.sub(r"[()\s]+", "", str(text)).replace(",", "_")  # "(w1, w2) = (1, 1)" -> "w1_w2=1_1"
    return re.sub(r"[^A-Za-z0-9._+=-]+", "_", text).strip("._")[:max_length] or fallback


def ensure_inside(root: Path, path: Path) -> Path:
    """``path``, after checking that it resolves to a place inside ``root`` (symbolic links
    followed): configuration-derived names must never write outside the run directory."""
    resolved, base = Path(path).resolve(), Path(root).resolve()
    if resolved != base and base not in resolved.parents:
        raise ValueError(f"refusing to write {path}: it resolves to {resolved}, outside {base}")
    return Path(path)


def output_path(folder: Path, stem: str, suffix: str) -> Path:
    """``folder/<slug(stem)><suffix>``, checked to lie inside ``folder``."""
    return ensure_inside(folder, Path(folder) / f"{slug(stem, 'output', 120)}{suffix}")


def expand_studies(cfg: Mapping[str, Any]) -> list[PlannedRun]:
    """Every (study, run, grid point) of ``cfg["scan"]["studies"]`` as a :class:`PlannedRun`.

    Raises:
        ConfigError: a malformed study, naming ``scan.studies.<name>...``.
    """
    planned = []
    for run in study_run_configs(cfg):
        column = grid_label(run.grid)
        planned.append(
            PlannedRun(
                study=run.study,
                label=run.label,
                group=run.group,
                column=column,
                grid=run.grid,
                config=run.config,
                key=settings_hash(run_settings(run.config)),
                slug=slug(f"{run.label}-{column}" if column else run.label),
            )
        )
    return planned


def unique_runs(planned: Sequence[PlannedRun]) -> list[PlannedRun]:
    """The distinct configurations of ``planned``, first occurrence first."""
    seen: dict[str, PlannedRun] = {}
    for run in planned:
        seen.setdefault(run.key, run)
    return list(seen.values())

