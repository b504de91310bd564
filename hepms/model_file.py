"""The model file: one self-describing file from training to evaluation, coffea and export.

``hepms train`` (``RUN/model.pt``), every ``hepms scan`` trial (``TRIAL/model.pt``), every
selection of ``hepms select`` (``runs/<selection>.model.pt``, a :class:`hepms.select.Chain`) and
the trainer's checkpoints write what a consumer needs to turn events into scores, and nothing else
has to travel with it:

* the network: its class and configuration (``MultiStep(**config)``, or the builder of a selected
  chain) and its weights;
* the :class:`~hepms.features.FeatureSpec`: feature names and order, ``max_jets``,
  ``max_constituents``, ``min_jets``, the momentum unit, the regression targets;
* the standardisation (:class:`~hepms.data.Standardizer`, fitted on the training split);
* provenance: hepms and torch versions, the data fingerprint
  (:func:`hepms.study.dataset.sample_fingerprint` of the sample plus the data settings), the hash
  of the result-defining settings, what wrote it and when.

The file is a ``torch.save`` archive of plain tensors, numbers and strings (``format``:
``hepms.model/2``), readable with ``torch.load(path, weights_only=True)``; it is written under a
temporary name and renamed, so a crash never leaves a truncated model under the final name.

Public API (stable)::

    save_model(path, network, spec, scaler, *, data_fingerprint=None, settings_hash=None,
               producer="", extra=None, builder=None, config=None) -> Path
    load_model(source, map_location="cpu") -> TrainedModel
        source: a model file (hepms.model/2), a run or trial directory (its model.pt), or a
        trainer checkpoint (checkpoint.pt, the weights of its last epoch)
    model_path(source) -> Path                   # the file load_model would read
    upgrade_model_file(path, spec=None, out=None) -> Path   # hepms.model/1 -> hepms.model/2

    TrainedModel attributes:
        network     hepms.nn.MultiStep (or a hepms.select.Chain), eval mode, on map_location
        spec        hepms.features.FeatureSpec
        scaler      hepms.data.Standardizer (statistics of the raw features)
        provenance  Provenance (hepms_version, torch_version, data_fingerprint, settings_hash,
                    producer, created_utc, extra: dict)
        path        the file read (pathlib.Path)
    TrainedModel methods:
        inference_model() -> hepms.export.InferenceModel   # raw CSR tensors in, scores out
                                                           # (MultiStep networks)
        preprocessing() -> dict        # what checkpoints store: {"features", "standardization"}

Example:
    >>> import tempfile, torch, hepms
    >>> from hepms.data import Standardizer
    >>> from hepms.features import FeatureSpec
    >>> from hepms.model_file import load_model, save_model
    >>> from hepms.nn import MultiStep
    >>> spec = FeatureSpec(jet_features=("log_pt",), constituent_features=("deta", "dphi"))
    >>> net = MultiStep(constituent_features=2, jet_features=1, seed=1)
    >>> scaler = Standardizer(torch.zeros(2), torch.ones(2), torch.zeros(1), torch.ones(1))
    >>> path = save_model(tempfile.mkdtemp() + "/model.pt", net, spec, scaler)
    >>> model = load_model(path)
    >>> model.spec == spec, model.provenance.hepms_version == hepms.__version__
    (True, True)
"""
from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import torch
from torch import nn

import hepms
from hepms.atomic import save_atomically
from hepms.data import Standardizer
from hepms.export import InferenceModel
from hepms.features import FeatureSpec
from hepms.generate.io import UnreadableFileError
from hepms.nn.models import MultiStep

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT",
    "MODEL_FILE",
    "Provenance",
    "TrainedModel",
    "save_model",
    "load_model",
    "model_path",
    "preprocessing",
    "upgrade_model_file",
]

PathLike = Union[str, "os.PathLike[str]"]

#: ``format`` of model files written by this hepms.
FORMAT = "hepms.model/2"
#: The model file's name in a run or trial directory.
MODEL_FILE = "model.pt"
_OLD_FORMAT = "hepms.model/1"
_CHECKPOINT = "checkpoint.pt"
_MULTISTEP = "hepms.nn.MultiStep"


@dataclass(frozen=True)
class Provenance:
    """What produced a model file.

    Attributes:
        hepms_version, torch_version: versions that wrote it.
        data_fingerprint: hash of the source sample's manifest and the data settings (None: not
            from a hepms sample).
        settings_hash: hash of the result-defining settings and the seed (None: unknown).
        producer: what wrote it (``"hepms train"``, ``"hepms scan"``, ``"trainer checkpoint"``).
        created_utc: ISO time of writing.
        extra: more JSON-able facts (epochs, seed, ...).
    """

    hepms_version: str
    torch_version: str
    data_fingerprint: Optional[str] = None
    settings_hash: Optional[str] = None
    producer: str = ""
    created_utc: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "hepms_version": self.hepms_version,
            "torch_version": self.torch_version,
            "data_fingerprint": self.data_fingerprint,
            "settings_hash": self.settings_hash,
            "producer": self.producer,
            "created_utc": self.created_utc,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Provenance":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        for key in ("hepms_version", "torch_version"):
            known.setdefault(key, "unknown")
        return cls(**known)


@dataclass(frozen=True, eq=False)
class TrainedModel:
    """A loaded model file: network (eval mode), feature spec, standardisation, provenance.

    Attributes:
        network: the :class:`~hepms.nn.MultiStep`, in eval mode; it expects *standardised*
            features (see :meth:`inference_model` for raw ones).
        spec: the :class:`~hepms.features.FeatureSpec` it was trained with.
        scaler: the :class:`~hepms.data.Standardizer` fitted on its training split.
        provenance: the :class:`Provenance` of the file.
        path: the file read.
    """

    network: nn.Module
    spec: FeatureSpec
    scaler: Standardizer
    provenance: Provenance
    path: Optional[Path] = None

    def inference_model(self) -> InferenceModel:
        """The network with its standardisation: raw CSR tensors in (as
        :func:`hepms.features.feature_tensors` computes them), ``(tau_logit, intermediate,
        event_logit, momentum)`` out. Ready for TorchScript, ``torch.export`` and coffea."""
        if not isinstance(self.network, MultiStep):
            raise TypeError(
                f"{self.path}: the network is a {type(self.network).__name__}, not a "
                "hepms.nn.MultiStep: InferenceModel serves multi-step models only (a selected "
                "chain runs on hepms.select.make_batch inputs)"
            )
        extra = {"provenance": self.provenance.to_dict()}
        device = next(self.network.parameters()).device
        return InferenceModel(self.network, self.scaler, self.spec, extra_metadata=extra).to(device)

    def preprocessing(self) -> dict[str, Any]:
        """The spec and standardisation in the form checkpoints store (:func:`preprocessing`)."""
        return preprocessing(self.spec, self.scaler)

    def __repr__(self) -> str:
        where = f" from {self.path}" if self.path is not None else ""
        return (f"TrainedModel({type(self.network).__name__}, jets={list(self.spec.jet_features)}, "
                f"max_jets={self.spec.max_jets}{where})")


def preprocessing(spec: FeatureSpec, scaler: Standardizer) -> dict[str, Any]:
    """``{"features": spec dict, "standardization": scaler tensors}``: what a model file and a
    trainer checkpoint record of the input pipeline (:class:`hepms.train.Trainer` ``fit(...,
    preprocessing=)``)."""
    if not isinstance(spec, FeatureSpec):
        raise TypeError(f"spec must be a hepms.features.FeatureSpec, got {type(spec).__name__}")
    if not isinstance(scaler, Standardizer):
        raise TypeError(f"scaler must be a hepms.data.Standardizer, got {type(scaler).__name__}")
    return {
        "features": spec.to_dict(),
        "standardization": {k: v.detach().cpu() for k, v in scaler.state_dict().items()},
    }


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------
def save_model(
    path: PathLike,
    network: MultiStep,
    spec: FeatureSpec,
    scaler: Standardizer,
    *,
    data_fingerprint: Optional[str] = None,
    settings_hash: Optional[str] = None,
    producer: str = "",
    extra: Optional[Mapping[str, Any]] = None,
    builder: Optional[str] = None,
    config: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write ``network`` with its feature spec, standardisation and provenance to ``path``
    (atomically: temporary file + rename).

    Args:
        network: a :class:`~hepms.nn.MultiStep` (its ``config`` rebuilds it), or another network
            with ``builder`` and ``config``.
        builder: for other networks, ``"hepms.module:function"``: ``function(config, spec,
            scaler)`` rebuilds the network (e.g. ``hepms.select.space:chain_from_config``).
        config: the JSON-able configuration given to ``builder``.

    Raises:
        TypeError: not a MultiStep and no builder/config, or a builder outside hepms.
        ValueError: the spec or the scaler do not match the network's input widths.
    """
    if isinstance(network, MultiStep):
        _check_parts(network, spec, scaler, "the network")
        entry = {"class": _MULTISTEP, "config": network.config}
    else:
        if builder is None or config is None:
            raise TypeError(f"a {type(network).__name__} needs builder= and config= (only "
                            "hepms.nn.MultiStep networks describe themselves)")
        _builder(builder)  # refuses names it would not load
        entry = {"class": builder, "config": dict(config)}
    provenance = Provenance(
        hepms_version=hepms.__version__,
        torch_version=str(torch.__version__),  # a TorchVersion would not load with weights_only
        data_fingerprint=data_fingerprint,
        settings_hash=settings_hash,
        producer=producer,
        created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        extra=dict(extra or {}),
    )
    state = {
        "format": FORMAT,
        "network": entry,
        "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        **preprocessing(spec, scaler),
        "provenance": provenance.to_dict(),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomically(path, lambda tmp: torch.save(state, tmp), keep_suffix=True)
    log.info("wrote model file %s", path)
    return path


def _check_parts(network: MultiStep, spec: FeatureSpec, scaler: Standardizer, what: str) -> None:
    spec.check_widths(network.tau.constituent_features, network.tau.jet_features, what)
    spec.check_widths(scaler.constituent_mean.shape[0], scaler.jet_mean.shape[0], "the standardisation")
    regression = int(network.tau.regression_outputs)
    if regression and regression != len(spec.targets):
        raise ValueError(f"feature mismatch: {what} regresses {regression} outputs but the feature "
                         f"spec names the targets {list(spec.targets)}")


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------
def model_path(source: PathLike) -> Path:
    """The file :func:`load_model` reads for ``source``: the file itself, or ``model.pt`` of a
    run or trial directory.

    Raises:
        FileNotFoundError: no such file, or a directory without ``model.pt`` (the message says
            whether an unfinished training left a checkpoint there).
    """
    path = Path(source)
    if path.is_dir():
        candidate = path / MODEL_FILE
        if candidate.is_file():
            return candidate
        hint = ""
        for checkpoint in (path / _CHECKPOINT, path / "train" / _CHECKPOINT):
            if checkpoint.is_file():
                hint = (f"; {checkpoint} is there (a training that has not finished): finish it "
                        f"with `hepms train` / `hepms scan`, or load that checkpoint explicitly")
                break
        raise FileNotFoundError(f"no {MODEL_FILE} in {path}{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    return path


def load_model(source: PathLike, map_location: Union[str, torch.device] = "cpu") -> TrainedModel:
    """A :class:`TrainedModel` from a model file, a run or trial directory, or a checkpoint.

    Args:
        source: a ``hepms.model/2`` file; a run directory of ``hepms train`` or a trial folder of
            ``hepms scan`` (their ``model.pt``); or a trainer ``checkpoint.pt`` that records its
            preprocessing (the weights of the epoch it was written after, not the selected ones).
        map_location: device of the network.

    Raises:
        FileNotFoundError: nothing at ``source``.
        UnreadableFileError: (an ``OSError``) a truncated or corrupt file.
        ValueError: not a hepms model file, an old format (the message says how to convert it),
            or parts that do not fit together.
    """
    path = model_path(source)
    state = _read(path)
    found = state.get("format")
    if found == _OLD_FORMAT:
        raise ValueError(
            f"{path} is a {_OLD_FORMAT} file (no feature spec): convert it with "
            f"`python -c \"from hepms.model_file import upgrade_model_file; "
            f"upgrade_model_file('{path}')\"` (reads the feature settings from the run's config.yaml), "
            "or retrain with `hepms train --force`"
        )
    if found == FORMAT:
        network_info = state.get("network")
        if not isinstance(network_info, Mapping):
            raise ValueError(f"{path}: {FORMAT} file without its 'network' entry")
        config, weights = network_info.get("config"), state.get("state_dict")
        provenance = Provenance.from_dict(state.get("provenance") or {})
        return _assemble(path, str(network_info.get("class")), config, weights, state, provenance,
                         map_location)
    if _is_checkpoint(state):
        return _from_checkpoint(path, state, map_location)
    raise ValueError(f"{path} is not a hepms model file (format {found!r}; this hepms reads {FORMAT} "
                     "files, run/trial directories and trainer checkpoints)")


def _read(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated or random bytes: anything from OSError to IndexError
        raise UnreadableFileError(
            f"{path} is unreadable (truncated or corrupt? {type(error).__name__}: {error}); "
            "retrain with `hepms train --force` (exports are read by hepms.export.load_export)"
        ) from error
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a hepms model file")
    return state


def _is_checkpoint(state: Mapping[str, Any]) -> bool:
    return "model_config" in state and "model" in state and "optimizer" in state


def _from_checkpoint(path: Path, state: Mapping[str, Any], map_location: Any) -> TrainedModel:
    if not isinstance(state.get("preprocessing"), Mapping):
        raise ValueError(
            f"{path} is a trainer checkpoint without its preprocessing (written by an older hepms, "
            "or by Trainer.fit without preprocessing=): load the run's model.pt instead, or retrain "
            "with `hepms train --force`"
        )
    identity = state.get("identity") if isinstance(state.get("identity"), Mapping) else {}
    caller = identity.get("caller") if isinstance(identity.get("caller"), Mapping) else {}
    provenance = Provenance(
        hepms_version=str(state.get("hepms_version", "unknown")),
        torch_version=str(state.get("torch_version", "unknown")),
        data_fingerprint=caller.get("data_fingerprint"),
        settings_hash=caller.get("settings"),
        producer="trainer checkpoint",
        extra={"phase": state.get("phase"), "epoch": state.get("epoch")},
    )
    return _assemble(path, _MULTISTEP, state["model_config"], state["model"], state["preprocessing"],
                     provenance, map_location)


def _builder(name: str) -> Callable[..., nn.Module]:
    """The network builder ``"hepms.module:function"`` (only hepms' own modules are imported)."""
    module, _, function = name.partition(":")
    if not (module == "hepms" or module.startswith("hepms.")) or not function:
        raise ValueError(f"network builder {name!r}: expected 'hepms.<module>:<function>'")
    try:
        return getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"network builder {name!r} not found in this hepms ({error})") from None


def _assemble(path: Path, kind: str, config: Any, weights: Any, parts: Mapping[str, Any],
              provenance: Provenance, map_location: Any) -> TrainedModel:
    try:
        spec = FeatureSpec.from_dict(parts["features"])
        scaler = Standardizer.from_state_dict(parts["standardization"])
        if kind == _MULTISTEP:
            network = MultiStep(**config)
        else:
            network = _builder(kind)(config, spec, scaler)
        network.load_state_dict(weights)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{path} does not hold a usable model ({type(error).__name__}: {error}); "
                         "retrain with `hepms train --force`") from error
    if isinstance(network, MultiStep):
        _check_parts(network, spec, scaler, f"the network of {path}")
    network = network.to(map_location).eval()
    return TrainedModel(network, spec, scaler, provenance, path)


def upgrade_model_file(
    path: PathLike, spec: Optional[FeatureSpec] = None, out: Optional[PathLike] = None
) -> Path:
    """Convert a ``hepms.model/1`` file (``hepms train`` before the feature spec) to ``hepms.model/2``.

    Args:
        path: the old ``model.pt``.
        spec: its feature spec; default: from the ``data`` section of the run's ``config.yaml``
            next to the file (what the old file was trained with).
        out: where to write (default: over ``path``, atomically).

    Raises:
        ValueError: ``path`` is not a ``hepms.model/1`` file, or no spec and no readable config.
    """
    path = Path(path)
    state = _read(path)
    if state.get("format") != _OLD_FORMAT:
        raise ValueError(f"{path}: format {state.get('format')!r}, not {_OLD_FORMAT}")
    if spec is None:
        config = path.parent / "config.yaml"
        if not config.is_file():
            raise ValueError(f"{path}: no config.yaml next to it; pass spec= (the data settings it "
                             "was trained with)")
        import yaml

        # What hepms train builds from its data section (hepms.study.dataset.feature_spec).
        spec = FeatureSpec.from_settings((yaml.safe_load(config.read_text()) or {}).get("data", {}))
    network = MultiStep(**state["model_config"])
    network.load_state_dict(state["state_dict"])
    return save_model(
        out if out is not None else path, network, spec,
        Standardizer.from_state_dict(state["scaler"]),
        data_fingerprint=state.get("data_fingerprint"),
        settings_hash=state.get("identity"),
        producer=f"upgrade_model_file from {_OLD_FORMAT}",
        extra={"seed": state.get("seed"), "epochs": state.get("epochs")},
    )
