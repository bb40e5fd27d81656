"""`make demo`: make the demo dataset, then run each pipeline script in the documented order, as a user would.

Writes everything under demo_output/ (or --output-dir) and demo_output/summary.json with each stage's
command, output files and seconds. Stages that do not exist yet in this checkout are listed as pending.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from oid_retinanet.demo.dataset import DatasetSpec, make_dataset

REPO = Path(__file__).resolve().parent.parent.parent


def _stages(data: Path, out: Path) -> list[tuple[str, list[str], Path]]:
    """(name, script and arguments, output folder) for each stage, in pipeline order."""
    levels = out / "output"
    return [
        ("1. level files (2018)", ["create_files_for_training_by_levels.py", "--dataset-path", str(data),
                                   "--output-path", str(levels), "--low-samples"], levels),
        ("1b. level files (2019)", ["labelProcess/create_files_for_training_by_levels.py", "--train-csv",
                                    str(data / "challenge-2019-train-detection-bbox.csv"),
                                    "--output-path", str(out / "output_2019")], out / "output_2019"),
        ("2. image parameters", ["retinanet_training_level_1/find_image_parameters.py", "--dataset-path", str(data),
                                 "--output-path", str(levels), "--subsets", "train", "validation", "test"], levels),
    ]


def _files(folder: Path, since: float) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.stat().st_mtime >= since)


def _table(paths: list[str], limit: int = 12) -> str:
    lines = []
    for p in paths[:limit]:
        with open(p, "rb") as f:
            rows = sum(1 for _ in f)
        lines.append(f"    {os.path.relpath(p):<90} {rows:>8} lines")
    if len(paths) > limit:
        lines.append(f"    ... and {len(paths) - limit} more")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--output-dir", default="demo_output")
    p.add_argument("--seed", type=int, default=DatasetSpec.seed)
    args = p.parse_args(argv)
    out = Path(args.output_dir).resolve()
    data = out / "dataset"
    summary: dict = {"stages": []}

    t = time.perf_counter()
    counts = make_dataset(str(data), DatasetSpec(seed=args.seed))
    seconds = time.perf_counter() - t
    print(f"== 0. dataset: {counts} images under {data} ({seconds:.1f} s)")
    summary["stages"].append({"name": "0. dataset", "outputs": [str(data)], "seconds": round(seconds, 2)})

    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for name, cmd, folder in _stages(data, out):
        script = REPO / cmd[0]
        if not script.exists():
            print(f"== {name}: pending ({cmd[0]} is not in this checkout yet)")
            summary["stages"].append({"name": name, "pending": True})
            continue
        start_wall = time.time() - 1
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, str(script), *cmd[1:]], cwd=REPO, env=env, capture_output=True,
                              text=True)
        seconds = time.perf_counter() - t
        if proc.returncode != 0:
            print(proc.stdout + proc.stderr, file=sys.stderr)
            print(f"== {name}: FAILED (exit {proc.returncode})", file=sys.stderr)
            return 1
        outputs = _files(folder, start_wall)
        print(f"== {name}: {seconds:.1f} s\n   $ python {' '.join(cmd)}\n{_table(outputs)}")
        summary["stages"].append({"name": name, "command": ["python", *cmd], "outputs": outputs,
                                  "seconds": round(seconds, 2)})

    path = out / "summary.json"
    path.write_text(json.dumps(summary, indent=1))
    print(f"summary: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
