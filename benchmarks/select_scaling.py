"""Scalability of model selection: wall time of grid search, DARTS and SPOS-NAS versus the number
of candidate models per task (the MSNAS paper's section 4.4.3, Fig. 7a), with fitted power laws.

Workload: generated H/Z->tautau events (``--events``: a sample of ``hepms generate``, e.g. the
full sample, of which ``--max-events`` keeps the first N per process; default: generate a small
one with Pythia 8 + FastJet, mu = 5), Task 1
= tau momentum calibration, base candidates 3 per task as in the paper (Task 1: DeepSets, MLP,
scale factor; Task 2: MLP on two candidates, LSTM, Mass), replicated ``copies`` times with
independent initialisation, so ``N = 3 * copies`` models per task. Each method runs end to end
(pre-training of every candidate, search, post-training) with a fixed number of epochs per phase
(no early stopping: the time then measures the algorithm, not when a noisy validation curve
stopped). Fit: ``t = C * N^a`` by least squares in log-log, per method over all runs, and per
dominant phase (grid: re-optimisation of the N^2 pairs; DARTS / SPOS: the search).

Every selected chain is then evaluated on the test split (untimed): the Task-2 AUC versus the number
of candidates is the paper's Fig. 7b.

Prints the machine (stderr) and one JSON document (machine, settings, data fingerprint, rows with
wall and CPU seconds per run, fits), and writes a log-log plot of the times and one of the AUC.

    python benchmarks/select_scaling.py                                  # small CPU defaults
    python benchmarks/select_scaling.py --copies 1 2 4 8 --repeats 3 --epochs 3 --device cuda
    python benchmarks/select_scaling.py --events data/full --max-events 1000 \
        --json benchmarks/results_select_scaling/real_1k.json --plot scaling.png --auc-plot auc.png
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

from hepms._machine import describe
from hepms.atomic import write_text_atomic

BASE = {
    "upstream": {
        "deepsets": {"kind": "deepsets", "phi": [16, 16], "blocks": 0, "pool": ["mean", "max"],
                     "post_pool": [16], "embedding": [32, 16], "head": [16]},
        "mlp": {"kind": "mlp", "hidden": [32, 32]},
        "sf": {"kind": "sf"},
    },
    "downstream": {
        "mlp2": {"kind": "mlp2", "hidden": [32, 32, 32]},
        "lstm": {"kind": "lstm", "hidden": 16, "layers": 2},
        "mass": {"kind": "mass", "hidden": [32, 32]},
    },
}


def _cell(values, digits: int = 1) -> str:
    import numpy as np

    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return "-"
    return f"{v.mean():.{digits}f}" + (f" ± {v.std(ddof=1):.{digits}f}" if v.size > 1 else "")


def _fit_cell(fit) -> str:
    if not fit:
        return "-"
    err = fit.get("a_err")
    return f"{fit['a']:.2f}" + (f" ± {err:.2f}" if err is not None and err == err else "")


def report(document: dict) -> str:
    """Markdown tables of one JSON document of this benchmark (every number from ``document``)."""
    rows = document["rows"]
    methods = sorted({r["method"] for r in rows})
    ns = sorted({r["n_models"] for r in rows})
    s = document["settings"]
    lines = [f"machine: `{json.dumps(document['machine'])}`; load average (1, 5, 15 min) at start "
             f"{[round(x, 1) for x in document['load_average']['start']]}, at end "
             f"{[round(x, 1) for x in document['load_average']['end']]}; data fingerprint "
             f"`{document.get('data_fingerprint')}`; {s['train_events']} / {s['val_events']} / {s['test_events']} "
             f"train / validation / test events; {s['epochs']} epochs per phase; copies {s['copies']}, "
             f"{s['repeats']} repeat(s); whole benchmark {document['seconds']:.0f} s wall, "
             f"{document['cpu_seconds']:.0f} s CPU.", ""]
    for key, what in (("seconds", "wall time [s]"), ("cpu_seconds", "CPU time [s]")):
        lines += [f"{what} per selection, mean ± s.d. over repeats:", "",
                  "| N per task | pairs | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
        for n in ns:
            lines.append(f"| {n} | {n * n} | " + " | ".join(
                _cell([r[key] for r in rows if r["method"] == m and r["n_models"] == n]) for m in methods) + " |")
        lines.append("")
    lines += ["Fitted exponent `a` of `t = C N^a` (± standard error of the slope), all runs per method:", "",
              "| method | wall time | CPU time |", "|---|---|---|"]
    for m in methods:
        lines.append(f"| {m} | {_fit_cell(document['fits'].get(m))} | {_fit_cell(document.get('fits_cpu', {}).get(m))} |")
    lines += ["", "Dominant phases (wall time): " + "; ".join(
        f"{k} {_fit_cell(v)}" for k, v in document.get("phase_fits", {}).items() if v), ""]
    lines += ["Mean phase wall times [s]:", "", "| method: phase | " + " | ".join(f"N={n}" for n in ns) + " |",
              "|---|" + "---|" * len(ns)]
    for m in methods:
        phases = sorted({p for r in rows if r["method"] == m for p in r["phases"] if p != "total"})
        for p in phases:
            lines.append(f"| {m}: {p} | " + " | ".join(
                _cell([r["phases"][p] for r in rows if r["method"] == m and r["n_models"] == n and p in r["phases"]], 2)
                for n in ns) + " |")
    if any("test_auc_event" in r for r in rows):
        lines += ["", "Task-2 AUC of the selected chain on the test split (paper Fig. 7b), mean ± s.d. over repeats:",
                  "", "| N per task | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
        for n in ns:
            lines.append(f"| {n} | " + " | ".join(
                _cell([r["test_auc_event"] for r in rows if r["method"] == m and r["n_models"] == n], 4)
                for m in methods) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--report":  # tables of finished runs: --report FILE.json [FILE.json ...]
        for path in argv[1:]:
            print(f"### {path}\n")
            print(report(json.loads(Path(path).read_text())))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", help="generated events (file or folder); default: generate")
    parser.add_argument("--max-events", type=int,
                        help="with --events: the first N events of each process (file), before the split")
    parser.add_argument("--generate-dir", default="/tmp/hepms_select_scaling_events",
                        help="where to generate (a sub-folder per sample size and seed)")
    parser.add_argument("--events-per-process", type=int, default=1000)
    parser.add_argument("--copies", type=int, nargs="+", default=[1, 2, 3, 4, 6])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of every phase")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--task", default="calibration", choices=("calibration", "tau_id"))
    parser.add_argument("--methods", nargs="+", default=["grid", "darts", "spos"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="also write the JSON document here")
    parser.add_argument("--plot", default="select_scaling.png", help="log-log figure")
    parser.add_argument("--cpu-plot", help="log-log figure of the CPU time")
    parser.add_argument("--auc-plot", help="figure of the test Task-2 AUC versus N (paper Fig. 7b)")
    args = parser.parse_args(argv)
    if args.max_events is not None and (args.max_events < 1 or not args.events):
        parser.error("--max-events needs --events and a positive number")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    from hepms import select
    from hepms.generate import generate, read_events
    from hepms.select.plots import plot_scaling, plot_scaling_auc
    from hepms.select.scaling import fit_all, fit_phase, time_methods
    from hepms.study.dataset import sample_fingerprint

    machine = describe(args.device)
    print(f"machine: {json.dumps(machine)}", file=sys.stderr)
    fingerprint = None
    if args.events:
        events = read_events(args.events, entry_stop=args.max_events)
        if (Path(args.events) / "manifest.json").is_file():
            fingerprint = sample_fingerprint(Path(args.events))
    else:
        # One folder per sample size and seed, so a cached sample is never silently reused for
        # another configuration.
        folder = Path(args.generate_dir) / f"n{args.events_per_process}_seed{args.seed}"
        if not (folder / "manifest.json").is_file():
            generate(folder, events_per_process=args.events_per_process, mu=5, seed=args.seed,
                     workers=1, progress=False, pileup_pool=200, block_size=args.events_per_process,
                     pileup_process="nondiffractive")
        events = read_events(folder)
        fingerprint = sample_fingerprint(folder)
    data = select.prepare_selection_data(events, seed=args.seed)
    base = select.SearchSpace.create(data, args.task, BASE["upstream"], BASE["downstream"])
    settings = select.SearchSettings(
        pretrain_epochs=args.epochs, search_epochs=args.epochs, posttrain_epochs=args.epochs,
        batch_size=args.batch_size, device=args.device, progress=False, alpha_lr=0.01,
    )
    load_start = os.getloadavg()
    started, cpu_started = time.perf_counter(), time.process_time()
    rows = time_methods(base, data.train, data.val, settings, args.copies, args.methods, args.repeats,
                        test=data.test)
    fits = fit_all(rows)
    # CPU time as well: on a shared machine it is less inflated by other jobs than the wall time.
    fits_cpu = fit_all(rows, "cpu_seconds")
    phases = {
        "grid/reoptimise": fit_phase([r for r in rows if r["method"] == "grid"], "reoptimise"),
        "darts/search": fit_phase([r for r in rows if r["method"] == "darts"], "search"),
        "spos/search": fit_phase([r for r in rows if r["method"] == "spos"], "search"),
        "spos/evaluate": fit_phase([r for r in rows if r["method"] == "spos"], "evaluate"),
    }
    document = {
        "benchmark": "select_scaling",
        "machine": machine,
        "data_fingerprint": fingerprint,
        "settings": {**vars(args), "train_events": len(data.train), "val_events": len(data.val),
                     "test_events": len(data.test), "base_candidates": BASE},
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_started,
        # The machine is shared: the load average says how much the wall times are inflated.
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "rows": rows,
        "fits": fits,
        "fits_cpu": fits_cpu,
        "phase_fits": phases,
    }
    text = json.dumps(document, indent=1)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(args.json), text)
    if args.plot:
        plot_scaling(rows, fits, args.plot, title=f"{machine['cpu']}, {machine['torch_threads']} thread(s)")
        print(f"plot: {args.plot}", file=sys.stderr)
    if args.cpu_plot:
        plot_scaling(rows, fits_cpu, args.cpu_plot, key="cpu_seconds",
                     title=f"{machine['cpu']}, {machine['torch_threads']} thread(s)")
        print(f"plot: {args.cpu_plot}", file=sys.stderr)
    if args.auc_plot:
        plot_scaling_auc(rows, args.auc_plot, title=f"{machine['cpu']}, {machine['torch_threads']} thread(s)",
                         context=f"{len(data.test)} test events, {args.epochs} epochs per phase")
        print(f"plot: {args.auc_plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
