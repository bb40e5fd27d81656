"""Helpers shared by the benchmarks: the machine description and the JSON result files."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import platform
import socket
from collections.abc import Callable
from pathlib import Path

# The instruction sets that decide which CPU kernels oneDNN and XLA run (AVX2 only, AVX-512, native bfloat16):
# two "AMD EPYC" machines differ by up to 1.5x in the model benchmarks with and without them.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def machine_info() -> dict:
    """CPU model (with family, model number, microcode and the instruction sets in ISA_FLAGS as /proc/cpuinfo
    gives them), core count, memory, kernel and Python version of this machine."""
    model = platform.processor() or "unknown"
    cpu: dict[str, str] = {}
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = (part.strip() for part in line.partition(":"))
            if not key:
                break  # the first processor's block is enough
            cpu.setdefault(key, value)
        model = cpu.get("model name", model)
    except OSError:
        pass
    flags = set(cpu.get("flags", "").split())
    mem_gb = None
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {"cpu": model, "cpu_family": cpu.get("cpu family"), "cpu_model": cpu.get("model"),
            "microcode": cpu.get("microcode"), "isa": [f for f in ISA_FLAGS if f in flags], "cores": os.cpu_count(),
            "memory_gb": mem_gb, "kernel": platform.release(), "python": platform.python_version()}


def describe_machine(machine: dict) -> str:
    """One line for a report: CPU (family/model, microcode, instruction sets), cores, memory, kernel, Python."""
    cpu = machine.get("cpu")
    if machine.get("cpu_family") is not None:
        cpu += f" (family {machine['cpu_family']} model {machine['cpu_model']}"
        cpu += f", microcode {machine['microcode']}" if machine.get("microcode") else ""
        cpu += f", {' '.join(machine.get('isa') or ['no AVX2'])})"
    kernel = f", Linux {machine['kernel']}" if machine.get("kernel") else ""
    return f"{cpu}, {machine.get('cores')} cores, {machine.get('memory_gb')} GB{kernel}, Python {machine.get('python')}"


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


def generated(stamp: Path, make: Callable, *args, **kwargs):
    """Generated benchmark input, made once and kept: `make(*args, **kwargs)` runs (its result is returned and
    stored in `stamp`) unless `stamp` records the same arguments and the same source code of `make`, so that a
    changed generator or other sizes never reuse an old file. Returns make's result (or the stored one)."""
    key = {"generator": hashlib.sha256(inspect.getsource(make).encode()).hexdigest(),
           "args": json.loads(json.dumps([list(map(str, args)), {k: str(v) for k, v in kwargs.items()}]))}
    if stamp.is_file():
        recorded = json.loads(stamp.read_text())
        if recorded.get("key") == key:
            return recorded.get("result")
    result = make(*args, **kwargs)
    stamp.write_text(json.dumps({"key": key, "result": result}))
    return result


def _section_span(text: list[str], title: str) -> tuple[int, int] | None:
    """[start, end) of the section headed `title` (to the next heading of its level, or the end)."""
    start = next((k for k, line in enumerate(text) if line == title), None)
    if start is None:
        return None
    level = title.split()[0] + " "
    return start, next((k for k in range(start + 1, len(text)) if text[k].startswith(level)), len(text))


def read_section(report: Path, title: str) -> list[str]:
    """The lines of `report`'s section headed `title` (trailing blank lines left out), or [] without one."""
    text = report.read_text().splitlines() if report.exists() else []
    span = _section_span(text, title)
    lines = text[span[0]:span[1]] if span else []
    while lines and not lines[-1]:
        lines.pop()
    return lines


def replace_section(report: Path, title: str, lines: list[str]) -> None:
    """Put `lines` (starting with the heading `title`) in place of that section of `report`, or at its end."""
    text = report.read_text().splitlines() if report.exists() else []
    span = _section_span(text, title)
    if span is None:
        text = [*text, "", *lines] if text else list(lines)
    else:
        text = [*text[:span[0]], *lines, *([""] if span[1] < len(text) else []), *text[span[1]:]]
    report.write_text("\n".join(text) + "\n")


def free_ports(n: int) -> list[int]:
    """`n` TCP ports free on 127.0.0.1 now (for the processes of a local cluster)."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports
