"""Trained hepms models inside coffea processors and dask-awkward graphs.

:class:`MultiStepTagger` applies a trained multi-step model (an export of :mod:`hepms.export` or a
training checkpoint) to NanoEvents-style awkward arrays of jets and their constituents and returns,
aligned with the events:

* ``tau_score`` / ``tau_logit``: one number per jet (``E * var * float32``, the jets' lists);
* ``tau_features``: the ``k`` intermediate features per jet (``E * var * k * float32``);
* ``event_score`` / ``event_logit``: H (1) vs Z (0), one number per event (``E * float32``);
* ``tau_momentum``: the visible tau ``(px, py, pz)`` in GeV per jet, for models with a momentum
  regression head.

It works eagerly on awkward arrays (also coffea's virtual NanoEvents) and lazily on dask-awkward
arrays, through ``dask_awkward.map_partitions`` with an exact ``meta``: building the graph reads no
data, and column optimisation sees only the branches the model needs. The inputs are never
padded: each partition goes awkward -> :func:`hepms.to_jagged` (flat values + CSR offsets) ->
model -> :func:`hepms.from_jagged`. The preprocessing is the training pipeline's own
(:func:`hepms.physics.constituent_features`, :data:`hepms.data.JET_FEATURES`, leading constituents
per jet by pT), so scores equal what the model gave on :func:`hepms.data.build_dataset` output.

Jets: the tau model scores *every* jet. The event model sees the leading ``max_jets`` jets of each
event by pT (what it was trained on); jets beyond them get a tau score but do not enter the event
score. Events without jets get the event model's empty-set output: cut on ``nJet >= 1`` (training
dropped them). Constituents: either NanoAOD-style, one flat list per event with a ``jetIdx``
field (candidates with an index outside the event's jets are ignored), or already nested per jet
(``E * var * var * record``). Each jet keeps its leading ``max_constituents`` by pT.

Workers: the tagger pickles as the model's bytes plus its metadata, so workers need no shared
file system; the model is deserialised once per worker process (cached, thread-safe) on CUDA when
available, else the CPU (``device=`` overrides).

Example (eager; with ``mode="dask"`` NanoEvents the same lines build a lazy graph)::

    from coffea.nanoevents import NanoEventsFactory
    from hepms.coffea import MultiStepTagger, attach_scores
    from hepms.generate.schema import HepmsNanoAODSchema   # PFNano layout of hepms generate files

    tagger = MultiStepTagger("model.pt")                  # hepms.export.export_torchscript file
    events = NanoEventsFactory.from_root({"Htautau.root": "Events"},
                                         schemaclass=HepmsNanoAODSchema, mode="virtual").events()
    scores = tagger(events.Jet, events.PFCands)      # or tagger(events.Jet, events.Jet.constituents.pf)
    events["Jet", "tau_score"] = scores.tau_score
    events["event_score"] = scores.event_score
    # or in one go: events = attach_scores(events, tagger)
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import awkward as ak
import numpy as np
import torch
from torch import Tensor, nn

import hepms
from hepms import physics
from hepms.jagged import from_jagged, to_jagged

log = logging.getLogger(__name__)

__all__ = [
    "MultiStepTagger",
    "attach_scores",
    "loaded_models",
    "clear_model_cache",
    "OUTPUT_FIELDS",
]

PathLike = Union[str, "os.PathLike[str]"]
ModelSource = Union[PathLike, nn.Module]

#: Fields of the tagger's output records (``tau_momentum`` only for regression models).
OUTPUT_FIELDS = ("tau_score", "tau_logit", "tau_features", "event_score", "event_logit",
                 "tau_momentum")

_JET_FIELDS = ("pt", "eta", "phi", "mass")
_CONSTITUENT_FIELDS = ("pt", "eta", "phi", "mass")
_JET_INDEX_FIELD = "jetIdx"
_MOMENTUM_UNIT_GEV = 100.0  # the regression target unit (hepms.data.build_dataset)


# ----------------------------------------------------------------------------------------------
# Per-process model cache
# ----------------------------------------------------------------------------------------------
_MODELS: dict[tuple[str, str], nn.Module] = {}
_MODELS_LOCK = threading.Lock()


def _cached_model(
    digest: str, kind: str, payload: bytes, device: str, torch_threads: Optional[int]
) -> nn.Module:
    """The deserialised model for ``(digest, device)``, loaded once per process.

    Dask workers run many tasks (possibly on several threads) in one process: they all share one
    copy. The lock makes concurrent first calls load it once.
    """
    key = (digest, device)
    model = _MODELS.get(key)
    if model is not None:
        return model
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            if torch_threads is not None and _in_dask_worker():
                # Process-wide, so only where the process is ours to configure: a dask worker.
                # The client (eager calls) keeps its own setting.
                torch.set_num_threads(torch_threads)
            model = _deserialize(kind, payload, device)
            _MODELS[key] = model
            log.info("loaded hepms model %s on %s (pid %d)", digest[:12], device, os.getpid())
    return model


def _in_dask_worker() -> bool:
    distributed = sys.modules.get("distributed")  # never imported just for this check
    if distributed is None:
        return False
    try:
        distributed.get_worker()
    except ValueError:
        return False
    return True


def _deserialize(kind: str, payload: bytes, device: str) -> nn.Module:
    from hepms.export import quiet_jit

    buffer = io.BytesIO(payload)
    if kind == "torchscript":
        with quiet_jit():
            model = torch.jit.load(buffer, map_location=device)
        return model.eval()
    program = torch.export.load(buffer)
    return program.module().to(device)


def loaded_models() -> list[tuple[str, str]]:
    """``(sha256 prefix, device)`` of the models deserialised in this process.

    On a cluster, ``client.run(hepms.coffea.loaded_models)`` shows what each worker holds.
    """
    with _MODELS_LOCK:
        return [(digest[:12], device) for digest, device in _MODELS]


def clear_model_cache() -> None:
    """Forget the models loaded in this process (to free GPU memory, or in tests)."""
    with _MODELS_LOCK:
        _MODELS.clear()


# ----------------------------------------------------------------------------------------------
# The tagger
# ----------------------------------------------------------------------------------------------
class MultiStepTagger:
    """Applies a trained multi-step model to jets and constituents, eagerly or with dask.

    Args:
        model: a TorchScript export (:func:`hepms.export.export_torchscript`), a ``torch.export``
            program (:func:`hepms.export.export_program`), a checkpoint (see
            :func:`hepms.export.load_model`; pass its preprocessing in ``load_options`` when it
            does not record it), or an in-memory :class:`hepms.export.InferenceModel` or
            TorchScript module of one.
        device: ``"cpu"``, ``"cuda"``, ...; default: CUDA if the *worker* has it, else CPU.
        torch_threads: ``torch.set_num_threads`` in each dask worker process at first use (e.g.
            1 with one single-threaded worker process per core, so workers do not oversubscribe
            the cores); ignored outside dask workers; default: leave torch's setting.
        check_finite: raise on NaN/inf input features (zero-pT constituents give ``-inf``
            logarithms) instead of returning NaN scores.
        **load_options: keyword arguments for :func:`hepms.export.load_model` (``scaler``,
            ``constituent_features``, ...), for checkpoints.

    Raises:
        ValueError: the model's metadata names features hepms cannot compute.

    Example:
        >>> import awkward as ak, torch, tempfile
        >>> from hepms.data import Standardizer
        >>> from hepms.nn import MultiStep
        >>> from hepms.export import InferenceModel
        >>> from hepms.coffea import MultiStepTagger
        >>> net = MultiStep(constituent_features=8, jet_features=4, seed=1)
        >>> scaler = Standardizer(torch.zeros(8), torch.ones(8), torch.zeros(4), torch.ones(4))
        >>> names = ["deta", "dphi", "log_pt", "log_e", "log_pt_rel", "log_e_rel", "delta_r",
        ...          "charge"]
        >>> tagger = MultiStepTagger(InferenceModel(net, scaler, names,
        ...                                         ["log_pt", "eta", "phi", "log_mass"]))
        >>> jets = ak.Array([[{"pt": 40.0, "eta": 0.1, "phi": 1.0, "mass": 5.0}], []])
        >>> pf = ak.Array([[{"pt": 30.0, "eta": 0.1, "phi": 1.0, "mass": 0.1, "charge": 1,
        ...                  "jetIdx": 0}], []])
        >>> out = tagger(jets, pf)
        >>> ak.num(out.tau_score).tolist(), len(out.event_score), str(out.tau_features.type)
        ([1, 0], 2, '2 * var * 1 * float32')
    """

    def __init__(
        self,
        model: ModelSource,
        *,
        device: Optional[str] = None,
        torch_threads: Optional[int] = None,
        check_finite: bool = True,
        **load_options: Any,
    ) -> None:
        self._kind, self._payload, metadata = _normalize_model(model, load_options)
        self._digest = hashlib.sha256(self._payload).hexdigest()
        self.metadata: dict = metadata
        self.constituent_features: tuple[str, ...] = tuple(metadata["constituent_features"])
        self.jet_features: tuple[str, ...] = tuple(metadata["jet_features"])
        self.max_jets = int(metadata["max_jets"])
        self.max_constituents = int(metadata["max_constituents"])
        self.k = int(metadata["k"])
        self.regression_outputs = int(metadata.get("regression_outputs", 0))
        _check_computable(self.constituent_features, self.jet_features)
        if device is not None:
            torch.device(device)  # raises on a malformed device string, here rather than on workers
        if torch_threads is not None and (
            isinstance(torch_threads, bool)
            or not isinstance(torch_threads, int)
            or torch_threads < 1
        ):
            raise ValueError(f"torch_threads must be a positive integer, got {torch_threads!r}")
        self.device = device
        self.torch_threads = torch_threads
        self.check_finite = bool(check_finite)

    # -- identity (pickling and dask tokens) ----------------------------------------------------
    def __dask_tokenize__(self) -> tuple:
        return ("hepms.coffea.MultiStepTagger", self._digest, self.device, self.torch_threads,
                self.check_finite)

    def __repr__(self) -> str:
        return (
            f"MultiStepTagger({self._kind}, sha256={self._digest[:12]}, k={self.k}, "
            f"max_jets={self.max_jets}, max_constituents={self.max_constituents}, "
            f"device={self.device or 'auto'})"
        )

    @property
    def model(self) -> nn.Module:
        """The model, deserialised once per process on :attr:`resolved_device`."""
        return _cached_model(
            self._digest, self._kind, self._payload, self.resolved_device, self.torch_threads
        )

    @property
    def resolved_device(self) -> str:
        if self.device is not None:
            return self.device
        return "cuda" if torch.cuda.is_available() else "cpu"

    # -- input requirements ---------------------------------------------------------------------
    def required_fields(self, nested: bool = False) -> dict[str, tuple[str, ...]]:
        """Record fields read from ``jets`` and ``constituents`` (``nested``: constituents
        already grouped per jet, so no ``jetIdx``)."""
        constituent_fields = list(_CONSTITUENT_FIELDS)
        if "charge" in self.constituent_features:
            constituent_fields.append("charge")
        if not nested:
            constituent_fields.append(_JET_INDEX_FIELD)
        return {"jets": _JET_FIELDS, "constituents": tuple(constituent_fields)}

    def _check_inputs(self, jets: Any, constituents: Any) -> bool:
        """Check types and fields (on data or typetracers); True for nested constituents."""
        jet_depth = _list_depth(jets, "jets")
        if jet_depth != 1:
            raise ValueError(
                f"jets must be one list of records per event (E * var * Jet), got {jets.type}"
            )
        depth = _list_depth(constituents, "constituents")
        if depth not in (1, 2):
            raise ValueError(
                "constituents must be one flat list per event with a jetIdx field "
                "(E * var * PFCand) or one list per jet (E * var * var * PFCand), got "
                f"{constituents.type}"
            )
        nested = depth == 2
        required = self.required_fields(nested)
        for what, array in (("jets", jets), ("constituents", constituents)):
            missing = [name for name in required[what] if name not in array.fields]
            if missing:
                raise ValueError(_missing_message(what, array, missing))
        return nested

    # -- calling --------------------------------------------------------------------------------
    def __call__(self, jets: Any, constituents: Any) -> Any:
        """Scores for ``jets`` (``E * var * record``) from ``constituents``.

        Returns:
            An awkward array (eager inputs) or a dask-awkward array (dask inputs) of ``E``
            records with the fields of :data:`OUTPUT_FIELDS` (``tau_momentum`` only for models
            with a regression head).

        Raises:
            TypeError: a mix of awkward and dask-awkward inputs, or other types.
            ValueError: a missing field (named with its branch), inconsistent inputs, or
                non-finite features (``check_finite``).
        """
        lazy = [_is_dask(jets), _is_dask(constituents)]
        if any(lazy) and not all(lazy):
            raise TypeError("jets and constituents must both be dask-awkward arrays, or neither")
        if all(lazy):
            return self._call_dask(jets, constituents)
        for what, array in (("jets", jets), ("constituents", constituents)):
            if not isinstance(array, ak.Array):
                raise TypeError(f"{what} must be an awkward or dask-awkward array, got "
                                f"{type(array).__name__}")
        nested = self._check_inputs(jets, constituents)
        if ak.backend(jets) == "typetracer":
            return self._typetracer_result(jets, constituents, nested)
        return self._call_eager(jets, constituents, nested)

    def _call_dask(self, jets: Any, constituents: Any) -> Any:
        import dask
        import dask_awkward as dak

        self._check_inputs(jets._meta, constituents._meta)
        meta = ak.Array(self._empty_result().layout.to_typetracer(forget_length=True))
        # The tagger goes into the graph once, as its own key (as coffea's ml_tools do), rather
        # than inside every task: workers fetch the model bytes once, not per partition.
        delayed_self = dask.delayed(self, pure=True)
        return dak.map_partitions(
            _apply_partition,
            delayed_self,
            jets,
            constituents,
            label="hepms-multistep",
            meta=meta,
        )

    def _typetracer_result(self, jets: ak.Array, constituents: ak.Array, nested: bool) -> ak.Array:
        """During graph optimisation: report the columns we read, return the output's type."""
        required = self.required_fields(nested)
        for name in required["jets"]:
            ak.typetracer.touch_data(jets[name])
        for name in required["constituents"]:
            ak.typetracer.touch_data(constituents[name])
        return ak.Array(self._empty_result().layout.to_typetracer(forget_length=True))

    def _call_eager(self, jets: ak.Array, constituents: ak.Array, nested: bool) -> ak.Array:
        if len(jets) != len(constituents):
            raise ValueError(
                f"jets and constituents have different numbers of events: {len(jets)} and "
                f"{len(constituents)} (pass collections of the same events)"
            )
        if len(jets) == 0:
            return self._empty_result()
        inputs = _prepare(jets, constituents, nested, self)
        with torch.inference_mode(), hepms.validation(False):  # offsets built by to_jagged
            outputs = _run_model(self.model, inputs, self.resolved_device)
        return _assemble(outputs, inputs.jet_like, self)

    def _empty_result(self) -> ak.Array:
        """The output for zero events: the exact layout of real results (for dask's ``meta``)."""
        empty = _Outputs(
            torch.zeros(0),
            torch.zeros(0, self.k),
            torch.zeros(0),
            torch.zeros(0, self.regression_outputs),
        )
        jet_like = ak.Array(ak.contents.ListOffsetArray(
            ak.index.Index64(np.zeros(1, dtype=np.int64)),
            ak.contents.NumpyArray(np.zeros(0, dtype=np.float32)),
        ))
        return _assemble(empty, jet_like, self)


def _apply_partition(tagger: MultiStepTagger, jets: ak.Array, constituents: ak.Array) -> ak.Array:
    """What dask runs per partition (module level: pickles by reference)."""
    return tagger(jets, constituents)


def attach_scores(
    events: Any,
    tagger: MultiStepTagger,
    jets: str = "Jet",
    constituents: str = "PFCands",
) -> Any:
    """``events`` with the tagger's outputs attached (eager or dask alike).

    Adds ``events[jets].tau_score``, ``.tau_logit``, ``.tau_features`` (and ``.tau_momentum``)
    per jet and ``events.event_score``, ``events.event_logit`` per event.

    Returns:
        The events with the new fields (the input is not modified).
    """
    for name in (jets, constituents):
        if name not in events.fields:
            raise ValueError(f"events have no collection {name!r} (fields: {events.fields})")
    scores = tagger(events[jets], events[constituents])
    out = events
    for field in ("tau_score", "tau_logit", "tau_features", "tau_momentum"):
        if field in scores.fields:
            out = _with_field(out, scores[field], (jets, field))
    for field in ("event_score", "event_logit"):
        out = _with_field(out, scores[field], field)
    return out


def _with_field(events: Any, value: Any, where: Union[str, tuple[str, str]]) -> Any:
    if _is_dask(events):
        import dask_awkward as dak

        return dak.with_field(events, value, where=where)
    return ak.with_field(events, value, where=where)


# ----------------------------------------------------------------------------------------------
# Model sources
# ----------------------------------------------------------------------------------------------
def _normalize_model(
    model: ModelSource, load_options: Mapping[str, Any]
) -> tuple[str, bytes, dict]:
    """``(kind, serialised bytes, metadata)`` for any accepted model source."""
    from hepms.export import InferenceModel, file_kind, load_model, model_metadata, quiet_jit

    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if path.is_dir():
            path = path / "checkpoint.pt"
        if not path.exists():
            raise FileNotFoundError(f"no model file at {path}")
        kind = file_kind(path)
        if kind in ("torchscript", "program"):
            loaded = load_model(path, **load_options)  # validates the metadata and options
            return kind, path.read_bytes(), model_metadata(loaded)
        model = load_model(path, **load_options)
    elif load_options:
        raise TypeError(f"load options {sorted(load_options)} apply to model files only")
    if isinstance(model, InferenceModel):
        with quiet_jit():
            model = torch.jit.script(model.eval())
    if isinstance(model, torch.jit.ScriptModule):
        metadata = model_metadata(model)  # raises for modules that are not hepms exports
        buffer = io.BytesIO()
        with quiet_jit():
            torch.jit.save(model, buffer)
        return "torchscript", buffer.getvalue(), metadata
    raise TypeError(
        f"cannot use a {type(model).__name__} as a hepms model: give an export file "
        "(hepms.export.export_torchscript / export_program), a checkpoint, or an InferenceModel"
    )


def _check_computable(constituent_features: Sequence[str], jet_features: Sequence[str]) -> None:
    from hepms.data import JET_FEATURES

    unknown = [n for n in jet_features if n not in JET_FEATURES]
    if unknown:
        raise ValueError(
            f"model/feature mismatch: the model expects jet feature(s) {unknown}, which hepms "
            f"cannot compute (known: {sorted(JET_FEATURES)})"
        )
    known = ("deta", "dphi", "log_pt", "log_e", "log_pt_rel", "log_e_rel", "delta_r", "charge")
    unknown = [n for n in constituent_features if n not in known]
    if unknown:
        raise ValueError(
            f"model/feature mismatch: the model expects constituent feature(s) {unknown}, which "
            f"hepms cannot compute (known: {list(known)})"
        )


# ----------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------
def _is_dask(array: Any) -> bool:
    # By module name: importing dask_awkward just to check would cost every eager call ~1 s.
    return type(array).__module__.startswith("dask_awkward")


def _list_depth(array: Any, what: str) -> int:
    """Number of list levels between the events and the records (1: E * var * record)."""
    layout = array.layout
    depth = 0
    while True:
        if isinstance(layout, (ak.contents.IndexedOptionArray, ak.contents.ByteMaskedArray,
                               ak.contents.BitMaskedArray, ak.contents.UnmaskedArray)):
            raise ValueError(
                f"{what} has missing (None) entries ({array.type}): drop or fill them first"
            )
        if isinstance(layout, ak.contents.IndexedArray):
            layout = layout.content
            continue
        if isinstance(layout, (ak.contents.ListOffsetArray, ak.contents.ListArray,
                               ak.contents.RegularArray)):
            depth += 1
            layout = layout.content
            continue
        if isinstance(layout, ak.contents.RecordArray):
            return depth
        raise ValueError(f"{what} must be lists of records (e.g. events.Jet), got {array.type}")


def _collection_name(array: Any) -> Optional[str]:
    """The NanoEvents collection (``"Jet"``), from the layout parameters, if any."""
    layout = array.layout
    while isinstance(layout, ak.contents.Content):
        name = layout.parameter("collection_name")
        if name is not None:
            return str(name)
        # Lists, options and indexed nodes wrap one content; a RecordArray's ``content`` is a
        # method (content(field)): the descent ends there.
        layout = getattr(layout, "content", None)
    return None


def _missing_message(what: str, array: Any, missing: Sequence[str]) -> str:
    collection = _collection_name(array)
    needs = []
    for name in missing:
        branch = f" (branch {collection}_{name})" if collection else ""
        if name == "charge":
            reason = "constituent feature 'charge'"
        elif name == _JET_INDEX_FIELD:
            reason = "grouping flat constituents into jets"
        else:
            reason = "the 4-vectors of the features"
        needs.append(f"{name!r}{branch}, needed for {reason}")
    return (
        f"{what} lack field(s) the model needs: " + "; ".join(needs)
        + f". The {what} have fields {list(array.fields)}"
    )


# ----------------------------------------------------------------------------------------------
# awkward -> tensors
# ----------------------------------------------------------------------------------------------
class _Inputs:
    """Model inputs for one batch of events, in the tensors' order."""

    def __init__(
        self,
        constituents: Tensor,
        constituent_offsets: Tensor,
        jet_offsets: Tensor,
        jet_features: Tensor,
        jet_like: ak.Array,
        jet_rank: np.ndarray,
        max_jets: int,
    ) -> None:
        self.constituents = constituents
        self.constituent_offsets = constituent_offsets
        self.jet_offsets = jet_offsets
        self.jet_features = jet_features
        self.jet_like = jet_like  # E * var * Momentum4D: the output's list structure
        self.jet_rank = jet_rank  # [B] position of each jet in its event by pT (0 = leading)
        self.max_jets = max_jets


def _flat(array: ak.Array, field: str, levels: int) -> np.ndarray:
    values = array[field]
    for _ in range(levels):
        values = ak.flatten(values, axis=1)
    return ak.to_numpy(values)


def _prepare(
    jets: ak.Array, constituents: ak.Array, nested: bool, tagger: MultiStepTagger
) -> _Inputs:
    """Features as :func:`hepms.data.build_dataset` computes them, for every jet."""
    from hepms.data import JET_FEATURES

    jet_counts = ak.to_numpy(ak.num(jets, axis=1)).astype(np.int64)
    n_events, n_jets = len(jet_counts), int(jet_counts.sum())
    jet_first = np.zeros(n_events + 1, dtype=np.int64)
    np.cumsum(jet_counts, out=jet_first[1:])
    # Plain Momentum4D jets (the training pipeline's kind): drops NanoEvents behaviours and
    # parameters, and reads only the four branches.
    jet_flat = {name: _flat(jets, name, 1) for name in _JET_FIELDS}
    jet_like = ak.unflatten(
        ak.zip(jet_flat, with_name="Momentum4D", behavior=_vector_behavior()), jet_counts
    )

    fields = tagger.required_fields(nested)["constituents"]
    payload = [f for f in fields if f != _JET_INDEX_FIELD]
    if nested:
        per_jet = ak.to_numpy(ak.flatten(ak.num(constituents, axis=2), axis=1)).astype(np.int64)
        if len(per_jet) != n_jets or not np.array_equal(
            ak.to_numpy(ak.num(constituents, axis=1)), jet_counts
        ):
            raise ValueError("jets and constituents have different numbers of jets per event")
        flat = {name: _flat(constituents, name, 2) for name in payload}
        global_jet = np.repeat(np.arange(n_jets, dtype=np.int64), per_jet)
        rows = np.arange(len(global_jet), dtype=np.int64)
    else:
        counts = ak.to_numpy(ak.num(constituents, axis=1)).astype(np.int64)
        flat = {name: _flat(constituents, name, 1) for name in payload}
        jet_index = _flat(constituents, _JET_INDEX_FIELD, 1).astype(np.int64)
        event_of = np.repeat(np.arange(n_events, dtype=np.int64), counts)
        # Candidates that belong to no jet of their event (jetIdx -1 in NanoAOD) are ignored.
        valid = (jet_index >= 0) & (jet_index < jet_counts[event_of])
        rows = np.flatnonzero(valid)
        global_jet = jet_first[event_of[rows]] + jet_index[rows]
    # Group by jet, pT-descending inside each jet (lexsort is stable: ties keep file order,
    # like the stable argsort of physics.leading), then keep the leading max_constituents.
    order = np.lexsort((-flat["pt"][rows], global_jet))
    rows, global_jet = rows[order], global_jet[order]
    per_jet = np.bincount(global_jet, minlength=n_jets).astype(np.int64)
    starts = np.cumsum(per_jet) - per_jet
    rank = np.arange(len(rows), dtype=np.int64) - np.repeat(starts, per_jet)
    keep = rank < tagger.max_constituents
    rows = rows[keep]
    per_jet = np.minimum(per_jet, tagger.max_constituents)
    parts = ak.unflatten(
        ak.unflatten(ak.zip({name: flat[name][rows] for name in payload}), per_jet), jet_counts
    )

    part_records = physics.constituent_features(jet_like, parts)
    constituent_table = to_jagged(part_records, fields=list(tagger.constituent_features))
    jet_records = ak.zip(
        {name: JET_FEATURES[name](jet_like, parts) for name in tagger.jet_features}, depth_limit=2
    )
    jet_table = to_jagged(jet_records, fields=list(tagger.jet_features))
    if tagger.check_finite:
        _check_finite("constituent", constituent_table.values, tagger.constituent_features)
        _check_finite("jet", jet_table.values, tagger.jet_features)

    # Rank of every jet in its event by pT (stable), for the event model's leading-jets cut.
    jet_order = np.lexsort((-jet_flat["pt"], np.repeat(np.arange(n_events), jet_counts)))
    jet_rank = np.empty(n_jets, dtype=np.int64)
    jet_rank[jet_order] = np.arange(n_jets, dtype=np.int64) - np.repeat(jet_first[:-1], jet_counts)

    assert constituent_table.outer_offsets is not None
    return _Inputs(
        constituent_table.values,
        constituent_table.offsets,
        constituent_table.outer_offsets,
        jet_table.values,
        jet_like,
        jet_rank,
        tagger.max_jets,
    )


def _vector_behavior() -> Mapping[str, Any]:
    import vector

    return vector.backends.awkward.behavior


def _check_finite(what: str, values: Tensor, names: Sequence[str]) -> None:
    finite = torch.isfinite(values)
    if bool(finite.all()):
        return
    bad_columns = (~finite).any(0).nonzero().flatten().tolist()
    rows = int((~finite).any(1).sum())
    raise ValueError(
        f"non-finite {what} feature(s) {[names[i] for i in bad_columns]} in {rows} row(s): "
        "zero-pT or zero-energy objects? Cut them before applying the model (or pass "
        "check_finite=False to get NaN scores)"
    )


# ----------------------------------------------------------------------------------------------
# Running the model
# ----------------------------------------------------------------------------------------------
class _Outputs:
    def __init__(self, tau_logit: Tensor, intermediate: Tensor, event_logit: Tensor,
                 momentum: Tensor) -> None:
        self.tau_logit = tau_logit
        self.intermediate = intermediate
        self.event_logit = event_logit
        self.momentum = momentum


def _run_model(model: nn.Module, inputs: _Inputs, device: str) -> _Outputs:
    """One ``forward`` for all jets; only the leading ``max_jets`` per event feed the event model.

    ``forward`` feeds every jet it gets to the event model, so jets beyond ``max_jets`` are
    moved behind the events' jets as one-jet pseudo-events of their own: they still get a tau
    score, their pseudo-event scores are dropped. Only ``forward`` is used, so TorchScript,
    ``torch.export`` programs and Python models behave the same.
    """
    n_events = inputs.jet_offsets.shape[0] - 1
    extra = inputs.jet_rank >= inputs.max_jets
    constituents, constituent_offsets = inputs.constituents, inputs.constituent_offsets
    jet_offsets, jet_features = inputs.jet_offsets, inputs.jet_features
    permutation = None
    if extra.any():
        permutation = torch.from_numpy(np.concatenate([np.flatnonzero(~extra),
                                                       np.flatnonzero(extra)]))
        # Ranks run 0..count-1 in each event, so min(count, max_jets) jets of each are kept.
        jet_counts = inputs.jet_offsets[1:] - inputs.jet_offsets[:-1]
        kept = jet_counts.clamp(max=inputs.max_jets)
        n_extra = int(extra.sum())
        counts = torch.cat([kept, torch.ones(n_extra, dtype=torch.int64)])
        jet_offsets = hepms.offsets_from_counts(counts)
        rows, constituent_offsets = _gather_ranges(constituent_offsets, permutation)
        constituents = constituents.index_select(0, rows)
        jet_features = jet_features.index_select(0, permutation)
    args = [t.to(device) for t in (constituents, constituent_offsets, jet_offsets, jet_features)]
    tau_logit, intermediate, event_logit, momentum = model(*args)
    tau_logit, intermediate, event_logit, momentum = (
        t.detach().cpu() for t in (tau_logit, intermediate, event_logit, momentum)
    )
    event_logit = event_logit[:n_events]
    if permutation is not None:
        tau_logit = _unpermute(tau_logit, permutation)
        intermediate = _unpermute(intermediate, permutation)
        momentum = _unpermute(momentum, permutation)
    return _Outputs(tau_logit, intermediate, event_logit, momentum)


def _gather_ranges(offsets: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """Rows of the segments ``index`` (in that order) and the offsets over them."""
    starts = offsets[:-1].index_select(0, index)
    counts = offsets[1:].index_select(0, index) - starts
    new_offsets = hepms.offsets_from_counts(counts)
    total = int(new_offsets[-1])
    shift = torch.repeat_interleave(starts - new_offsets[:-1], counts, output_size=total)
    return shift + torch.arange(total, dtype=torch.int64), new_offsets


def _unpermute(values: Tensor, permutation: Tensor) -> Tensor:
    out = torch.empty_like(values)
    out[permutation] = values
    return out


def _assemble(outputs: _Outputs, jet_like: ak.Array, tagger: MultiStepTagger) -> ak.Array:
    """Per-jet and per-event results as one record per event (also builds the dask meta)."""
    fields = {
        "tau_score": from_jagged(torch.sigmoid(outputs.tau_logit), like=jet_like, level="element"),
        "tau_logit": from_jagged(outputs.tau_logit, like=jet_like, level="element"),
        "tau_features": from_jagged(outputs.intermediate, like=jet_like, level="element"),
        "event_score": from_jagged(
            torch.sigmoid(outputs.event_logit), like=jet_like, level="segment"
        ),
        "event_logit": from_jagged(outputs.event_logit, like=jet_like, level="segment"),
    }
    if tagger.regression_outputs > 0:
        fields["tau_momentum"] = from_jagged(
            outputs.momentum * _MOMENTUM_UNIT_GEV, like=jet_like, level="element"
        )
    return ak.zip(fields, depth_limit=1)
