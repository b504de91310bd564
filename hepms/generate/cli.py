"""Command line of ``hepms generate`` (also ``python -m hepms.generate``).

Example::

    hepms generate data/htautau --events 50000 --mu 50 --seed 1 --plots
    python -m hepms.generate /tmp/small --events 200 --mu 0 --workers 1
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from hepms.console import add_verbosity_arguments, setup_logging, show_progress


def _process_list(text: str) -> list[str]:
    """``H,Z`` -> ``["H", "Z"]``: one argument, so it cannot swallow the output folder."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected process names separated by commas, e.g. H,Z; got {text!r}")
    return names


def build_parser(prog: str = "hepms generate") -> argparse.ArgumentParser:
    """The argparse parser (exposed so that the ``hepms`` command can embed it)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Generate H->tautau / Z->tautau events (Pythia 8 + pileup + parametric detector + "
        "anti-kT jets) and write NanoAOD-like ROOT files plus manifest.json.",
    )
    parser.add_argument("output_dir", type=Path, help="output folder (created if missing)")
    from hepms.generate.config import GENERATION_KEYS  # light: the defaults, written once there

    default = {name: copy.deepcopy(key.default) for name, key in GENERATION_KEYS.items()}
    parser.add_argument("--events", type=int, default=default["events_per_process"],
                        help=f"events per process (default {default['events_per_process']})")
    parser.add_argument("--processes", type=_process_list, default=default["processes"], metavar="H,Z",
                        help=f"processes, comma-separated: H and/or Z (default {','.join(default['processes'])})")
    parser.add_argument("--mu", type=float, default=default["mu"],
                        help=f"mean pileup interactions (default {default['mu']:g}; 0: none)")
    parser.add_argument("--chs", dest="chs", action="store_true", default=default["chs"],
                        help="remove charged pileup with a track (charged-hadron subtraction; the default)")
    parser.add_argument("--no-chs", dest="chs", action="store_false", help="keep charged pileup (no CHS)")
    parser.add_argument("--seed", type=int, default=default["seed"], help=f"master seed (default {default['seed']})")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--block-size", type=int, default=default["block_size"],
                        help=f"events per seed block (default {default['block_size']})")
    parser.add_argument("--pileup-pool", type=int, default=default["pileup_pool"],
                        help="minimum-bias events per split pool (default: sized from the sample, "
                        "max(200, ceil(mu * events of the split / 25)))")
    parser.add_argument("--split-fractions", type=float, nargs=3, default=default["split_fractions"],
                        metavar=("TRAIN", "VAL", "TEST"),
                        help="fractions of train / validation / test events, decided at generation "
                        f"(default {' '.join(map(str, default['split_fractions']))}); each split has its own "
                        "pileup pool")
    parser.add_argument("--pileup-process", default=default["pileup_process"],
                        help=f"inelastic or nondiffractive (default {default['pileup_process']})")
    parser.add_argument("--no-pileup-subtraction", action="store_true", help="keep raw jet pT (no rho*A)")
    parser.add_argument(
        "--plots", nargs="?", const="", default=None, metavar="DIR",
        help="also write validation plots (default folder: OUTPUT_DIR/plots)",
    )
    add_verbosity_arguments(parser)
    return parser


def _missing_generators() -> list[str]:
    """The generator packages (an optional extra) that are not installed."""
    import importlib.util

    return [name for name in ("pythia8mc", "fastjet") if importlib.util.find_spec(name) is None]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hepms generate``; return the exit status (0 ok, 2 bad settings)."""
    args = build_parser().parse_args(argv)
    setup_logging(args)
    missing = _missing_generators()
    if missing:
        print(f"hepms generate: error: {' and '.join(missing)} not installed; they are the optional "
              "'generate' extra: pip install --no-build-isolation \".[generate]\" (from the repository)",
              file=sys.stderr)
        return 2
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
            progress=show_progress(args),  # no bars in a log file: one line per block instead
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
