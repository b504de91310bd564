"""Console policy shared by every ``hepms`` command and analyses/htautau/run.py.

``-q``/``-v``/``--no-progress`` and where messages go.

One policy for all subcommands (train, evaluate, plot, scan, config, generate, select):

* default: hepms's own log messages at INFO (what is being done: reading, building the dataset,
  one line per phase, epoch and trial), other libraries at WARNING;
* ``-q``/``--quiet``: warnings and errors only, no progress bars;
* ``-v``/``--verbose``: hepms at DEBUG;
* progress bars only when stderr is a terminal (and not ``-q``/``--no-progress``): in a log file
  tqdm's ``\\r``-separated frames are noise, and the per-epoch lines say the same.

Standard library only: the CLI imports this before deciding which heavy modules it needs.
"""
from __future__ import annotations

import argparse
import logging
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def add_verbosity_arguments(parser: argparse.ArgumentParser, progress: bool = True) -> None:
    """Add ``-q``, ``-v`` and (with ``progress``) ``--no-progress`` to a (sub)command's parser."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true",
                       help="warnings and errors only, no progress bars")
    group.add_argument("-v", "--verbose", action="store_true", help="debug messages")
    if progress:
        parser.add_argument("--no-progress", action="store_true",
                            help="no progress bars (default: bars only when stderr is a terminal)")


def setup_logging(args: argparse.Namespace) -> None:
    """Configure logging from ``-q``/``-v`` (see the module docstring)."""
    quiet, verbose = getattr(args, "quiet", False), getattr(args, "verbose", False)
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT, datefmt="%H:%M:%S")
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    # our messages only; matplotlib, fontTools & co. stay at WARNING
    logging.getLogger("hepms").setLevel(level)


def show_progress(args: argparse.Namespace) -> bool:
    """Whether to draw progress bars: stderr is a terminal, and neither -q nor --no-progress."""
    if getattr(args, "quiet", False) or getattr(args, "no_progress", False):
        return False
    return sys.stderr.isatty()
