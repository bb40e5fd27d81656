"""Benchmark: stage 5 hierarchy expansion on 50,000 images x 60 boxes of level-1 classes.

Every timing is a whole process as a user runs it (interpreter start and imports included), measured from
outside; peak memory is the process's own. Three comparisons, each measured in this run:

- ours: `create_higher_level_predictions_from_level_1_predictions_csv.py IN OUT` (the 2018 defaults);
- original (per box): a Python implementation of the original's algorithm (pandas read, per image a numpy
  string array, a loop over boxes and parents, nms_standard per parent class, string concatenation, pandas
  write). It runs on the first --slow-images images and on the first image alone; the difference gives its
  time per image, scaled linearly to all images, plus the one-image run's fixed cost (start, imports, the
  parent lookup). Its output must equal ours on those images. Target: ours at least 20x faster;
- read + write: pandas reading the input CSV and writing a CSV as large as our output (the bare cost of the
  I/O; the raw file read + write floor is reported too). Target: ours within 2x of pandas read + write.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import generated, machine_info, write_result  # noqa: E402

SCRIPT = REPO / "create_higher_level_predictions_from_level_1_predictions_csv.py"


def level_1_mids() -> list[str]:
    """The 443 level-1 (leaf) classes of the 2018 model, as MIDs."""
    from oid_retinanet.oid.classes import read_class_descriptions
    from oid_retinanet.oid.levels import levels_2018
    from oid_retinanet.resources import resource_path

    return levels_2018(read_class_descriptions(resource_path("class-descriptions-boxable.csv")))["1"].mids


def make_predictions(path: Path, images: int, boxes: int, seed: int = 0) -> None:
    """Predictions like a detector's: boxes in clusters of 4 around 15 objects, the class repeated within a
    cluster half of the time, scores with 6 decimals and coordinates with 4 (the original's format)."""
    rng = np.random.default_rng(seed)
    mids = np.array(level_1_mids())
    with open(path, "w", encoding="utf-8") as f:
        f.write("ImageId,PredictionString\n")
        for i in range(images):
            centre = np.repeat(rng.random((boxes // 4 + 1, 2)), 4, axis=0)[:boxes]
            size = np.repeat(rng.uniform(0.05, 0.5, (boxes // 4 + 1, 2)), 4, axis=0)[:boxes]
            jitter = rng.normal(0, 0.02, (boxes, 4))
            x1 = np.clip(centre[:, 0] - size[:, 0] / 2 + jitter[:, 0], 0, 1)
            y1 = np.clip(centre[:, 1] - size[:, 1] / 2 + jitter[:, 1], 0, 1)
            x2 = np.clip(centre[:, 0] + size[:, 0] / 2 + jitter[:, 2], x1, 1)
            y2 = np.clip(centre[:, 1] + size[:, 1] / 2 + jitter[:, 3], y1, 1)
            labels = mids[rng.integers(0, len(mids), boxes)]
            same = np.repeat(rng.random(boxes // 4 + 1) < 0.5, 4)[:boxes]
            labels = np.where(same, np.repeat(labels[::4], 4)[:boxes], labels)
            scores = np.sort(rng.random(boxes))[::-1]
            f.write(f"{rng.integers(0, 2**63):016x},")
            f.write("".join(f"{m} {s:.6f} {a:.4f} {b:.4f} {c:.4f} {d:.4f} "
                            for m, s, a, b, c, d in zip(labels, scores, x1, y1, x2, y2)))
            f.write("\n")


def run_process(args: list[str]) -> dict:
    """Run a command; its wall time and peak RSS, measured from outside."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen(args, cwd=REPO, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{err.read().decode()[-2000:]}")
        return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024, "stdout": out.read().decode()}


# ----------------------------------------------------------------------------------------------------------
# The phases run in their own processes


def phase_original(src: str, out: str) -> None:
    """A per-box Python implementation of the original's algorithm, with the original's I/O (pandas)."""
    import json as json_module

    import pandas as pd

    from oid_retinanet.resources import resource_path

    def names(file: str) -> tuple[dict, dict]:
        by_mid, by_name = {}, {}
        for line in open(resource_path(file)):
            mid, name = line.strip().split(",")
            by_mid[mid], by_name[name] = name, mid
        return by_mid, by_name

    d1, d2 = names("challenge-2018-class-descriptions-500.csv")
    v4 = names("class-descriptions-boxable.csv")[0]
    parents = {name: [] for name in v4.values()}

    def set_parents(path: list, node: dict) -> None:
        for child in node["Subcategory"]:
            parents[v4[child["LabelName"]]] += path
            if "Subcategory" in child:
                set_parents(path + [v4[child["LabelName"]]], child)

    tree = json_module.load(open(resource_path("bbox_labels_600_hierarchy.json")))
    for top in tree["Subcategory"]:
        if "Subcategory" in top:
            set_parents([v4[top["LabelName"]]], top)
    parents = {k: list(set(v)) for k, v in parents.items()}

    def nms_standard(dets: np.ndarray, thresh: float) -> list:
        scores, x1, y1, x2, y2 = dets.T
        areas = (x2 - x1 + 1) * (y2 - y1 + 1)
        order = scores.argsort()[::-1]
        keep = []
        while order.size > 0:
            i = order[0]
            keep.append(i)
            w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
            h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
            inter = w * h
            ovr = inter / (areas[i] + areas[order[1:]] - inter)
            order = order[np.where(ovr <= thresh)[0] + 1]
        return keep

    def extend_boxes(boxes: np.ndarray) -> np.ndarray:
        new_boxes = []
        for i in range(boxes.shape[0]):
            for p in parents[d1[boxes[i][0]]]:
                if p in d2:
                    new_boxes.append(np.array([d2[p]] + list(boxes[i][1:])))
        new_boxes = np.array(new_boxes)
        if len(new_boxes) == 0:
            return boxes
        keep_boxes = []
        for u in np.unique(new_boxes[:, 0]):
            part = new_boxes[new_boxes[:, 0] == u]
            keep_boxes.append(part[nms_standard(part[:, 1:].astype(np.float64), 0.75)])
        return np.concatenate((boxes, np.concatenate(keep_boxes)))

    subm = pd.read_csv(src, dtype=str)
    out_strings = []
    for string in subm["PredictionString"].values:
        if str(string) == "nan":
            out_strings.append("")
            continue
        arr = string.strip().split(" ")
        boxes = np.array([arr[j:j + 6] for j in range(0, len(arr), 6)])
        s = ""
        for row in extend_boxes(boxes):
            for token in row:
                s += str(token) + " "
        out_strings.append(s)
    subm["PredictionString"] = out_strings
    subm.to_csv(out, index=False)


def phase_pandas_read_write(src: str, out: str, out_bytes: int) -> None:
    """Read the input with pandas; write a CSV of `out_bytes` bytes with pandas (the input's rows, repeated)."""
    import pandas as pd

    t = time.perf_counter()
    df = pd.read_csv(src, dtype=str)
    t_read = time.perf_counter() - t
    t = time.perf_counter()
    df.to_csv(out, index=False)
    written = os.path.getsize(out)
    row_bytes = max(written / max(len(df), 1), 1)
    while written < out_bytes:
        rows = min(len(df), int((out_bytes - written) / row_bytes) + 1)
        df.iloc[:rows].to_csv(out, index=False, header=False, mode="a")
        written = os.path.getsize(out)
    print(json.dumps({"read_seconds": t_read, "write_seconds": time.perf_counter() - t, "bytes": written}))


def phase_raw_read_write(src: str, out: str, out_bytes: int) -> None:
    """Read the input's bytes; write as many bytes as our output (the I/O floor)."""
    data = Path(src).read_bytes()
    with open(out, "wb") as f:
        left = out_bytes
        while left > 0:
            f.write(data[:left])
            left -= min(left, len(data))


# ----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=50_000)
    p.add_argument("--boxes", type=int, default=60, help="boxes per image")
    p.add_argument("--slow-images", type=int, default=2_000,
                   help="images the per-box implementation runs on (its time is scaled to --images)")
    p.add_argument("--out-dir", default="bench_output")
    p.add_argument("--phase", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.phase:
        kind, *rest = args.phase
        if kind == "original":
            phase_original(*rest)
        elif kind == "pandas":
            phase_pandas_read_write(rest[0], rest[1], int(rest[2]))
        else:
            phase_raw_read_write(rest[0], rest[1], int(rest[2]))
        return 0

    work = Path(args.out_dir).resolve() / "expand"
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"predictions_{args.images}x{args.boxes}.csv"
    generated(src.with_suffix(".stamp.json"), make_predictions, src, args.images, args.boxes)
    subset, first = work / f"predictions_first_{args.slow_images}.csv", work / "predictions_first_1.csv"
    with open(src, encoding="utf-8") as f, open(subset, "w", encoding="utf-8") as g:
        for k, line in enumerate(f):
            if k > args.slow_images:
                break
            g.write(line)
    first.write_text("".join(subset.read_text(encoding="utf-8").splitlines(keepends=True)[:2]), encoding="utf-8")
    me = [sys.executable, str(Path(__file__).resolve())]

    ours = run_process([sys.executable, str(SCRIPT), str(src), str(work / "ours.csv")])
    out_bytes = os.path.getsize(work / "ours.csv")
    ours_subset = run_process([sys.executable, str(SCRIPT), str(subset), str(work / "ours_subset.csv")])
    original = run_process(me + ["--phase", "original", str(subset), str(work / "original_subset.csv")])
    original_one = run_process(me + ["--phase", "original", str(first), str(work / "original_one.csv")])
    same = (work / "ours_subset.csv").read_bytes() == (work / "original_subset.csv").read_bytes()
    pandas_rw = run_process(me + ["--phase", "pandas", str(src), str(work / "baseline.csv"), str(out_bytes)])
    pandas_rw.update(json.loads(pandas_rw.pop("stdout").strip().splitlines()[-1]))
    raw_rw = run_process(me + ["--phase", "raw", str(src), str(work / "baseline.csv"), str(out_bytes)])
    for name in ("ours.csv", "baseline.csv", "ours_subset.csv", "original_subset.csv", "original_one.csv"):
        (work / name).unlink(missing_ok=True)

    per_image = (original["seconds"] - original_one["seconds"]) / (args.slow_images - 1)
    original_scaled = original_one["seconds"] + per_image * (args.images - 1)
    speedup = original_scaled / ours["seconds"]
    ratio = ours["seconds"] / pandas_rw["seconds"]
    boxes_out = ours.pop("stdout").strip().splitlines()[-1]
    print(f"input: {args.images:,} images x {args.boxes} boxes, {os.path.getsize(src) / 2**20:.0f} MB; "
          f"output {out_bytes / 2**20:.0f} MB ({boxes_out})")
    print(f"ours:                {ours['seconds']:7.2f} s  peak RSS {ours['peak_rss_mb']:6.0f} MB "
          f"({args.slow_images:,} images: {ours_subset['seconds']:.2f} s)")
    print(f"original per box:    {original_scaled:7.1f} s  ({original['seconds']:.1f} s for {args.slow_images:,} "
          f"images, {original_one['seconds']:.2f} s for one: {per_image * 1e3:.2f} ms an image, scaled); "
          f"same output on those images: {same}")
    print(f"pandas read + write: {pandas_rw['seconds']:7.2f} s  peak RSS {pandas_rw['peak_rss_mb']:6.0f} MB "
          f"(read {pandas_rw['read_seconds']:.2f} s + write {pandas_rw['write_seconds']:.2f} s)")
    print(f"raw read + write:    {raw_rw['seconds']:7.2f} s")
    print(f"expansion: {speedup:.1f}x faster than the per-box original (target >= 20x); "
          f"{ratio:.2f}x the time of pandas read + write (target <= 2x); "
          f"{ours['seconds'] / raw_rw['seconds']:.2f}x the raw I/O floor")
    write_result(args.out_dir, "bench_expand", {
        "images": args.images, "boxes_per_image": args.boxes,
        "input_mb": os.path.getsize(src) / 2**20, "output_mb": out_bytes / 2**20,
        "ours": ours,
        "original_per_box": {"images_measured": args.slow_images, "seconds_measured": original["seconds"],
                             "seconds_one_image": original_one["seconds"], "ms_per_image": per_image * 1e3,
                             "seconds_scaled": original_scaled, "peak_rss_mb": original["peak_rss_mb"],
                             "same_output": same, "ours_seconds_on_same_images": ours_subset["seconds"]},
        "pandas_read_write": pandas_rw,
        "raw_read_write": {"seconds": raw_rw["seconds"]},
        "speedup_vs_original": speedup, "ratio_vs_pandas_read_write": ratio,
        "ratio_vs_raw_read_write": ours["seconds"] / raw_rw["seconds"],
        "targets": {"speedup_vs_original": ">= 20", "ratio_vs_pandas_read_write": "<= 2.0"},
        "machine": machine_info()})
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
