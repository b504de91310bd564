"""Segment pooling benchmark: hepms kernels vs PyTorch's own ways to pool variable-length sets.

Every method (and the memory floors) is timed *interleaved*: one repetition runs each case once,
and the order of the cases is rotated from one repetition to the next, so that no method always
runs after the same predecessor, in the same allocator and page-cache state. Timing a method in a
block of back-to-back calls hides effects that depend on what ran before (a large fresh allocation
after another one of the same size is not the same work as one after a different workload).
Reported per case: min / median / p90 / max over the repetitions.

Shapes (``--shapes``):
  - ``jets``: jets with gamma-Poisson constituent counts (mean ~30, capped at 200), at ``--features``;
  - ``few-huge``: 4 sets of 400k rows (fewer sets than threads), at ``--shape-features``;
  - ``many-tiny``: 1M sets of 0-3 rows, at ``--shape-features``.

Methods, for sum / mean / max (forward, and forward+backward with a random upstream gradient):
  - hepms.segment_* (validation off: the offsets are known to be good); for max,
    hepms.segment_amax ("hepms", the max pooling of hepms.nn) and hepms.segment_max, which also
    writes the int64 arg-max,
  - torch.segment_reduce (offsets),
  - index_add_ (sum, mean) / scatter_reduce amax (max) with per-row segment ids,
  - padding to the longest set + mask (dense reduction), when it fits in ``--pad-limit-gb``,
  - torch_scatter.segment_csr, when importable;
and for softmax (per-set softmax of every row, the attention weights of set pooling):
  - hepms.segment_softmax, scatter-based softmax (scatter_reduce amax + exp + index_add_, as
    torch_geometric.utils.softmax does), padded softmax with a mask; torch_geometric's own when
    importable.

Floors, measured in the same interleaved run:
  - read: ``values.view(-1).sum()``, one streaming read of the values (``values.sum(0)`` is not a
    floor: it reduces over rows and runs at a fraction of the bandwidth);
  - copy: ``buffer.copy_(values)`` into a preallocated buffer (STREAM copy: read + write, no
    page faults);
  - fresh copy: ``values.clone()`` (read + a fresh allocation of the values' size + write): the
    least that any forward+backward must do, since the gradient of the values is a new tensor of
    their size.
Ratios: forward / read floor, forward+backward / fresh-copy floor.

Prints tables, the machine (with its load average, read before and after) and a JSON document.

    python benchmarks/segment.py                           # CPU, every shape
    python benchmarks/segment.py --device cuda             # GPU
    python benchmarks/segment.py --jets 20000 --features 64 --shapes jets --json out.json
    python benchmarks/segment.py --dtype float16 --cpu-capability baseline   # the SSE2 kernels
    python benchmarks/segment.py --report results_segment_cpu.json            # README tables
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Callable, Optional

import torch

import hepms
from hepms._machine import describe as machine
from hepms.atomic import write_text_atomic

Case = tuple  # (reduce, method, mode, fn)


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------
def statistics(times_ms: list) -> dict:
    ordered = sorted(times_ms)
    n = len(ordered)

    def quantile(q: float) -> float:  # nearest rank
        return ordered[min(n - 1, max(0, int(round(q * (n - 1)))))]

    return {"min_ms": ordered[0], "median_ms": quantile(0.5), "p90_ms": quantile(0.9),
            "max_ms": ordered[-1], "times_ms": times_ms}


def run_interleaved(cases: list, device: torch.device, repeats: int) -> list:
    """Times every case once per repetition, rotating the order; returns the times per case (ms)."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for case in cases:  # warm-up (first-call costs, lazy initialisation)
        case[-1]()
    sync()
    times: list = [[] for _ in cases]
    for rep in range(repeats):
        order = list(range(len(cases)))
        shift = rep % len(cases)
        order = order[shift:] + order[:shift]
        if rep % 2:  # every other repetition backwards: each case gets different predecessors
            order.reverse()
        for i in order:
            sync()
            start = time.perf_counter()
            cases[i][-1]()
            sync()
            times[i].append(1e3 * (time.perf_counter() - start))
    return times


def forward_backward(pool: Callable[[torch.Tensor], torch.Tensor], values: torch.Tensor,
                     grad_out: torch.Tensor) -> Callable[[], None]:
    leaf = values.detach().requires_grad_()

    def run() -> None:
        leaf.grad = None
        out = pool(leaf)
        out.backward(grad_out)
        leaf.grad = None  # free the gradient inside the timed call, as a training step would

    return run


# ----------------------------------------------------------------------------------------------
# Workloads and competitors
# ----------------------------------------------------------------------------------------------
def constituent_counts(jets: int, mean: float, cap: int, seed: int) -> torch.Tensor:
    """Gamma-Poisson counts (over-dispersed like real constituent multiplicities)."""
    generator = torch.Generator().manual_seed(seed)
    shape = 4.0
    rates = torch.distributions.Gamma(shape, shape / mean)
    torch.manual_seed(seed)  # Gamma.sample draws from the global generator
    return torch.poisson(rates.sample((jets,)), generator=generator).long().clamp(max=cap)


def shape_counts(shape: str, args: argparse.Namespace) -> torch.Tensor:
    if shape == "jets":
        return constituent_counts(args.jets, args.mean_length, args.max_length, args.seed)
    if shape == "few-huge":
        return torch.full((4,), 400_000, dtype=torch.long)
    if shape == "many-tiny":
        generator = torch.Generator().manual_seed(args.seed)
        return torch.randint(0, 4, (1_000_000,), generator=generator)
    raise ValueError(f"unknown shape {shape!r}")


def _scatter_softmax(x: torch.Tensor, ids: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Softmax over the rows of each set with scatter ops (the torch_geometric recipe)."""
    index = ids[:, None].expand_as(x)
    maxima = x.new_full((num_segments, x.shape[1]), float("-inf")).scatter_reduce(
        0, index, x.detach(), "amax", include_self=True)
    e = (x - maxima.index_select(0, ids)).exp()
    total = x.new_zeros(num_segments, x.shape[1]).index_add_(0, ids, e)
    return e / total.index_select(0, ids)


def competitors(values: torch.Tensor, offsets: torch.Tensor, reduce: str, pad_limit_bytes: float):
    """name -> pooling function of the values, for one reduction."""
    num_segments = offsets.numel() - 1
    counts = offsets[1:] - offsets[:-1]
    ids = torch.repeat_interleave(torch.arange(num_segments, device=values.device), counts)
    width = values.shape[1]
    functions: dict = {}
    # max: hepms.segment_amax (the max pooling of hepms.nn), and segment_max, which also
    # returns the int64 arg-max
    hepms_fn = getattr(hepms, f"segment_{'amax' if reduce == 'max' else reduce}", None)
    if hepms_fn is not None:
        functions["hepms"] = lambda x: hepms_fn(x, offsets, validate=False)
    if reduce == "max":
        functions["hepms.segment_max (+arg-max)"] = lambda x: hepms.segment_max(x, offsets, validate=False)[0]

    if reduce == "softmax":
        functions["scatter softmax"] = lambda x: _scatter_softmax(x, ids, num_segments)
        try:
            from torch_geometric.utils import softmax as pyg_softmax  # type: ignore

            functions["torch_geometric softmax"] = lambda x: pyg_softmax(x, ptr=offsets)
        except ImportError:
            pass
    else:
        def segment_reduce(x: torch.Tensor) -> torch.Tensor:
            return torch.segment_reduce(x, reduce, offsets=offsets, unsafe=True)

        def index_based(x: torch.Tensor) -> torch.Tensor:
            if reduce == "max":
                index = ids[:, None].expand_as(x)
                out = x.new_zeros(num_segments, width)
                return out.scatter_reduce(0, index, x, "amax", include_self=False)
            out = x.new_zeros(num_segments, width).index_add_(0, ids, x)
            if reduce == "mean":
                out = out / counts.clamp_min(1)[:, None]
            return out

        functions["torch.segment_reduce"] = segment_reduce
        functions["scatter_reduce" if reduce == "max" else "index_add_"] = index_based

    max_len = int(counts.max()) if num_segments else 0
    pad_bytes = num_segments * max_len * width * values.element_size() * 3  # padded + mask + grad
    if pad_bytes <= pad_limit_bytes:
        positions = torch.arange(values.shape[0], device=values.device) - offsets[:-1].repeat_interleave(counts)
        mask = torch.arange(max_len, device=values.device)[None, :] < counts[:, None]

        def padded(x: torch.Tensor) -> torch.Tensor:
            dense = x.new_zeros(num_segments, max_len, width).index_put((ids, positions), x)
            if reduce == "softmax":
                dense = dense.masked_fill(~mask[:, :, None], float("-inf"))
                return dense.softmax(1)[ids, positions]
            if reduce == "max":
                dense = dense.masked_fill(~mask[:, :, None], float("-inf"))
                return dense.amax(1).masked_fill((counts == 0)[:, None], 0)
            total = dense.sum(1)
            return total / counts.clamp_min(1)[:, None] if reduce == "mean" else total

        functions["padded+mask"] = padded
    else:
        functions["padded+mask"] = None  # skipped: would not fit

    if reduce != "softmax":
        try:
            import torch_scatter  # type: ignore

            def scatter_csr(x: torch.Tensor) -> torch.Tensor:
                out = torch_scatter.segment_csr(x, offsets, reduce=reduce)
                return out[0] if isinstance(out, tuple) else out

            functions["torch_scatter.segment_csr"] = scatter_csr
        except ImportError:
            pass
    return functions


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16}


def load_average() -> Optional[list]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run_table(shape: str, width: int, counts: torch.Tensor, args: argparse.Namespace,
              device: torch.device, dtype: torch.dtype) -> dict:
    offsets = torch.zeros(counts.numel() + 1, dtype=torch.long)
    offsets[1:] = counts.cumsum(0)
    offsets = offsets.to(device)
    rows = int(offsets[-1])
    generator = torch.Generator().manual_seed(args.seed + width)
    values = torch.randn(rows, width, generator=generator).to(device=device, dtype=dtype)
    grad_pooled = torch.randn(counts.numel(), width, generator=generator).to(device=device, dtype=dtype)
    grad_rows = torch.randn(rows, width, generator=generator).to(device=device, dtype=dtype)
    buffer = torch.empty_like(values)
    flat = values.view(-1)
    cases: list = [
        ("floor", "read: values.view(-1).sum()", "floor", lambda: flat.sum()),
        ("floor", "copy: buffer.copy_(values)", "floor", lambda: buffer.copy_(values)),
        ("floor", "fresh copy: values.clone()", "floor", lambda: values.clone()),
    ]
    skipped = []
    for reduce in args.reductions:
        if reduce == "softmax" and width not in args.softmax_features:
            continue  # the scatter softmax alone takes seconds per call at F >= 64
        grad_out = grad_rows if reduce == "softmax" else grad_pooled
        for name, fn in competitors(values, offsets, reduce, args.pad_limit_gb * 2**30).items():
            if fn is None:
                skipped.append({"reduce": reduce, "method": name,
                                "skipped": f"padding needs more than {args.pad_limit_gb} GiB"})
                continue
            try:  # one trial call: methods without a kernel for this dtype are reported as skipped
                forward_backward(fn, values, grad_out)()
            except (RuntimeError, NotImplementedError) as error:
                skipped.append({"reduce": reduce, "method": name,
                                "skipped": f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"})
                continue
            cases.append((reduce, name, "fwd", lambda fn=fn: fn(values)))
            cases.append((reduce, name, "fwd+bwd", forward_backward(fn, values, grad_out)))
    times = run_interleaved(cases, device, args.repeats)
    table = {"shape": shape, "features": width, "rows": rows, "segments": counts.numel(),
             "mean_length": rows / max(1, counts.numel()), "max_length": int(counts.max()),
             "empty_sets": int((counts == 0).sum()),
             "bytes_values": values.numel() * values.element_size(), "results": [], "skipped": skipped}
    for (reduce, name, mode, _), t in zip(cases, times):
        table["results"].append({"reduce": reduce, "method": name, "mode": mode, **statistics(t)})
    floors = {e["method"].split(":")[0]: e["median_ms"] for e in table["results"] if e["reduce"] == "floor"}
    table["floors_median_ms"] = floors
    bandwidth = 2 * table["bytes_values"] / (floors["copy"] * 1e-3) / 1e9
    table["copy_bandwidth_gb_s"] = bandwidth  # read + write bytes
    table["read_bandwidth_gb_s"] = table["bytes_values"] / (floors["read"] * 1e-3) / 1e9
    if device.type == "cuda":
        del values, grad_pooled, grad_rows, buffer
        torch.cuda.empty_cache()
    return table


def argv_text(args: argparse.Namespace) -> list:
    """The options of this run as command-line words (recorded in the JSON)."""
    words = []
    for key, value in vars(args).items():
        if value is None or key in ("json", "report"):
            continue
        flag = "--" + key.replace("_", "-")
        words += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    return words


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    if args.cpu_capability:
        hepms.ops.set_cpu_capability(args.cpu_capability)
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as thp:
            thp_mode = thp.read().strip()
    except OSError:
        thp_mode = None
    result = {
        "machine": {**machine(device), "hepms_cpu_kernels": hepms.ops.cpu_capability(),
                    "load_average_start": load_average(), "transparent_hugepage": thp_mode,
                    "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE")},
        "settings": {"repeats": args.repeats, "dtype": args.dtype, "seed": args.seed,
                     "command": "python benchmarks/segment.py " + " ".join(argv_text(args)),
                     "timing": "interleaved, order rotated (and reversed every other repetition)"},
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "tables": [],
    }
    for shape in args.shapes:
        counts = shape_counts(shape, args)
        for width in (args.features if shape == "jets" else args.shape_features):
            table = run_table(shape, width, counts, args, device, dtype)
            result["tables"].append(table)
            summarize_table(table)
    result["machine"]["load_average_end"] = load_average()
    return result


def summarize_table(table: dict) -> None:
    floors = table["floors_median_ms"]
    print(f"\n{table['shape']}, F = {table['features']}: {table['segments']} sets, {table['rows']} rows "
          f"(mean {table['mean_length']:.1f}, max {table['max_length']}); floors (median): read "
          f"{floors['read']:.2f} ms ({table['read_bandwidth_gb_s']:.1f} GB/s), copy {floors['copy']:.2f} ms, "
          f"fresh copy {floors['fresh copy']:.2f} ms")
    print(f"  {'reduce':8s} {'method':28s} {'mode':8s} {'min':>8s} {'median':>8s} {'p90':>8s} "
          f"{'max':>8s} {'x floor':>8s}")
    for e in table["results"]:
        if e["reduce"] == "floor":
            continue
        floor = floors["read"] if e["mode"] == "fwd" else floors["fresh copy"]
        print(f"  {e['reduce']:8s} {e['method']:28s} {e['mode']:8s} {e['min_ms']:8.2f} "
              f"{e['median_ms']:8.2f} {e['p90_ms']:8.2f} {e['max_ms']:8.2f} {e['median_ms'] / floor:8.2f}")
    for e in table["skipped"]:
        print(f"  {e['reduce']:8s} {e['method']:28s} skipped: {e['skipped']}")
    check_targets(table)


def check_targets(table: dict) -> None:
    """PASS/MISS: hepms at or below the best other method at median and p90 (informational)."""
    by_key: dict = {}
    for e in table["results"]:
        if e["reduce"] != "floor":
            by_key.setdefault((e["reduce"], e["mode"]), {})[e["method"]] = e
    for (reduce, mode), methods in by_key.items():
        others = {k: v for k, v in methods.items() if not k.startswith("hepms")}
        if "hepms" not in methods or not others:
            continue
        ours = methods["hepms"]
        for stat in ("median_ms", "p90_ms"):
            best = min(others.values(), key=lambda e: e[stat])
            ok = ours[stat] <= best[stat]
            print(f"    [{'PASS' if ok else 'MISS'}] {reduce} {mode} {stat[:-3]}: hepms {ours[stat]:.2f} ms "
                  f"vs {best['method']} {best[stat]:.2f} ms ({best[stat] / ours[stat]:.2f}x)")


def markdown(result: dict) -> str:
    """The README tables of a result: per shape, F, reduction and mode, hepms and the best other
    method at the median and the 90th percentile, and hepms over the floor."""
    m = result["machine"]
    lines = [f"Machine: {m['platform']}, {m['cpu']!r}, {m['cpu_count']} cores, torch {m['torch']}, "
             f"{m['torch_threads']} threads, hepms CPU kernels {m['hepms_cpu_kernels']}; load average "
             f"(1/5/15 min) {m['load_average_start']} at the start, {m['load_average_end']} at the end; "
             f"THP {m['transparent_hugepage']}, THP_MEM_ALLOC_ENABLE={m['THP_MEM_ALLOC_ENABLE']}; "
             f"{result['settings']['repeats']} interleaved repetitions, started {result['started_utc']} UTC.",
             "",
             "| shape | F | floors: read / copy / fresh copy ms | reduce | mode | hepms median (x floor) | "
             "hepms p90 | best other median | best other p90 | hepms ahead by (median / p90) |",
             "| --- | ---: | --- | --- | --- | ---: | ---: | --- | --- | --- |"]
    for table in result["tables"]:
        floors = table["floors_median_ms"]
        floor_text = f"{floors['read']:.1f} / {floors['copy']:.1f} / {floors['fresh copy']:.1f}"
        by_key: dict = {}
        for e in table["results"]:
            if e["reduce"] != "floor":
                by_key.setdefault((e["reduce"], e["mode"]), {})[e["method"]] = e
        for (reduce, mode), methods in by_key.items():
            if "hepms" not in methods:
                continue
            ours = methods["hepms"]
            others = {k: v for k, v in methods.items() if not k.startswith("hepms")}
            floor = floors["read"] if mode == "fwd" else floors["fresh copy"]
            best_med = min(others.values(), key=lambda e: e["median_ms"])
            best_p90 = min(others.values(), key=lambda e: e["p90_ms"])
            lines.append(
                f"| {table['shape']} | {table['features']} | {floor_text} | {reduce} | {mode} | "
                f"{ours['median_ms']:.1f} ({ours['median_ms'] / floor:.2f}) | {ours['p90_ms']:.1f} | "
                f"{best_med['method']} {best_med['median_ms']:.1f} | {best_p90['method']} {best_p90['p90_ms']:.1f} | "
                f"{best_med['median_ms'] / ours['median_ms']:.2f}x / {best_p90['p90_ms'] / ours['p90_ms']:.2f}x |")
            floor_text = ""
    return "\n".join(lines)


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--shapes", nargs="+", default=["jets", "few-huge", "many-tiny"],
                        choices=["jets", "few-huge", "many-tiny"])
    parser.add_argument("--jets", type=int, default=50_000, help="number of sets (jets) of the 'jets' shape")
    parser.add_argument("--mean-length", type=float, default=30.0, help="mean constituents per jet")
    parser.add_argument("--max-length", type=int, default=200, help="cap on constituents per jet")
    parser.add_argument("--features", type=int, nargs="+", default=[16, 64, 128],
                        help="row widths of the 'jets' shape")
    parser.add_argument("--shape-features", type=int, nargs="+", default=[64],
                        help="row widths of the 'few-huge' and 'many-tiny' shapes")
    parser.add_argument("--reductions", nargs="+", default=["sum", "mean", "max"],
                        choices=["sum", "mean", "max", "softmax"])
    parser.add_argument("--softmax-features", type=int, nargs="+", default=[16],
                        help="row widths at which softmax is timed (when in --reductions)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repetitions")
    parser.add_argument("--pad-limit-gb", type=float, default=2.0,
                        help="skip the padded reference when it would need more memory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="element type of the values")
    parser.add_argument("--cpu-capability", choices=["auto", "baseline", "avx2"],
                        help="force a variant of hepms's CPU kernels (default: the best the CPU supports)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--report", metavar="JSON", help="print the README tables of a saved result and exit")
    args = parser.parse_args(argv)
    if args.report:
        with open(args.report) as saved:
            print(markdown(json.load(saved)))
        return
    result = run(args)
    print(f"\nload average (1, 5, 15 min): start {result['machine']['load_average_start']}, "
          f"end {result['machine']['load_average_end']}")
    if args.json:
        write_text_atomic(args.json, json.dumps(result, indent=1))
        print(f"JSON written to {args.json}")
    else:
        print("\nJSON:")
        print(json.dumps(result))


if __name__ == "__main__":
    main()
