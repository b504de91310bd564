"""ROOT output (NanoAOD-like flat TTree written with uproot) and the reader ``read_events``.

The schema is documented in ``hepms/generate/README.md`` and mirrored by :data:`SCHEMA`.
Files are written under a hidden temporary name and renamed only when complete, so an
interrupted run never leaves a file that looks finished.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Union

import awkward as ak
import numpy as np

from hepms.atomic import write_text_atomic

logger = logging.getLogger(__name__)

TREE_NAME = "Events"
MANIFEST_NAME = "manifest.json"

#: Branch types.  Collections become ``n<Name>`` (int32 counts) plus ``<Name>_<field>`` branches;
#: names with an underscore at the top level (``Pileup_nPU``) are NanoAOD "flat tables", one value
#: per event.  The layout follows CMS NanoAOD / PFNano, so that coffea's ``PFNanoAODSchema`` (and
#: :class:`hepms.generate.schema.HepmsNanoAODSchema`, without warnings) reads the files natively.
SCHEMA: dict[str, Any] = {
    "run": np.uint32,
    "luminosityBlock": np.uint32,
    "event": np.uint64,
    "label": np.int32,
    "split": np.int32,
    "rho": np.float32,
    "Pileup_nPU": np.int32,
    "Pileup_pool": np.int32,
    "PileupEvent": {
        "poolIdx": np.int32,
    },
    "Jet": {
        "pt": np.float32,
        "eta": np.float32,
        "phi": np.float32,
        "mass": np.float32,
        "rawPt": np.float32,
        "nConstituents": np.int32,
        "isTau": np.bool_,
        "genVisTauIdx": np.int32,
        "tauDecayMode": np.int32,
        "visTauPt": np.float32,
        "visTauEta": np.float32,
        "visTauPhi": np.float32,
        "visTauMass": np.float32,
        "genJetIdx": np.int32,
    },
    "PFCands": {
        "pt": np.float32,
        "eta": np.float32,
        "phi": np.float32,
        "mass": np.float32,
        "charge": np.int32,
        "pdgId": np.int32,
        "jetIdx": np.int32,
        "isPileup": np.bool_,
    },
    "JetPFCands": {
        "jetIdx": np.int32,
        "pFCandsIdx": np.int32,
    },
    "GenVisTau": {
        "pt": np.float32,
        "eta": np.float32,
        "phi": np.float32,
        "mass": np.float32,
        "charge": np.int32,
        "status": np.int32,
        "nCharged": np.int32,
        "nPi0": np.int32,
        "genPartIdxMother": np.int32,
        "jetIdx": np.int32,
    },
    "GenPart": {
        "pt": np.float32,
        "eta": np.float32,
        "phi": np.float32,
        "mass": np.float32,
        "pdgId": np.int32,
        "status": np.int32,
        "statusFlags": np.int32,
        "genPartIdxMother": np.int32,
    },
    "GenJet": {
        "pt": np.float32,
        "eta": np.float32,
        "phi": np.float32,
        "mass": np.float32,
    },
}

#: Marker written into an output folder while a new sample is being swapped in: a folder holding it
#: is a mixed sample and is refused by the readers.
INCOMPLETE_MARKER = ".hepms-generate-incomplete"

PathLike = Union[str, "os.PathLike[str]"]


def to_branches(columns: Mapping[str, Any]) -> dict[str, Any]:
    """Cast a chunk of events to :data:`SCHEMA` (collections as zipped ``[events][objects]`` records)."""
    out: dict[str, Any] = {}
    for name, spec in SCHEMA.items():
        if isinstance(spec, dict):
            coll = columns[name]
            missing = set(spec) - set(ak.fields(coll))
            if missing:
                raise KeyError(f"collection {name} lacks fields {sorted(missing)}")
            out[name] = ak.zip(
                {field: ak.values_astype(coll[field], dtype) for field, dtype in spec.items()},
                depth_limit=2,
            )
        else:
            out[name] = np.asarray(columns[name], dtype=spec)
    return out


class EventsWriter:
    """Append chunks of events to one ROOT file; the file appears under its name only on commit.

    Use as a context manager; leaving the block by an exception removes the partial file::

        with EventsWriter(path) as writer:
            writer.extend(chunk)
            writer.commit()
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        # hidden and without the .root suffix: a leftover from a killed run does not look like data
        # (not hepms.atomic.save_atomically: the file is written chunk by chunk across calls)
        self.partial_path = self.path.with_name(f".{self.path.name}.partial-{os.getpid()}")
        self.entries = 0
        self._file: Any = None
        self._tree: Any = None

    def __enter__(self) -> "EventsWriter":
        self.open()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None or self._file is not None:
            self.abort()

    def open(self) -> None:
        import uproot

        self._file = uproot.recreate(self.partial_path)

    def extend(self, columns: Mapping[str, Any]) -> None:
        """Append events (a mapping as produced by the pipeline; cast with :func:`to_branches`)."""
        if self._file is None:
            raise RuntimeError("EventsWriter is not open")
        branches = to_branches(columns)
        if self._tree is None:
            types = {
                name: (value.type.content if isinstance(value, ak.Array) else value.dtype)
                for name, value in branches.items()
            }
            # mktree (not file[name] = ...) so that the result is a TTree, not an RNTuple
            self._tree = self._file.mktree(TREE_NAME, types, title="hepms generated events")
        n = len(branches["event"])
        if n:
            self._tree.extend(branches)
            self.entries += n

    def close(self) -> None:
        """Close the partial file (flushes ROOT metadata)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def commit(self) -> Path:
        """Close and rename the partial file to its final name (atomic on POSIX)."""
        self.close()
        if not self.partial_path.exists():
            raise RuntimeError(f"nothing to commit for {self.path}")
        os.replace(self.partial_path, self.path)
        logger.info("wrote %s (%d events)", self.path, self.entries)
        return self.path

    def abort(self) -> None:
        """Close and delete the partial file, if any."""
        try:
            self.close()
        except Exception:  # closing a broken file must not hide the original error
            logger.debug("closing partial file %s failed", self.partial_path, exc_info=True)
        self._file = None
        if self.partial_path.exists():
            self.partial_path.unlink()


def write_json_atomic(path: PathLike, data: Mapping[str, Any]) -> Path:
    """Write JSON (indented, a final newline) atomically (:func:`hepms.atomic.write_text_atomic`)."""
    path = Path(path)
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def _resolve_paths(path: PathLike | Sequence[PathLike]) -> list[Path]:
    if isinstance(path, (str, os.PathLike)):
        p = Path(path)
        if p.is_dir():
            if (p / INCOMPLETE_MARKER).exists():
                raise RuntimeError(
                    f"{p} holds an incomplete sample (a generation was interrupted while replacing it); "
                    "generate it again"
                )
            manifest = p / MANIFEST_NAME
            if manifest.exists():
                files = json.loads(manifest.read_text())["files"]
                return [p / entry["path"] for entry in files]
            found = sorted(p.glob("*.root"))
            if not found:
                raise FileNotFoundError(f"no ROOT files in {p}")
            return found
        if not p.exists():
            raise FileNotFoundError(f"no such file: {p}")
        return [p]
    paths = [Path(x) for x in path]
    if not paths:
        raise ValueError("path: empty list of files")
    return [q for p in paths for q in _resolve_paths(p)]


def _vector_behavior() -> Mapping[str, Any] | None:
    try:
        import vector

        return vector.backends.awkward.behavior
    except Exception:  # vector is optional for reading
        return None


def read_events(
    path: PathLike | Sequence[PathLike],
    max_jets: int | None = 8,
    max_constituents: int | None = 50,
    entry_start: int | None = None,
    entry_stop: int | None = None,
) -> ak.Array:
    """Read generated events as ``Events[jets[constituents]]``.

    Args:
        path: a ROOT file, a list of files, or an output folder of :func:`hepms.generate.generate`
            (its ``manifest.json`` lists the files).
        max_jets: keep the leading ``max_jets`` jets by pT (None: all).
        max_constituents: keep the leading ``max_constituents`` constituents of each jet by pT
            (None: all).  ``jets.nConstituents`` still holds the full count.
        entry_start, entry_stop: entry range read from each file.

    Returns:
        An awkward array of event records with fields ``jets`` (``Momentum4D`` records with ``pt,
        eta, phi, mass``, the truth fields ``isTau, tauIdx, tauDecayMode, visTau*``,
        ``nConstituents`` and ``constituents``: ``Momentum4D`` records with ``pt, eta, phi, mass,
        charge, pdgId, isPileup``), ``taus`` (hard-process taus: full ``pt, eta, phi, mass``, visible
        ``visPt, visEta, visPhi, visMass``, ``charge, nCharged, nPi0, decayMode, jetIdx``),
        ``genJets`` (generator jets), ``label`` (1 = H, 0 = Z), ``split`` (0 train, 1 validation,
        2 test, decided at generation), ``event``, ``run``, ``luminosityBlock``, ``rho``, ``nPU``,
        ``pileupPool`` (the split's pileup pool) and ``pileupIdx`` (indices of the overlaid pool
        events).

    Example:
        >>> events = read_events("data/htautau")                        # doctest: +SKIP
        >>> events.jets.constituents.pt                                 # doctest: +SKIP
        <Array [[[45.1, 3.2, ...], [...]], ...] type='N * var * var * float32'>
    """
    for name, value in (("max_jets", max_jets), ("max_constituents", max_constituents)):
        if value is not None and (isinstance(value, bool) or int(value) != value or value < 0):
            raise ValueError(f"{name} must be a non-negative integer or None, got {value!r}")
    import uproot

    behavior = _vector_behavior()
    parts = []
    for file in _resolve_paths(path):
        try:
            with uproot.open(file) as root_file:
                tree = root_file[TREE_NAME]  # a missing tree: uproot's KeyInFileError names it
                arrays = tree.arrays(entry_start=entry_start, entry_stop=entry_stop, library="ak")
        except (OSError, ValueError, uproot.deserialization.DeserializationError) as error:
            # uproot says "expected Chunk of length 114 ..." or "first four bytes are ...".
            raise UnreadableFileError(
                f"file {file} is not a readable ROOT file (truncated or not ROOT?): {error}"
            ) from error
        parts.append(_build_in_file(file, arrays, max_jets, max_constituents, behavior))
    return parts[0] if len(parts) == 1 else ak.concatenate(parts)


class UnreadableFileError(OSError):
    """An input file that cannot be read (truncated, corrupt, not of the expected kind); the
    message names it and says what to do."""


class MissingBranchError(KeyError):
    """A branch the reader asked for is not in the file; the message names the file and branch."""

    def __init__(self, message: str, branch: str | None = None) -> None:
        super().__init__(message)
        self.branch = branch

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


class _Branches(dict):
    """The fields of one collection (``Jet_pt`` -> ``"pt"``); a missing one names its branch."""

    def __init__(self, prefix: str, fields: Mapping[str, Any]) -> None:
        super().__init__(fields)
        self.prefix = prefix

    def __missing__(self, key: str) -> Any:
        raise MissingBranchError(f"branch {self.prefix}{key!r} not found", f"{self.prefix}{key}")


# Collection prefixes requested while building one file's events (for the missing-branch message).
_requested: ContextVar[list[str] | None] = ContextVar("hepms_requested_collections", default=None)


def _build_in_file(file: Path, arrays: ak.Array, *args: Any) -> ak.Array:
    """:func:`_build_events` for one file, turning a missing branch into an error naming the file
    and the branch the reader asked for (whatever the names of the schema are)."""
    requested: list[str] = []
    token = _requested.set(requested)
    try:
        return _build_events(arrays, *args)
    except MissingBranchError as error:
        branch = error.branch
    except ak.errors.FieldNotFoundError as error:  # a top-level branch such as a count
        branch = _quoted_name(str(error))
    except KeyError as error:  # a field of a collection, looked up in a copy of _Branches
        key = error.args[0] if error.args else None
        if not isinstance(key, str):
            raise
        # The collection read last is the one whose field was asked for.
        branch = (requested[-1] if requested else "") + key
    finally:
        _requested.reset(token)
    near = [f for f in arrays.fields if branch and f.split("_")[0] == str(branch).split("_")[0]]
    raise MissingBranchError(
        f"file {file}: branch {branch!r} not found in tree {TREE_NAME!r}; the reader needs it. "
        + (f"Branches of that collection: {near}" if near else f"The tree has branches {list(arrays.fields)}"),
        branch,
    ) from None


def _quoted_name(message: str) -> str | None:
    start = message.find("'")
    end = message.find("'", start + 1)
    return message[start + 1:end] if 0 <= start < end else None


def _collection(arrays: ak.Array, name: str) -> dict[str, ak.Array]:
    prefix = name + "_"
    requested = _requested.get()
    if requested is not None:
        requested.append(prefix)
    return _Branches(prefix, {f[len(prefix):]: arrays[f] for f in arrays.fields if f.startswith(prefix)})


def _build_events(
    arrays: ak.Array, max_jets: int | None, max_constituents: int | None, behavior: Mapping[str, Any] | None
) -> ak.Array:
    with_name = "Momentum4D" if behavior is not None else None
    n_jet = np.asarray(arrays["nJet"], dtype=np.int64)

    # constituents: flat per event -> [events][jets][constituents] via the jet-index branch
    from hepms.features import group_by_jet  # here: torch is not needed to write samples

    pf = _collection(arrays, "PFCands")
    # the 4-vector and the jet index are required (a missing one raises, naming its branch)
    const_fields = ["pt", "eta", "phi", "mass", *(k for k in ("charge", "pdgId", "isPileup") if k in pf)]
    pf_records = ak.zip({k: pf[k] for k in (*const_fields, "jetIdx")}, depth_limit=2)
    constituents = group_by_jet(pf_records, n_jet, "jetIdx", fields=const_fields, sort_by="pt",
                                with_name=with_name, behavior=behavior)

    jet_cols = {k: v for k, v in _collection(arrays, "Jet").items()}
    jet_cols["constituents"] = constituents
    jets = ak.zip(jet_cols, depth_limit=2, with_name=with_name, behavior=behavior)
    if max_jets is not None:
        jets = jets[:, : int(max_jets)]
    if max_constituents is not None:
        jets = ak.with_field(jets, jets["constituents"][:, :, : int(max_constituents)], "constituents")

    # taus: visible part from GenVisTau, full momentum from its parent in GenPart
    vis = _collection(arrays, "GenVisTau")
    gen = _collection(arrays, "GenPart")
    parent = ak.values_astype(vis["genPartIdxMother"], np.int64)
    tau_cols = {name: gen[name][parent] for name in ("pt", "eta", "phi", "mass")}
    tau_cols.update({"visPt": vis["pt"], "visEta": vis["eta"], "visPhi": vis["phi"], "visMass": vis["mass"]})
    tau_cols.update({name: vis[name] for name in ("charge", "nCharged", "nPi0", "jetIdx")})
    tau_cols["decayMode"] = vis["status"]  # NanoAOD: GenVisTau_status is the decay mode
    taus = ak.zip(tau_cols, depth_limit=2, with_name=with_name, behavior=behavior)
    gen_jets = ak.zip(_collection(arrays, "GenJet"), depth_limit=2, with_name=with_name, behavior=behavior)
    fields: dict[str, Any] = {"jets": jets, "taus": taus, "genJets": gen_jets}
    for name in ("label", "split", "event", "run", "luminosityBlock", "rho"):
        fields[name] = arrays[name]
    fields["nPU"] = arrays["Pileup_nPU"]
    fields["pileupPool"] = arrays["Pileup_pool"]
    fields["pileupIdx"] = arrays["PileupEvent_poolIdx"]
    return ak.zip(fields, depth_limit=1, behavior=behavior)
