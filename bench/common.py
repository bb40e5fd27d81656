"""Helpers shared by the benchmarks: the machine description and the JSON result files."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def machine_info() -> dict:
    """CPU model, core count, memory and Python version of this machine."""
    model = platform.processor() or "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "memory_gb": mem_gb, "python": platform.python_version()}


def write_result(out_dir: str, name: str, result: dict) -> Path:
    """Write one benchmark's numbers to out_dir/name.json."""
    path = Path(out_dir) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return path


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM), in MB. Unlike ru_maxrss it is not inherited from the
    parent across fork and exec, so a child process measures only itself."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")
