"""Start-up time of the ``hepms`` command and of ``import hepms``, in fresh processes.

    python benchmarks/startup.py [--repeats 7] [--python OTHER_PYTHON] [--json out.json]

Each case runs ``--repeats`` times (after one warm-up run, so the files are in the page cache) in a
new interpreter; the wall time of the whole process is recorded and the median, minimum and
maximum printed as JSON with the machine. ``hepms --help`` runs what the installed console script
runs (``from hepms.cli import main; main()``). Reference points: an empty interpreter and
``import torch``. ``--python`` measures with another interpreter, e.g. the venv of an older
checkout (an editable install there takes precedence over PYTHONPATH, so a path is not enough).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Optional

CONSOLE_SCRIPT = "import sys; from hepms.cli import main; sys.exit(main())"
CASES = {
    "python (empty interpreter)": ["-c", "pass"],
    "import torch": ["-c", "import torch"],
    "import hepms": ["-c", "import hepms"],
    "hepms --help": ["-c", CONSOLE_SCRIPT, "--help"],
    "hepms --version": ["-c", CONSOLE_SCRIPT, "--version"],
    "import hepms + first op call": ["-c", "import torch, hepms; hepms.segment_sum(torch.ones(2), torch.tensor([0, 2]))"],
}


def time_case(python: str, args: list[str], repeats: int) -> dict:
    command = [python, *args]
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
        elapsed = time.perf_counter() - start
        if result.returncode != 0:  # e.g. --version on a version that lacks it: say so, time the rest
            return {"error": f"exit status {result.returncode}: {result.stderr.decode()[-300:].strip()}"}
        if i:  # the first run warms the page cache
            times.append(elapsed)
    return {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
            "max_s": round(max(times), 3), "runs": repeats}


def machine() -> dict:
    """Described without importing torch or hepms in this process (the subprocesses measure them)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "load_average_1min": load}


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per case (median reported)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter to measure (default: this one), e.g. another checkout's venv")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    probe = "import hepms, os; print(hepms.__version__, os.path.dirname(hepms.__file__))"
    version, location = subprocess.run([args.python, "-c", probe], capture_output=True, text=True,
                                       check=True).stdout.split()
    result = {"machine": {**machine(), "hepms": version, "hepms_path": location},
              "cases": {name: time_case(args.python, case, args.repeats) for name, case in CASES.items()}}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as out:
            out.write(text + "\n")


if __name__ == "__main__":
    main()
