"""The machine line of a benchmark run: CPU model, cores, torch, threads, GPU, load."""
from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """What the numbers were measured on (a dict, saved with them)."""
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def machine_line(info: dict) -> str:
    """One line: 'AMD EPYC, 2 cores (2 usable), torch 2.13.0, 2 threads, no GPU, load 3.1/2.9/2.5'."""
    gpu = f"GPU {info['gpu']} (CUDA {info['cuda']})" if info.get("gpu") else "no GPU"
    load = "/".join(f"{v:.1f}" for v in info["load_average"]) if info.get("load_average") else "n/a"
    return (f"{info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), torch {info['torch']}, "
            f"{info['torch_threads']} torch threads, {gpu}, Python {info['python']}, "
            f"load average {load} at the start, {info['date']}")
