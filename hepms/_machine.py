"""Description of the machine a timing ran on (benchmarks and the demo print it with numbers)."""
from __future__ import annotations

import os
import platform

import torch


def git_commit() -> "str | None":
    """The git commit of the hepms tree this process imported (None outside a git checkout, e.g. an
    installed wheel or a batch node with a copy of the package). Read-only."""
    import subprocess
    from pathlib import Path

    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform reports."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: torch.device | str = "cpu") -> dict:
    """Platform, CPU, thread count, torch version and (for CUDA) the GPU."""
    from hepms.ops import extension_available

    device = torch.device(device)
    description = {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "hepms_extension": extension_available(),
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        description["gpu"] = props.name
        description["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        description["cuda"] = torch.version.cuda
    return description
