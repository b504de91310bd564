"""Self-contained exports of trained multi-step models, input preprocessing included.

A trained :class:`~hepms.nn.MultiStep` expects *standardised* features, and the statistics live in
a :class:`~hepms.data.Standardizer` next to it, not in the model. :class:`InferenceModel` puts
them together: it takes the raw features that :func:`hepms.data.build_dataset` computes (same
names, same order), standardises them with buffers, and runs the tau and event models. It carries
its metadata (feature names, ``max_jets``, ``max_constituents``, the intermediate size ``k``, the
hepms version) as a JSON string, so an export file is all a consumer needs:

* :func:`export_torchscript` writes a TorchScript archive (``torch.jit.script``) with the metadata
  also stored as the extra file ``hepms.json`` (``unzip -p model.pt '*/extra/hepms.json'``);
* :func:`export_program` writes a ``torch.export`` program (``.pt2``) of ``forward`` with dynamic
  sizes for the constituents, jets and events, the metadata as the extra file ``hepms.json``;
* :func:`export_onnx` writes an ONNX file (opset 18, the segment ops as standard ONNX operators,
  :mod:`hepms.onnx_ops`) that onnxruntime runs without hepms or torch, the metadata in its
  ``metadata_props``; invalid offsets (or ``jet_features`` rows that are not one per jet) give
  NaN outputs and ``inputs_valid = False`` there;
* :func:`load_export` loads a TorchScript or ``torch.export`` file and returns a ready model in eval
  mode (a ``.pt2`` program behind input checks that name the input whose shape or dtype does not
  fit); :func:`model_metadata` reads the metadata of any of them (ONNX files too).

Every entry point (``forward``, ``upstream``, ``downstream``) checks its offsets, whatever the
segment ops' validation switches say, and raises ``ValueError`` for offsets that do not start at 0,
decrease or do not end at the number of rows; the check is the op ``hepms::check_offsets``, so it
is part of TorchScript and ``torch.export`` files too.

A trained model comes from its model file (:func:`hepms.model_file.load_model`, which also reads
run and trial directories): ``load_model(run).inference_model()`` is the :class:`InferenceModel`.

Loading a TorchScript or ``torch.export`` file needs the hepms segment ops to be registered
(``import hepms``), since the graphs call ``torch.ops.hepms.segment_*``; no other hepms code (no
training code, no ``hepms.nn``) is needed.

Example:
    >>> import tempfile, torch, hepms
    >>> from hepms.data import Standardizer
    >>> from hepms.features import FeatureSpec
    >>> from hepms.nn import MultiStep
    >>> from hepms.export import InferenceModel, export_torchscript, load_export, model_metadata
    >>> net = MultiStep(constituent_features=2, jet_features=1, connection="additional", k=3,
    ...                 seed=1)
    >>> scaler = Standardizer(torch.zeros(2), torch.ones(2), torch.zeros(1), torch.ones(1))
    >>> spec = FeatureSpec(jet_features=["log_pt"], constituent_features=["deta", "dphi"])
    >>> model = InferenceModel(net, scaler, spec)
    >>> path = export_torchscript(model, tempfile.mkdtemp() + "/model.pt")
    >>> loaded = load_export(path)
    >>> x, jf = torch.randn(5, 2), torch.randn(2, 1)        # 5 constituents, 2 jets
    >>> co, jo = torch.tensor([0, 2, 5]), torch.tensor([0, 2])  # 1 event
    >>> all(torch.equal(a, b) for a, b in zip(loaded(x, co, jo, jf), model(x, co, jo, jf)))
    True
    >>> model_metadata(loaded)["k"], model_metadata(loaded)["features"]["jet_features"]
    (3, ['log_pt'])
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn

import hepms
from hepms.atomic import save_atomically
from hepms.data import Standardizer
from hepms.features import FeatureSpec
from hepms.nn.models import MultiStep
from hepms.ops import is_integer_dtype

log = logging.getLogger(__name__)

__all__ = [
    "InferenceModel",
    "export_torchscript",
    "export_program",
    "export_onnx",
    "offsets_valid",
    "load_export",
    "load_export_bytes",
    "file_kind",
    "model_metadata",
    "quiet_jit",
    "METADATA_FILE",
    "ONNX_INPUTS",
    "ONNX_OUTPUTS",
    "FORMAT",
    "FORMAT_VERSION",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Name of the metadata entry in TorchScript / torch.export archives.
METADATA_FILE = "hepms.json"
#: ``format`` value of the metadata (version 2: the feature spec under ``features``).
FORMAT = "hepms.inference"
FORMAT_VERSION = 2
_OUTPUTS = ("tau_logit", "intermediate", "event_logit", "momentum")


# ----------------------------------------------------------------------------------------------
# The model with its preprocessing
# ----------------------------------------------------------------------------------------------
class InferenceModel(nn.Module):
    """A :class:`~hepms.nn.MultiStep` with its feature standardisation and its metadata.

    All inputs are *raw* features (as :func:`hepms.features.feature_tensors` computes them, before the
    :class:`~hepms.data.Standardizer`); standardisation runs inside, from float32 buffers, with the
    same arithmetic as ``Standardizer.__call__``, so results equal the training-time pipeline
    bit for bit.

    Args:
        model: the trained multi-step model (copied, put in eval mode).
        scaler: the standardisation fitted on the training split.
        spec: the :class:`~hepms.features.FeatureSpec` of the columns (names, order, caps, units).
        extra_metadata: JSON-serialisable entries added to the metadata (e.g. the provenance).

    Raises:
        ValueError: a spec that does not match the model's input widths or the scaler.
    """

    # TorchScript compiles properties unless told otherwise; this one is Python-only (json).
    __jit_unused_properties__ = ["metadata"]

    def __init__(
        self,
        model: MultiStep,
        scaler: Standardizer,
        spec: FeatureSpec,
        extra_metadata: Optional[Mapping[str, Any]] = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, MultiStep):
            raise TypeError(f"model must be a hepms.nn.MultiStep, got {type(model).__name__}")
        if not isinstance(scaler, Standardizer):
            raise TypeError(
                f"scaler must be a hepms.data.Standardizer, got {type(scaler).__name__}"
            )
        if not isinstance(spec, FeatureSpec):
            raise TypeError(f"spec must be a hepms.features.FeatureSpec, got {type(spec).__name__}")
        spec.check_widths(model.tau.constituent_features, model.tau.jet_features, "the model")
        spec.check_widths(scaler.constituent_mean.shape[0], scaler.jet_mean.shape[0], "the scaler")
        # A copy: exporting must not change (or be changed by) a model that keeps training.
        self.model = copy.deepcopy(model).eval()
        # float32 buffers cast from the float64 statistics, exactly as Standardizer does on
        # float32 data, so standardised values are identical.
        self.register_buffer("constituent_mean", scaler.constituent_mean.to(torch.float32).clone())
        self.register_buffer("constituent_std", scaler.constituent_std.to(torch.float32).clone())
        self.register_buffer("jet_mean", scaler.jet_mean.to(torch.float32).clone())
        self.register_buffer("jet_std", scaler.jet_std.to(torch.float32).clone())
        self.k = int(model.k)
        self.max_jets = spec.max_jets
        self.max_constituents = spec.max_constituents
        metadata = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "hepms_version": hepms.__version__,
            "torch_version": torch.__version__,
            "features": spec.to_dict(),
            "k": self.k,
            "connection": model.connection,
            "regression_outputs": int(model.tau.regression_outputs),
            "model_config": model.config,
            "inputs": {
                "constituents": "[N, F_c] float32 raw constituent features (constituent_features)",
                "constituent_offsets": "[B + 1] int64 CSR offsets of the constituents per jet",
                "jet_offsets": "[E + 1] int64 CSR offsets of the jets per event",
                "jet_features": "[B, F_j] float32 raw jet features (jet_features)",
            },
            "outputs": {
                "tau_logit": "[B] tau logit per jet",
                "intermediate": "[B, k] what the event model receives per jet",
                "event_logit": "[E] H (1) vs Z (0) logit per event",
                "momentum": "[B, R] regression targets of features.targets, momenta in units of "
                            "features.momentum_unit_gev (R = 0: no regression)",
            },
            "jet_selection": (
                "forward() feeds every given jet to the event model: give it at most max_jets "
                "jets per event (the leading ones by pT), as in training; upstream() scores "
                "any jets"
            ),
        }
        if extra_metadata:
            metadata["extra"] = dict(extra_metadata)
        self.metadata_json = json.dumps(metadata, sort_keys=True)

    @property
    def metadata(self) -> dict:
        """The metadata as a dict (also :func:`model_metadata`)."""
        return json.loads(self.metadata_json)

    def _standardize(self, x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        return (x - mean.to(x.dtype)) / std.to(x.dtype)

    # The entry points check their offsets always (O(B), one host sync), whatever the segment
    # ops' validation switches say: in eager mode, in TorchScript and in torch.export programs
    # the check is the op hepms::check_offsets, which raises ValueError for offsets that do not
    # start at 0, decrease, or do not end at the number of rows (instead of finite garbage).
    # ONNX has no exceptions: see export_onnx (NaN outputs and an inputs_valid output).
    @torch.jit.export
    def upstream(
        self, constituents: Tensor, constituent_offsets: Tensor, jet_features: Tensor
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Tau model on raw features: ``(tau_logit [B], intermediate [B, k], momentum [B, R])``.

        Raises:
            ValueError: ``constituent_offsets`` are not CSR offsets of the ``constituents`` rows,
                or ``jet_features`` has not one row per jet.
        """
        _check_jet_rows(jet_features, constituent_offsets)
        constituent_offsets = torch.ops.hepms.check_offsets(
            constituent_offsets.long(), constituents.shape[0], "constituent_offsets"
        )
        x = self._standardize(constituents, self.constituent_mean, self.constituent_std)
        j = self._standardize(jet_features, self.jet_mean, self.jet_std)
        return self.model.upstream(x, constituent_offsets, j)

    @torch.jit.export
    def downstream(self, jet_features: Tensor, jet_offsets: Tensor, intermediate: Tensor) -> Tensor:
        """Event model on raw jet features and the upstream ``intermediate``: ``[E]`` logits.

        Raises:
            ValueError: ``jet_offsets`` are not CSR offsets of the ``jet_features`` rows.
        """
        jet_offsets = torch.ops.hepms.check_offsets(
            jet_offsets.long(), jet_features.shape[0], "jet_offsets"
        )
        j = self._standardize(jet_features, self.jet_mean, self.jet_std)
        return self.model.downstream(j, jet_offsets, intermediate)

    def forward(
        self,
        constituents: Tensor,
        constituent_offsets: Tensor,
        jet_offsets: Tensor,
        jet_features: Tensor,
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Both steps on raw features, every given jet feeding the event model.

        Returns:
            ``(tau_logit [B], intermediate [B, k], event_logit [E], momentum [B, R])``.
        """
        tau_logit, intermediate, momentum = self.upstream(
            constituents, constituent_offsets, jet_features
        )
        event_logit = self.downstream(jet_features, jet_offsets, intermediate)
        return tau_logit, intermediate, event_logit, momentum


def _check_jet_rows(jet_features: Tensor, constituent_offsets: Tensor) -> None:
    """``ValueError`` unless ``jet_features`` has one row per jet of ``constituent_offsets``: the
    check of :meth:`InferenceModel.upstream` (TorchScript compiles it too) and of the loaded
    ``.pt2`` program (:class:`_ProgramModel`), where the program's own guard would raise an
    ``AssertionError`` about symbolic sizes."""
    if jet_features.shape[0] != constituent_offsets.shape[0] - 1:
        raise ValueError(
            "jet_features has {} rows but constituent_offsets describes {} jets".format(
                jet_features.shape[0], constituent_offsets.shape[0] - 1
            )
        )


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------
def export_torchscript(model: InferenceModel, path: PathLike) -> Path:
    """Script ``model`` (``torch.jit.script``) and save it with its metadata.

    The archive holds the weights, the standardisation buffers, the metadata (attribute
    ``metadata_json`` and extra file ``hepms.json``) and three methods: ``forward``,
    ``upstream`` and ``downstream``. The file is written under a temporary name and renamed.

    Returns:
        The path written.
    """
    if not isinstance(model, InferenceModel):
        raise TypeError(
            f"export_torchscript needs an InferenceModel (model + preprocessing), got "
            f"{type(model).__name__}; build one with InferenceModel(model, scaler, ...)"
        )
    path = Path(path)
    with quiet_jit():
        scripted = torch.jit.script(model.eval())
    def save(tmp: str) -> None:
        with quiet_jit():
            torch.jit.save(scripted, tmp, _extra_files={METADATA_FILE: model.metadata_json})

    save_atomically(path, save, keep_suffix=True)
    log.info("exported TorchScript model to %s", path)
    return path


def export_program(model: InferenceModel, path: PathLike) -> Path:
    """Export ``model.forward`` with ``torch.export`` (dynamic N, B, E) and save it (``.pt2``).

    The program takes the four inputs of :meth:`InferenceModel.forward` and returns its four
    outputs; sizes ``N`` (constituents), ``B`` (jets) and ``E`` (events) are dynamic. Only
    ``forward`` is exported (every given jet feeds the event model): select the leading
    ``max_jets`` jets per event before calling it.

    Returns:
        The path written.
    """
    if not isinstance(model, InferenceModel):
        raise TypeError(f"export_program needs an InferenceModel, got {type(model).__name__}")
    path = Path(path)
    args = _example_inputs(model)
    with _size_oblivious():
        program = torch.export.export(
            model.eval(), args, dynamic_shapes=_dynamic_shapes(), strict=False
        )
    metadata = {METADATA_FILE: model.metadata_json}
    # keep_suffix: torch.export.save warns about names not ending in .pt2
    save_atomically(path, lambda tmp: torch.export.save(program, tmp, extra_files=metadata),
                    keep_suffix=True)
    log.info("exported torch.export program to %s", path)
    return path


def _dynamic_shapes(jet_rows: bool = False) -> dict:
    """Dynamic sizes N (constituents), B (jets), E (events) of the four inputs of ``forward``.

    ``jet_rows``: the rows of ``jet_features`` are a size of their own instead of B (ONNX, where
    a mismatch is an output, :class:`_OnnxModel`, not an exception).
    """
    from torch.export import Dim

    n, b, e = Dim("constituents"), Dim("jets"), Dim("events")
    return {
        "constituents": {0: n},
        "constituent_offsets": {0: b + 1},
        "jet_offsets": {0: e + 1},
        "jet_features": {0: Dim("jet_feature_rows") if jet_rows else b},
    }


def _size_oblivious() -> contextlib.AbstractContextManager:
    """Size-oblivious tracing: without it an export guards on sizes >= 2 (torch's 0/1
    specialisation) and refuses a partition with one event or one jet."""
    from torch.fx.experimental import _config as fx_config

    return fx_config.patch(backed_size_oblivious=True)


#: Names of the inputs and outputs of an ONNX export (:func:`export_onnx`).
ONNX_INPUTS = ("constituents", "constituent_offsets", "jet_offsets", "jet_features")
ONNX_OUTPUTS = _OUTPUTS + ("inputs_valid",)


def offsets_valid(offsets: Tensor, num_rows: int) -> Tensor:
    """0-d bool tensor: ``offsets`` are CSR offsets of ``num_rows`` rows (start at 0, never
    decrease, end at ``num_rows``). Tensor operations only (no host sync, no exception), O(B):
    what an ONNX export computes where eager code raises."""
    offsets = offsets.long()
    decreasing = (offsets[1:] < offsets[:-1]).sum()  # a sum: well defined with no steps (B = 0)
    return (offsets[0] == 0) & (offsets[-1] == num_rows) & (decreasing == 0)


class _OnnxModel(nn.Module):
    """:meth:`InferenceModel.forward` for ONNX, where nothing can raise: the outputs plus
    ``inputs_valid`` (0-d bool), and every output NaN when the offsets are invalid or
    ``jet_features`` has not one row per jet of ``constituent_offsets``, so that garbage never
    looks like a score."""

    def __init__(self, model: InferenceModel) -> None:
        super().__init__()
        self.inference = model

    def forward(
        self,
        constituents: Tensor,
        constituent_offsets: Tensor,
        jet_offsets: Tensor,
        jet_features: Tensor,
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        # The eager check (jet_features has B rows) raises; here the rows are a separate dynamic
        # size, compared as a tensor, and the model gets exactly B rows (the given ones, zero
        # rows appended or extra rows dropped) so that a mismatch never reaches an operator
        # that fails with a shape error of the runtime.
        jets = constituent_offsets.shape[0] - 1
        rows = jet_features.shape[0]
        rows_match = (constituent_offsets.new_zeros(()) + rows) == jets
        padded = torch.cat([jet_features, jet_features.new_zeros(1, jet_features.shape[1])])
        index = torch.arange(jets, device=jet_features.device).clamp(max=rows)
        jet_features = padded.index_select(0, index)
        valid = (offsets_valid(constituent_offsets, constituents.shape[0])
                 & offsets_valid(jet_offsets, jets) & rows_match)
        outputs = self.inference(constituents, constituent_offsets, jet_offsets, jet_features)
        nan = torch.full((), float("nan"), dtype=constituents.dtype)
        tau, intermediate, event, momentum = (torch.where(valid, x, nan) for x in outputs)
        return tau, intermediate, event, momentum, valid


def export_onnx(model: InferenceModel, path: PathLike) -> Path:
    """Export ``model.forward`` to ONNX (opset 18, dynamic N, B, E): a file that onnxruntime (or
    any ONNX runtime) runs without hepms or torch.

    The hepms segment ops become standard ONNX operators (:mod:`hepms.onnx_ops`: ScatterND and
    ScatterElements with reductions, CumSum, Gather). Inputs: ``constituents [N, F_c]`` float32,
    ``constituent_offsets [B + 1]`` int64, ``jet_offsets [E + 1]`` int64, ``jet_features [B, F_j]``
    float32 (raw features; the standardisation is inside). Outputs: ``tau_logit [B]``,
    ``intermediate [B, k]``, ``event_logit [E]``, ``momentum [B, R]`` and ``inputs_valid`` (bool,
    0-d). ONNX has no exceptions: for offsets that do not start at 0, decrease, or do not end at
    the number of rows, and for ``jet_features`` whose rows are not the B jets of
    ``constituent_offsets`` (where the torch model raises ``ValueError``), ``inputs_valid`` is
    False and every other output is NaN (never an error, never an out-of-bounds read). The metadata is stored as ``metadata_props`` (key
    ``hepms.json``, see :func:`model_metadata`).

    Needs ``onnx`` and ``onnxscript`` (``pip install 'hepms[onnx]'``) to export; running the file
    needs only onnxruntime.

    Returns:
        The path written.
    """
    if not isinstance(model, InferenceModel):
        raise TypeError(f"export_onnx needs an InferenceModel, got {type(model).__name__}")
    from hepms.onnx_ops import OPSET, translation_table

    path = Path(path)
    table = translation_table()  # raises a clear ImportError without onnxscript
    wrapper = _OnnxModel(model.eval()).eval()
    with _size_oblivious(), _quiet_onnx():
        program = torch.onnx.export(
            wrapper,
            _example_inputs(model),
            dynamo=True,
            dynamic_shapes=_dynamic_shapes(jet_rows=True),
            input_names=list(ONNX_INPUTS),
            output_names=list(ONNX_OUTPUTS),
            custom_translation_table=table,
            opset_version=OPSET,
            verbose=False,
        )
    onnx_model = program.model_proto
    metadata = model.metadata
    metadata["onnx"] = {"opset": OPSET, "inputs_valid": (
        "False when an offsets input is malformed or jet_features has not one row per jet "
        "(len(constituent_offsets) - 1 rows); every other output is then NaN")}
    del onnx_model.metadata_props[:]
    for key, value in ((METADATA_FILE, json.dumps(metadata, sort_keys=True)),
                       ("hepms_version", hepms.__version__)):
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx_model.producer_name = "hepms"
    onnx_model.producer_version = hepms.__version__

    def save(tmp: str) -> None:
        Path(tmp).write_bytes(onnx_model.SerializeToString())

    save_atomically(path, save, keep_suffix=True)
    log.info("exported ONNX model to %s", path)
    return path


@contextlib.contextmanager
def _quiet_onnx() -> Iterator[None]:
    """torch.onnx logs its progress at WARNING level and prints it; the CLI prints the result."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _example_inputs(model: InferenceModel) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Small inputs with distinct sizes N != B != E, an empty jet and an event without jets."""
    meta = model.metadata
    features = meta["features"]
    f_c, f_j = len(features["constituent_features"]), len(features["jet_features"])
    device = model.constituent_mean.device
    constituent_offsets = torch.tensor([0, 3, 3, 7, 9, 12], device=device)
    jet_offsets = torch.tensor([0, 2, 2, 5], device=device)
    generator = torch.Generator().manual_seed(0)
    constituents = torch.randn(12, f_c, generator=generator).to(device)
    jet_features = torch.randn(5, f_j, generator=generator).to(device)
    return constituents, constituent_offsets, jet_offsets, jet_features


@contextlib.contextmanager
def quiet_jit() -> Iterator[None]:
    """Silence torch's TorchScript deprecation warnings (torch >= 2.9) inside hepms' own calls.

    TorchScript is still what coffea's torch_wrapper and C++ (libtorch) consumers load, so we keep
    writing it; torch.export is offered next to it (:func:`export_program`).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit.*")
        yield


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------
def load_export(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> nn.Module:
    """A ready model (eval mode) from an export file.

    ``path`` may be a TorchScript export (:func:`export_torchscript`: returns the
    ``ScriptModule``) or a ``torch.export`` program (:func:`export_program`: returns its module,
    ``forward`` only, behind hepms' input checks, which name an input whose rows, width or dtype
    do not fit before the program runs). Every returned model has a ``metadata_json`` attribute (see
    :func:`model_metadata`). Trained models (model files, run and trial directories, checkpoints)
    are read by :func:`hepms.model_file.load_model`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an export (a model file or checkpoint is named as such), or no hepms
            metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no export file at {path}")
    kind = file_kind(path)
    if kind == "checkpoint":
        raise ValueError(f"{path} is a model file or checkpoint, not an export: load it with "
                         "hepms.model_file.load_model")
    return _load_export(path, kind, map_location)


def file_kind(path: Path) -> str:
    """``torchscript``, ``program`` (torch.export) or ``checkpoint`` (torch.save), from the zip."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        raise ValueError(
            f"{path} is not a PyTorch archive (TorchScript, torch.export or torch.save zip file)"
        ) from None
    parts = [name.split("/") for name in names]
    if any(len(p) >= 2 and p[1] == "code" for p in parts) and any(
        p[-1] == "constants.pkl" for p in parts
    ):
        return "torchscript"
    if any(p[-1] == "archive_format" for p in parts) or any(
        len(p) >= 2 and p[1] == "models" for p in parts
    ):
        return "program"
    if any(p[-1] == "data.pkl" for p in parts):
        return "checkpoint"
    raise ValueError(f"{path}: unrecognised PyTorch archive (entries: {names[:5]} ...)")


def load_export_bytes(
    payload: bytes, kind: str, map_location: Union[str, torch.device] = "cpu"
) -> nn.Module:
    """:func:`load_export` from the bytes of an export file (``kind``: ``torchscript`` or
    ``program``, as :func:`file_kind` gives it), with the same metadata and input checks.

    For models shipped as bytes, e.g. to dask workers (:mod:`hepms.coffea`).

    Raises:
        ValueError: an unknown ``kind``, or no hepms metadata.
    """
    if kind not in ("torchscript", "program"):
        raise ValueError(f"kind must be 'torchscript' or 'program', got {kind!r}")
    return _load_export(io.BytesIO(payload), kind, map_location, name="the export bytes")


def _load_export(
    source: Union[Path, io.BytesIO],
    kind: str,
    map_location: Union[str, torch.device],
    name: Optional[str] = None,
) -> nn.Module:
    path = name or source  # what error messages call the export
    file = source if isinstance(source, io.BytesIO) else str(source)
    extra = {METADATA_FILE: ""}
    if kind == "torchscript":
        with quiet_jit():
            module = torch.jit.load(file, map_location=map_location, _extra_files=extra)
    else:
        program = torch.export.load(file, extra_files=extra)
        module = program.module()
        module.to(map_location)  # the program holds the weights as parameters and buffers
    text = extra[METADATA_FILE]
    if not text:
        raise ValueError(
            f"{path} has no {METADATA_FILE} metadata: not a hepms export (use hepms.export)"
        )
    metadata = json.loads(text)
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path}: metadata format {metadata.get('format')!r}, expected {FORMAT!r}")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: exported by another hepms (format_version {metadata.get('format_version')!r}, "
            f"this hepms reads {FORMAT_VERSION}): export it again from its model file or run "
            "directory (hepms.model_file.load_model(run).inference_model())"
        )
    if kind == "program":
        return _ProgramModel(module, text)
    module.eval()
    return module


class _ProgramModel(nn.Module):
    """The module of a ``torch.export`` program (:func:`export_program`) behind hepms' input
    checks, as :func:`load_export` returns it.

    The program guards its input shapes itself, but a failed guard is an ``AssertionError``
    about symbolic sizes (``Guard failed: jet_features.size()[0] == -1 +
    constituent_offsets.size()[0]``), and other dtypes fail deep inside. Here every input is
    checked before the program runs, with the exceptions of the eager :class:`InferenceModel`
    (``ValueError`` for a shape or row count that does not fit, ``TypeError`` for a dtype), each
    naming the input and its shape; integer offsets of any width are accepted (as int64), as in
    the other model kinds. The offsets' content (start at 0, never decrease, end at the number of
    rows) is checked inside the program by ``hepms::check_offsets`` (``ValueError``).
    """

    def __init__(self, program: nn.Module, metadata_json: str) -> None:
        super().__init__()
        self.program = program
        self.metadata_json = metadata_json
        features = json.loads(metadata_json)["features"]
        self._widths = {"constituents": len(features["constituent_features"]),
                        "jet_features": len(features["jet_features"])}
        self.training = False  # traced in inference mode (the program refuses train() / eval())

    def train(self, mode: bool = True) -> "_ProgramModel":
        if mode:
            raise NotImplementedError("a torch.export program runs in inference mode only")
        return self

    def forward(
        self,
        constituents: Tensor,
        constituent_offsets: Tensor,
        jet_offsets: Tensor,
        jet_features: Tensor,
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """:meth:`InferenceModel.forward` (positional or keyword arguments).

        Raises:
            TypeError: an input that is not a tensor, features that are not float32, offsets
                that are not integers.
            ValueError: features that are not ``[rows, width]`` of the metadata's feature
                lists, offsets that are not 1-D, ``jet_features`` without one row per jet of
                ``constituent_offsets``, or offsets that are not CSR offsets of their rows.
        """
        inputs = {"constituents": constituents, "constituent_offsets": constituent_offsets,
                  "jet_offsets": jet_offsets, "jet_features": jet_features}
        for name, value in inputs.items():
            if not isinstance(value, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
            shape = tuple(value.shape)
            if name in self._widths:
                width = self._widths[name]
                if value.dim() != 2 or value.shape[1] != width:
                    raise ValueError(f"{name} must be [rows, {width}] (the model's {name} "
                                     f"columns, metadata 'features'), got shape {shape}")
                if value.dtype != torch.float32:
                    raise TypeError(f"{name} must be float32 (the program's dtype), got "
                                    f"{value.dtype} (shape {shape})")
            else:
                if not is_integer_dtype(value.dtype):
                    raise TypeError(f"{name} must be integer CSR offsets, got {value.dtype} "
                                    f"(shape {shape})")
                if value.dim() != 1 or value.shape[0] < 1:
                    raise ValueError(f"{name} must be 1-D [count + 1] CSR offsets, got shape {shape}")
        _check_jet_rows(jet_features, constituent_offsets)
        return self.program(constituents, constituent_offsets.long(), jet_offsets.long(),
                            jet_features)


def model_metadata(model_or_path: Union[nn.Module, PathLike]) -> dict:
    """The metadata dict of a model from :func:`load_export` / :class:`InferenceModel`, or of an
    export file (read from its ``hepms.json`` entry without loading the weights; for an ONNX
    file from its ``metadata_props``)."""
    if isinstance(model_or_path, (nn.Module, torch.jit.ScriptModule)):
        text = getattr(model_or_path, "metadata_json", None)
        if not isinstance(text, str):
            raise ValueError(
                f"{type(model_or_path).__name__} has no hepms metadata: load it with "
                "hepms.export.load_export or wrap it in InferenceModel"
            )
        return json.loads(text)
    path = Path(model_or_path)
    if not zipfile.is_zipfile(path):
        return _onnx_metadata(path)
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.endswith(f"/{METADATA_FILE}") or name == METADATA_FILE:
                return json.loads(archive.read(name).decode("utf-8"))
    raise ValueError(f"{path} holds no {METADATA_FILE}: export it with hepms.export")


def _onnx_metadata(path: Path) -> dict:
    try:
        import onnx
    except ImportError:
        raise ValueError(f"{path} is not a PyTorch archive, and onnx (to read it as an ONNX "
                         "file) is not installed") from None
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError and friends
        raise ValueError(f"{path} is neither a PyTorch archive nor an ONNX file ({error})") from None
    for entry in proto.metadata_props:
        if entry.key == METADATA_FILE:
            return json.loads(entry.value)
    raise ValueError(f"{path} is an ONNX file without {METADATA_FILE} metadata_props: "
                     "export it with hepms.export.export_onnx")
