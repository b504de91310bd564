"""The data of a run: the generated sample (made when missing and allowed), built, cached, split.

:func:`prepare_data` returns a :class:`PreparedData`: the standardised train / validation / test
parts (the split stored by the generator, whose splits never share pileup events; a random split
by ``data.split_seed`` for samples without one; the same split for every trial), the scaler fitted on the
training part, the test jets' pT in GeV (for efficiency versus pT) and a fingerprint of the source
sample, recorded with every result so that results of a different sample are never mixed.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch

from hepms.config_engine import ConfigError, settings_hash
from hepms.data import Standardizer, TauEventData, build_dataset, split
from hepms.features import FeatureSpec
from hepms.jagged import Jagged

log = logging.getLogger(__name__)

__all__ = ["PreparedData", "dataset_of_sample", "ensure_sample", "feature_spec", "prepare_data",
           "sample_fingerprint"]

MANIFEST = "manifest.json"


@dataclass
class PreparedData:
    """Standardised splits plus what the evaluation and the plots need.

    Attributes:
        train, val, test: standardised parts.
        scaler: the :class:`~hepms.data.Standardizer` fitted on ``train``.
        test_jet_pt: ``[B_test]`` jet pT in GeV (None when ``log_pt`` is not a jet feature).
        fingerprint: hash of the source sample's manifest and the data settings.
        info: sample description (events, jets, tau fraction, mu, sqrt(s)).
        spec: the :class:`~hepms.features.FeatureSpec` the parts were built with (what a model
            file records).
    """

    train: TauEventData
    val: TauEventData
    test: TauEventData
    scaler: Standardizer
    test_jet_pt: Optional[np.ndarray]
    fingerprint: str
    info: dict[str, Any] = field(default_factory=dict)
    spec: Optional[FeatureSpec] = None


def sample_fingerprint(path: Path) -> str:
    """Hash of the sample's ``manifest.json`` (written last by the generator: it names the files,
    their event counts and the generation settings)."""
    return settings_hash(json.loads((path / MANIFEST).read_text()), 16)


def ensure_sample(cfg: Mapping[str, Any], progress: bool = True) -> Path:
    """The sample folder of ``cfg``, generated first when it is missing and ``data.generate.enabled``.

    Raises:
        ConfigError: no sample and generation disabled.
    """
    path = Path(cfg["data"]["path"])
    gen = cfg["data"]["generate"]
    if (path / MANIFEST).is_file():
        if gen["enabled"]:
            # The sample there must be the one the configuration would generate: otherwise a
            # changed data.generate would be silently ignored.
            made = json.loads((path / MANIFEST).read_text()).get("settings", {})
            for key in ("events_per_process", "mu", "seed"):
                if key in made and float(made[key]) != float(gen[key]):
                    raise ConfigError(
                        f"data.generate.{key}: {gen[key]!r}, but the sample in {str(path)!r} was made with "
                        f"{made[key]!r}; use another data.path, delete that folder, or match the setting"
                    )
        return path
    if not gen["enabled"]:
        raise ConfigError(
            f"data.path: {str(path)!r} has no {MANIFEST} (no finished sample); run "
            f"`hepms generate {path}` or set data.generate.enabled=true"
        )
    from hepms.generate import generate

    log.info("generating %d events per process (mu = %g) into %s", gen["events_per_process"], gen["mu"], path)
    generate(
        path,
        events_per_process=gen["events_per_process"],
        mu=gen["mu"],
        seed=gen["seed"],
        workers=gen["workers"],
        pileup_pool=gen["pileup_pool"],
        progress=progress,
    )
    return path


def _save_dataset(data: TauEventData, path: Path) -> None:
    c = data.constituents
    state = {
        "values": c.values,
        "offsets": c.offsets,
        "outer_offsets": c.outer_offsets,
        "jet_features": data.jet_features,
        "jet_labels": data.jet_labels,
        "event_labels": data.event_labels,
        "jet_targets": data.jet_targets,
        "constituent_names": list(data.constituent_names),
        "jet_names": list(data.jet_names),
        "event_split": data.event_split,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a half-written cache is never read


def _load_dataset(path: Path) -> TauEventData:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return TauEventData(
        Jagged(state["values"], state["offsets"], state["outer_offsets"], validate=False),
        state["jet_features"],
        state["jet_labels"],
        state["event_labels"],
        jet_targets=state["jet_targets"],
        constituent_names=tuple(state["constituent_names"]),
        jet_names=tuple(state["jet_names"]),
        event_split=state.get("event_split"),
    )


def feature_spec(cfg: Mapping[str, Any]) -> FeatureSpec:
    """The :class:`~hepms.features.FeatureSpec` of a configuration's ``data`` section (momentum
    regression targets always built: the trainer uses them when ``model.regression`` is on)."""
    return FeatureSpec.from_settings(cfg["data"])


def dataset_of_sample(cfg: Mapping[str, Any], path: Path) -> TauEventData:
    """Every event of the sample at ``path``, as the dataset of ``cfg["data"]`` (features, caps,
    labels; not standardised, not split). Used for the study's own sample and for scoring a
    trained model on another sample with the same features."""
    from hepms.generate import read_events

    d = cfg["data"]
    log.info("building the dataset: reading events from %s", path)
    events = read_events(path, max_jets=d["max_jets"], max_constituents=d["max_constituents"])
    log.info("building the dataset: features of %d events (jets, constituents, labels)", len(events))
    return build_dataset(events, feature_spec(cfg))


def _build(cfg: Mapping[str, Any], path: Path) -> TauEventData:
    d = cfg["data"]
    started = time.perf_counter()
    data = dataset_of_sample(cfg, path)
    if d["max_events"] is not None and d["max_events"] < len(data):
        # A random subset (the files hold all H events before all Z events).
        generator = torch.Generator().manual_seed(int(d["split_seed"]) + 7919)
        index = torch.randperm(len(data), generator=generator)[: d["max_events"]]
        data = data.take(torch.sort(index).values)
    log.info("dataset built: %d events, %d jets (%.1f s)", len(data), data.num_jets, time.perf_counter() - started)
    return data


def prepare_data(
    cfg: Mapping[str, Any], cache_dir: Optional[Path] = None, progress: bool = True
) -> PreparedData:
    """Sample -> dataset (cached under ``cache_dir``) -> split -> standardise.

    Args:
        cfg: a validated configuration.
        cache_dir: folder for the built dataset (None or ``data.cache: false``: no cache).
        progress: progress bars while generating.
    """
    path = ensure_sample(cfg, progress)
    d = cfg["data"]
    source = sample_fingerprint(path)
    build_settings = {k: v for k, v in d.items() if k not in ("cache", "generate", "path", "fractions")}
    fingerprint = settings_hash({"sample": source, "data": build_settings}, 16)
    data: Optional[TauEventData] = None
    cache = None
    if cache_dir is not None and d["cache"]:
        cache = Path(cache_dir) / f"dataset-{fingerprint}.pt"
        if cache.is_file():
            try:
                data = _load_dataset(cache)
                log.info("dataset from cache %s", cache)
            except Exception as error:  # a stale or foreign file: rebuild it
                log.warning("ignoring unreadable dataset cache %s: %s", cache, error)
    if data is None:
        data = _build(cfg, path)
        if cache is not None:
            _save_dataset(data, cache)
    if len(data) < 10:
        raise ConfigError(f"data.path: only {len(data)} usable events in {path}; generate more")
    train, val, test = split(data, d["fractions"], seed=d["split_seed"])
    for name, part in (("train", train), ("validation", val), ("test", test)):
        for labels, what in ((part.event_labels, "events"), (part.jet_labels, "jets")):
            if labels.numel() == 0 or float(labels.min()) == float(labels.max()):
                raise ConfigError(
                    f"data: the {name} part has {what} of one class only ({len(part)} events); "
                    "use a larger sample or other data.fractions"
                )
    scaler = Standardizer.fit(train)
    test_pt = None
    if "log_pt" in test.jet_names:
        column = test.jet_names.index("log_pt")
        test_pt = (torch.exp(test.jet_features[:, column].double()) - 0.1).numpy()
    manifest = json.loads((path / MANIFEST).read_text())
    settings = manifest.get("settings", {})
    info = {
        "path": str(path),
        "sample_fingerprint": source,
        "events": len(data),
        "jets": data.num_jets,
        "tau_jet_fraction": float(data.jet_labels.mean()),
        "train_events": len(train),
        "validation_events": len(val),
        "test_events": len(test),
        # "generator": each split drew its pileup from its own pool; "random": a seeded permutation
        "split": "generator" if data.event_split is not None else "random",
        "mu": settings.get("mu"),
        "events_per_process": settings.get("events_per_process"),
        "ecm_gev": settings.get("ecm"),
        "generator_seed": settings.get("seed"),
    }
    return PreparedData(scaler(train), scaler(val), scaler(test), scaler, test_pt, fingerprint, info,
                        feature_spec(cfg))
