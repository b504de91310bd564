"""awkward -> Jagged conversion throughput (constituents per second) on uproot-read data.

Workload: a ROOT TTree written with uproot into a temporary directory, one entry per jet with a
jagged constituent collection ``c`` of F float32 fields (gamma-Poisson counts, mean ~30, capped at
200), read back with uproot (``how="zip"``: a list of records, as analyses use it). Timed, per
layout:

  - packed, all F fields             -> one copy: stacking F columns into values [N, F]
  - packed, one field                -> zero copy (a view of uproot's buffer)
  - after a jet mask  (ListArray)    -> the selected lists are scattered: one gather per field
  - after a constituent mask (IndexedArray) -> the same, through an index
and, for scale, measured in the same run:
  - floor: np.stack of the F flat columns into [N, F] -- the one copy that the packed
    conversion cannot avoid (allocation included);
  - ref: torch.stack of the same columns (its torch.empty output gets no transparent huge pages,
    so first-touch page faults make it slower than the floor on Linux with THP=madvise);
  - ref: ak.to_packed of the jet-masked array (awkward's own gather, records stay unstacked);
  - naive: ak.flatten + ak.to_numpy per field, np.stack, torch.from_numpy (right for packed
    layouts only: it gathers every field through ak.flatten on masked ones).

Prints a table and a JSON document with the machine it ran on.

    python benchmarks/jagged.py                         # 100k jets, 6 fields
    python benchmarks/jagged.py --jets 20000 --fields 8 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from typing import Callable

import awkward as ak
import numpy as np
import torch

import hepms
from hepms._machine import describe

FIELD_NAMES = ["pt", "eta", "phi", "energy", "charge", "d0", "dz", "puppi_weight"]


def machine() -> dict:
    """The shared machine description plus the versions of the data stack."""
    import uproot

    description = describe("cpu")
    description.update(
        python=platform.python_version(), awkward=ak.__version__, uproot=uproot.__version__,
        numpy=np.__version__,
    )
    return description


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time in seconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def make_constituents(jets: int, mean: float, fields: int, seed: int) -> ak.Array:
    """Jets of constituents with gamma-Poisson multiplicities, float32 fields."""
    rng = np.random.default_rng(seed)
    counts = np.minimum(rng.poisson(rng.gamma(4.0, mean / 4.0, jets)), 200)
    total = int(counts.sum())
    columns = {name: rng.standard_normal(total).astype(np.float32) for name in FIELD_NAMES[:fields]}
    columns["pt"] = rng.exponential(5.0, total).astype(np.float32)
    return ak.unflatten(ak.zip(columns), counts)


def write_and_read(constituents: ak.Array, directory: str) -> ak.Array:
    """Round trip through a ROOT TTree, so the layout is exactly what uproot hands users."""
    import uproot

    path = os.path.join(directory, "constituents.root")
    with uproot.recreate(path) as file:
        file.mktree("Jets", {"c": constituents.type.content})
        file["Jets"].extend({"c": constituents})
    with uproot.open(path) as file:
        return file["Jets"].arrays(filter_name="*c_*", how="zip").c


def naive(array: ak.Array, names: list[str]) -> torch.Tensor:
    return torch.from_numpy(np.stack([ak.to_numpy(ak.flatten(array[n])) for n in names], axis=1))


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    names = FIELD_NAMES[: args.fields]
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        generated = make_constituents(args.jets, args.mean, args.fields, args.seed)
        jets = write_and_read(generated, directory)
        io_seconds = time.perf_counter() - start
    jet_mask = np.random.default_rng(args.seed + 1).random(len(jets)) < 0.5
    cases = {
        "packed, all fields": (jets, names),
        "packed, one field (zero copy)": (jets, ["pt"]),
        "jet mask (ListArray)": (jets[jet_mask], names),
        "constituent mask (IndexedArray)": (jets[jets.pt > 1.0], names),
    }
    rows = []
    for name, (array, fields) in cases.items():
        n = int(ak.count(array.pt, axis=None))
        seconds = timed(lambda: hepms.to_jagged(array, fields=fields), args.repeat)
        rows.append(row(name, n, len(fields), seconds))
    numpy_columns = [ak.to_numpy(ak.flatten(jets[n])) for n in names]
    torch_columns = [torch.from_numpy(c) for c in numpy_columns]
    n = numpy_columns[0].shape[0]
    rows.append(row("floor: np.stack of the columns", n, len(names),
                    timed(lambda: np.stack(numpy_columns, axis=1), args.repeat)))
    rows.append(row("ref: torch.stack of the columns", n, len(names),
                    timed(lambda: torch.stack(torch_columns, dim=1), args.repeat)))
    jet_masked = cases["jet mask (ListArray)"][0]
    rows.append(row("ref: ak.to_packed (jet mask), all fields",
                    int(ak.count(jet_masked.pt, axis=None)), len(names),
                    timed(lambda: ak.to_packed(jet_masked), args.repeat)))
    rows.append(row("naive: flatten + np.stack + from_numpy", n, len(names),
                    timed(lambda: naive(jets, names), args.repeat)))
    packed_view = hepms.to_jagged(jets, fields=["pt"])
    return {
        "benchmark": "awkward -> hepms.Jagged conversion",
        "machine": machine(),
        "workload": {
            "jets": args.jets,
            "constituents": n,
            "mean_constituents": round(n / args.jets, 2),
            "fields": names,
            "dtype": "float32",
            "write_read_seconds": round(io_seconds, 2),
            "repeats": args.repeat,
            "single_field_shares_uproot_buffer": packed_view.values.data_ptr()
            == jets.layout.content.content("pt").data.ctypes.data,
        },
        "results": rows,
    }


def row(name: str, constituents: int, fields: int, seconds: float) -> dict:
    return {
        "case": name,
        "constituents": constituents,
        "fields": fields,
        "ms": round(1e3 * seconds, 3),
        "mconst_per_s": round(constituents / seconds / 1e6, 1),
        "gb_per_s_out": round(constituents * fields * 4 / seconds / 1e9, 2),
    }


def print_table(report: dict) -> None:
    print(f"{'case':<42} {'constituents':>12} {'F':>2} {'ms':>9} {'M const/s':>10} {'GB/s out':>9}")
    for r in report["results"]:
        print(f"{r['case']:<42} {r['constituents']:>12} {r['fields']:>2} {r['ms']:>9.3f} "
              f"{r['mconst_per_s']:>10.1f} {r['gb_per_s_out']:>9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jets", type=int, default=100_000)
    parser.add_argument("--mean", type=float, default=30.0, help="mean constituents per jet")
    parser.add_argument("--fields", type=int, default=6, choices=range(1, len(FIELD_NAMES) + 1))
    parser.add_argument("--repeat", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: stable numbers on a shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the JSON report to this path")
    args = parser.parse_args()
    report = run(args)
    print_table(report)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as out:
            out.write(text + "\n")


if __name__ == "__main__":
    main()
