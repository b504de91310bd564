"""Training throughput and peak memory of the multi-step model: jagged pooling vs padding.

Both variants train the same MultiStep model (same seed, same weights, same parameter names) on the
same events with the same loss (BCE tau + BCE event, fixed weights 1, Adam lr 1e-3):

  - jagged: ``hepms.nn.MultiStep`` on flat constituents + offsets (hepms segment ops), batches
    sliced from a ``TauEventData`` (views);
  - padded: ``hepms._padded_reference.multistep_padded``, the same modules on ``[E, 8, 50, F]`` constituent
    and ``[E, 8, F]`` jet tensors with masks (masked pooling), batches sliced from the padded
    tensors (padding done once, outside the timing).

Data: events from ``hepms.generate`` (Pythia 8 + pileup + parametric detector + anti-kT) read with
8 jets x 50 constituents, or ``--toy`` events with the same multiplicities drawn at random.

Each variant runs in its own subprocess (so the memory numbers do not mix): warm-up steps, then
timed epochs. Throughput = events per second of full training steps (forward, backward, Adam).
Memory: CPU: peak resident memory sampled every millisecond during the timed steps, above the
resident memory just before them (model, optimizer and data already allocated), with glibc told
to return freed tensor memory at once (``MALLOC_MMAP_THRESHOLD_=65536``); CUDA:
``max_memory_allocated`` above ``memory_allocated`` before the steps. The data itself is reported
separately (bytes of the jagged / padded tensors).

    python benchmarks/train.py --data /path/to/generated              # CPU
    python benchmarks/train.py --generate 2000 --mu 50 --cache /tmp/gen   # generate first
    python benchmarks/train.py --toy 4000 --device cuda --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import torch

import hepms
from hepms._machine import describe as machine
from hepms.data import Standardizer, TauEventData, build_dataset, toy_dataset
from hepms.features import FeatureSpec
from hepms.jagged import Jagged
from hepms.nn import MultiStep, run
from hepms._padded_reference import PaddedBatch, multistep_padded
from hepms.train.losses import bce_loss
from hepms.train.optim import make_optimizer

MAX_JETS, MAX_CONSTITUENTS = 8, 50


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
def load_events(args: argparse.Namespace) -> tuple[TauEventData, str]:
    if args.toy:
        data = toy_dataset(args.toy, seed=args.seed, mean_jets=2.8, mean_constituents=43.0,
                           max_jets=MAX_JETS, max_constituents=MAX_CONSTITUENTS,
                           regression_outputs=0)
        return data, f"toy events ({args.toy}), jets 1+Poisson(1.8), constituents 1+Poisson(42)"
    from hepms.generate.io import read_events

    folder = args.data
    if folder is None:
        from hepms.generate.pipeline import generate

        folder = args.cache or tempfile.mkdtemp(prefix="hepms-bench-")
        if not (Path(folder) / "manifest.json").exists():
            generate(folder, events_per_process=args.generate, mu=args.mu, seed=args.seed,
                     workers=args.workers, progress=False, pileup_pool=max(1000, args.generate))
    events = read_events(folder, max_jets=MAX_JETS, max_constituents=MAX_CONSTITUENTS)
    data = build_dataset(events, FeatureSpec(max_jets=MAX_JETS, max_constituents=MAX_CONSTITUENTS, targets=()))
    manifest = Path(folder) / "manifest.json"
    what = f"generated events from {folder}"
    if manifest.exists():
        settings = json.loads(manifest.read_text()).get("settings", {})
        what = (f"hepms.generate events (mu={settings.get('mu', '?')}, "
                f"seed={settings.get('seed', '?')})")
    return data, what


def multiplicities(data: TauEventData) -> dict[str, float]:
    jets = data.jet_offsets.diff().float()
    parts = data.constituent_offsets.diff().float()
    return {
        "events": len(data),
        "jets_per_event": round(float(jets.mean()), 2),
        "constituents_per_jet": round(float(parts.mean()), 2),
        "jets_at_cap": round(float((jets == MAX_JETS).float().mean()), 3),
        "constituents_at_cap": round(float((parts == MAX_CONSTITUENTS).float().mean()), 3),
        "padded_slot_fill": round(data.num_constituents / (len(data) * MAX_JETS * MAX_CONSTITUENTS), 3),
    }


def nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


# ----------------------------------------------------------------------------------------------
# Worker: one variant in its own process
# ----------------------------------------------------------------------------------------------
class RssSampler:
    """Peak resident memory of this process, sampled in a background thread."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.current()  # resident memory before the measured steps
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def current(self) -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


def worker(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    saved = torch.load(args.tensors, weights_only=True)
    data = TauEventData(
        Jagged(saved["values"], saved["offsets"], saved["outer"], validate=False),
        saved["jet_features"], saved["jet_labels"], saved["event_labels"], validate=True,
    )
    model = MultiStep(data.constituents.num_features, data.jet_features.shape[1],
                      connection=args.connection, k=args.k, seed=0).to(device)
    optimizer = make_optimizer(model.parameters(), 1e-3)
    n = len(data)
    if args.variant == "jagged":
        batches_data: Any = data.to(device)
        data_bytes = nbytes(data.constituents.values, data.constituents.offsets, data.jet_offsets,
                            data.jet_features, data.jet_labels, data.event_labels)
    else:
        padded = PaddedBatch.from_data(data, MAX_JETS, MAX_CONSTITUENTS)
        del data, saved
        batches_data = padded.to(device)
        data_bytes = nbytes(padded.constituents, padded.constituent_mask, padded.jet_features,
                            padded.jet_mask, padded.jet_labels, padded.event_labels)

    def step(start: int, stop: int) -> float:
        if args.variant == "jagged":
            batch = batches_data.slice(start, stop)
            out = run(model, batch)
            loss = bce_loss(out.tau_logit, batch.jet_labels) + bce_loss(out.event_logit,
                                                                       batch.event_labels)
        else:
            batch = batches_data.slice(start, stop)
            out = multistep_padded(model, batch)
            mask = batch.jet_mask
            loss = bce_loss(out.tau_logit[mask], batch.jet_labels[mask]) + bce_loss(
                out.event_logit, batch.event_labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    bounds = [(s, min(n, s + args.batch_size)) for s in range(0, n, args.batch_size)]
    with hepms.validation(False):  # the data are validated: no per-op offsets checks
        first_loss = float(step(*bounds[0]))
        for i in range(args.warmup):
            step(*bounds[(i + 1) % len(bounds)])
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        events = 0
        sampler = RssSampler()
        with sampler:
            start = time.perf_counter()
            for _ in range(args.epochs):
                for a, b in bounds:
                    step(a, b)
                    events += b - a
            sync()
            elapsed = time.perf_counter() - start
    result = {
        "variant": args.variant,
        "events_per_s": events / elapsed,
        "seconds": elapsed,
        "steps": args.epochs * len(bounds),
        "first_loss": first_loss,
        "data_mib": data_bytes / 2**20,
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        result["peak_mib"] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        result["peak_total_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        result["peak_mib"] = (sampler.peak - sampler.start) / 2**20
        result["rss_before_mib"] = sampler.start / 2**20
    return result


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------
def _run_worker(command: list[str], env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark worker failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------
def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", help="folder (or file) written by hepms.generate")
    source.add_argument("--toy", type=int, default=0, help="use N toy events instead")
    parser.add_argument("--generate", type=int, default=1000,
                        help="events per process to generate when --data is not given")
    parser.add_argument("--mu", type=float, default=50.0, help="pileup for --generate")
    parser.add_argument("--cache", help="folder to keep the generated events in")
    parser.add_argument("--workers", type=int, default=1, help="generator worker processes")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2, help="timed passes over the events")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timing runs per variant (alternating; the median is reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--connection", default="direct")
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--json", help="also write the JSON here")
    parser.add_argument("--worker", dest="variant", help=argparse.SUPPRESS)
    parser.add_argument("--tensors", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.variant:  # inside a subprocess
        print(json.dumps(worker(args)))
        return 0

    if args.threads:
        torch.set_num_threads(args.threads)  # so that the machine description shows it too
    data, what = load_events(args)
    data = Standardizer.fit(data)(data)
    shape = multiplicities(data)
    with tempfile.TemporaryDirectory(prefix="hepms-bench-") as tmp:
        tensors = Path(tmp) / "data.pt"
        torch.save({"values": data.constituents.values.contiguous(),
                    "offsets": data.constituent_offsets, "outer": data.jet_offsets,
                    "jet_features": data.jet_features, "jet_labels": data.jet_labels,
                    "event_labels": data.event_labels}, tensors)
        def command(variant: str) -> list[str]:
            return [sys.executable, __file__, "--worker", variant, "--tensors", str(tensors),
                    "--device", args.device, "--batch-size", str(args.batch_size),
                    "--warmup", str(args.warmup), "--threads", str(args.threads),
                    "--connection", args.connection, "--k", str(args.k)]

        # Timing runs with the default allocator, the two variants alternating so that a change
        # of the machine's load hits both alike; the median is reported.
        timings: dict[str, list[dict[str, Any]]] = {"jagged": [], "padded": []}
        for _ in range(args.repeats):
            for variant in timings:
                timings[variant].append(
                    _run_worker(command(variant) + ["--epochs", str(args.epochs)],
                                dict(os.environ)))
        results = {}
        for variant, runs in timings.items():
            rates = sorted(r["events_per_s"] for r in runs)
            result = dict(runs[0])
            result["events_per_s"] = rates[len(rates) // 2]
            result["events_per_s_runs"] = [r["events_per_s"] for r in runs]
            if args.device == "cpu":
                # Memory run: glibc keeps freed heap memory resident (and raises its mmap
                # threshold as large blocks come and go), so the resident size would not follow
                # the live tensors; a fixed 64 KiB threshold returns every tensor's memory on
                # free. It costs syscalls, hence a separate, untimed run.
                memory = _run_worker(command(variant) + ["--epochs", "1"],
                                     dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536"))
                result["peak_mib"] = memory["peak_mib"]
                result["rss_before_mib"] = memory["rss_before_mib"]
            results[variant] = result
    jagged, padded = results["jagged"], results["padded"]
    # Same weights and data: the first training step must see the same loss.
    if abs(jagged["first_loss"] - padded["first_loss"]) > 1e-4 * max(1.0, abs(jagged["first_loss"])):
        raise RuntimeError(f"jagged and padded disagree on the first loss: {jagged['first_loss']} "
                           f"vs {padded['first_loss']}")
    report = {
        "benchmark": "multi-step training step (forward + backward + Adam), jagged vs padded",
        "machine": machine(args.device),
        "data": what,
        "multiplicities": shape,
        "batch_size": args.batch_size,
        "epochs_timed": args.epochs,
        "model": {"connection": args.connection, "k": args.k,
                  "parameters": sum(p.numel() for p in MultiStep(
                      data.constituents.num_features, data.jet_features.shape[1],
                      connection=args.connection, k=args.k).parameters())},
        "padded_shape": [MAX_JETS, MAX_CONSTITUENTS],
        "results": results,
        "speedup": jagged["events_per_s"] / padded["events_per_s"],
        "peak_memory_ratio": jagged["peak_mib"] / padded["peak_mib"] if padded["peak_mib"] > 0 else None,
    }
    print(f"machine: {report['machine']}")
    print(f"data: {what}: {shape}")
    print(f"batch {args.batch_size} events, {args.epochs} timed epochs, device {args.device}, "
          f"threads {jagged['threads']}")
    print(f"{'variant':<8} {'events/s':>10} {'(runs)':>24} {'step peak MiB':>14} {'data MiB':>9}")
    for name, r in results.items():
        runs = "/".join(f"{x:.0f}" for x in r["events_per_s_runs"])
        print(f"{name:<8} {r['events_per_s']:>10.0f} {runs:>24} {r['peak_mib']:>14.1f} "
              f"{r['data_mib']:>9.1f}")
    print(f"speedup jagged / padded: {report['speedup']:.2f}x; peak memory jagged / padded: "
          f"{report['peak_memory_ratio']:.2f}")
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
