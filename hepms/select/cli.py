"""``hepms select <config.yaml> [--method grid|darts|spos] [--out DIR] ...``: the MSNAS study.

Runs model selection for the multi-step chain as configured (see
``analyses/htautau/config/select.yaml``), evaluates each selected chain once on the test split and
writes results and plots to ``--out``. Command-line options override the config's study section.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from hepms.console import add_verbosity_arguments, setup_logging, show_progress

__all__ = ["main", "build_parser", "row_line"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hepms select",
        description="Model selection for multi-step models: grid search, DARTS, SPOS-NAS.",
    )
    parser.add_argument("config", help="study configuration (YAML)")
    parser.add_argument("--method", action="append", choices=("grid", "darts", "spos"),
                        help="selection method (repeat for several; default: the config's)")
    parser.add_argument("--out", default="runs/select", help="output folder (default runs/select)")
    parser.add_argument("--v1", type=float, nargs="+", help="Task-1 weights v1 to scan")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (one selection per seed)")
    parser.add_argument("--task", choices=("calibration", "tau_id"), help="Task 1 definition")
    parser.add_argument("--events", help="generated events (file or folder) instead of data.path")
    parser.add_argument("--device", help="torch device, e.g. cuda")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--no-plots", action="store_true", help="skip the figures")
    parser.add_argument("--study", choices=("select", "reoptimisation"), default="select",
                        help="select: the selection methods (default); reoptimisation: every non-dummy pair "
                             "with and without re-optimisation and the v1 scan of the best pair "
                             "(MSNAS paper section 4.4.1; --method is not used)")
    add_verbosity_arguments(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``hepms select``; returns the exit status."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    setup_logging(args)

    from hepms.select.config import load_selection_config
    from hepms.select.study import run_study

    try:
        config = load_selection_config(args.config)
    except ValueError as error:
        print(f"hepms select: {error}", file=sys.stderr)
        return 2
    if args.method:
        config.methods = tuple(dict.fromkeys(args.method))
    if args.v1:
        if any(not 0.0 <= v <= 1.0 for v in args.v1):
            print("hepms select: --v1 values must be in [0, 1]", file=sys.stderr)
            return 2
        config.v1 = tuple(args.v1)
    if args.seeds:
        config.seeds = tuple(args.seeds)
    if args.task:
        config.task = args.task
    if args.events:
        config.data["path"] = args.events
    if args.device:
        config.settings = config.settings.replace(device=args.device)
    if args.threads:
        config.threads = args.threads
    if args.no_plots:
        config.plots = False

    if args.study == "reoptimisation":
        from hepms.select.reoptimisation import run_reoptimisation_study

        result = run_reoptimisation_study(config, args.out, progress=show_progress(args))
        print(f"hepms select --study reoptimisation: {len(result['rows'])} chains in {result['seconds']:.0f} s "
              f"({result['cpu_seconds']:.0f} CPU s) -> {args.out}")
        print((Path(args.out) / "summary.md").read_text())
        return 0
    summary = run_study(config, args.out, progress=show_progress(args))
    rows = summary["rows"]
    metric = "test_mse" if config.task == "calibration" else "test_auc_tau"
    print(f"hepms select: {len(rows)} selections in {summary['seconds']:.0f} s -> {args.out}")
    print(f"{'method':<6} {'v1':>5} {'seed':>4}  {'selected pair':<32} {'test AUC':>8} {metric:>12}"
          + ("  validity" if any("test_validity" in r for r in rows) else ""))
    for r in rows:
        print(row_line(r, metric))
    return 0


def row_line(row: dict, metric: str) -> str:
    """One selection as a line of the table ``hepms select`` prints; ``n/a`` for a metric that
    does not apply (None: :func:`hepms.select.study.mark_not_applicable`)."""
    from hepms.select.records import selected_pair

    def number(value: Optional[float], spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    pair = selected_pair(row).replace("|", " + ")
    line = (f"{row['method']:<6} {row['v1']:>5g} {row['seed']:>4}  {pair:<32} "
            f"{number(row['test_auc_event'], '.4f'):>8} {number(row.get(metric, float('nan')), '.4g'):>12}")
    if "test_validity" in row:
        line += f"  {number(row['test_validity'], '.3f')}"
    return line


if __name__ == "__main__":
    sys.exit(main())
