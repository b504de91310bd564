"""Command line of ``hepms generate`` (also ``python -m hepms.generate``).

Example::

    hepms generate data/htautau --events 50000 --mu 50 --seed 1 --plots
    python -m hepms.generate /tmp/small --events 200 --mu 0 --workers 1
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path


def build_parser(prog: str = "hepms generate") -> argparse.ArgumentParser:
    """The argparse parser (exposed so that the ``hepms`` command can embed it)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Generate H->tautau / Z->tautau events (Pythia 8 + pileup + parametric detector + "
        "anti-kT jets) and write NanoAOD-like ROOT files plus manifest.json.",
    )
    parser.add_argument("output_dir", type=Path, help="output folder (created if missing)")
    parser.add_argument("--events", type=int, default=1000, help="events per process (default 1000)")
    parser.add_argument("--processes", nargs="+", default=["H", "Z"], help="processes: H and/or Z")
    parser.add_argument("--mu", type=float, default=50.0, help="mean pileup interactions (default 50; 0: none)")
    parser.add_argument("--chs", dest="chs", action="store_true", default=True,
                        help="remove charged pileup with a track (charged-hadron subtraction; the default)")
    parser.add_argument("--no-chs", dest="chs", action="store_false", help="keep charged pileup (no CHS)")
    parser.add_argument("--seed", type=int, default=12345, help="master seed (default 12345)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--block-size", type=int, default=500, help="events per seed block (default 500)")
    parser.add_argument("--pileup-pool", type=int, default=None,
                        help="minimum-bias events per split pool (default: sized from the sample, "
                        "max(200, ceil(mu * events of the split / 25)))")
    parser.add_argument("--split-fractions", type=float, nargs=3, default=[0.6, 0.2, 0.2],
                        metavar=("TRAIN", "VAL", "TEST"),
                        help="fractions of train / validation / test events, decided at generation "
                        "(default 0.6 0.2 0.2); each split has its own pileup pool")
    parser.add_argument("--pileup-process", default="inelastic", help="inelastic (default) or nondiffractive")
    parser.add_argument("--no-pileup-subtraction", action="store_true", help="keep raw jet pT (no rho*A)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--plots", nargs="?", const="", default=None, metavar="DIR",
        help="also write validation plots (default folder: OUTPUT_DIR/plots)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hepms generate``; return the exit status (0 ok, 2 bad settings)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose:  # our messages only; matplotlib & co. stay at WARNING
        logging.getLogger("hepms").setLevel(logging.INFO)
    from hepms.generate.pipeline import generate
    from hepms.generate.plots import summarize, validation_plots

    try:
        manifest = generate(
            args.output_dir,
            events_per_process=args.events,
            processes=tuple(args.processes),
            mu=args.mu,
            chs=args.chs,
            seed=args.seed,
            workers=args.workers,
            progress=not args.no_progress,
            block_size=args.block_size,
            pileup_pool=args.pileup_pool,
            pileup_process=args.pileup_process,
            jet_pileup_subtraction=not args.no_pileup_subtraction,
            split_fractions=tuple(args.split_fractions),
        )
    except ValueError as exc:
        print(f"hepms generate: error: {exc}", file=sys.stderr)
        return 2
    timing = manifest["timing"]
    print(f"wrote {', '.join(f['path'] for f in manifest['files'])} and manifest.json to {args.output_dir}")
    print(f"{sum(f['events'] for f in manifest['files'])} events in {timing['wall_s']:.1f} s "
          f"with {timing['workers']} worker(s) ({timing['events_per_s']} events/s)")
    print(json.dumps(summarize(args.output_dir), indent=2))
    if args.plots is not None:
        outdir = Path(args.plots) if args.plots else args.output_dir / "plots"
        files = validation_plots(args.output_dir, outdir)
        print(f"wrote {len(files)} plot files to {outdir}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
