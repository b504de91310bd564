"""A coffea processor for the H->tautau study: apply the trained hepms model, select, histogram.

Reads the generator's NanoAOD-like files (:mod:`hepms.generate`) through coffea's
``NanoEventsFactory`` with :class:`hepms.generate.schema.HepmsNanoAODSchema` (coffea's
``PFNanoAODSchema`` restricted to the cross-references the files hold), scores every jet and event with
:class:`hepms.coffea.MultiStepTagger`, and fills ``hist`` histograms:

* ``tau_score``: the tau score of every jet, by process (truth ``label``: 1 = H, 0 = Z) and by
  truth tau label of the jet (``Jet_isTau``);
* ``event_score``: the H-vs-Z score of every event with at least one jet, by process;
* ``mvis``: the visible di-tau mass of the two highest tau-scored jets, for events where both
  pass ``tau_threshold``, by process and by whether the event passes ``event_threshold``
  (``selected``: the analysis selection);
* ``cutflow``: event counts (all, >= 1 jet, two tau candidates, selected).

The same :meth:`HTauTauProcessor.process` runs eagerly (coffea's virtual NanoEvents, plain
``hist.Hist``) and lazily (``mode="dask"`` NanoEvents, ``hist.dask.Hist``); :func:`run_eager` and
:func:`run_dask` drive the two over a list of files, the latter on a ``dask.distributed`` cluster.
Command line: ``analyses/htautau/run_processor.py``.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import awkward as ak
import hist
import numpy as np
from coffea import processor
from coffea.nanoevents import NanoEventsFactory

from hepms.coffea import MultiStepTagger
from hepms.generate.schema import HepmsNanoAODSchema

log = logging.getLogger(__name__)

__all__ = ["HTauTauProcessor", "run_eager", "run_dask", "load_events", "DATASET"]

DATASET = "htautau"
PathLike = Union[str, Path]


class HTauTauProcessor(processor.ProcessorABC):
    """Scores jets and events with a hepms model, selects H-like di-tau events, fills histograms.

    Args:
        model: a :class:`~hepms.coffea.MultiStepTagger` or what it accepts (an export file or a
            checkpoint path).
        tau_threshold: tau score both tau candidates must pass.
        event_threshold: event score (H-like) the selected events must pass.
        jets, constituents: NanoEvents collections to read.
        tagger_options: keyword arguments for the tagger when ``model`` is not one.
    """

    def __init__(
        self,
        model: Union[MultiStepTagger, PathLike],
        tau_threshold: float = 0.5,
        event_threshold: float = 0.5,
        jets: str = "Jet",
        constituents: str = "PFCands",
        tagger_options: Optional[dict] = None,
    ) -> None:
        if isinstance(model, MultiStepTagger):
            self.tagger = model
        else:
            self.tagger = MultiStepTagger(model, **(tagger_options or {}))
        for name, value in (("tau_threshold", tau_threshold), ("event_threshold", event_threshold)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be a score in [0, 1], got {value!r}")
        self.tau_threshold = float(tau_threshold)
        self.event_threshold = float(event_threshold)
        self.jets = jets
        self.constituents = constituents

    @staticmethod
    def histograms(lazy: bool) -> dict[str, Any]:
        """Empty histograms (``hist.dask.Hist`` when ``lazy``)."""
        make = _hist_class(lazy)
        process = dict(name="process", label="process (1 = H, 0 = Z)")
        return {
            "tau_score": make.new.IntCat([0, 1], **process)
            .Bool(name="is_tau", label="truth tau jet")
            .Reg(20, 0.0, 1.0, name="score", label="tau score")
            .Double(),
            "event_score": make.new.IntCat([0, 1], **process)
            .Reg(20, 0.0, 1.0, name="score", label="event score (H-like)")
            .Double(),
            "mvis": make.new.IntCat([0, 1], **process)
            .Bool(name="selected", label="event score > threshold")
            .Reg(30, 0.0, 300.0, name="mvis", label=r"$m_{vis}(\tau\tau)$ [GeV]")
            .Double(),
        }

    def process(self, events: Any) -> dict:
        lazy = type(events).__module__.startswith("dask_awkward")
        lib = _array_lib(lazy)
        dataset = (getattr(events, "metadata", None) or {}).get("dataset", DATASET)
        n_all = lib.num(events, axis=0)

        # Training dropped jet-less events: the event model has no meaningful score for them.
        events = events[lib.num(events[self.jets], axis=1) >= 1]
        scores = self.tagger(events[self.jets], events[self.constituents])
        events[self.jets, "tau_score"] = scores.tau_score
        events["event_score"] = scores.event_score
        jets = events[self.jets]

        hists = self.histograms(lazy)
        label = events.label
        jet_label = lib.flatten(lib.broadcast_arrays(label, jets.tau_score)[0], axis=1)
        hists["tau_score"].fill(
            process=jet_label,
            is_tau=lib.flatten(jets.isTau, axis=1),
            score=lib.flatten(jets.tau_score, axis=1),
        )
        hists["event_score"].fill(process=label, score=events.event_score)

        # The two highest tau-scored jets, both above threshold.
        order = lib.argsort(jets.tau_score, axis=1, ascending=False, stable=True)
        top = jets[order][:, :2]
        candidates = lib.sum(top.tau_score > self.tau_threshold, axis=1) == 2
        pairs = events[candidates]
        first, second = top[candidates][:, 0], top[candidates][:, 1]
        mvis = (first + second).mass  # coffea's Jet 4-vector behaviour
        selected = pairs.event_score > self.event_threshold
        hists["mvis"].fill(process=pairs.label, selected=selected, mvis=mvis)

        cutflow = {
            "all": n_all,
            "with_jets": lib.num(events, axis=0),
            "two_tau_candidates": lib.num(pairs, axis=0),
            "selected": lib.sum(selected, axis=0),
        }
        return {dataset: {"hists": hists, "cutflow": cutflow}}

    def postprocess(self, accumulator: dict) -> dict:
        return accumulator


def _hist_class(lazy: bool) -> Any:
    if lazy:
        from hist.dask import Hist as DaskHist  # needs dask-histogram

        return DaskHist
    return hist.Hist


def _array_lib(lazy: bool) -> Any:
    if lazy:
        import dask_awkward

        return dask_awkward
    return ak


# ----------------------------------------------------------------------------------------------
# Drivers
# ----------------------------------------------------------------------------------------------
def resolve_files(paths: Sequence[PathLike]) -> list[str]:
    """ROOT files from files and folders (a folder gives its ``*.root``, sorted)."""
    files: list[str] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(path.glob("*.root"))
            if not found:
                raise FileNotFoundError(f"no ROOT files in {path}")
            files.extend(str(p) for p in found)
        elif path.exists():
            files.append(str(path))
        else:
            raise FileNotFoundError(f"no such file: {path}")
    if not files:
        raise ValueError("no input files")
    return files


def load_events(
    files: Sequence[PathLike],
    mode: str = "virtual",
    steps_per_file: int = 1,
    dataset: str = DATASET,
    entry_start: Optional[int] = None,
    entry_stop: Optional[int] = None,
) -> Any:
    """NanoEvents over ``files``.

    ``mode="virtual"`` (or ``"eager"``): one file, entries ``entry_start:entry_stop``, read in
    this process. ``mode="dask"``: a lazy collection over all files with ``steps_per_file``
    partitions per file, whose entry ranges are written out so that dask knows every
    partition's length up front.
    """
    # A schema from the installed hepms package, not one defined here: the schema travels inside
    # the dask graph, and a class from this (not installed) module would make every worker import it.
    options: dict[str, Any] = dict(
        schemaclass=HepmsNanoAODSchema, mode=mode, metadata={"dataset": dataset}
    )
    if mode == "dask":
        spec: dict[str, Any] = _steps(files, steps_per_file)
    else:
        if len(files) != 1:
            raise ValueError(f"mode={mode!r} reads one file at a time, got {len(files)}")
        spec = {str(files[0]): "Events"}
        options.update(entry_start=entry_start, entry_stop=entry_stop)
    return NanoEventsFactory.from_root(spec, **options).events()


def _steps(files: Sequence[PathLike], steps_per_file: int) -> dict[str, Any]:
    """uproot's files specification with explicit ``steps`` (entry ranges) per file."""
    import uproot

    if steps_per_file < 1:
        raise ValueError(f"steps_per_file must be >= 1, got {steps_per_file}")
    spec = {}
    for file in files:
        with uproot.open(str(file)) as handle:
            entries = int(handle["Events"].num_entries)
        edges = np.linspace(0, entries, min(steps_per_file, max(entries, 1)) + 1).astype(int)
        spec[str(file)] = {
            "object_path": "Events",
            "steps": [[int(a), int(b)] for a, b in zip(edges[:-1], edges[1:])],
        }
    return spec


def run_eager(files: Sequence[PathLike], proc: HTauTauProcessor, steps_per_file: int = 1) -> dict:
    """Run ``proc`` in this process (virtual NanoEvents) over the same entry ranges that
    :func:`run_dask` makes its partitions of, and add the outputs."""
    outputs = []
    for file, spec in _steps(resolve_files(files), steps_per_file).items():
        for start, stop in spec["steps"]:
            events = load_events([file], mode="virtual", entry_start=start, entry_stop=stop)
            outputs.append(proc.process(events))
    return proc.postprocess(processor.accumulate(outputs))


def run_dask(
    files: Sequence[PathLike],
    proc: HTauTauProcessor,
    client: Any = None,
    steps_per_file: int = 1,
) -> dict:
    """Build the dask-awkward graph over ``files`` and compute it (on ``client`` if given, else
    the default scheduler). The graph is built without reading any event data."""
    import dask

    events = load_events(resolve_files(files), mode="dask", steps_per_file=steps_per_file)
    graph = proc.process(events)
    # A Client given explicitly wins over whatever scheduler is the default in this process.
    (out,) = dask.compute(graph, scheduler=client) if client is not None else dask.compute(graph)
    return proc.postprocess(out)


def summary(output: dict) -> dict:
    """Plain numbers from a processor output (cutflow and histogram totals), for printing."""
    result = {}
    for dataset, content in output.items():
        hists = content["hists"]
        result[dataset] = {
            "cutflow": {k: int(v) for k, v in content["cutflow"].items()},
            "entries": {k: float(np.sum(h.values())) for k, h in hists.items()},
        }
    return result


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start
