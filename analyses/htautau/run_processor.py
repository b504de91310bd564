#!/usr/bin/env python
"""Run the H->tautau processor over generated files, on a dask LocalCluster or in one process.

Examples::

    # a model: the run directory of `hepms train` (or its model.pt, a scan trial, an export)
    python analyses/htautau/run_processor.py --model runs/my_run --files data/htautau --workers 2
    python analyses/htautau/run_processor.py --model model.pt --files a.root b.root --workers 0

``--workers 0`` runs file by file in this process (coffea virtual NanoEvents, no dask);
``--workers N`` builds one dask-awkward graph over all files and computes it on a
``dask.distributed.LocalCluster`` of N worker processes (``--threads-per-worker`` threads each;
torch is limited to that many threads per worker so the workers do not oversubscribe the cores).
Prints the cutflow and histogram totals (``--json`` for JSON) and writes the histograms with
``coffea.util.save`` when ``--output`` is given.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the processor module next to us

from processor import HTauTauProcessor, resolve_files, run_dask, run_eager, summary  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True,
                        help="hepms export (TorchScript .pt or torch.export .pt2) or checkpoint")
    parser.add_argument("--files", nargs="+", required=True,
                        help="ROOT files and/or folders of generated files")
    parser.add_argument("--workers", type=int, default=2,
                        help="dask worker processes (0: run in this process without dask)")
    parser.add_argument("--threads-per-worker", type=int, default=1)
    parser.add_argument("--steps-per-file", type=int, default=1,
                        help="partitions per file (dask), or chunks per file (--workers 0)")
    parser.add_argument("--tau-threshold", type=float, default=0.5)
    parser.add_argument("--event-threshold", type=float, default=0.5)
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    parser.add_argument("--output", type=Path, default=None,
                        help="write the histograms here (coffea.util.save)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.verbose:
        # Not by default: dask.distributed sets its own loggers to INFO (cluster start/stop
        # chatter), which a root handler would print.
        logging.basicConfig(level=logging.INFO)
    if args.workers < 0:
        raise SystemExit("--workers must be >= 0")
    files = resolve_files(args.files)
    threads = args.threads_per_worker if args.workers > 0 else None
    proc = HTauTauProcessor(
        args.model,
        tau_threshold=args.tau_threshold,
        event_threshold=args.event_threshold,
        tagger_options={"device": args.device, "torch_threads": threads},
    )
    start = time.perf_counter()
    if args.workers == 0:
        output = run_eager(files, proc, steps_per_file=args.steps_per_file)
    else:
        from dask.distributed import Client, LocalCluster

        with LocalCluster(
            n_workers=args.workers,
            threads_per_worker=args.threads_per_worker,
            processes=True,
            dashboard_address=None,
        ) as cluster, Client(cluster) as client:
            output = run_dask(files, proc, client=client, steps_per_file=args.steps_per_file)
    elapsed = time.perf_counter() - start
    result = {"files": files, "workers": args.workers, "seconds": round(elapsed, 3),
              **summary(output)}
    if args.output is not None:
        from coffea.util import save

        save(output, str(args.output))
        result["output"] = str(args.output)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        where = "in-process" if args.workers == 0 else f"{args.workers} workers"
        print(f"{len(files)} file(s), {where}: {elapsed:.2f} s")
        for dataset, content in summary(output).items():
            print(f"[{dataset}]")
            for step, count in content["cutflow"].items():
                print(f"  {step:>20}: {count}")
            for name, entries in content["entries"].items():
                print(f"  hist {name:>15}: {entries:.0f} entries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
