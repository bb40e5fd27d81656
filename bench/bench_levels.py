"""Benchmark: stage 1 level files on a synthetic annotation file with Open Images statistics.

Ratio = our time for all levels (1-5 and low samples, one input file) / the time pandas needs just to read
that CSV and write as many rows as we write. Each phase runs in its own process so its peak memory is its
own. Target: at most 2x.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import generated, machine_info, peak_rss_mb, write_result  # noqa: E402


def make_annotations(path: Path, n_rows: int, seed: int = 0) -> None:
    """A train-layout box CSV: OID-like ids, per-image box counts, class frequencies and flags."""
    from oid_retinanet.oid.classes import read_class_descriptions
    from oid_retinanet.resources import resource_path

    rng = np.random.default_rng(seed)
    mids = np.array(read_class_descriptions(resource_path("class-descriptions-boxable.csv")).mids)
    freq = 1.0 / np.arange(1, len(mids) + 1) ** 1.1  # long-tailed like OID
    freq /= freq.sum()
    per_image = rng.geometric(1 / 8.4, size=n_rows // 4)
    per_image = per_image[np.cumsum(per_image) <= n_rows]
    n = int(per_image.sum())
    ids = np.array([f"{x:016x}" for x in rng.integers(0, 2**63, size=len(per_image))])
    x = np.sort(rng.random((n, 2)), axis=1)
    y = np.sort(rng.random((n, 2)), axis=1)
    flags = lambda p: np.where(rng.random(n) < 0.02, -1, (rng.random(n) < p).astype(int))  # noqa: E731
    df = pd.DataFrame({
        "ImageID": np.repeat(ids, per_image),
        "Source": np.where(rng.random(n) < 0.8, "xclick", "activemil"),
        "LabelName": mids[rng.choice(len(mids), size=n, p=freq)],
        "Confidence": 1,
        "XMin": x[:, 0].round(6), "XMax": x[:, 1].round(6), "YMin": y[:, 0].round(6), "YMax": y[:, 1].round(6),
        "IsOccluded": flags(0.6), "IsTruncated": flags(0.3), "IsGroupOf": (rng.random(n) < 0.06).astype(int),
        "IsDepiction": flags(0.05), "IsInside": flags(0.01),
    })
    df.to_csv(path, index=False)


def phase_ours(src: Path, out: Path) -> dict:
    from oid_retinanet.oid.annotations import read_boxes
    from oid_retinanet.oid.classes import read_class_descriptions
    from oid_retinanet.oid.hierarchy import Hierarchy
    from oid_retinanet.oid.levels import LEVELS_2018, levels_2018, write_level_files
    from oid_retinanet.resources import resource_path

    t = time.perf_counter()
    classes = read_class_descriptions(resource_path("class-descriptions-boxable.csv"))
    specs = levels_2018(classes)
    summaries = write_level_files([specs[k] for k in LEVELS_2018], {k: {"train": str(src)} for k in LEVELS_2018},
                                  str(out), read=lambda p: read_boxes(p, classes),
                                  hierarchy=Hierarchy.from_json(resource_path("bbox_labels_600_hierarchy.json")))
    seconds = time.perf_counter() - t
    rows = sum(s.direct_rows + s.copied_rows + s.negative_images for s in summaries)
    return {"seconds": seconds, "rows_written": rows}


def phase_baseline(src: Path, out: Path, rows: int) -> dict:
    t = time.perf_counter()
    df = pd.read_csv(src)
    reps = -(-rows // len(df))
    big = pd.concat([df] * reps, ignore_index=True).iloc[:rows] if reps > 1 else df.iloc[:rows]
    t_read = time.perf_counter() - t
    out.mkdir(parents=True, exist_ok=True)
    t2 = time.perf_counter()
    big.to_csv(out / "baseline.csv", index=False)
    t_write = time.perf_counter() - t2
    return {"seconds": t_read + t_write, "read_seconds": t_read, "write_seconds": t_write}


def run_phase(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--phase", *args], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--out-dir", default="bench_output")
    p.add_argument("--phase", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.phase:
        kind, src, out, *rest = args.phase
        result = phase_ours(Path(src), Path(out)) if kind == "ours" else phase_baseline(Path(src), Path(out),
                                                                                         int(rest[0]))
        result["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(result))
        return 0

    work = Path(args.out_dir) / "levels"
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"train-annotations-bbox-{args.rows}.csv"
    generated(src.with_suffix(".stamp.json"), make_annotations, src, args.rows)
    n_in = sum(1 for _ in open(src)) - 1
    ours = run_phase("ours", str(src), str(work / "ours"))
    base = run_phase("baseline", str(src), str(work / "baseline"), str(ours["rows_written"]))
    ratio = ours["seconds"] / base["seconds"]
    print(f"input rows {n_in:,}; rows written (all levels) {ours['rows_written']:,}")
    print(f"ours:     {ours['seconds']:7.2f} s  peak RSS {ours['peak_rss_mb']:7.0f} MB")
    print(f"baseline: {base['seconds']:7.2f} s  peak RSS {base['peak_rss_mb']:7.0f} MB "
          f"(read {base['read_seconds']:.2f} s + write {base['write_seconds']:.2f} s)")
    print(f"level files: {ratio:.2f}x the time of pandas read + write of as many rows (target <= 2x)")
    write_result(args.out_dir, "bench_levels", {
        "input_rows": n_in, "ours": ours, "baseline": base, "ratio_ours_over_baseline": ratio,
        "target": "<= 2.0", "machine": machine_info()})
    for f in (work / "baseline").glob("*.csv"):
        f.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
