"""Per-trial cost of the htautau study's full preset: where the CPU seconds of one trial go.

Trains bounded pieces of one full-preset trial (``analyses/htautau/config/full.yaml``: 50k H + 50k Z
events at <mu> = 50, batch 128, Adam lr 1e-3, 1 torch thread) with the real
:class:`hepms.train.Trainer` (checkpoint and metric files written every epoch, as in a scan) and
splits the CPU time (``time.process_time`` of this process, so other jobs on a shared machine do
not count) into phases. Each phase is timed by wrapping the function that does it; a call inside
an already-timed phase counts to the outer phase (e.g. the forward passes inside the validation
count as "validation"):

  shuffle     ``TauEventData.take``: the per-epoch permuted copy of the training events
  batching    ``TauEventData.slice``: the training batches
  upstream cache  ``Trainer._upstream_cache`` (where the trainer has it): the frozen tau model's
              outputs, once per phase
  forward     ``Trainer.forward_batch``: the model on a training batch
  loss        ``Trainer.batch_losses``
  balancer    ``Balancer.combine`` (GradNorm: its gradient norms and weight update)
  backward    ``Tensor.backward``
  optimizer   ``Optimizer.step`` + ``zero_grad``
  validation  ``Trainer._validate``: forward on the validation part, losses, AUCs
  best state  ``EarlyStopping.update``: the copy of the best weights
  checkpoint  ``Trainer._save_checkpoint``
  logs        ``Trainer._write_logs``: metrics.csv / metrics.json
  other       the rest of the epoch: the Python loop, bookkeeping, step weights, logging

The pieces of a training step go through public API (``Trainer.forward_batch``,
``Trainer.batch_losses``, ``Balancer.combine``, torch's ``backward`` and ``Optimizer.step``). The
epochs, the validation, the checkpoints, the logs and the upstream cache are internal to
``Trainer.fit`` and have no public hook (a profiler is no reason to make them API), so their
private methods are wrapped by name: a trainer that renames one fails here with an
AttributeError naming it (a tree without ``_upstream_cache`` is measured without that piece).

Runs: ``simultaneous`` (the (w1, w2) = (1, 1) row) and ``step_by_step`` (both phases), each for
``--epochs`` epochs per phase from the same seed. The per-epoch losses and validation AUCs are
written to the JSON, so runs of two hepms versions can be compared for identical results.

``--precision bfloat16`` trains with ``trainer.precision: bfloat16`` (mixed precision).

``--source DIR`` imports hepms from another tree (e.g. an older commit exported with
``git archive``, with the compiled ``hepms/_C*.so`` copied in), so that two versions can be run
interleaved on the same machine state.

    python benchmarks/trial_profile.py --data /path/to/full --epochs 2 --json out.json
    python benchmarks/trial_profile.py --data /path/to/full --precision bfloat16 --label bf16 --json bf16.json
    python benchmarks/trial_profile.py --report out.json [more.json ...]
"""
from __future__ import annotations

import sys

if "--source" in sys.argv:  # before anything imports hepms
    sys.path.insert(0, sys.argv[sys.argv.index("--source") + 1])
    # An editable install resolves `hepms` through its own finder, ahead of sys.path: drop it.
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__]

import argparse
import functools
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from checkout_atomic import write_text_atomic  # this checkout's, not --source's

PHASES = ("shuffle", "batching", "upstream cache", "forward", "loss", "balancer", "backward",
          "optimizer", "validation", "best state", "checkpoint", "logs", "other")

#: run name -> (study, row label) of the study configuration; the BCE column.
RUNS = {
    "simultaneous": ("loss_balancing", "(w1, w2) = (1, 1)"),
    "step_by_step": ("loss_balancing", "step-by-step"),
    "uncertainty": ("loss_balancing", "uncertainty weighting"),
    "gradnorm": ("loss_balancing", "GradNorm"),
    "w1_zero": ("loss_balancing", "(w1, w2) = (0, 1)"),
}


class PhaseClock:
    """CPU seconds per training phase (``upstream``, ``joint``, ...) and part of the work; a
    timed call inside a timed call counts to the outer one."""

    def __init__(self) -> None:
        self.reset()
        self._active: Optional[str] = None

    def phase(self, name: str) -> dict[str, Any]:
        """The counters of training phase ``name`` (made on first use)."""
        if name not in self.phases:
            self.phases[name] = {"seconds": {p: 0.0 for p in PHASES}, "calls": {p: 0 for p in PHASES},
                                 "epochs": 0, "epoch_seconds": []}
        return self.phases[name]

    def wrap(self, owner: Any, name: str, phase: str) -> None:
        original = getattr(owner, name)
        clock = self

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if clock._active is not None:
                return original(*args, **kwargs)
            clock._active = phase
            start = time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                counters = clock.phase(clock.current)
                counters["seconds"][phase] += time.process_time() - start
                counters["calls"][phase] += 1
                clock._active = None

        setattr(owner, name, timed)

    def wrap_epoch(self, owner: Any) -> None:
        """``Trainer._run_epoch(phase_index, phase, ...)``: sets the current training phase."""
        original = owner._run_epoch
        clock = self

        @functools.wraps(original)
        def epoch(trainer: Any, phase_index: int, phase: Any, *args: Any, **kwargs: Any) -> Any:
            clock.current = phase.name
            counters = clock.phase(phase.name)
            start = time.process_time()
            try:
                return original(trainer, phase_index, phase, *args, **kwargs)
            finally:
                counters["epochs"] += 1
                counters["epoch_seconds"].append(time.process_time() - start)

        owner._run_epoch = epoch

    def reset(self) -> None:
        self.phases: dict[str, dict[str, Any]] = {}
        self.current = "setup"


def instrument(clock: PhaseClock) -> None:
    import torch

    from hepms.data import TauEventData
    from hepms.train import trainer as trainer_module
    from hepms.train.balancers import BALANCERS

    Trainer = trainer_module.Trainer
    clock.wrap_epoch(Trainer)
    clock.wrap(TauEventData, "take", "shuffle")
    clock.wrap(TauEventData, "slice", "batching")
    if hasattr(Trainer, "_upstream_cache"):
        clock.wrap(Trainer, "_upstream_cache", "upstream cache")
    clock.wrap(Trainer, "forward_batch", "forward")
    clock.wrap(Trainer, "batch_losses", "loss")
    for cls in set(BALANCERS.values()):
        if "combine" in vars(cls):
            clock.wrap(cls, "combine", "balancer")
    clock.wrap(torch.Tensor, "backward", "backward")
    clock.wrap(torch.optim.Adam, "step", "optimizer")
    clock.wrap(torch.optim.Optimizer, "zero_grad", "optimizer")
    clock.wrap(Trainer, "_validate", "validation")
    clock.wrap(trainer_module.EarlyStopping, "update", "best state")
    clock.wrap(Trainer, "_save_checkpoint", "checkpoint")
    clock.wrap(Trainer, "_write_logs", "logs")


def run_one(name: str, cfg: dict, data: Any, seed: int, clock: PhaseClock,
            workdir: Path) -> dict[str, Any]:
    from hepms.study.runner import build_model, train_config
    from hepms.train.trainer import Trainer

    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*"):
        stale.unlink()
    model = build_model(cfg, data, seed)
    trainer = Trainer(model, train_config(cfg, seed, folder, progress=False))
    clock.reset()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    history = trainer.fit(data.train, data.val)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    n_epochs = len(history.epochs)
    # Per training phase: what the epochs cost (the work between two epochs, e.g. the checkpoint,
    # counts to the phase of the epoch before it; "other" is the rest of the epoch). One-off costs
    # per phase (the upstream cache) are kept apart from the per-epoch figures.
    phases = {}
    for phase_name, counters in clock.phases.items():
        if phase_name == "setup":
            continue
        seconds = dict(counters["seconds"])
        timed = sum(counters["epoch_seconds"])
        inside = sum(v for k, v in seconds.items() if k not in ("checkpoint", "logs", "upstream cache"))
        seconds["other"] = max(0.0, timed - inside - seconds["upstream cache"])
        epochs = counters["epochs"]
        once = seconds["upstream cache"]
        recurring = {k: v / epochs for k, v in seconds.items() if k != "upstream cache"}
        phases[phase_name] = {
            "epochs": epochs,
            "cpu_seconds_per_epoch": sum(recurring.values()),
            "cpu_seconds_once": once,
            "per_epoch": recurring,
            "calls": counters["calls"],
            "epoch_cpu_seconds": counters["epoch_seconds"],
        }
    keys = ("phase", "epoch", "train_loss", "val_loss", "val_auc_tau", "val_auc_event")
    return {
        "run": name,
        "epochs": n_epochs,
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "cpu_seconds_per_epoch": cpu / n_epochs,
        "phases": phases,
        "history": [{k: row.get(k) for k in keys} for row in history.epochs],
        "final_state_sum": float(sum(p.detach().double().sum() for p in model.parameters())),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import hepms
    from hepms._machine import describe
    from hepms.config import load_config
    from hepms.study.dataset import prepare_data
    from hepms.study.plan import expand_studies

    torch.set_num_threads(args.threads)
    import sklearn.metrics  # noqa: F401  (imported by the first AUC otherwise: a one-off second)
    overrides = [f"data.path={args.data}", "progress=false", f"threads={args.threads}",
                 f"trainer.epochs={args.epochs}"]
    if args.precision:  # an older tree (--source) has no such key: only set it when asked
        overrides.append(f"trainer.precision={args.precision}")
    if args.max_events:
        overrides.append(f"data.max_events={args.max_events}")
    base = load_config(args.config, overrides)
    started = time.perf_counter()
    data = prepare_data(base, Path(args.cache), progress=False)
    prep = time.perf_counter() - started
    planned = {(r.study, r.label): r.config for r in expand_studies(base) if r.column in ("", "bce")}
    clock = PhaseClock()
    instrument(clock)
    results = []
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="hepms-trial-profile-"))
    for repeat in range(args.repeats):
        for name in args.runs:
            cfg = planned[RUNS[name]]
            r = run_one(name, cfg, data, args.seed, clock, workdir)
            r["repeat"] = repeat
            results.append(r)
            print(f"{name} (repeat {repeat}): {r['epochs']} epochs, {r['cpu_seconds']:.1f} CPU s "
                  f"({r['cpu_seconds_per_epoch']:.2f} per epoch), wall {r['wall_seconds']:.1f} s",
                  flush=True)
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    git = None  # of the tree hepms was imported from; unknown for a --source export
    try:
        import subprocess

        git = subprocess.run(["git", "-C", str(Path(hepms.__file__).parent), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    if args.source:
        git = None
    return {
        "script": "benchmarks/trial_profile.py",
        "machine": describe("cpu"),
        "python": platform.python_version(),
        "load_average_end": load,
        "hepms_source": str(Path(hepms.__file__).parent),
        "label": args.label,
        "precision": base["trainer"].get("precision", "float32"),
        "git_head": git,
        "config": args.config,
        "data": {"path": args.data, "train_events": len(data.train), "val_events": len(data.val),
                 "train_jets": data.train.num_jets,
                 "train_constituents": data.train.num_constituents,
                 "prepare_seconds": prep},
        "seed": args.seed,
        "epochs_per_phase": args.epochs,
        "results": results,
    }


def report(payloads: list[dict[str, Any]]) -> None:
    """Per version (label), run and training phase: median CPU seconds per epoch and its split
    over the repeats; "once": the one-off cost per phase (the upstream cache)."""
    rows: dict[tuple[str, str, str], list[dict]] = {}
    machine = None
    for payload in payloads:
        machine = machine or payload["machine"]
        for r in payload["results"]:
            for phase_name, p in r["phases"].items():
                rows.setdefault((payload.get("label") or "?", r["run"], phase_name), []).append(p)
    print(f"machine: {machine}")
    header = ["version", "run", "phase", "n", "CPU s/epoch", "once"] + [p for p in PHASES if p != "upstream cache"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for (label, run, phase_name), ps in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        cells = [label, run, phase_name, str(len(ps)),
                 f"{statistics.median(p['cpu_seconds_per_epoch'] for p in ps):.2f}",
                 f"{statistics.median(p['cpu_seconds_once'] for p in ps):.2f}"]
        for part in PHASES:
            if part != "upstream cache":
                cells.append(f"{statistics.median(p['per_epoch'][part] for p in ps):.2f}")
        print("| " + " | ".join(cells) + " |")


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="analyses/htautau/config/full.yaml")
    parser.add_argument("--data", default="data/full", help="the full sample (hepms generate output)")
    parser.add_argument("--cache", default="runs/trial-profile/cache", help="dataset cache folder")
    parser.add_argument("--workdir", default=None, help="run folders (default: a temporary folder)")
    parser.add_argument("--runs", nargs="+", default=["simultaneous", "step_by_step"], choices=sorted(RUNS))
    parser.add_argument("--epochs", type=int, default=2, help="epochs per phase")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1000, help="trial seed (the scan's first trial)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-events", type=int, default=None, help="a random subset of the sample")
    parser.add_argument("--label", default=None, help="name of this version in the report")
    parser.add_argument("--precision", default=None, choices=("float32", "bfloat16"),
                        help="trainer.precision (default: the config's, float32)")
    parser.add_argument("--source", default=None, help="import hepms from this folder")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--report", nargs="+", default=None, help="summarise JSON files instead")
    args = parser.parse_args(argv)
    if args.report:
        report([json.loads(Path(path).read_text()) for path in args.report])
        return
    payload = measure(args)
    print(json.dumps(payload["machine"]), "load", payload["load_average_end"])
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.json, json.dumps(payload, indent=1) + "\n")
    report([payload])


if __name__ == "__main__":
    main()
