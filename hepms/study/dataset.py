"""The data of a run: the generated sample (made when missing and allowed), built, cached, split.

:func:`prepare_data` returns a :class:`PreparedData`: the standardised train / validation / test
parts (the split stored by the generator, whose splits never share pileup events; a random split
by ``data.split_seed`` for samples without one; the same split for every trial), the scaler fitted on the
training part, the test jets' pT in GeV (for efficiency versus pT) and a fingerprint of the data,
recorded with every result so that results of a different sample are never mixed.

The fingerprint depends only on what defines the events, never on when, where or how fast the
sample was made: the generation settings, seeds and generator versions of the manifest (not its
creation time, wall times, worker count or command line), the dataset settings, and a SHA-256 of
the arrays the training reads. ``hepms generate`` is deterministic for a fixed seed (the same
events whatever the number of workers; the ROOT files differ only in their timestamps and UUIDs),
so a sample regenerated on another machine has the same fingerprint, and trial results made there
count here.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch

from hepms.atomic import save_atomically
from hepms.config_engine import ConfigError, settings_hash
from hepms.data import Standardizer, TauEventData, build_dataset, split
from hepms.features import FeatureSpec
from hepms.jagged import Jagged

log = logging.getLogger(__name__)

__all__ = ["PreparedData", "content_digest", "dataset_of_sample", "ensure_sample", "feature_spec", "prepare_data",
           "sample_fingerprint"]

MANIFEST = "manifest.json"


@dataclass
class PreparedData:
    """Standardised splits plus what the evaluation and the plots need.

    Attributes:
        train, val, test: standardised parts.
        scaler: the :class:`~hepms.data.Standardizer` fitted on ``train``.
        test_jet_pt: ``[B_test]`` jet pT in GeV (None when ``log_pt`` is not a jet feature).
        fingerprint: hash of the sample's event-defining manifest entries, the data settings and
            the content of the built dataset (see the module docstring).
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


# Manifest entries that say when, where and how fast a sample was made, not which events it holds.
_VOLATILE_MANIFEST_KEYS = ("created_utc", "timing", "command")
# Of the manifest's versions, the generator's: Pythia and FastJet make the events. The others
# (Python, numpy, awkward, ...) cannot change them unnoticed: the content digest would differ.
_GENERATOR_VERSIONS = ("pythia8mc", "fastjet")


def sample_fingerprint(path: Path) -> str:
    """Hash of what defines the events of the sample at ``path``: its ``manifest.json`` (written
    last by the generator) without the creation time, the timing, the worker count and the command
    line, and with the generator's versions only. The same settings and seed give the same
    fingerprint on any machine."""
    manifest = json.loads((Path(path) / MANIFEST).read_text())
    stable = {k: v for k, v in manifest.items() if k not in _VOLATILE_MANIFEST_KEYS and k != "versions"}
    versions = manifest.get("versions") or {}
    stable["versions"] = {k: versions.get(k) for k in _GENERATOR_VERSIONS if k in versions}
    if isinstance(stable.get("settings"), dict):
        stable["settings"] = {k: v for k, v in stable["settings"].items() if k != "workers"}
    return settings_hash(stable, 16)


def content_digest(data: TauEventData) -> str:
    """SHA-256 (16 hex digits) of every array of ``data`` the training reads, with its dtype,
    shape and column names: equal digests mean the same events, features and labels."""
    h = hashlib.sha256()
    c = data.constituents
    arrays = {"values": c.values, "offsets": c.offsets, "outer_offsets": c.outer_offsets,
              "jet_features": data.jet_features, "jet_labels": data.jet_labels,
              "event_labels": data.event_labels, "jet_weights": data.jet_weights,
              "jet_targets": data.jet_targets, "event_split": data.event_split}
    h.update(json.dumps([list(data.constituent_names), list(data.jet_names)]).encode())
    for name, tensor in arrays.items():
        if tensor is None:
            h.update(f"{name}:none;".encode())
            continue
        array = tensor.detach().cpu().contiguous().numpy()
        h.update(f"{name}:{array.dtype.str}:{list(array.shape)};".encode())
        h.update(memoryview(array).cast("B"))
    return h.hexdigest()[:16]


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
    save_atomically(path, lambda tmp: torch.save(state, tmp))  # a half-written cache is never read


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
    # The cache is local: its name may (and should) change whenever the sample's files are
    # rewritten, so it hashes the whole manifest, creation time included.
    manifest_text = (path / MANIFEST).read_text()
    cache_key = settings_hash({"manifest": json.loads(manifest_text), "data": build_settings}, 16)
    data: Optional[TauEventData] = None
    cache = None
    if cache_dir is not None and d["cache"]:
        cache = Path(cache_dir) / f"dataset-{cache_key}.pt"
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
    digest = content_digest(data)
    fingerprint = settings_hash({"sample": source, "data": build_settings, "content": digest}, 16)
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
    manifest = json.loads(manifest_text)
    settings = manifest.get("settings", {})
    info = {
        "path": str(path),
        "sample_fingerprint": source,
        "content_sha256_16": digest,
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
