"""Benchmark: anchor targets of stage 3 (`data.targets.anchor_targets`, class indices) against keras-retinanet's
dense targets, at the original's training sizes.

Input 768x1024 (`anchors_for_shape((768, 1024, 3))`: 147,312 anchors), K = 443 (2018 level 1) and 500 (2019)
classes, 5-15 boxes an image (random plausible boxes: sizes 16-600 px, aspect 1:3 to 3:1, inside the image),
batches of 1 and 8. Three implementations, timed in turns on the same batches; the peak memory of each is
measured in a process of its own:

- ours: `anchor_targets`, regression (B, N, 5) + class indices (B, N, 1);
- dense: keras-retinanet's `anchor_targets_bbox` written out here: a loop over the images, the full (N, M) IoU
  matrix (`boxes.iou.pairwise_iou`, the vectorised form of its `compute_overlap`, float64), argmax, and a
  one-hot (B, N, K + 1) float32 label array with the anchor state in the last column, + regression (B, N, 5);
- dense, our IoU: the same dense layout with our `compute_gt_annotations`: what the one-hot layout alone costs.

Each is timed building the targets (the function's return) and building + one copy of the arrays (handing a
batch to the framework copies it into a tensor; `np.zeros` pages of the one-hot array are only touched then).
Images/s = batch size / the median time of a batch (fresh random boxes each batch; the median because other
processes on a shared machine slow some batches down). Bytes per image are those of the returned arrays.
keras-retinanet's own `compute_overlap` is a Cython loop, not measured here: "dense, our IoU" bounds what a
faster IoU could give the dense layout.

First, on a padded batch of two images of different sizes, `dense_targets(ours)` must equal the dense
implementation's labels and our regression its regression, bit for bit, except for the documented difference:
anchors ignored because their centre is outside their image keep their one-hot row in keras-retinanet (state
-1 in both; the loss never reads them). That needs an IoU of exactly 0.5 (such an anchor overlaps a box inside
the image by at most half its area), so the check adds a box made for it. The bench exits with 1 if they differ.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import machine_info, peak_rss_mb, write_result  # noqa: E402

INPUT_SHAPE = (768, 1024, 3)
CLASS_COUNTS = (443, 500)
BATCHES = (1, 8)
IMPLEMENTATIONS = ("ours", "dense", "dense_our_iou")


def random_boxes(rng: np.random.Generator, height: int, width: int, count: int) -> np.ndarray:
    """`count` plausible object boxes (x1, y1, x2, y2 pixels) inside a height x width image."""
    area = np.exp(rng.uniform(np.log(16.0**2), np.log(600.0**2), count))
    aspect = np.exp(rng.uniform(np.log(1 / 3), np.log(3), count))  # width / height
    w = np.minimum(np.sqrt(area * aspect), width - 1)
    h = np.minimum(np.sqrt(area / aspect), height - 1)
    x1 = rng.uniform(0, width - w)
    y1 = rng.uniform(0, height - h)
    return np.stack([x1, y1, x1 + w, y1 + h], axis=1)


def make_batch(rng: np.random.Generator, shapes: list[tuple[int, int]], num_classes: int
               ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Boxes and class indices of one batch: 5 to 15 boxes an image, each inside its image's own shape."""
    boxes, labels = [], []
    for h, w in shapes:
        m = int(rng.integers(5, 16))
        boxes.append(random_boxes(rng, h, w, m))
        labels.append(rng.integers(0, num_classes, m))
    return boxes, labels


# ----------------------------------------------------------------------------------------------------------
# keras-retinanet's dense targets


def full_matrix_gt_annotations(anchors: np.ndarray, boxes: np.ndarray, negative_overlap: float = 0.4,
                               positive_overlap: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """keras-retinanet's `compute_gt_annotations`: the whole (N, M) IoU matrix, its argmax and the thresholds."""
    from oid_retinanet.boxes.iou import pairwise_iou

    overlaps = pairwise_iou(anchors.astype(np.float64), boxes.astype(np.float64))
    best = np.argmax(overlaps, axis=1)
    best_overlap = overlaps[np.arange(len(anchors)), best]
    positive = best_overlap >= positive_overlap
    ignore = (best_overlap > negative_overlap) & ~positive
    return positive, ignore, best


def dense_anchor_targets(anchors: np.ndarray, image_shapes, boxes, labels, num_classes: int,
                         gt_annotations=full_matrix_gt_annotations) -> tuple[np.ndarray, np.ndarray]:
    """keras-retinanet's `anchor_targets_bbox`: regression (B, N, 5) and one-hot labels (B, N, K + 1), float32,
    the anchor state (-1 ignore, 0 negative, 1 positive) in the last column of both."""
    from oid_retinanet.model.decode import bbox_transform

    n = len(anchors)
    regression = np.zeros((len(image_shapes), n, 5), np.float32)
    dense = np.zeros((len(image_shapes), n, num_classes + 1), np.float32)
    centres_x = (anchors[:, 0] + anchors[:, 2]) / 2
    centres_y = (anchors[:, 1] + anchors[:, 3]) / 2
    for i, (shape, img_boxes, img_labels) in enumerate(zip(image_shapes, boxes, labels)):
        if len(img_boxes):
            positive, ignore, best = gt_annotations(anchors, img_boxes)
            for target in (dense, regression):
                target[i, ignore, -1] = -1
                target[i, positive, -1] = 1
            dense[i, positive, np.asarray(img_labels)[best[positive]].astype(int)] = 1
            regression[i, :, :-1] = bbox_transform(anchors, img_boxes[best])
        outside = (centres_x >= shape[1]) | (centres_y >= shape[0])
        dense[i, outside, -1] = -1
        regression[i, outside, -1] = -1
    return regression, dense


# ----------------------------------------------------------------------------------------------------------


def target_function(kind: str, num_classes: int):
    """(anchors, shapes, boxes, labels) -> the arrays of one implementation."""
    from oid_retinanet.data.targets import anchor_targets, compute_gt_annotations

    if kind == "ours":
        return anchor_targets
    gt = full_matrix_gt_annotations if kind == "dense" else compute_gt_annotations
    return lambda a, s, b, c: dense_anchor_targets(a, s, b, c, num_classes, gt_annotations=gt)


def one_batch(fn, anchors, shapes, boxes, labels) -> tuple[float, float, int]:
    """Seconds to build the targets, seconds to build and copy them, and their bytes."""
    t0 = time.perf_counter()
    arrays = fn(anchors, shapes, boxes, labels)
    t1 = time.perf_counter()
    copies = [np.array(a, copy=True) for a in arrays]
    t2 = time.perf_counter()
    nbytes = sum(a.nbytes for a in arrays)
    del arrays, copies
    return t1 - t0, t2 - t0, nbytes


def measure_speed(num_classes: int, batch: int, seconds: float, seed: int) -> dict[str, dict]:
    """Time the implementations on the same fresh random batches, taking turns batch by batch (so a load from
    other processes hits all of them alike) for about `seconds` each, at least 3 batches; the median batch."""
    from oid_retinanet.model.anchors import anchors_for_shape

    anchors = anchors_for_shape(INPUT_SHAPE)
    shapes = [INPUT_SHAPE[:2]] * batch
    rng = np.random.default_rng(seed)
    fns = {kind: target_function(kind, num_classes) for kind in IMPLEMENTATIONS}
    warm = make_batch(rng, shapes, num_classes)
    for fn in fns.values():
        fn(anchors, shapes, *warm)
    times: dict[str, list] = {kind: [] for kind in IMPLEMENTATIONS}
    start = time.perf_counter()
    rounds = 0
    while rounds < 3 or time.perf_counter() - start < seconds * len(fns):
        boxes, labels = make_batch(rng, shapes, num_classes)
        order = IMPLEMENTATIONS[rounds % len(fns):] + IMPLEMENTATIONS[:rounds % len(fns)]
        for kind in order:
            times[kind].append(one_batch(fns[kind], anchors, shapes, boxes, labels))
        rounds += 1
    out = {}
    for kind, rows in times.items():
        build, total, nbytes = (np.array(c) for c in zip(*rows))
        out[kind] = {"implementation": kind, "classes": num_classes, "batch": batch, "anchors": len(anchors),
                     "batches": len(rows), "median_build_s": float(np.median(build)),
                     "median_build_copy_s": float(np.median(total)),
                     "images_per_s": batch / float(np.median(build)),
                     "images_per_s_with_copy": batch / float(np.median(total)),
                     "bytes_per_image": int(nbytes[-1]) / batch}
    return out


def phase_memory(kind: str, num_classes: int, batch: int) -> dict:
    """Peak memory of a process that only builds (and copies) two batches of targets with one implementation."""
    from oid_retinanet.model.anchors import anchors_for_shape

    anchors = anchors_for_shape(INPUT_SHAPE)
    shapes = [INPUT_SHAPE[:2]] * batch
    rng = np.random.default_rng(0)
    fn = target_function(kind, num_classes)
    before = peak_rss_mb()
    for _ in range(2):
        one_batch(fn, anchors, shapes, *make_batch(rng, shapes, num_classes))
    return {"peak_rss_mb": peak_rss_mb(), "rss_before_mb": before}


def check_equal(num_classes: int = 443, seed: int = 1) -> dict:
    """Ours (through dense_targets) against the dense implementations on a padded batch of two image sizes."""
    from oid_retinanet.data.targets import anchor_targets, dense_targets
    from oid_retinanet.model.anchors import anchors_for_shape

    anchors = anchors_for_shape(INPUT_SHAPE)
    shapes = [INPUT_SHAPE[:2], (690, 920)]  # the second is padded: anchors past its edges are ignored
    rng = np.random.default_rng(seed)
    boxes, labels = make_batch(rng, shapes, num_classes)
    # An anchor centred outside its image overlaps a box inside it by at most half its area, so IoU <= 0.5:
    # the left half of the 64x64 anchor centred on x = 920 (the second image's edge) has IoU exactly 0.5.
    boxes[1] = np.concatenate([boxes[1], [[888, 456, 920, 520], [600, 300, 919.5, 689.5]]])
    labels[1] = np.concatenate([labels[1], [7, 11]])
    reg, cls = anchor_targets(anchors, shapes, boxes, labels)
    ours = dense_targets(reg, cls, num_classes)
    del cls
    centres_x = (anchors[:, 0] + anchors[:, 2]) / 2
    centres_y = (anchors[:, 1] + anchors[:, 3]) / 2
    outside = np.stack([(centres_x >= w) | (centres_y >= h) for h, w in shapes])
    report = {"classes": num_classes, "shapes": shapes, "boxes": [len(b) for b in boxes]}
    for kind in ("dense", "dense_our_iou"):
        d_reg, d_dense = target_function(kind, num_classes)(anchors, shapes, boxes, labels)
        kept_one_hot = int((d_dense[outside][:, :-1] != 0).any(axis=1).sum())
        report[kind] = {
            "regression_equal": bool(np.array_equal(reg, d_reg)),
            "labels_equal_inside": bool(np.array_equal(ours[~outside], d_dense[~outside])),
            "states_equal_outside": bool(np.array_equal(ours[outside][:, -1], d_dense[outside][:, -1])),
            "outside_anchors": int(outside.sum()),
            "outside_anchors_keeping_a_one_hot_in_dense": kept_one_hot,
            "positive_anchors": int((reg[..., 4] == 1).sum()),
        }
        del d_reg, d_dense
    report["equal"] = all(report[k][f] for k in ("dense", "dense_our_iou")
                          for f in ("regression_equal", "labels_equal_inside", "states_equal_outside"))
    return report


def run_phase(args: list[str]) -> dict:
    """Run this script's measurement phase in a fresh process; its JSON result."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve())] + args, cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if proc.returncode != 0:
        raise RuntimeError(f"phase {args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=4.0,
                   help="time per implementation and setting (default: %(default)s)")
    p.add_argument("--out-dir", default="bench_output")
    p.add_argument("--phase", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.phase:
        kind, k, b = args.phase
        print(json.dumps(phase_memory(kind, int(k), int(b))))
        return 0

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    check = check_equal()
    d = check["dense"]
    print(f"check on a padded batch ({check['shapes']}, {check['boxes']} boxes, {check['classes']} classes): "
          f"ours == dense: {check['equal']} (regression bit for bit; labels on the {d['positive_anchors']} positive "
          f"and all other anchors inside the images; {d['outside_anchors']} anchors outside, "
          f"{d['outside_anchors_keeping_a_one_hot_in_dense']} of them keep a one-hot in keras-retinanet's layout, "
          "documented)", flush=True)

    results: dict[str, dict] = {}
    for k in CLASS_COUNTS:
        for b in BATCHES:
            row = measure_speed(k, b, args.seconds, seed=1000 + b)
            for kind in IMPLEMENTATIONS:
                row[kind].update(run_phase(["--phase", kind, str(k), str(b)]))
            ours, dense, layout = row["ours"], row["dense"], row["dense_our_iou"]
            row["speedup_vs_dense"] = ours["images_per_s"] / dense["images_per_s"]
            row["speedup_vs_dense_with_copy"] = ours["images_per_s_with_copy"] / dense["images_per_s_with_copy"]
            row["speedup_vs_dense_our_iou"] = ours["images_per_s"] / layout["images_per_s"]
            row["bytes_ratio"] = dense["bytes_per_image"] / ours["bytes_per_image"]
            results[f"k{k}_b{b}"] = row
            print(f"K={k} batch {b}:", flush=True)
            for kind in IMPLEMENTATIONS:
                r = row[kind]
                print(f"  {kind:14s} {r['images_per_s']:8.1f} images/s ({r['images_per_s_with_copy']:7.1f} with the "
                      f"copy), {r['bytes_per_image'] / 2**20:7.1f} MB an image, peak RSS {r['peak_rss_mb']:6.0f} MB "
                      f"({r['rss_before_mb']:.0f} MB before)")
            print(f"  ours: {row['speedup_vs_dense']:.1f}x the dense images/s "
                  f"({row['speedup_vs_dense_with_copy']:.1f}x with the copy; "
                  f"{row['speedup_vs_dense_our_iou']:.1f}x the dense layout on our IoU), "
                  f"{row['bytes_ratio']:.0f}x fewer bytes", flush=True)
    write_result(args.out_dir, "bench_targets", {
        "input": list(INPUT_SHAPE[:2]), "anchors": results[f"k{CLASS_COUNTS[0]}_b1"]["ours"]["anchors"],
        "boxes_per_image": "5-15", "seconds_per_measurement": args.seconds, "check": check, "results": results,
        "machine": machine_info()})
    return 0 if check["equal"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
