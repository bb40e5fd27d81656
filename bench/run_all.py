"""`make bench`: run every bench/bench_*.py, then write BENCHMARKS.md from their JSON results.

Each benchmark measures its own baseline in the same run and prints the ratio; this script only collects.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
OUT = REPO / "bench_output"


def _row(name: str, result: dict) -> str:
    if name == "bench_levels":
        o, b = result["ours"], result["baseline"]
        return (f"| Stage 1 level files, all levels ({result['input_rows']:,} input rows, "
                f"{o['rows_written']:,} rows written) | {o['seconds']:.1f} s, peak {o['peak_rss_mb']:.0f} MB "
                f"| pandas read + write as many rows: {b['seconds']:.1f} s, peak {b['peak_rss_mb']:.0f} MB "
                f"| **{result['ratio_ours_over_baseline']:.2f}x** the baseline's time (target <= 2x) |")
    if name == "bench_image_params":
        return (f"| Stage 2 image parameters ({result.get('n_images')} JPEGs {result.get('image_size', '')}) "
                f"| {result.get('ours_seconds', 0):.2f} s | full decode + md5 (the original): "
                f"{result.get('baseline_seconds', 0):.2f} s | **{result.get('speedup', 0):.1f}x** faster "
                f"(target >= 10x) |")
    return f"| {name} | see bench_output/{name}.json | | |"


def main() -> int:
    scripts = sorted(BENCH.glob("bench_*.py"))
    for script in scripts:
        print(f"== {script.name}", flush=True)
        proc = subprocess.run([sys.executable, str(script), "--out-dir", str(OUT)], cwd=REPO)
        if proc.returncode != 0:
            print(f"{script.name} failed (exit {proc.returncode})", file=sys.stderr)
            return 1
    results = {p.stem: json.loads(p.read_text()) for p in sorted(OUT.glob("bench_*.json"))}
    machine = next(iter(results.values()))["machine"] if results else {}
    lines = ["# Benchmarks", "",
             "Written by `make bench` (bench/run_all.py). Each ratio is measured against a baseline run in the same",
             "benchmark run, on the machine below.", "",
             f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores, {machine.get('memory_gb')} GB, "
             f"Python {machine.get('python')}; no GPU.", "",
             "| Benchmark | Ours | Baseline | Ratio |", "| --- | --- | --- | --- |"]
    lines += [_row(name, r) for name, r in results.items()]
    (REPO / "BENCHMARKS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
