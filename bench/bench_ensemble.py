"""Benchmark: stage 6 ensembling of two models' prediction caches (5,000 images by default).

Caches are generated like RetinaNet output on Open Images (`oid_retinanet.demo.full_size.write_caches`): per
image a pool of responses (a few objects, each seen under its true class and some confusable ones, and many weak
responses to background, labelled mostly with frequent classes), of which each model row sees about 70% with
jittered boxes and varied scores, as the mirrored image and a second model respond to the same content; up to 300
detections per row (the model's limit, reached by about a third of the rows), scores sorted and >= 0.05, the
mirrored image as row 1.

Two comparisons, each against a baseline run in the same benchmark run:
- `avg` (the original's merge): our script as a user runs it (a whole process: start-up, reading the
  caches, merging, writing the CSV) against a per-box Python implementation of the original
  (`create_csv_for_retinanet_multiple_predictions` with its `filter_boxes_v2` and `merge_all_boxes_for_image`,
  reading the same .npz caches). Target: at least 20x.
- `wbf`: our script with --type wbf against the same loop calling ensemble-boxes' `weighted_boxes_fusion`
  per image (same reading, mirror fix, limit, clipping and formatting). Target: at least 20x. Skipped, and
  said so, when ensemble-boxes is not installed.
Ours runs with its default worker processes (the usable CPUs, at most 8) and with --workers 1. The
baselines are slow, so they run on --baseline-images images spread over the set, and their time is scaled
linearly to all images (said in the output); their rows are checked equal to ours on those images. Wall
time is the measure; the CPU-time ratio (one worker) is printed too, being less disturbed by other load.
Result: bench_output/bench_ensemble.json.
"""

from __future__ import annotations

import argparse
import glob
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import machine_info, write_result  # noqa: E402
from oid_retinanet.demo.full_size import write_caches  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


# ---- baseline 1: the original's merge, per box in Python ----------------------------------------------------

def _iou(a, b):
    xa, ya, xb, yb = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, xb - xa) * max(0, yb - ya)
    if inter == 0:
        return 0.0
    return inter / float((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _find_matching_box(boxes_list, new_box, match_iou):
    best_iou, best_index = match_iou, -1
    for i in range(len(boxes_list)):
        box = boxes_list[i]
        if box[0] != new_box[0]:
            continue
        iou = _iou(box[2:], new_box[2:])
        if iou > best_iou:
            best_index, best_iou = i, iou
    return best_index


def _merge_boxes_weighted(b1, b2, w1, w2):
    return [b1[0], (w1 * b1[1] + w2 * b2[1]) / (w1 + w2)] + [(w1 * b1[k] + w2 * b2[k]) / (w1 + w2)
                                                               for k in range(2, 6)]


def _filter_boxes_v2(boxes, scores, labels, thr):
    new_boxes = []
    for t in range(len(boxes)):
        for i in range(len(boxes[t])):
            box = []
            for j in range(boxes[t][i].shape[0]):
                score = scores[t][i][j]
                if float(score) < thr:
                    break
                b = boxes[t][i][j]
                if i == 0:
                    box.append([int(labels[t][i][j]), float(score), float(b[0]), float(b[1]), float(b[2]),
                                float(b[3])])
                else:
                    box.append([int(labels[t][i][j]), float(score), 1 - float(b[2]), float(b[1]), 1 - float(b[0]),
                                float(b[3])])
            new_boxes.append(box)
    return new_boxes


def _merge_all_boxes_for_image(boxes, thr):
    new_boxes = boxes[0].copy()
    w = 1 / len(boxes)
    weights = [w] * len(new_boxes)
    for j in range(1, len(boxes)):
        for k in range(len(boxes[j])):
            index = _find_matching_box(new_boxes, boxes[j][k], thr)
            if index != -1:
                new_boxes[index] = _merge_boxes_weighted(new_boxes[index], boxes[j][k], weights[index], w)
                weights[index] += w
            else:
                new_boxes.append(boxes[j][k])
                weights.append(w)
    return np.array([[b[0], b[1] * weights[i]] + b[2:] for i, b in enumerate(new_boxes)])


def _read(dirs, image_id):
    out = []
    for d in dirs:
        with np.load(os.path.join(d, image_id + ".npz")) as z:
            out.append((z["boxes"], z["scores"], z["labels"]))
    return out


def _write_rows(out, image_id, merged, mids, limit, decimals):
    if len(merged) > limit:
        merged = merged[merged[:, 1].argsort()[::-1]][:limit]
    out.write(image_id + ",")
    for row in merged:
        xmin, ymin, xmax, ymax = (min(max(v, 0), 1) for v in row[2:])
        if xmax < xmin or ymax < ymin or abs(xmax - xmin) < 1e-5 or abs(ymax - ymin) < 1e-5:
            continue
        out.write(f"{mids[int(row[0])]} {row[1]:.{decimals[0]}f} {xmin:.{decimals[1]}f} {ymin:.{decimals[1]}f} "
                  f"{xmax:.{decimals[1]}f} {ymax:.{decimals[1]}f} ")
    out.write("\n")


def baseline_original(dirs, ids, out_path, mids, thr=0.01, iou_thr=0.55, limit=400) -> None:
    """The original's create_csv_for_retinanet_multiple_predictions, per box in Python, on .npz caches."""
    with open(out_path, "w") as out:
        out.write("ImageId,PredictionString\n")
        for image_id in ids:
            caches = _read(dirs, image_id)
            filtered = _filter_boxes_v2(*(list(x) for x in zip(*caches)), thr)
            _write_rows(out, image_id, _merge_all_boxes_for_image(filtered, iou_thr), mids, limit, (5, 4))


# ---- baseline 2: ensemble-boxes per image ------------------------------------------------------------------

def baseline_ensemble_boxes(dirs, ids, out_path, mids, thr=0.01, iou_thr=0.55, limit=400) -> None:
    """The same loop with ensemble-boxes' weighted_boxes_fusion per image."""
    import warnings

    from ensemble_boxes import weighted_boxes_fusion

    with open(out_path, "w") as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out.write("ImageId,PredictionString\n")
        for image_id in ids:
            bl, sl, ll = [], [], []
            for boxes, scores, labels in _read(dirs, image_id):
                for r in range(len(boxes)):
                    n = int((labels[r] >= 0).sum())
                    b = boxes[r, :n].astype(np.float64)
                    if r == 1:
                        b = np.stack([1 - b[:, 2], b[:, 1], 1 - b[:, 0], b[:, 3]], axis=1)
                    bl.append(b)
                    sl.append(scores[r, :n].astype(np.float64))
                    ll.append(labels[r, :n])
            b, s, lab = weighted_boxes_fusion(bl, sl, ll, iou_thr=iou_thr, skip_box_thr=thr)
            merged = np.column_stack([lab, s, b])[:limit]
            _write_rows(out, image_id, merged, mids, limit, (5, 4))


# ---- ours --------------------------------------------------------------------------------------------------

def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_ours(dirs, labels_file, out_path, type, workers: int | None = None) -> tuple[float, float]:
    """Our script as a user runs it (a new process): (wall seconds, CPU seconds of it and its workers)."""
    cmd = [sys.executable, str(REPO / "ensemble_predictions_with_weighted_method.py"), "--cache-dirs",
           *map(str, dirs), "--labels", str(labels_file), "--type", type, "--output", str(out_path)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    t, cpu = time.perf_counter(), _children_cpu()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t, _children_cpu() - cpu


def timed(func, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of func(*args) in this process."""
    t, cpu = time.perf_counter(), time.process_time()
    func(*args)
    return time.perf_counter() - t, time.process_time() - cpu


def _rows(path) -> dict[str, str]:
    with open(path) as f:
        next(f)
        return dict(line.rstrip("\n").split(",", 1) for line in f)


def compare(kind: str, baseline, dirs, labels_file, mids, ids, sample, work: Path) -> dict:
    """Time ours (default workers and one worker) on all images and the baseline on `sample`, scaled.

    Wall time is the measure; CPU time is given too, as it is less disturbed by other work on the machine.
    """
    from oid_retinanet.predict.ensemble import default_workers

    ours, ours_cpu = run_ours(dirs, labels_file, work / f"ours_{kind}.csv", kind)
    one, one_cpu = run_ours(dirs, labels_file, work / f"ours_{kind}_1.csv", kind, workers=1)
    base, base_cpu = timed(baseline, dirs, sample, work / f"baseline_{kind}.csv", mids)
    scale = len(ids) / len(sample)
    ours_rows, base_rows = _rows(work / f"ours_{kind}.csv"), _rows(work / f"baseline_{kind}.csv")
    same = all(ours_rows[i] == base_rows[i] for i in sample)
    same_workers = (work / f"ours_{kind}.csv").read_bytes() == (work / f"ours_{kind}_1.csv").read_bytes()
    return {"ours_seconds": ours, "ours_cpu_seconds": ours_cpu, "ours_workers": default_workers(),
            "ours_seconds_one_worker": one, "ours_cpu_seconds_one_worker": one_cpu,
            "baseline_seconds_sample": base, "baseline_seconds_scaled": base * scale,
            "baseline_cpu_seconds_scaled": base_cpu * scale,
            "speedup": base * scale / ours, "speedup_one_worker": base * scale / one,
            "speedup_cpu_one_worker": base_cpu * scale / one_cpu,
            "outputs_equal_on_sample": same, "outputs_equal_any_workers": same_workers, "target": ">= 20"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--baseline-images", type=int, default=200,
                   help="images the baselines run on (evenly spread); their time is scaled to --images "
                        "(default: %(default)s)")
    p.add_argument("--out-dir", default="bench_output")
    args = p.parse_args(argv)

    from oid_retinanet.oid.classes import read_class_descriptions, write_class_descriptions
    from oid_retinanet.oid.levels import levels_2018
    from oid_retinanet.resources import resource_path

    work = Path(args.out_dir) / "ensemble"
    cache_root = work / f"caches_{args.images}"
    if not (cache_root / "model_1").is_dir() or len(glob.glob(str(cache_root / "model_1" / "*.npz"))) < args.images:
        print(f"generating caches of {args.images} images x 2 models in {cache_root} ...", flush=True)
        write_caches(cache_root, args.images, 2)
    dirs = [cache_root / "model_0", cache_root / "model_1"]
    classes = levels_2018(read_class_descriptions(resource_path("class-descriptions-boxable.csv")))["1"].classes
    labels_file = work / "labels.csv"
    write_class_descriptions(labels_file, classes)
    mids = [m for m, _ in classes]
    ids = sorted(os.path.basename(f)[:-4] for f in glob.glob(str(dirs[0] / "*.npz")))
    n_base = min(args.baseline_images, len(ids))
    sample = ids[::max(1, len(ids) // n_base)][:n_base]
    n_boxes = sum(int((np.load(dirs[m] / f"{i}.npz")["labels"] >= 0).sum()) for m in range(2) for i in sample)
    result = {"images": len(ids), "models": 2, "baseline_images": n_base,
              "cached_boxes_per_image": n_boxes / n_base, "machine": machine_info()}
    print(f"{len(ids)} images x 2 models, {n_boxes / n_base:.0f} cached boxes per image (both models, both rows); "
          f"baselines timed on {n_base} images and scaled x{len(ids) / n_base:.1f}")

    runs = [("avg", baseline_original, "per-box Python original")]
    try:
        import ensemble_boxes  # noqa: F401
    except ImportError:
        print("wbf: ensemble-boxes is not installed (pip install -r requirements-dev.txt); comparison skipped")
        result["wbf"] = {"skipped": "ensemble-boxes not installed"}
    else:
        runs.append(("wbf", baseline_ensemble_boxes, "ensemble-boxes weighted_boxes_fusion"))
    for kind, baseline, name in runs:
        r = compare(kind, baseline, dirs, labels_file, mids, ids, sample, work)
        result[kind] = r
        print(f"{kind}: ours {r['ours_seconds']:.2f} s ({r['ours_workers']} workers, whole process), "
              f"{r['ours_seconds_one_worker']:.2f} s (1 worker); {name} {r['baseline_seconds_scaled']:.1f} s; "
              f"{r['speedup']:.1f}x faster, {r['speedup_one_worker']:.1f}x with 1 worker, CPU time "
              f"{r['speedup_cpu_one_worker']:.1f}x (target >= 20x); outputs equal on the sample: "
              f"{r['outputs_equal_on_sample']}, for any number of workers: {r['outputs_equal_any_workers']}")
    write_result(args.out_dir, "bench_ensemble", result)
    for f in work.glob("*.csv"):
        if f.name != "labels.csv":
            f.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
