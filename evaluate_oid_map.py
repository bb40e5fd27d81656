"""Score predictions with the official Open Images challenge metric (or keras-retinanet's VOC-style mAP).

The ground truth is expanded through the hierarchy first (boxes and positive labels to every ancestor, negative
labels to every descendant), as the official oid_hierarchical_labels_expansion.py does; --no-expand-gt for files
that are already expanded. Predictions are not expanded (that is stage 5). The metric gives the same numbers as
the TensorFlow Object Detection API's oid_challenge_evaluation.py, without TensorFlow.

Predictions: a Kaggle submission (`ImageId,PredictionString`) or the official CSV (`ImageID,LabelName,Score,XMin,
XMax,YMin,YMax`), read in chunks. Predictions of images without ground truth are ignored and those of classes not
verified on their image are ignored (both as official); labels outside the class list are dropped and counted
(the official script stops on them).

Writes to --output-dir: map.json (mAP, classes scored, prediction counts, per-level means), per_class_ap.csv,
per_level_ap.csv (the 2018 levels 1-5), metrics.csv (the official script's output file, OID metric only) and
per_class_ap.png.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

from tqdm import tqdm

import a00_utils_and_constants as C
from oid_retinanet.cli import script_main, setup_logging
from oid_retinanet.evaluate import METRICS, ExpansionMaps, expand_csv, make_evaluator
from oid_retinanet.evaluate.oid_map import iter_prediction_chunks, read_eval_classes, read_ground_truth, write_report
from oid_retinanet.evaluate.voc_map import MAX_DETECTIONS, SCORE_THRESHOLD
from oid_retinanet.oid.classes import read_class_descriptions
from oid_retinanet.oid.levels import levels_2018

log = logging.getLogger("evaluate_oid_map")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--predictions", required=True, help="Kaggle submission CSV or official predictions CSV")
    p.add_argument("--gt-boxes", required=True, help="ground-truth boxes, e.g. challenge-2019-validation-"
                                                     "detection-bbox.csv")
    p.add_argument("--gt-labels", required=True, help="image-level labels, e.g. challenge-2019-validation-"
                                                      "detection-human-imagelabels.csv")
    p.add_argument("--output-dir", required=True, help="where map.json and the other outputs go")
    p.add_argument("--hierarchy", default=C.HIERARCHY_JSON, help="hierarchy JSON for the expansion "
                                                                 "(default: the shipped v4 hierarchy)")
    p.add_argument("--classes", default=C.CLASS_DESCRIPTIONS_500_CSV,
                   help="classes to score: class-description CSV (ids 1..N) or label map .pbtxt "
                        "(default: the shipped 2018 challenge 500-class list)")
    p.add_argument("--no-expand-gt", action="store_true", help="the ground-truth files are already expanded")
    p.add_argument("--metric", choices=METRICS, default="oid",
                   help="oid: the official challenge metric (default); voc: keras-retinanet's Evaluate mAP")
    p.add_argument("--voc-score-threshold", type=float, default=SCORE_THRESHOLD,
                   help="voc: keep scores above this (default: %(default)s, as keras-retinanet)")
    p.add_argument("--voc-max-detections", type=int, default=MAX_DETECTIONS,
                   help="voc: best detections kept per image, 0 for all (default: %(default)s)")
    p.add_argument("--voc-weighted", action="store_true", help="voc: weight class APs by annotation count")
    p.add_argument("--write-expanded-gt", action="store_true",
                   help="also write the expanded ground truth (boxes_expanded.csv, labels_expanded.csv) as the "
                        "official expansion tool would")
    p.add_argument("--no-chart", action="store_true", help="skip per_class_ap.png")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def pipeline_levels() -> dict[str, list[str]]:
    """The MIDs of the 2018 pipeline's levels 1-5."""
    specs = levels_2018(read_class_descriptions(C.CLASS_DESCRIPTIONS_CSV))
    return {k: specs[k].mids for k in ("1", "2", "3", "4", "5")}


@script_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    started = time.perf_counter()
    classes = read_eval_classes(args.classes)
    expansion = None if args.no_expand_gt else ExpansionMaps.from_json(args.hierarchy)
    gt = read_ground_truth(args.gt_boxes, args.gt_labels, classes, expansion)
    log.info("ground truth: %d images, %d boxes (%d group-of), %d image-level labels, %d classes",
             len(gt.image_ids), len(gt.box_class), int(gt.box_group_of.sum()), len(gt.label_class), len(classes))
    options = {}
    if args.metric == "voc":
        options = {"score_threshold": args.voc_score_threshold, "max_detections": args.voc_max_detections or None,
                   "weighted_average": args.voc_weighted}
    evaluator = make_evaluator(gt, args.metric, **options)
    size = os.path.getsize(args.predictions)
    with tqdm(total=size, unit="B", unit_scale=True, desc="predictions", disable=size < 50_000_000) as bar:
        for chunk in iter_prediction_chunks(args.predictions, progress=bar.update):
            evaluator.add(chunk)
    result = evaluator.evaluate()
    extra = {"inputs": {"predictions": args.predictions, "gt_boxes": args.gt_boxes, "gt_labels": args.gt_labels,
                        "classes": args.classes, "hierarchy": None if args.no_expand_gt else args.hierarchy},
             "seconds": round(time.perf_counter() - started, 3)}
    if args.metric == "voc":
        extra["voc_options"] = {k: v for k, v in options.items()}
    paths = write_report(result, args.output_dir, levels=pipeline_levels(), extra=extra, chart=not args.no_chart)
    if args.write_expanded_gt:
        if expansion is None:
            log.warning("--write-expanded-gt with --no-expand-gt: nothing to expand")
        else:
            for kind, src, name in (("boxes", args.gt_boxes, "boxes_expanded.csv"),
                                    ("labels", args.gt_labels, "labels_expanded.csv")):
                paths[name] = os.path.join(args.output_dir, name)
                expand_csv(src, paths[name], expansion, kind)
    for name, path in paths.items():
        log.info("wrote %s", path)
    label = "OID challenge mAP@0.5" if args.metric == "oid" else "VOC-style mAP@0.5"
    print(f"{label}: {result.mean_ap:.6f} over {result.num_scored} of {len(classes)} classes "
          f"({result.counts.get('evaluated', 0):,} of {result.counts.get('predictions_read', 0):,} predictions "
          f"evaluated)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
