"""Segment pooling benchmark: hepms kernels vs PyTorch's own ways to pool variable-length sets.

Workload: jets with constituent counts drawn like real ones (gamma-Poisson, mean ~30, capped at
200), F features, float32 (or --dtype). For each F it times forward and forward+backward of sum / mean / max for
  - hepms.segment_* (validation off: the offsets are known to be good),
  - torch.segment_reduce (offsets),
  - index_add_ (sum, mean) / scatter_reduce amax (max) with per-row segment ids,
  - padding to the longest set + mask (dense reduction),
  - torch_scatter.segment_csr, when importable,
and the memory floors measured in the same run: one read of values (values.sum(0)) for forward,
plus one allocation + copy of the same size (values.clone()) for backward.

Prints a table and a JSON document with the machine it ran on.

    python benchmarks/segment.py                    # CPU, F = 16, 64, 128, 100k jets
    python benchmarks/segment.py --device cuda      # GPU (also reports memory bandwidth)
    python benchmarks/segment.py --jets 20000 --features 64 --json out.json
    python benchmarks/segment.py --dtype float16 --cpu-capability baseline   # the SSE2 kernels
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Callable, Optional

import torch

import hepms
from hepms._machine import describe as machine


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------
def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time in ms (CUDA: synchronised around each call)."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[len(times) // 2]


def forward_backward(pool: Callable[[torch.Tensor], torch.Tensor], values: torch.Tensor,
                     grad_out: torch.Tensor) -> Callable[[], None]:
    leaf = values.detach().requires_grad_()

    def run() -> None:
        leaf.grad = None
        out = pool(leaf)
        out.backward(grad_out)

    return run


# ----------------------------------------------------------------------------------------------
# Workload and competitors
# ----------------------------------------------------------------------------------------------
def constituent_counts(jets: int, mean: float, cap: int, seed: int) -> torch.Tensor:
    """Gamma-Poisson counts (over-dispersed like real constituent multiplicities)."""
    generator = torch.Generator().manual_seed(seed)
    shape = 4.0
    rates = torch.distributions.Gamma(shape, shape / mean)
    torch.manual_seed(seed)  # Gamma.sample draws from the global generator
    return torch.poisson(rates.sample((jets,)), generator=generator).long().clamp(max=cap)


def competitors(values: torch.Tensor, offsets: torch.Tensor, reduce: str, pad_limit_bytes: float):
    """name -> pooling function of the values, for one reduction."""
    num_segments = offsets.numel() - 1
    counts = offsets[1:] - offsets[:-1]
    ids = torch.repeat_interleave(torch.arange(num_segments, device=values.device), counts)
    width = values.shape[1]
    hepms_fn = getattr(hepms, f"segment_{reduce}")

    def ours(x: torch.Tensor) -> torch.Tensor:
        out = hepms_fn(x, offsets, validate=False)
        return out[0] if isinstance(out, tuple) else out

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

    functions = {"hepms": ours, "torch.segment_reduce": segment_reduce,
                 "scatter_reduce" if reduce == "max" else "index_add_": index_based}

    max_len = int(counts.max()) if num_segments else 0
    pad_bytes = num_segments * max_len * width * values.element_size() * 3  # padded + mask + grad
    if pad_bytes <= pad_limit_bytes:
        positions = torch.arange(values.shape[0], device=values.device) - offsets[:-1].repeat_interleave(counts)
        mask = torch.arange(max_len, device=values.device)[None, :] < counts[:, None]

        def padded(x: torch.Tensor) -> torch.Tensor:
            dense = x.new_zeros(num_segments, max_len, width).index_put((ids, positions), x)
            if reduce == "max":
                dense = dense.masked_fill(~mask[:, :, None], float("-inf"))
                return dense.amax(1).masked_fill((counts == 0)[:, None], 0)
            total = dense.sum(1)
            return total / counts.clamp_min(1)[:, None] if reduce == "mean" else total

        functions["padded+mask"] = padded
    else:
        functions["padded+mask"] = None  # skipped: would not fit

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


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    if args.cpu_capability:
        hepms.ops.set_cpu_capability(args.cpu_capability)
    counts = constituent_counts(args.jets, args.mean_length, args.max_length, args.seed)
    offsets = torch.zeros(args.jets + 1, dtype=torch.long)
    offsets[1:] = counts.cumsum(0)
    offsets = offsets.to(device)
    rows = int(offsets[-1])
    result = {
        "machine": {**machine(device), "hepms_cpu_kernels": hepms.ops.cpu_capability()},
        "workload": {"jets": args.jets, "rows": rows, "mean_length": rows / max(1, args.jets),
                     "max_length": int(counts.max()), "empty_sets": int((counts == 0).sum()),
                     "dtype": args.dtype},
        "tables": [],
    }
    for width in args.features:
        generator = torch.Generator().manual_seed(args.seed + width)
        values = torch.randn(rows, width, generator=generator).to(device=device, dtype=dtype)
        grad_out = torch.randn(args.jets, width, generator=generator).to(device=device, dtype=dtype)
        read_floor = timed(lambda: values.sum(0), device, args.repeats)
        copy_floor = timed(lambda: values.clone(), device, args.repeats)
        table = {"features": width, "read_floor_ms": read_floor, "copy_floor_ms": copy_floor,
                 "rows": rows, "segments": args.jets,
                 "bytes_values": values.numel() * values.element_size(), "results": []}
        for reduce in args.reductions:
            for name, fn in competitors(values, offsets, reduce, args.pad_limit_gb * 2**30).items():
                entry = {"reduce": reduce, "method": name}
                if fn is None:
                    entry["skipped"] = f"padding needs more than {args.pad_limit_gb} GiB"
                else:
                    try:
                        entry["forward_ms"] = timed(lambda: fn(values), device, args.repeats)
                        entry["forward_backward_ms"] = timed(forward_backward(fn, values, grad_out),
                                                             device, args.repeats)
                    except (RuntimeError, NotImplementedError) as error:  # e.g. no float16 kernel
                        entry = {"reduce": reduce, "method": name,
                                 "skipped": f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"}
                table["results"].append(entry)
        result["tables"].append(table)
        if device.type == "cuda":
            del values, grad_out
            torch.cuda.empty_cache()
    return result


def summarize(result: dict) -> None:
    print(json.dumps(result["machine"]))
    print(json.dumps(result["workload"]))
    for table in result["tables"]:
        read, copy = table["read_floor_ms"], table["copy_floor_ms"]
        print(f"\nF = {table['features']}: read floor (values.sum(0)) {read:.2f} ms, "
              f"copy floor (values.clone()) {copy:.2f} ms")
        print(f"  {'reduce':6s} {'method':28s} {'fwd ms':>9s} {'x floor':>8s} {'fwd+bwd ms':>11s} "
              f"{'x floor':>8s}")
        for entry in table["results"]:
            if "skipped" in entry:
                print(f"  {entry['reduce']:6s} {entry['method']:28s} skipped: {entry['skipped']}")
                continue
            fwd, fb = entry["forward_ms"], entry["forward_backward_ms"]
            print(f"  {entry['reduce']:6s} {entry['method']:28s} {fwd:9.2f} {fwd / read:8.2f} "
                  f"{fb:11.2f} {fb / (read + copy):8.2f}")
        check_targets(table, result["machine"]["device"])


def check_targets(table: dict, device: str) -> None:
    """Print the issue's targets as PASS/MISS lines (informational: this is not a test)."""
    read, copy = table["read_floor_ms"], table["copy_floor_ms"]
    by_reduce: dict = {}
    for entry in table["results"]:
        if "skipped" not in entry:
            by_reduce.setdefault(entry["reduce"], {})[entry["method"]] = entry
    for reduce, methods in by_reduce.items():
        others = {k: v for k, v in methods.items() if k != "hepms"}
        if "hepms" not in methods or not others:
            continue
        ours = methods["hepms"]
        fastest_fwd = min(others.values(), key=lambda e: e["forward_ms"])
        fastest_fb = min(others.values(), key=lambda e: e["forward_backward_ms"])
        lines = []
        if device == "cpu":
            lines.append(("fwd <= 1.5 x read floor", ours["forward_ms"] <= 1.5 * read))
            lines.append(("fwd+bwd <= 1.5 x (read + copy floor)",
                          ours["forward_backward_ms"] <= 1.5 * (read + copy)))
        elif "torch.segment_reduce" in methods:
            ref = methods["torch.segment_reduce"]
            lines.append(("fwd >= 1.5x faster than segment_reduce",
                          ref["forward_ms"] >= 1.5 * ours["forward_ms"]))
            # bytes read (values) + written (pooled output, plus the int64 arg-max for max)
            out_elements = table["segments"] * table["features"]
            element_size = table["bytes_values"] / max(1, table["rows"] * table["features"])
            moved = table["bytes_values"] + out_elements * (element_size + (8 if reduce == "max" else 0))
            bandwidth = moved / (ours["forward_ms"] * 1e-3) / 1e9
            lines.append((f"fwd bandwidth {bandwidth:.0f} GB/s", True))
        lines.append((f"fwd faster than every alternative (best other: {fastest_fwd['method']})",
                      ours["forward_ms"] < fastest_fwd["forward_ms"]))
        lines.append((f"fwd+bwd faster than every alternative (best other: {fastest_fb['method']})",
                      ours["forward_backward_ms"] < fastest_fb["forward_backward_ms"]))
        for text, ok in lines:
            print(f"    [{'PASS' if ok else 'MISS'}] {reduce}: {text}")


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--jets", type=int, default=100_000, help="number of sets (jets)")
    parser.add_argument("--mean-length", type=float, default=30.0, help="mean constituents per jet")
    parser.add_argument("--max-length", type=int, default=200, help="cap on constituents per jet")
    parser.add_argument("--features", type=int, nargs="+", default=[16, 64, 128])
    parser.add_argument("--reductions", nargs="+", default=["sum", "mean", "max"],
                        choices=["sum", "mean", "max"])
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (median)")
    parser.add_argument("--pad-limit-gb", type=float, default=6.0,
                        help="skip the padded reference when it would need more memory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="element type of the values")
    parser.add_argument("--cpu-capability", choices=["auto", "baseline", "avx2"],
                        help="force a variant of hepms's CPU kernels (default: the best the CPU supports)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    result = run(args)
    summarize(result)
    print("\nJSON:")
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=1)


if __name__ == "__main__":
    main()
