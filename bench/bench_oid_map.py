"""Benchmark: the Open Images challenge metric (evaluate_oid_map.py / oid_retinanet.evaluate).

Two scenarios:

1. Fixture-sized (../shared/fixtures/oid_eval: 400 images, 2,811 predictions, 25 classes): our evaluation against
   the official TensorFlow Object Detection API code. The official code needs TensorFlow's object_detection
   package, which is not installable here, so its time is the figure recorded in the fixture README
   (expected/timing.json, same kind of 2-core machine): CLI wall time, and that time minus its imports. Ours is
   measured in this run, in-process (same stages: read, expand, match, AP) and as a whole CLI run; the result
   must be the official one (mAP bit for bit). Target: at least 20x faster.
2. Validation-sized, generated here: 41,620 images, the 500 challenge classes and the v4 hierarchy, 5-10 boxes
   per image (some group-of), image-level labels, 300 predictions per image in a Kaggle CSV. Run in a child
   process; prints the time per stage (read, expand, predictions, match, AP) and the peak memory.
   Target: under a minute.

Writes bench_output/bench_oid_map.json.
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
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import generated, machine_info, peak_rss_mb, write_result  # noqa: E402

FIXTURE = Path(os.environ.get("OID_SHARED", REPO.parent / "shared")) / "fixtures" / "oid_eval"


# ---------------------------------------------------------------------------------------------------------------
# Scenario generation
# ---------------------------------------------------------------------------------------------------------------

def _fixed_decimals(values: np.ndarray, decimals: int) -> np.ndarray:
    """'0.dddd' byte strings (values in [0, 1), rounded down) without a Python loop per value."""
    ints = np.minimum((values * 10 ** decimals).astype(np.int64), 10 ** decimals - 1)
    digits = (ints[:, None] // 10 ** np.arange(decimals - 1, -1, -1)) % 10
    out = np.empty((len(values), decimals + 2), dtype=np.uint8)
    out[:, 0], out[:, 1] = ord("0"), ord(".")
    out[:, 2:] = digits + ord("0")
    return out


def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 4) x1, y1, x2, y2 in [0, 1) with OID-like sizes."""
    w = np.clip(rng.lognormal(-1.6, 0.7, n), 0.02, 0.95)
    h = np.clip(w * rng.lognormal(0.0, 0.4, n), 0.02, 0.95)
    x1 = rng.random(n) * (1 - w)
    y1 = rng.random(n) * (1 - h)
    return np.stack([x1, y1, np.minimum(x1 + w, 0.9999), np.minimum(y1 + h, 0.9999)], axis=1)


def make_scenario(work: Path, n_images: int, preds_per_image: int, seed: int = 0) -> dict:
    """Write gt_boxes.csv, gt_labels.csv and predictions.csv (Kaggle) for a synthetic validation set."""
    from oid_retinanet.evaluate import ExpansionMaps
    from oid_retinanet.oid.classes import read_class_descriptions
    from oid_retinanet.resources import resource_path

    rng = np.random.default_rng(seed)
    mids = np.array(read_class_descriptions(resource_path("challenge-2018-class-descriptions-500.csv")).mids)
    maps = ExpansionMaps.from_json(resource_path("bbox_labels_600_hierarchy.json"))
    in_list = {m: i for i, m in enumerate(mids)}
    parent_of = np.array([next((in_list[a] for a in maps.ancestors[m] if a in in_list), i)
                          for i, m in enumerate(mids)])
    freq = 1.0 / np.arange(1, len(mids) + 1) ** 0.9
    freq /= freq.sum()
    ids = np.array([f"{x:016x}" for x in rng.integers(0, 2**63, size=n_images)], dtype=object)

    # ground truth: 5-10 boxes per image over 1-4 classes, 6% group-of
    n_box = rng.integers(5, 11, size=n_images)
    box_img = np.repeat(np.arange(n_images), n_box)
    img_classes = rng.choice(len(mids), size=(n_images, 4), p=freq)
    box_cls = img_classes[box_img, rng.integers(0, 4, size=len(box_img)) % rng.integers(1, 5, n_images)[box_img]]
    boxes = _random_boxes(rng, len(box_img))
    group_of = rng.random(len(box_img)) < 0.06
    gt = pd.DataFrame({"ImageID": ids[box_img], "Source": "xclick", "LabelName": mids[box_cls], "Confidence": 1,
                       "XMin": boxes[:, 0].round(6), "XMax": boxes[:, 2].round(6), "YMin": boxes[:, 1].round(6),
                       "YMax": boxes[:, 3].round(6), "IsOccluded": 0, "IsTruncated": 0,
                       "IsGroupOf": group_of.astype(int), "IsDepiction": 0, "IsInside": 0})
    gt.to_csv(work / "gt_boxes.csv", index=False)

    # image-level labels: positives for the box classes and 0-2 more, 3-6 negatives
    pos = pd.DataFrame({"i": box_img, "c": box_cls}).drop_duplicates()
    n_extra = rng.integers(0, 3, size=n_images)
    extra = pd.DataFrame({"i": np.repeat(np.arange(n_images), n_extra),
                          "c": rng.choice(len(mids), size=int(n_extra.sum()), p=freq)})
    n_neg = rng.integers(3, 7, size=n_images)
    neg = pd.DataFrame({"i": np.repeat(np.arange(n_images), n_neg), "c": rng.integers(0, len(mids), n_neg.sum())})
    present = set(zip(pos.i.tolist(), pos.c.tolist()))
    neg = neg[[(i, c) not in present for i, c in zip(neg.i.tolist(), neg.c.tolist())]].drop_duplicates()
    labels = pd.concat([pos.assign(conf=1), extra.assign(conf=1), neg.assign(conf=0)]).drop_duplicates(["i", "c"])
    pd.DataFrame({"ImageID": ids[labels.i.to_numpy()], "Source": "verification",
                  "LabelName": mids[labels.c.to_numpy()], "Confidence": labels.conf.to_numpy()}
                 ).to_csv(work / "gt_labels.csv", index=False)

    # predictions: 3 per GT box (jittered; 30% of them the parent class), the rest random, 300 per image
    per_box = 3
    d_img = np.repeat(box_img, per_box)
    d_cls = np.repeat(box_cls, per_box)
    d_cls = np.where(rng.random(len(d_cls)) < 0.3, parent_of[d_cls], d_cls)
    jitter = rng.normal(0, 0.03, (len(d_img), 4))
    d_box = np.clip(np.repeat(boxes, per_box, axis=0) + jitter, 0, 0.9999)
    d_score = rng.beta(4, 2, len(d_img))
    n_rand = np.maximum(preds_per_image - n_box * per_box, 0)
    r_img = np.repeat(np.arange(n_images), n_rand)
    r_cls = np.where(rng.random(len(r_img)) < 0.1, img_classes[r_img, 0], rng.integers(0, len(mids), len(r_img)))
    r_box = _random_boxes(rng, len(r_img))
    r_score = rng.beta(1, 8, len(r_img))
    p_img = np.concatenate([d_img, r_img])
    order = np.argsort(p_img, kind="stable")
    p_img = p_img[order]
    p_cls = np.concatenate([d_cls, r_cls])[order]
    p_box = np.concatenate([d_box, r_box])[order]
    p_box[:, 2:] = np.maximum(p_box[:, 2:], p_box[:, :2])
    p_score = np.concatenate([d_score, r_score])[order]
    numeric = np.full((len(p_img), 1 + 9 + 4 * 7), ord(" "), dtype=np.uint8)
    numeric[:, 1:9] = _fixed_decimals(p_score, 6)
    for k, col in enumerate((0, 1, 2, 3)):
        numeric[:, 10 + 7 * k:16 + 7 * k] = _fixed_decimals(p_box[:, col], 4)
    tokens = np.char.add(mids.astype("S")[p_cls], numeric.view("S38").ravel())
    ends = np.cumsum(np.bincount(p_img, minlength=n_images))
    with open(work / "predictions.csv", "wb") as f:
        f.write(b"ImageId,PredictionString\n")
        start = 0
        for i, end in enumerate(ends.tolist()):
            f.write(ids[i].encode() + b"," + b"".join(tokens[start:end].tolist()) + b"\n")
            start = end
    return {"images": n_images, "classes": len(mids), "gt_boxes": int(len(box_img)),
            "gt_boxes_group_of": int(group_of.sum()), "image_labels": int(len(labels)),
            "predictions": int(len(p_img))}


# ---------------------------------------------------------------------------------------------------------------
# Measured phases
# ---------------------------------------------------------------------------------------------------------------

def evaluate_staged(boxes: str, labels: str, predictions: str, classes: str, hierarchy: str | None) -> dict:
    """One evaluation, timed per stage: read, expand (and index), predictions (read, parse, filter), match, AP."""
    from oid_retinanet.evaluate import ExpansionMaps, OIDChallengeEvaluator
    from oid_retinanet.evaluate.oid_map import (
        BOX_READ_COLUMNS,
        ground_truth_from_frames,
        iter_prediction_chunks,
        read_eval_classes,
    )
    from oid_retinanet.oid.annotations import read_csv_checked, read_image_labels

    t = {}
    t0 = time.perf_counter()
    eval_classes = read_eval_classes(classes)
    box_frame = read_csv_checked(boxes, ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax"),
                                 str_columns=("ImageID", "LabelName"), usecols=lambda c: c in BOX_READ_COLUMNS,
                                 float_precision="round_trip")
    label_frame = read_image_labels(labels)
    t["read"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    maps = ExpansionMaps.from_json(hierarchy) if hierarchy else None
    gt = ground_truth_from_frames(box_frame, label_frame, eval_classes, maps, boxes, labels)
    t["expand"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    evaluator = OIDChallengeEvaluator(gt)
    for chunk in iter_prediction_chunks(predictions):
        evaluator.add(chunk)
    t["predictions"] = time.perf_counter() - t0
    result = evaluator.evaluate()
    t.update(evaluator.timings)
    return {"stages_s": t, "total_s": sum(t.values()), "mAP": result.mean_ap, "counts": result.counts,
            "gt": result.gt_stats, "classes_scored": result.num_scored}


def phase(kind: str, *args: str) -> dict:
    """Run in a child process so that its peak memory is its own."""
    if kind == "staged":
        out = evaluate_staged(*[a if a != "-" else None for a in args])
    else:
        raise ValueError(kind)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def run_phase(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--phase", *args], capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        raise RuntimeError(f"phase {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fixture_scenario(repeats: int) -> dict | None:
    """Our time on the fixture's inputs against the official time recorded in its README."""
    if not (FIXTURE / "expected" / "timing.json").exists():
        print(f"fixture {FIXTURE} not found: skipping the comparison with the official code")
        return None
    official = json.loads((FIXTURE / "expected" / "timing.json").read_text())
    expected = json.loads((FIXTURE / "expected" / "expected_metrics.json").read_text())
    inputs = FIXTURE / "inputs"
    args = [str(inputs / "boxes.csv"), str(inputs / "labels.csv"), str(inputs / "predictions_filtered.csv"),
            str(inputs / "labelmap.pbtxt"), str(inputs / "hierarchy.json")]
    runs = [evaluate_staged(*args) for _ in range(repeats)]
    best = min(runs, key=lambda r: r["total_s"])
    same = all(r["mAP"] == expected["mAP"] for r in runs)
    cli = []
    out = REPO / "bench_output" / "oid_map_fixture"
    for _ in range(3):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(REPO / "evaluate_oid_map.py"), "--predictions", args[2],
                               "--gt-boxes", args[0], "--gt-labels", args[1], "--classes", args[3],
                               "--hierarchy", args[4], "--output-dir", str(out), "--no-chart"],
                              capture_output=True, text=True, cwd=REPO)
        cli.append(time.perf_counter() - t0)
        if proc.returncode:
            raise RuntimeError(proc.stderr[-2000:])
    cli_map = json.loads((out / "map.json").read_text())["mAP"]
    official_wall = float(official["eval_wall_s_min"])
    official_minus_import = official_wall - float(official["python_tf_pandas_import_only_s"])
    official_with_expansion = official_wall + float(official["expand_boxes_s"]) + float(official["expand_labels_s"])
    return {
        "baseline_source": "fixture README (expected/timing.json): official code, 2-core CPU machine",
        "official_eval_cli_wall_s": official_wall,
        "official_expansion_s": float(official["expand_boxes_s"]) + float(official["expand_labels_s"]),
        "official_eval_minus_imports_s": official_minus_import,
        "ours_in_process_s": best["total_s"], "ours_stages_s": best["stages_s"],
        "ours_cli_wall_s": min(cli),
        "speedup_in_process_vs_official_minus_imports": official_minus_import / best["total_s"],
        "speedup_in_process_vs_official_cli": official_with_expansion / best["total_s"],
        "speedup_cli_vs_official_cli": official_with_expansion / min(cli),
        "mAP": best["mAP"], "expected_mAP": expected["mAP"], "same_result": bool(same and cli_map == expected["mAP"]),
        "target": ">= 20x",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=41_620)
    p.add_argument("--preds-per-image", type=int, default=300)
    p.add_argument("--repeats", type=int, default=5, help="in-process repeats on the fixture (best is kept)")
    p.add_argument("--out-dir", default="bench_output")
    p.add_argument("--phase", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.phase:
        print(json.dumps(phase(*args.phase)))
        return 0

    fixture = fixture_scenario(args.repeats)
    if fixture:
        print("fixture-sized (400 images, 2,811 predictions, 25 classes), official times from the fixture README:")
        print(f"  official CLI {fixture['official_eval_cli_wall_s']:.2f} s (+{fixture['official_expansion_s']:.2f} s "
              f"expansion), {fixture['official_eval_minus_imports_s']:.2f} s without its imports")
        print(f"  ours in-process {fixture['ours_in_process_s'] * 1000:.1f} ms "
              f"(read, expand, predictions, match, AP), whole CLI {fixture['ours_cli_wall_s']:.2f} s")
        print(f"  speed-up: {fixture['speedup_in_process_vs_official_minus_imports']:.0f}x (like for like, without "
              f"imports), {fixture['speedup_in_process_vs_official_cli']:.0f}x vs the official CLI, "
              f"{fixture['speedup_cli_vs_official_cli']:.1f}x CLI vs CLI; same result: {fixture['same_result']} "
              f"(mAP {fixture['mAP']!r}); target >= 20x")

    work = Path(args.out_dir) / "oid_map"
    work.mkdir(parents=True, exist_ok=True)
    stamp = work / f"scenario_{args.images}_{args.preds_per_image}.json"
    meta = generated(stamp, make_scenario, work, args.images, args.preds_per_image)
    from oid_retinanet.resources import resource_path

    big = run_phase("staged", str(work / "gt_boxes.csv"), str(work / "gt_labels.csv"), str(work / "predictions.csv"),
                    resource_path("challenge-2018-class-descriptions-500.csv"),
                    resource_path("bbox_labels_600_hierarchy.json"))
    size_mb = (work / "predictions.csv").stat().st_size / 1e6
    print(f"validation-sized: {meta['images']:,} images, {meta['classes']} classes, {meta['predictions']:,} "
          f"predictions ({size_mb:.0f} MB Kaggle CSV), {meta['gt_boxes']:,} GT boxes -> "
          f"{big['gt'].get('gt_boxes', 0):,} expanded, {meta['image_labels']:,} image labels")
    for stage, seconds in big["stages_s"].items():
        print(f"  {stage:12s} {seconds:7.2f} s")
    print(f"  {'total':12s} {big['total_s']:7.2f} s   peak RSS {big['peak_rss_mb']:.0f} MB   "
          f"({big['counts'].get('evaluated', 0):,} predictions evaluated; mAP {big['mAP']:.4f}; target < 60 s)")
    write_result(args.out_dir, "bench_oid_map", {
        "fixture": fixture,
        "validation": {"scenario": meta, "predictions_csv_mb": size_mb, "stages_s": big["stages_s"],
                       "total_s": big["total_s"], "peak_rss_mb": big["peak_rss_mb"], "mAP": big["mAP"],
                       "evaluated_predictions": big["counts"].get("evaluated"), "target": "< 60 s"},
        "machine": machine_info()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
