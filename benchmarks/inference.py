"""Throughput of the coffea/dask wrapper (:mod:`hepms.coffea`): events per second.

Workload: generated H->tautau / Z->tautau files (:mod:`hepms.generate`, <mu> = 50 with
``nondiffractive`` pileup, ``--sets`` x 2 files of ``--events`` events each), cached in ``--data``.
The model is a multi-step model (additional NN, k = 4, the study's layer sizes) with its
standardisation fitted on the first file, exported to TorchScript; it is untrained, since the
weights do not change the cost (``--model`` takes a real export instead).

Timed (median of ``--repeats`` runs after a warm-up run, which absorbs the imports, the model
load and TorchScript's profiling runs):

* ``eager, in memory``: ``MultiStepTagger(jets, constituents)`` on arrays already read, per file:
  preprocessing (awkward -> features -> Jagged), the model, the awkward outputs; with torch
  limited to 1 thread and with ``--eager-threads`` threads;
* ``eager, from ROOT``: coffea virtual NanoEvents per file (reading the branches) + the tagger +
  a reduction, in this process;
* ``dask, N workers``: one dask-awkward graph over all files (``--steps-per-file`` partitions
  each): NanoEvents -> tagger -> sums of the scores, built (``graph_build_s``: file metadata,
  no event data) and computed on a ``dask.distributed`` LocalCluster of N single-threaded
  worker processes (torch limited to 1 thread per worker); the cluster's start is not timed.

Prints a table and a JSON document with the machine (``hepms._machine.describe()``) and the load
average, which matters on a shared machine.

    python benchmarks/inference.py                                # 2 x 2 files x 500 events
    python benchmarks/inference.py --sets 1 --events 200 --repeats 1 --workers 1 2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import awkward as ak
import numpy as np
import torch

from hepms._machine import describe

warnings.filterwarnings("ignore", message="You have set steps_per_file")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path,
                        default=Path(tempfile.gettempdir()) / "hepms-bench-inference",
                        help="folder of generated files (made on first use)")
    parser.add_argument("--sets", type=int, default=2, help="generator runs (2 files each)")
    parser.add_argument("--events", type=int, default=500, help="events per file")
    parser.add_argument("--mu", type=float, default=50.0)
    parser.add_argument("--model", type=Path, default=None, help="a hepms export to use")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps-per-file", type=int, default=2)
    parser.add_argument("--eager-threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    return parser.parse_args()


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------
def sample_files(args: argparse.Namespace) -> list[Path]:
    from hepms.generate.pipeline import generate

    files = []
    for seed in range(1, args.sets + 1):
        folder = args.data / f"mu{args.mu:g}_n{args.events}_seed{seed}"
        if not (folder / "manifest.json").exists():
            print(f"generating {folder} ...", flush=True)
            generate(folder, events_per_process=args.events, mu=args.mu, seed=seed, workers=1,
                     block_size=max(1, args.events // 2), pileup_pool=1000,
                     pileup_process="nondiffractive", progress=False)
        files += [folder / "Htautau.root", folder / "Ztautau.root"]
    return files


def make_model(files: list[Path], folder: Path) -> Path:
    from hepms.data import Standardizer, build_dataset
    from hepms.features import FeatureSpec
    from hepms.generate.io import read_events
    from hepms.model_file import save_model
    from hepms.nn import MultiStep

    spec = FeatureSpec()
    data = build_dataset(read_events(files[0]), spec)
    model = MultiStep(data.constituents.num_features, data.jet_features.shape[1],
                      connection="additional", k=4, seed=1)
    return save_model(folder / "model.pt", model, spec, Standardizer.fit(data),
                      producer="benchmarks/inference.py")


def nano(files: list[Path], mode: str, steps_per_file: int = 1) -> Any:
    from coffea.nanoevents import NanoEventsFactory

    from hepms.generate.schema import HepmsNanoAODSchema

    spec = {str(f): "Events" for f in files}
    options = {"steps_per_file": steps_per_file} if mode == "dask" else {}
    return NanoEventsFactory.from_root(spec, schemaclass=HepmsNanoAODSchema, mode=mode,
                                       **options).events()


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------
def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time in seconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def eager_in_memory(files: list[Path], model: Path, threads: int, repeats: int) -> dict:
    from hepms.coffea import MultiStepTagger
    from hepms.features import feature_tensors

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        tagger = MultiStepTagger(model, device="cpu")
        total = prepare = forward = 0.0
        events = 0
        for file in files:
            arrays = nano([file], "eager")
            jets, parts = arrays.Jet, arrays.PFCands
            total += timed(lambda: tagger(jets, parts), repeats)
            # Split of one call: preprocessing (the features of every jet) vs the model's
            # forward on them (every jet feeding the event model: the tagger first moves jets
            # beyond max_jets aside, a gather that is part of neither number).
            prepare += timed(lambda: feature_tensors(jets, parts, tagger.spec, select_jets=False),
                             repeats)
            inputs = feature_tensors(jets, parts, tagger.spec, select_jets=False)
            args = (inputs.constituents.values, inputs.constituent_offsets, inputs.jet_offsets,
                    inputs.jet_features)
            with torch.inference_mode():
                forward += timed(lambda: tagger.model(*args), repeats)
            events += len(arrays)
    finally:
        torch.set_num_threads(before)
    return {"events": events, "seconds": total, "events_per_s": events / total,
            "prepare_s": prepare, "forward_s": forward}


def eager_from_root(files: list[Path], model: Path, threads: int, repeats: int) -> dict:
    from hepms.coffea import MultiStepTagger

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    tagger = MultiStepTagger(model, device="cpu")
    counts = {}

    def run() -> None:
        for file in files:
            events = nano([file], "virtual")
            out = tagger(events.Jet, events.PFCands)
            counts[file] = len(events)
            float(ak.sum(out.event_score)), float(ak.sum(out.tau_score, axis=None))

    try:
        seconds = timed(run, repeats)
    finally:
        torch.set_num_threads(before)
    events = sum(counts.values())
    return {"events": events, "seconds": seconds, "events_per_s": events / seconds}


def dask_cluster(files: list[Path], model: Path, workers: int, steps: int, repeats: int) -> dict:
    import dask
    import dask_awkward as dak
    from dask.distributed import Client, LocalCluster

    from hepms.coffea import MultiStepTagger

    tagger = MultiStepTagger(model, device="cpu", torch_threads=1)
    start = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        startup = time.perf_counter() - start

        result: list = []
        build_times: list = []

        def run() -> None:
            # Graph building is timed with the rest: it reads the files' metadata (no event
            # data), and an analysis pays it on every run.
            start = time.perf_counter()
            events = nano(files, "dask", steps)
            out = tagger(events.Jet, events.PFCands)
            graph = (dak.num(events, axis=0), dak.sum(out.event_score),
                     dak.sum(dak.flatten(out.tau_score)))
            build_times.append(time.perf_counter() - start)
            result[:] = dask.compute(*graph, scheduler=client)

        seconds = timed(run, repeats)
        partitions = nano(files, "dask", steps).npartitions
    events = int(result[0])
    return {"events": events, "seconds": seconds, "events_per_s": events / seconds,
            "graph_build_s": statistics.median(build_times[1:] or build_times),
            "partitions": partitions, "cluster_start_s": startup}


# ----------------------------------------------------------------------------------------------
def main() -> None:
    args = parse_args()
    files = sample_files(args)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or make_model(files, Path(tmp))
        sizes = [nano([f], "eager") for f in files]
        n_events = sum(len(e) for e in sizes)
        n_jets = int(sum(ak.sum(ak.num(e.Jet)) for e in sizes))
        n_parts = int(sum(ak.sum(ak.num(e.PFCands)) for e in sizes))
        del sizes
        results: dict[str, dict] = {}
        results["eager, in memory, 1 thread"] = eager_in_memory(files, model, 1, args.repeats)
        results[f"eager, in memory, {args.eager_threads} threads"] = eager_in_memory(
            files, model, args.eager_threads, args.repeats)
        results["eager, from ROOT, 1 thread"] = eager_from_root(files, model, 1, args.repeats)
        for workers in args.workers:
            results[f"dask, {workers} worker(s)"] = dask_cluster(
                files, model, workers, args.steps_per_file, args.repeats)
    machine = describe("cpu")
    machine.update(python=platform.python_version(), awkward=ak.__version__,
                   numpy=np.__version__, load_average=[round(x, 2) for x in os.getloadavg()])
    for name in ("coffea", "dask", "distributed", "dask_awkward", "uproot"):
        machine[name] = __import__(name).__version__
    report = {
        "benchmark": "hepms.coffea inference",
        "machine": machine,
        "workload": {"files": [str(f) for f in files], "events": n_events, "jets": n_jets,
                     "constituents": n_parts, "mu": args.mu, "repeats": args.repeats,
                     "steps_per_file": args.steps_per_file},
        "results": results,
    }
    print(f"{len(files)} files, {n_events} events, {n_jets} jets, {n_parts} constituents "
          f"(<mu> = {args.mu:g}); median of {args.repeats} after a warm-up")
    print(f"{'case':<34} {'events':>7} {'seconds':>8} {'events/s':>9}  of which")
    for name, row in results.items():
        parts = []
        if "prepare_s" in row:
            parts.append(f"preprocessing {row['prepare_s']:.3f} s, "
                         f"forward {row['forward_s']:.3f} s")
        if "graph_build_s" in row:
            parts.append(f"graph build {row['graph_build_s']:.3f} s")
        print(f"{name:<34} {row['events']:>7} {row['seconds']:>8.3f} {row['events_per_s']:>9.0f}"
              f"  {'; '.join(parts)}")
    for workers in args.workers[1:]:
        base = results[f"dask, {args.workers[0]} worker(s)"]["events_per_s"]
        ratio = results[f"dask, {workers} worker(s)"]["events_per_s"] / base
        print(f"scaling {args.workers[0]} -> {workers} workers: x{ratio:.2f}")
        report[f"scaling_{args.workers[0]}_to_{workers}"] = round(ratio, 3)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
