"""Trained hepms models inside coffea processors and dask-awkward graphs.

:class:`MultiStepTagger` applies a trained multi-step model (a model file of ``hepms train`` or
``hepms scan``, a run or trial directory, a trainer checkpoint, or an export of :mod:`hepms.export`)
to NanoEvents-style awkward arrays of jets and their constituents and returns, aligned with the
events:

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
(:func:`hepms.features.feature_tensors` with the model's :class:`~hepms.features.FeatureSpec`),
so scores equal what the model gave on :func:`hepms.data.build_dataset` output.

Jets: the tau model scores *every* jet. The event model sees the leading ``max_jets`` jets of each
event by pT (what it was trained on); jets beyond them get a tau score but do not enter the event
score. Events without jets get the event model's empty-set output: cut on ``nJet >= 1`` (training
dropped them). Constituents: either NanoAOD-style, one flat list per event with a ``jetIdx``
field (grouped by :func:`hepms.features.group_by_jet`; candidates with an index outside the
event's jets are ignored), or already nested per jet (``E * var * var * record``). Each jet keeps
its leading ``max_constituents`` by pT.

Workers: the tagger pickles as the model's bytes plus its metadata, so workers need no shared
file system; the model is deserialised once per worker process (cached, thread-safe) on CUDA when
available, else the CPU (``device=`` overrides).

Example (eager; with ``mode="dask"`` NanoEvents the same lines build a lazy graph)::

    from coffea.nanoevents import NanoEventsFactory
    from hepms.coffea import MultiStepTagger, attach_scores
    from hepms.generate.schema import HepmsNanoAODSchema   # PFNano layout of hepms generate files

    tagger = MultiStepTagger("runs/my_run")               # or runs/my_run/model.pt, an export
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
from typing import Any, Optional, Union

import awkward as ak
import numpy as np
import torch
from torch import Tensor, nn

from hepms.export import (
    METADATA_FILE,
    InferenceModel,
    file_kind,
    load_export,
    load_export_bytes,
    model_metadata,
    quiet_jit,
)
from hepms.features import FeatureSpec, FeatureTensors, check_inputs, feature_tensors
from hepms.jagged import from_jagged, take_segments
from hepms.model_file import TrainedModel, load_model
from hepms.ops import offsets_from_counts, validation

log = logging.getLogger(__name__)

__all__ = [
    "MultiStepTagger",
    "attach_scores",
    "loaded_models",
    "clear_model_cache",
    "OUTPUT_FIELDS",
]

PathLike = Union[str, "os.PathLike[str]"]
ModelSource = Union[PathLike, nn.Module, "TrainedModel"]

#: Fields of the tagger's output records (``tau_momentum`` only for regression models).
OUTPUT_FIELDS = ("tau_score", "tau_logit", "tau_features", "event_score", "event_logit",
                 "tau_momentum")



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
    # The same loader as files: metadata checked, .pt2 programs behind hepms' input checks.
    return load_export_bytes(payload, kind, map_location=device)


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
        model: a model file (``model.pt`` of ``hepms train`` or of a ``hepms scan`` trial), a run
            or trial directory, a trainer ``checkpoint.pt`` (see
            :func:`hepms.model_file.load_model`), a TorchScript export
            (:func:`hepms.export.export_torchscript`), a ``torch.export`` program
            (:func:`hepms.export.export_program`), or an in-memory
            :class:`hepms.model_file.TrainedModel`, :class:`hepms.export.InferenceModel` or
            TorchScript module of one.
        device: ``"cpu"``, ``"cuda"``, ...; default: CUDA if the *worker* has it, else CPU.
        torch_threads: ``torch.set_num_threads`` in each dask worker process at first use (e.g.
            1 with one single-threaded worker process per core, so workers do not oversubscribe
            the cores); ignored outside dask workers; default: leave torch's setting.
        check_finite: raise on NaN/inf input features (zero-pT constituents give ``-inf``
            logarithms) instead of returning NaN scores.

    Raises:
        ValueError: not a hepms model, or its feature spec names features hepms cannot compute.

    Example:
        >>> import awkward as ak, torch, tempfile
        >>> from hepms.data import Standardizer
        >>> from hepms.features import FeatureSpec
        >>> from hepms.nn import MultiStep
        >>> from hepms.export import InferenceModel
        >>> from hepms.coffea import MultiStepTagger
        >>> net = MultiStep(constituent_features=8, jet_features=4, seed=1)
        >>> scaler = Standardizer(torch.zeros(8), torch.ones(8), torch.zeros(4), torch.ones(4))
        >>> tagger = MultiStepTagger(InferenceModel(net, scaler, FeatureSpec()))
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
    ) -> None:
        self._kind, self._payload, metadata = _normalize_model(model)
        self._digest = hashlib.sha256(self._payload).hexdigest()
        self.metadata: dict = metadata
        # Validates the names: a spec hepms cannot compute fails here, not on the workers.
        self.spec: FeatureSpec = FeatureSpec.from_dict(metadata["features"])
        self.k = int(metadata["k"])
        self.regression_outputs = int(metadata.get("regression_outputs", 0))
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
            f"max_jets={self.spec.max_jets}, max_constituents={self.spec.max_constituents}, "
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
        return self.spec.required_fields(flat=not nested)

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
        nested = check_inputs(jets, constituents, self.spec)
        if ak.backend(jets) == "typetracer":
            return self._typetracer_result(jets, constituents, nested)
        return self._call_eager(jets, constituents, nested)

    def _call_dask(self, jets: Any, constituents: Any) -> Any:
        import dask
        import dask_awkward as dak

        check_inputs(jets._meta, constituents._meta, self.spec)
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
        inputs = feature_tensors(jets, constituents, self.spec, select_jets=False,
                                 check_finite=self.check_finite)
        with torch.inference_mode(), validation(False):  # offsets built by to_jagged
            outputs = _run_model(self.model, inputs, self.resolved_device)
        return _assemble(outputs, inputs.jets["pt"], self)

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
def _normalize_model(model: ModelSource) -> tuple[str, bytes, dict]:
    """``(kind, serialised bytes, metadata)`` for any accepted model source."""
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        kind = None if path.is_dir() or not path.is_file() else file_kind(path)
        if kind in ("torchscript", "program"):
            loaded = load_export(path)  # validates the metadata
            return kind, path.read_bytes(), model_metadata(loaded)
        model = load_model(path)  # a model file, a run or trial directory, a checkpoint
    if isinstance(model, TrainedModel):
        model = model.inference_model()
    if isinstance(model, InferenceModel):
        with quiet_jit():
            model = torch.jit.script(model.eval())
    if isinstance(model, torch.jit.ScriptModule):
        metadata = model_metadata(model)  # raises for modules that are not hepms exports
        buffer = io.BytesIO()
        with quiet_jit():  # with the metadata entry, as export_torchscript writes it
            torch.jit.save(model, buffer, _extra_files={METADATA_FILE: model.metadata_json})
        return "torchscript", buffer.getvalue(), metadata
    raise TypeError(
        f"cannot use a {type(model).__name__} as a hepms model: give a model file or run/trial "
        "directory (hepms.model_file), an export file (hepms.export), or an InferenceModel"
    )


def _is_dask(array: Any) -> bool:
    # By module name: importing dask_awkward just to check would cost every eager call ~1 s.
    return type(array).__module__.startswith("dask_awkward")


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


def _jet_rank(jets: ak.Array) -> np.ndarray:
    """``[B]`` position of each jet in its event by pT, descending and stable (0 = leading): the
    inverse of the pT ordering that :func:`hepms.features.feature_tensors` selects jets with."""
    order = ak.argsort(jets["pt"], axis=1, ascending=False, stable=True)
    return ak.to_numpy(ak.flatten(ak.argsort(order, axis=1), axis=1)).astype(np.int64)


def _run_model(model: nn.Module, inputs: FeatureTensors, device: str) -> _Outputs:
    """One ``forward`` for all jets; only the leading ``max_jets`` per event feed the event model.

    ``forward`` feeds every jet it gets to the event model, so jets beyond ``max_jets`` are
    moved behind the events' jets as one-jet pseudo-events of their own: they still get a tau
    score, their pseudo-event scores are dropped. Only ``forward`` is used, so TorchScript,
    ``torch.export`` programs and Python models behave the same.
    """
    n_events = inputs.jet_offsets.shape[0] - 1
    max_jets = inputs.spec.max_jets
    extra = _jet_rank(inputs.jets) >= max_jets
    constituents, constituent_offsets = inputs.constituents.values, inputs.constituent_offsets
    jet_offsets, jet_features = inputs.jet_offsets, inputs.jet_features
    permutation = None
    if extra.any():
        permutation = torch.from_numpy(np.concatenate([np.flatnonzero(~extra),
                                                       np.flatnonzero(extra)]))
        # Ranks run 0..count-1 in each event, so min(count, max_jets) jets of each are kept.
        jet_counts = inputs.jet_offsets[1:] - inputs.jet_offsets[:-1]
        kept = jet_counts.clamp(max=max_jets)
        n_extra = int(extra.sum())
        counts = torch.cat([kept, torch.ones(n_extra, dtype=torch.int64)])
        jet_offsets = offsets_from_counts(counts)
        rows, constituent_offsets = take_segments(constituent_offsets, permutation)
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
        # Momentum targets are in the spec's unit: back to GeV (eta/phi targets stay as they are).
        scale = torch.tensor([tagger.spec.momentum_unit_gev if name in ("px", "py", "pz", "pt")
                              else 1.0 for name in tagger.spec.targets])
        fields["tau_momentum"] = from_jagged(
            outputs.momentum * scale, like=jet_like, level="element"
        )
    return ak.zip(fields, depth_limit=1)
