"""Why bfloat16 mixed precision does not speed up the study's training on a CPU: matrix products and
training steps, float32 versus bfloat16.

Three measurements, CPU time (``time.process_time``) of this process, 1 torch thread:

1. ``matmul``: the products of one ``nn.Linear`` on ``[N, K]`` rows (``N`` about 7,100: the
   constituents of a batch of 128 events of the full preset) in float32 and bfloat16: the forward
   product ``x @ W.T`` and the weight gradient ``g.T @ x``, once with the same ``N`` on every
   call and once with ``N`` changing from call to call, as the constituent count of a batch does.
   On CPUs with bfloat16 instructions PyTorch runs bfloat16 products through oneDNN, which
   generates a kernel per shape (its primitive cache then holds it); float32 products go to MKL.
   Also timed: the weight gradient computed transposed, ``x.T @ g`` (the same numbers), because
   autograd's ``g.T @ x`` is slow in MKL for narrow inputs (the first layer's 8 features).
2. ``segment``: forward + backward of ``hepms.segment_sum/mean/amax`` on ``[N, 32]`` rows in 270
   sets (a batch's jets), float32 and bfloat16, and the bfloat16 -> float32 cast that an autocast
   rule running the ops in float32 would add per call.
3. ``steps``: training steps of the full preset's (w1, w2) = (1, 1) joint phase (forward, float32
   losses, backward, fused Adam) on batches of the full sample, with the trainer's own
   ``forward_batch``: ``float32``; ``bfloat16`` (``trainer.precision: bfloat16``: the forward pass
   under ``torch.autocast``); ``bfloat16-bucketed`` (an experiment, not in hepms: the same, with
   every ``F.linear`` input of at least ``--bucket-min-rows`` rows padded with zero rows to a
   multiple of ``--bucket`` so that oneDNN reuses its kernels, smaller products in float32).
   The variants alternate, ``--repeats`` times over the same ``--batches`` batches; medians.

    python benchmarks/precision_steps.py --data /path/to/full --json out.json
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

VARIANTS = ("float32", "bfloat16", "bfloat16-bucketed")


def _cpu_us(fn: Callable[[int], Any], calls: int) -> float:
    fn(0)
    start = time.process_time()
    for i in range(calls):
        fn(i + 1)
    return (time.process_time() - start) / calls * 1e6


def matmul(rows: int, calls: int) -> list[dict[str, Any]]:
    out = []
    for k, m in ((8, 32), (32, 32), (64, 64)):
        for dtype in (torch.float32, torch.bfloat16):
            g = torch.Generator().manual_seed(0)
            # Views of one buffer: "same" and "changing" rows read equally warm memory, so the
            # difference is the shape alone.
            x_all = torch.randn(rows + 7 * (calls + 1), k, generator=g).to(dtype)
            g_all = torch.randn(rows + 7 * (calls + 1), m, generator=g).to(dtype)
            xs = [x_all[: rows + 7 * i] for i in range(calls + 1)]
            gs = [g_all[: rows + 7 * i] for i in range(calls + 1)]
            w = torch.randn(m, k, generator=g).to(dtype)
            row = {"K": k, "M": m, "rows": rows, "dtype": str(dtype).replace("torch.", "")}
            row["forward_same_rows_us"] = _cpu_us(lambda i: xs[0] @ w.T, calls)
            row["forward_varying_rows_us"] = _cpu_us(lambda i: xs[i] @ w.T, calls)
            row["weight_grad_same_rows_us"] = _cpu_us(lambda i: gs[0].T @ xs[0], calls)
            row["weight_grad_varying_rows_us"] = _cpu_us(lambda i: gs[i].T @ xs[i], calls)
            # the same product transposed (x.T @ g = (g.T @ x).T): what MKL makes of the layout
            row["weight_grad_transposed_same_rows_us"] = _cpu_us(lambda i: xs[0].T @ gs[0], calls)
            out.append(row)
            print(row, flush=True)
    return out


def segment(rows: int, sets: int, calls: int) -> list[dict[str, Any]]:
    """Forward + backward of the pooling ops on ``[rows, 32]`` in ``sets`` sets, float32 and
    bfloat16, and the cast a float32 autocast rule would add."""
    import hepms
    from hepms.ops import validation

    g = torch.Generator().manual_seed(1)
    counts = torch.randint(1, 50, (sets,), generator=g)
    offsets = hepms.offsets_from_counts((counts * rows / counts.sum()).long().clamp_min(1))
    out = []
    with validation(False):
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(int(offsets[-1]), 32, generator=g).to(dtype).requires_grad_()
            row: dict[str, Any] = {"rows": x.shape[0], "sets": sets, "dtype": str(dtype).replace("torch.", "")}
            for name in ("sum", "mean", "amax"):
                op = getattr(hepms, f"segment_{name}")

                def fb(i: int, op: Callable = op) -> None:
                    y = op(x, offsets)
                    y.backward(torch.ones_like(y))

                row[f"{name}_forward_backward_us"] = _cpu_us(fb, calls)
            if dtype == torch.bfloat16:
                row["cast_to_float32_us"] = _cpu_us(lambda i: x.detach().float(), calls)
            out.append(row)
            print(row, flush=True)
    return out


class BucketRows(TorchFunctionMode):
    """``F.linear`` with its rows padded to a multiple of ``bucket`` (from ``min_rows`` rows on);
    smaller inputs in float32 outside autocast."""

    def __init__(self, bucket: int, min_rows: int) -> None:
        super().__init__()
        self.bucket, self.min_rows = bucket, min_rows

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear and args[0].dim() == 2:
            x, rows = args[0], args[0].shape[0]
            if rows >= self.min_rows:
                pad = -rows % self.bucket
                return func(F.pad(x, (0, 0, 0, pad)) if pad else x, *args[1:], **kwargs)[:rows]
            with torch.autocast(x.device.type, enabled=False):
                return func(x.float(), *args[1:], **kwargs)
        return func(*args, **kwargs)


def steps(args: argparse.Namespace) -> dict[str, Any]:
    from hepms.config import load_config
    from hepms.ops import validation
    from hepms.study.dataset import prepare_data
    from hepms.study.plan import expand_studies
    from hepms.study.runner import build_model, train_config
    from hepms.train.trainer import Trainer

    base = load_config(args.config, [f"data.path={args.data}", "progress=false", f"threads={args.threads}"])
    data = prepare_data(base, Path(args.cache), progress=False)
    cfg = {(r.study, r.label): r.config for r in expand_studies(base)
           if r.column in ("", "bce")}[("loss_balancing", "(w1, w2) = (1, 1)")]
    trainer = Trainer(build_model(cfg, data, args.seed), train_config(cfg, args.seed, None, False))
    phase = trainer.phases[0]
    trainer.start_phase(phase)  # balancer, optimizer, training mode
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(args.seed))
    subset = data.train.take(order[: args.batches * 128])
    batches = [subset.slice(s, min(len(subset), s + 128)) for s in range(0, len(subset), 128)]
    rows = [b.constituents.values.shape[0] for b in batches]

    def step(batch: Any, variant: str) -> None:
        bucket = BucketRows(args.bucket, args.bucket_min_rows) if variant == "bfloat16-bucketed" else contextlib.nullcontext()
        with bucket:
            out = trainer.forward_batch(phase, batch, mixed=True)
        total = trainer.balancer.combine(trainer.batch_losses(phase, out, batch))
        trainer.optimizer.zero_grad(set_to_none=True)
        total.backward()
        trainer.optimizer.step()

    ms: dict[str, list[float]] = {v: [] for v in args.variants}
    with validation(False):
        for repeat in range(args.repeats):
            for variant in args.variants:
                precision = "float32" if variant == "float32" else "bfloat16"
                trainer.config = dataclasses.replace(trainer.config, precision=precision)
                start = time.process_time()
                for batch in batches:
                    step(batch, variant)
                ms[variant].append((time.process_time() - start) / len(batches) * 1e3)
                print(f"repeat {repeat} {variant}: {ms[variant][-1]:.2f} CPU ms per step", flush=True)
    return {"batches": len(batches), "batch_size": 128, "constituent_rows_per_batch":
            {"min": min(rows), "median": statistics.median(rows), "max": max(rows),
             "distinct": len(set(rows))},
            "bucket": args.bucket, "bucket_min_rows": args.bucket_min_rows,
            "cpu_ms_per_step": ms,
            "median_cpu_ms_per_step": {v: statistics.median(x) for v, x in ms.items()}}


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="analyses/htautau/config/full.yaml")
    parser.add_argument("--data", default="data/full")
    parser.add_argument("--cache", default="runs/trial-profile/cache")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=7100, help="matmul: rows of the products")
    parser.add_argument("--calls", type=int, default=60, help="matmul: calls per measurement")
    parser.add_argument("--batches", type=int, default=60, help="steps: batches of 128 events")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--bucket", type=int, default=256)
    parser.add_argument("--bucket-min-rows", type=int, default=1024)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from hepms._machine import describe

    payload: dict[str, Any] = {"script": "benchmarks/precision_steps.py", "machine": describe("cpu"),
                               "cpu_flags_bf16": _bf16_flags()}
    payload["matmul"] = matmul(args.rows, args.calls)
    payload["segment"] = segment(args.rows, 270, args.calls)
    payload["steps"] = steps(args)
    with open("/proc/loadavg") as f:
        payload["load_average_end"] = f.read().split()[:3]
    print(json.dumps(payload["steps"]["median_cpu_ms_per_step"]), payload["machine"])
    if args.json:
        from hepms.atomic import write_text_atomic

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(args.json), json.dumps(payload, indent=1) + "\n")


def _bf16_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return sorted({f for f in line.split() if "bf16" in f or f.startswith("amx")})
    except OSError:
        pass
    return []


if __name__ == "__main__":
    main()
