"""The Open Images challenge metric and keras-retinanet's VOC mAP (oid_retinanet.evaluate, evaluate_oid_map.py).

Rules:
- ../shared/fixtures/oid_eval holds the official TensorFlow code's outputs. Expanded ground truth: header exact,
  rows as a multiset (the official tool writes a row's copies in Python set order). mAP and every per-class AP:
  within 1e-12 (they are in fact equal: same float64 operations in the same order), NaN exactly where the official
  result is NaN; per-class internals (num GT, number of scored entries, TP sum) exact. The official metrics.csv
  text is reproduced byte for byte.
- Hand-worked cases check each rule on a few boxes; a slow, literal re-implementation of the official per-image
  loops (and of keras-retinanet's loops) checks the vectorised code on random scenes with many score ties.
"""

from __future__ import annotations

import collections
import csv
import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import fixture_path, read_lines

import evaluate_oid_map as script
from oid_retinanet.evaluate import (
    DetectionChunk,
    EvalClasses,
    ExpansionMaps,
    OIDChallengeEvaluator,
    VOCEvaluator,
    evaluate_predictions,
    expand_boxes,
    expand_csv,
    expand_image_labels,
    ground_truth_from_frames,
    iter_prediction_chunks,
    read_eval_classes,
    read_ground_truth,
)
from oid_retinanet.oid.annotations import read_csv_checked
from oid_retinanet.oid.predictions import ImagePredictions

TOL = 1e-12


# ---------------------------------------------------------------------------------------------------------------
# Against the official code's recorded outputs
# ---------------------------------------------------------------------------------------------------------------

def _fx(*parts: str):
    return fixture_path("oid_eval", *parts)


@pytest.mark.parametrize("kind,name", [("boxes", "boxes"), ("labels", "labels")])
def test_expanded_csv_matches_official(tmp_path, kind, name):
    maps = ExpansionMaps.from_json(_fx("inputs", "hierarchy.json"))
    out = tmp_path / f"{name}_expanded.csv"
    n_in, n_out = expand_csv(_fx("inputs", f"{name}.csv"), out, maps, kind)
    expected = read_lines(_fx("expanded", f"{name}_expanded.csv"))
    actual = read_lines(out)
    assert actual[0] == expected[0]
    assert collections.Counter(actual[1:]) == collections.Counter(expected[1:])
    assert (n_in, n_out) == (len(read_lines(_fx("inputs", f"{name}.csv"))) - 1, len(expected) - 1)


def _row_multiset(df: pd.DataFrame, columns: list[str]) -> collections.Counter:
    return collections.Counter(map(tuple, df[columns].astype(str).to_numpy().tolist()))


def test_expanded_frames_match_official():
    """The in-memory expansion the evaluator uses gives the official rows (values compared after parsing)."""
    maps = ExpansionMaps.from_json(_fx("inputs", "hierarchy.json"))
    cols = ["ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax", "IsGroupOf"]
    boxes = expand_boxes(read_csv_checked(str(_fx("inputs", "boxes.csv")), ("ImageID",)), maps)
    expected = read_csv_checked(str(_fx("expanded", "boxes_expanded.csv")), ("ImageID",))
    assert _row_multiset(boxes, cols) == _row_multiset(expected, cols)
    labels = expand_image_labels(read_csv_checked(str(_fx("inputs", "labels.csv")), ("ImageID",)), maps)
    expected = read_csv_checked(str(_fx("expanded", "labels_expanded.csv")), ("ImageID",))
    cols = ["ImageID", "LabelName", "Confidence"]
    assert _row_multiset(labels, cols) == _row_multiset(expected, cols)


def test_expansion_keeps_duplicates_and_multi_parent_once():
    """/m/a03 has two parents (/m/a02 under /m/a01, and /m/a17): each ancestor once; duplicate rows stay."""
    maps = ExpansionMaps.from_json(_fx("inputs", "hierarchy.json"))
    assert sorted(maps.ancestors["/m/a03"]) == ["/m/a01", "/m/a02", "/m/a17"]
    df = pd.DataFrame({"ImageID": ["i", "i", "i"], "LabelName": ["/m/a03", "/m/a03", "/m/a02"],
                       "XMin": [0.1] * 3, "XMax": [0.5] * 3, "YMin": [0.1] * 3, "YMax": [0.5] * 3})
    out = expand_boxes(df, maps)
    assert collections.Counter(out["LabelName"]) == {"/m/a03": 2, "/m/a02": 3, "/m/a01": 3, "/m/a17": 2}
    assert list(out["LabelName"][:4]) == ["/m/a03", "/m/a02", "/m/a01", "/m/a17"]  # a row, then its copies
    neg = expand_image_labels(pd.DataFrame({"ImageID": ["i"], "LabelName": ["/m/a02"], "Confidence": [0]}), maps)
    assert sorted(neg["LabelName"]) == ["/m/a02", "/m/a03", "/m/a04", "/m/a05"]


def _check_against_official(result):
    expected = json.loads(_fx("expected", "expected_metrics.json").read_text())
    internals = json.loads(_fx("expected", "per_class_internals.json").read_text())["per_class"]
    assert abs(result.mean_ap - expected["mAP"]) <= TOL
    assert result.num_scored == 23
    for i, mid in enumerate(result.classes.mids):
        want = float(expected["per_class_AP_repr"][mid])
        if math.isnan(want):
            assert math.isnan(result.ap[i]), mid
        else:
            assert abs(result.ap[i] - want) <= TOL, mid
        row = internals[mid]
        assert result.num_gt[i] == row["num_gt_instances (non-group-of + group_of_weight*group-of)"], mid
        assert result.num_entries[i] == \
            row["num_scored_entries (kept detections + one entry per matched group-of box)"], mid
        assert result.num_tp[i] == row["sum_tp_labels"], mid


@pytest.mark.parametrize("expanded", [True, False], ids=["official-expanded-gt", "expanded-here"])
@pytest.mark.parametrize("predictions", ["predictions_filtered.csv", "predictions.csv"])
def test_fixture_metric_matches_official(expanded, predictions):
    classes = read_eval_classes(str(_fx("inputs", "labelmap.pbtxt")))
    if expanded:
        gt = read_ground_truth(str(_fx("expanded", "boxes_expanded.csv")), str(_fx("expanded", "labels_expanded.csv")),
                               classes)
    else:
        gt = read_ground_truth(str(_fx("inputs", "boxes.csv")), str(_fx("inputs", "labels.csv")), classes,
                               ExpansionMaps.from_json(_fx("inputs", "hierarchy.json")))
    assert len(gt.image_ids) == 396
    result = evaluate_predictions(gt, iter_prediction_chunks(str(_fx("inputs", predictions))))
    _check_against_official(result)
    counts = result.counts
    if predictions == "predictions.csv":
        # 6 unknown-label rows: 4 on ground-truth images (the official script crashes on them), 2 on images
        # without ground truth (never read by the official script)
        assert counts["dropped_unknown_label"] == 4
        assert counts["ignored_image_without_gt"] == 21
    else:
        assert counts.get("dropped_unknown_label", 0) == 0
        assert counts["ignored_image_without_gt"] == 19


def _fixture_rows(name: str = "predictions_filtered.csv") -> list[dict]:
    with open(_fx("inputs", name), newline="") as f:
        return list(csv.DictReader(f))


def test_fixture_metric_from_kaggle_csv_and_from_image_predictions(tmp_path):
    """The same predictions as a Kaggle submission, and as per-image arrays (the callback's path)."""
    rows = _fixture_rows()
    by_image: dict[str, list[dict]] = {}
    for r in rows:
        by_image.setdefault(r["ImageID"], []).append(r)
    kaggle = tmp_path / "sub.csv"
    with open(kaggle, "w") as f:
        f.write("ImageId,PredictionString\n")
        for image, rs in by_image.items():
            f.write(image + "," + "".join(f"{r['LabelName']} {r['Score']} {r['XMin']} {r['YMin']} {r['XMax']} "
                                          f"{r['YMax']} " for r in rs) + "\n")
        f.write("imagewithoutboxes,\n")
    classes = read_eval_classes(str(_fx("inputs", "labelmap.pbtxt")))
    gt = read_ground_truth(str(_fx("inputs", "boxes.csv")), str(_fx("inputs", "labels.csv")), classes,
                           ExpansionMaps.from_json(_fx("inputs", "hierarchy.json")))
    _check_against_official(evaluate_predictions(gt, iter_prediction_chunks(str(kaggle), block_bytes=1 << 14)))
    per_image = [ImagePredictions(image, np.array([r["LabelName"] for r in rs]),
                                  np.array([float(r["Score"]) for r in rs]),
                                  np.array([[float(r[c]) for c in ("XMin", "YMin", "XMax", "YMax")] for r in rs]))
                 for image, rs in by_image.items()]
    _check_against_official(evaluate_predictions(gt, iter(per_image)))


def test_script_on_fixture(tmp_path, capsys):
    out = tmp_path / "out"
    rc = script.main(["--predictions", str(_fx("inputs", "predictions.csv")),
                      "--gt-boxes", str(_fx("inputs", "boxes.csv")), "--gt-labels", str(_fx("inputs", "labels.csv")),
                      "--hierarchy", str(_fx("inputs", "hierarchy.json")),
                      "--classes", str(_fx("inputs", "labelmap.pbtxt")), "--output-dir", str(out),
                      "--write-expanded-gt"])
    assert rc == 0
    assert "0.580839" in capsys.readouterr().out
    assert (out / "metrics.csv").read_bytes() == _fx("expected", "metrics.csv").read_bytes()
    summary = json.loads((out / "map.json").read_text())
    assert summary["mAP"] == json.loads(_fx("expected", "expected_metrics.json").read_text())["mAP"]
    assert summary["num_classes_scored"] == 23 and summary["num_classes"] == 25
    assert sorted(summary["nan_classes"]) == ["/m/a05", "/m/a25"]
    assert summary["predictions"]["dropped_unknown_label"] == 4
    assert summary["predictions"]["predictions_read"] == 2817
    assert set(summary["levels"]) == {"1", "2", "3", "4", "5"}
    per_class = pd.read_csv(out / "per_class_ap.csv", float_precision="round_trip")
    assert list(per_class.columns[:6]) == ["mid", "name", "AP", "num_gt", "num_tp", "num_detections"]
    a15 = per_class.set_index("mid").loc["/m/a15"]
    assert (a15["AP"], a15["num_gt"], a15["num_tp"]) == (0.0018315018315018315, 91, 1)
    assert (out / "per_class_ap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    levels = pd.read_csv(out / "per_level_ap.csv")
    assert list(levels["level"]) == [1, 2, 3, 4, 5] and (levels["classes_scored"] == 0).all()
    for name in ("boxes", "labels"):
        got, want = read_lines(out / f"{name}_expanded.csv"), read_lines(_fx("expanded", f"{name}_expanded.csv"))
        assert collections.Counter(got) == collections.Counter(want)


def test_script_with_preexpanded_gt_and_voc(tmp_path):
    out = tmp_path / "voc"
    rc = script.main(["--predictions", str(_fx("inputs", "predictions_filtered.csv")),
                      "--gt-boxes", str(_fx("expanded", "boxes_expanded.csv")),
                      "--gt-labels", str(_fx("expanded", "labels_expanded.csv")), "--no-expand-gt",
                      "--classes", str(_fx("inputs", "labelmap.pbtxt")), "--output-dir", str(out),
                      "--metric", "voc", "--no-chart"])
    assert rc == 0
    summary = json.loads((out / "map.json").read_text())
    assert summary["metric"] == "voc" and not (out / "metrics.csv").exists()
    classes = read_eval_classes(str(_fx("inputs", "labelmap.pbtxt")))
    gt = read_ground_truth(str(_fx("expanded", "boxes_expanded.csv")), str(_fx("expanded", "labels_expanded.csv")),
                           classes)
    expected = slow_voc(gt, [(r["ImageID"], r["LabelName"], float(r["Score"]),
                              *(float(r[c]) for c in ("XMin", "YMin", "XMax", "YMax")))
                             for r in _fixture_rows()], score_threshold=0.05, max_detections=100)
    assert summary["mAP"] == expected[0]


# ---------------------------------------------------------------------------------------------------------------
# Hand-worked cases, one rule each
# ---------------------------------------------------------------------------------------------------------------

CLASSES = EvalClasses.from_mids(["/m/a", "/m/b", "/m/c"], ["A", "B", "C"])


def make_gt(boxes: list[tuple], labels: list[tuple] = (), classes: EvalClasses = CLASSES):
    """boxes: (image, mid, x1, y1, x2, y2, group_of); labels: (image, mid, confidence)."""
    b = pd.DataFrame(list(boxes), columns=["ImageID", "LabelName", "XMin", "YMin", "XMax", "YMax", "IsGroupOf"])
    lab = pd.DataFrame(list(labels), columns=["ImageID", "LabelName", "Confidence"])
    return ground_truth_from_frames(b, lab, classes)


def run(gt, dets: list[tuple], metric: str = "oid", **options):
    """dets: (image, mid, score, x1, y1, x2, y2)."""
    evaluator = OIDChallengeEvaluator(gt, **options) if metric == "oid" else VOCEvaluator(gt, **options)
    if dets:
        d = list(zip(*dets))
        evaluator.add(DetectionChunk.from_arrays(d[0], d[1], np.array(d[2]), np.array(d[3:]).T))
    return evaluator.evaluate()


def ap_of(result, mid: str) -> float:
    return float(result.ap[result.classes.mids.index(mid)])


def test_group_of_detections_fold_into_one_true_positive_at_their_best_score():
    gt = make_gt([("i1", "/m/a", 0.0, 0.0, 0.4, 0.4, 0), ("i1", "/m/a", 0.5, 0.5, 1.0, 1.0, 1)])
    dets = [("i1", "/m/a", 0.9, 0.0, 0.0, 0.4, 0.4),     # TP on the single box
            ("i1", "/m/a", 0.86, 0.6, 0.6, 0.7, 0.7),    # inside the group-of box
            ("i1", "/m/a", 0.7, 0.55, 0.55, 0.9, 0.9),   # inside too: same group entry
            ("i1", "/m/a", 0.85, 0.0, 0.5, 0.3, 0.9),    # nothing there: FP
            ("i1", "/m/a", 0.6, 0.01, 0.01, 0.4, 0.4)]   # duplicate of the taken single box, outside the group: FP
    r = run(gt, dets)
    i = r.classes.mids.index("/m/a")
    # entries 0.9 TP, 0.86 TP (group), 0.85 FP, 0.6 FP; num_gt 2 -> AP 1.0 (at 0.7 the group entry would give 5/6)
    assert (r.num_gt[i], r.num_entries[i], r.num_tp[i]) == (2, 4, 2)
    assert ap_of(r, "/m/a") == 1.0


def test_group_of_box_absorbs_a_duplicate_and_unmatched_group_box_is_a_miss():
    gt = make_gt([("i1", "/m/a", 0.0, 0.0, 1.0, 1.0, 1), ("i1", "/m/a", 0.2, 0.2, 0.4, 0.4, 0),
                  ("i2", "/m/a", 0.0, 0.0, 0.5, 0.5, 1)])
    dets = [("i1", "/m/a", 0.9, 0.2, 0.2, 0.4, 0.4),    # TP on the single box
            ("i1", "/m/a", 0.8, 0.2, 0.2, 0.4, 0.4)]    # its duplicate lies inside the group-of box: folded
    r = run(gt, dets)
    i = r.classes.mids.index("/m/a")
    assert (r.num_gt[i], r.num_entries[i], r.num_tp[i]) == (3, 2, 2)
    assert ap_of(r, "/m/a") == pytest.approx(2 / 3, abs=TOL)  # i2's group-of box is never found


def test_group_of_box_found_only_at_score_zero_makes_no_entry():
    gt = make_gt([("i1", "/m/a", 0.0, 0.0, 1.0, 1.0, 1)])
    r = run(gt, [("i1", "/m/a", 0.0, 0.2, 0.2, 0.4, 0.4)])  # folded away, but the entry needs a score > 0
    assert (r.num_entries[0], r.num_tp[0], ap_of(r, "/m/a")) == (0, 0.0, 0.0)


def test_duplicate_detection_is_false_positive_without_fallback_to_second_box():
    gt = make_gt([("i1", "/m/a", 0.0, 0.0, 0.4, 0.4, 0), ("i1", "/m/a", 0.1, 0.0, 0.5, 0.4, 0)])
    dets = [("i1", "/m/a", 0.9, 0.0, 0.0, 0.4, 0.4),      # IoU 1 with box 1, 0.6 with box 2: TP on box 1
            ("i1", "/m/a", 0.8, 0.02, 0.0, 0.42, 0.4)]    # best is box 1 again (taken): FP, box 2 not tried
    r = run(gt, dets)
    assert ap_of(r, "/m/a") == 0.5  # precision 1 at recall 0.5, recall never reaches 1
    assert r.num_tp[0] == 1 and r.num_entries[0] == 2


def test_verified_negative_makes_false_positives_and_unverified_classes_are_ignored():
    gt = make_gt([("i2", "/m/b", 0.1, 0.1, 0.5, 0.5, 0)],
                 [("i1", "/m/b", 0), ("i2", "/m/b", 1)])
    dets = [("i1", "/m/b", 0.9, 0.1, 0.1, 0.5, 0.5),   # B verified absent on i1: false positive
            ("i2", "/m/b", 0.5, 0.1, 0.1, 0.5, 0.5),   # TP
            ("i1", "/m/c", 0.99, 0.1, 0.1, 0.5, 0.5),  # C not verified on i1: ignored
            ("i9", "/m/b", 0.99, 0.1, 0.1, 0.5, 0.5),  # no ground truth for i9: ignored
            ("i2", "/m/zz", 0.99, 0.1, 0.1, 0.5, 0.5)]  # label outside the class list: dropped, counted
    r = run(gt, dets)
    assert ap_of(r, "/m/b") == 0.5  # FP at 0.9 first: precision 1/2 at recall 1 (1.0 if negatives were ignored)
    assert r.counts["ignored_unverified_class"] == 1
    assert r.counts["ignored_image_without_gt"] == 1
    assert r.counts["dropped_unknown_label"] == 1
    assert r.counts["evaluated"] == 2


def test_box_makes_its_class_verified_without_an_image_label():
    gt = make_gt([("i1", "/m/a", 0.1, 0.1, 0.5, 0.5, 0)])
    r = run(gt, [("i1", "/m/a", 0.4, 0.1, 0.1, 0.5, 0.5), ("i1", "/m/a", 0.9, 0.6, 0.6, 0.9, 0.9)])
    assert ap_of(r, "/m/a") == 0.5


def test_nan_classes_and_the_mean():
    gt = make_gt([("i1", "/m/a", 0.1, 0.1, 0.5, 0.5, 0), ("i1", "/m/c", 0.1, 0.1, 0.5, 0.5, 0)],
                 [("i1", "/m/b", 0)])
    dets = [("i1", "/m/a", 0.9, 0.1, 0.1, 0.5, 0.5), ("i1", "/m/b", 0.9, 0.1, 0.1, 0.5, 0.5)]
    r = run(gt, dets)
    assert ap_of(r, "/m/a") == 1.0
    assert math.isnan(ap_of(r, "/m/b"))      # no ground truth: NaN even with (false positive) detections
    assert ap_of(r, "/m/c") == 0.0           # ground truth but no detection: 0
    assert r.mean_ap == 0.5 and r.num_scored == 2


def test_label_map_ids_with_gaps_count_as_nan():
    classes = EvalClasses(("/m/a", "/m/b"), ("A", "B"), (3, 1))
    gt = make_gt([("i1", "/m/a", 0.1, 0.1, 0.5, 0.5, 0), ("i1", "/m/b", 0.1, 0.1, 0.5, 0.5, 0)], classes=classes)
    r = run(gt, [("i1", "/m/a", 0.9, 0.1, 0.1, 0.5, 0.5)])
    assert r.mean_ap == 0.5


def test_invalid_boxes_scores_and_the_10000_limit():
    gt = make_gt([("i1", "/m/a", 0.1, 0.1, 0.5, 0.5, 0), ("i1", "/m/a", 0.6, 0.6, 0.5, 0.9, 0)])
    n = 10_003
    dets = [("i1", "/m/a", 0.5, 0.7, 0.7, 0.8, 0.8)] * n + [
        ("i1", "/m/a", 0.9, 0.1, 0.1, 0.1, 0.5),     # zero width: invalid (strict <), dropped
        ("i1", "/m/a", -10.0, 0.1, 0.1, 0.5, 0.5),   # score not above -10: dropped
        ("i1", "/m/a", float("nan"), 0.1, 0.1, 0.5, 0.5)]
    r = run(gt, dets)
    assert r.counts["dropped_invalid_box"] == 1
    assert r.counts["dropped_score_not_above_-10"] == 2
    assert r.counts["dropped_over_10000_per_image_and_class"] == n - 10_000
    assert r.gt_stats["gt_boxes_dropped_invalid"] == 1  # XMin > XMax: the official code stops; we drop it
    assert r.num_gt[0] == 1 and ap_of(r, "/m/a") == 0.0


def test_ground_truth_outside_the_class_list_is_dropped_and_counted():
    gt = make_gt([("i1", "/m/a", 0.1, 0.1, 0.5, 0.5, 0), ("i1", "/m/zz", 0.1, 0.1, 0.5, 0.5, 0)],
                 [("i1", "/m/yy", 1)])
    assert gt.stats["gt_box_rows_outside_class_list"] == 1
    assert gt.stats["gt_label_rows_outside_class_list"] == 1
    assert len(gt.box_class) == 1


def test_voc_metric_hand_worked():
    gt = make_gt([("i1", "/m/a", 0.0, 0.0, 0.4, 0.4, 0),
                  ("i2", "/m/a", 0.0, 0.0, 0.4, 0.4, 0), ("i2", "/m/a", 0.5, 0.5, 0.9, 0.9, 1),
                  ("i1", "/m/c", 0.5, 0.5, 0.9, 0.9, 0)])
    dets = [("i1", "/m/a", 0.9, 0.0, 0.0, 0.4, 0.4),    # TP
            ("i1", "/m/a", 0.8, 0.0, 0.0, 0.4, 0.4),    # duplicate: FP
            ("i2", "/m/a", 0.7, 0.0, 0.0, 0.4, 0.4),    # TP
            ("i2", "/m/a", 0.04, 0.5, 0.5, 0.9, 0.9),   # below the 0.05 threshold: not scored
            ("i1", "/m/b", 0.9, 0.0, 0.0, 0.4, 0.4)]    # B has no annotations: FP, class left out of the mean
    r = run(gt, dets, metric="voc")
    # A: 0.9 TP, 0.8 FP, 0.7 TP over 3 annotations (the group-of box is a plain box here):
    # precision 1, 1/2, 2/3 at recall 1/3, 1/3, 2/3 -> 1/3 * 1 + 1/3 * 2/3 = 5/9
    assert ap_of(r, "/m/a") == pytest.approx(5 / 9, abs=TOL)
    assert ap_of(r, "/m/c") == 0.0 and math.isnan(ap_of(r, "/m/b"))
    assert r.mean_ap == pytest.approx((5 / 9 + 0.0) / 2, abs=TOL)
    assert r.counts["dropped_score_not_above_threshold"] == 1
    weighted = run(gt, dets, metric="voc", weighted_average=True)
    assert weighted.mean_ap == pytest.approx((3 * 5 / 9 + 1 * 0.0) / 4, abs=TOL)
    top2 = run(gt, dets, metric="voc", max_detections=2)  # i1 keeps its 0.9 A and 0.9 B, loses the 0.8 duplicate
    assert ap_of(top2, "/m/a") == pytest.approx(2 / 3, abs=TOL)


def test_voc_plus_one_overlap_is_the_2018_pixel_convention():
    gt = make_gt([("i1", "/m/a", 0.0, 0.0, 3.0, 3.0, 0)])  # pixel boxes
    det = [("i1", "/m/a", 0.9, 1.2, 0.0, 4.2, 3.0)]
    # plain: 1.8 * 3 / (9 + 9 - 5.4) = 0.43 -> FP; +1: 2.8 * 4 / (16 + 16 - 11.2) = 0.54 -> TP
    assert ap_of(run(gt, det, metric="voc"), "/m/a") == 0.0
    assert ap_of(run(gt, det, metric="voc", plus_one=True), "/m/a") == 1.0


# ---------------------------------------------------------------------------------------------------------------
# Against slow, literal re-implementations on random scenes (many exact score ties and threshold cases)
# ---------------------------------------------------------------------------------------------------------------

def _iou(d, g):
    h = max(0.0, min(d[3], g[3]) - max(d[1], g[1]))
    w = max(0.0, min(d[2], g[2]) - max(d[0], g[0]))
    inter = h * w
    a = (d[3] - d[1]) * (d[2] - d[0])
    return inter / (a + (g[3] - g[1]) * (g[2] - g[0]) - inter)


def _ioa(d, g):
    h = max(0.0, min(d[3], g[3]) - max(d[1], g[1]))
    w = max(0.0, min(d[2], g[2]) - max(d[0], g[0]))
    return (h * w) / ((d[3] - d[1]) * (d[2] - d[0]))


def _voc_ap(precision, recall):
    if not len(precision):
        return 0.0
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    for i in range(len(p) - 2, -1, -1):
        p[i] = max(p[i], p[i + 1])
    idx = np.where(r[1:] != r[:-1])[0] + 1
    return float(np.sum((r[idx] - r[idx - 1]) * p[idx]))


def slow_oid(gt_boxes, gt_labels, dets, mids):
    """The official per-image loops, written out (ties: a stable argsort(scores)[::-1])."""
    images = sorted({b[0] for b in gt_boxes} | {lab[0] for lab in gt_labels})
    scores = {m: [] for m in mids}
    labels = {m: [] for m in mids}
    num_gt = collections.Counter(b[1] for b in gt_boxes)
    for image in images:
        verified = {lab[1] for lab in gt_labels if lab[0] == image} | {b[1] for b in gt_boxes if b[0] == image}
        mine = [d for d in dets if d[0] == image and d[1] in verified and d[3] < d[5] and d[4] < d[6]]
        for m in mids:
            ds = [d for d in mine if d[1] == m]
            if not ds:
                continue
            order = np.argsort(np.array([d[2] for d in ds]), kind="stable")[::-1]
            ds = [ds[i] for i in order]
            boxes = [b for b in gt_boxes if b[0] == image and b[1] == m]
            if not boxes:
                scores[m] += [d[2] for d in ds]
                labels[m] += [0.0] * len(ds)
                continue
            single = [b[2:6] for b in boxes if not b[6]]
            group = [b[2:6] for b in boxes if b[6]]
            tp, taken, folded = [False] * len(ds), [False] * len(single), [False] * len(ds)
            for i, d in enumerate(ds):
                if single:
                    ious = [_iou(d[3:7], g) for g in single]
                    j = int(np.argmax(ious))
                    if ious[j] >= 0.5 and not taken[j]:
                        tp[i] = taken[j] = True
            best = [0.0] * len(group)
            for i, d in enumerate(ds):
                if group and not tp[i]:
                    ioas = [_ioa(d[3:7], g) for g in group]
                    j = int(np.argmax(ioas))
                    if ioas[j] >= 0.5:
                        folded[i] = True
                        best[j] = max(best[j], d[2])
            for i, d in enumerate(ds):
                if not folded[i]:
                    scores[m].append(d[2])
                    labels[m].append(float(tp[i]))
            for s in best:
                if s > 0:
                    scores[m].append(s)
                    labels[m].append(1.0)
    aps = []
    for m in mids:
        if num_gt[m] == 0:
            aps.append(math.nan)
            continue
        order = np.argsort(np.array(scores[m], dtype=float), kind="stable")[::-1]
        lab = np.array(labels[m], dtype=float)[order]
        tp, fp = np.cumsum(lab), np.cumsum((lab <= 0).astype(float))
        aps.append(_voc_ap(tp / (tp + fp), tp / float(num_gt[m])))
    return np.array(aps)


def slow_voc(gt, dets, score_threshold=0.05, max_detections=100, plus_one=False):
    """keras-retinanet's evaluate() loops on a GroundTruth and (image, mid, score, x1, y1, x2, y2) detections."""
    one = 1.0 if plus_one else 0.0
    mids = list(gt.classes.mids)
    per_image = {}
    for d in dets:
        per_image.setdefault(d[0], []).append(d)
    aps, instances = [], []
    for c, m in enumerate(mids):
        scores, tps = [], []
        n_ann = 0.0
        for i, image in enumerate(gt.image_ids):
            ds = [d for d in per_image.get(image, []) if d[2] > score_threshold]
            order = np.argsort(-np.array([d[2] for d in ds], dtype=float), kind="stable")[:max_detections]
            ds = [ds[k] for k in order if ds[k][1] == m]
            ann = gt.boxes[(gt.box_image == i) & (gt.box_class == c)]
            n_ann += len(ann)
            detected = []
            for d in ds:
                scores.append(d[2])
                if not len(ann):
                    tps.append(0.0)
                    continue
                ov = []
                for g in ann:
                    iw = min(d[5], g[2]) - max(d[3], g[0]) + one
                    ih = min(d[6], g[3]) - max(d[4], g[1]) + one
                    if iw > 0 and ih > 0:
                        ua = (d[5] - d[3] + one) * (d[6] - d[4] + one) + (g[2] - g[0] + one) * (g[3] - g[1] + one) \
                            - iw * ih
                        ov.append(iw * ih / ua)
                    else:
                        ov.append(0.0)
                j = int(np.argmax(ov))
                if ov[j] >= 0.5 and j not in detected:
                    tps.append(1.0)
                    detected.append(j)
                else:
                    tps.append(0.0)
        if n_ann == 0:
            aps.append(0.0)
            instances.append(0.0)
            continue
        order = np.argsort(-np.array(scores, dtype=float), kind="stable")
        tp = np.cumsum(np.array(tps)[order])
        fp = np.cumsum(1.0 - np.array(tps)[order])
        ap = _voc_ap(tp / np.maximum(tp + fp, np.finfo(np.float64).eps), tp / n_ann)
        aps.append(ap)
        instances.append(n_ann)
    return sum(aps) / sum(x > 0 for x in instances), aps, instances


def random_scene(seed: int):
    rng = np.random.default_rng(seed)
    mids = ["/m/a", "/m/b", "/m/c", "/m/d"]
    grid = np.round(np.arange(0, 1.01, 0.1), 1)
    boxes, labels, dets = [], [], []
    for k in range(25):
        image = f"img{rng.integers(0, 1000):03d}"
        for _ in range(rng.integers(0, 5)):
            x1, x2 = np.sort(rng.choice(grid, 2, replace=False))
            y1, y2 = np.sort(rng.choice(grid, 2, replace=False))
            boxes.append((image, str(rng.choice(mids)), x1, y1, x2, y2, int(rng.random() < 0.25)))
        for m in rng.choice(mids, rng.integers(0, 3), replace=False):
            labels.append((image, str(m), int(rng.random() < 0.6)))
    images = sorted({b[0] for b in boxes} | {lab[0] for lab in labels}) + ["nogt"]
    for _ in range(400):
        image = str(rng.choice(images))
        if rng.random() < 0.5 and boxes:
            b = boxes[rng.integers(len(boxes))]
            image, x1, y1, x2, y2 = b[0], *(np.clip(np.array(b[2:6]) + rng.choice([-0.1, 0, 0, 0.1], 4), 0, 1))
        else:
            x1, x2 = np.sort(rng.choice(grid, 2))
            y1, y2 = np.sort(rng.choice(grid, 2))
        dets.append((image, str(rng.choice(mids)), float(rng.choice([0.2, 0.5, 0.5, 0.7, 0.9, 0.9])),
                     float(x1), float(y1), float(x2), float(y2)))
    return mids, boxes, labels, dets


@pytest.mark.parametrize("seed", range(12))
def test_oid_metric_equals_the_official_loops_on_random_scenes(seed):
    mids, boxes, labels, dets = random_scene(seed)
    classes = EvalClasses.from_mids(mids)
    gt = make_gt(boxes, labels, classes)
    r = run(gt, dets)
    want = slow_oid(boxes, labels, dets, mids)
    np.testing.assert_array_equal(r.ap, want)


@pytest.mark.parametrize("seed", range(6))
def test_voc_metric_equals_keras_retinanet_loops_on_random_scenes(seed):
    mids, boxes, labels, dets = random_scene(seed)
    gt = make_gt(boxes, labels, EvalClasses.from_mids(mids))
    for options in ({}, {"max_detections": 3, "score_threshold": 0.3}, {"plus_one": True}):
        r = run(gt, dets, metric="voc", **options)
        mean, aps, instances = slow_voc(gt, dets, **options)
        assert r.mean_ap == mean
        present = np.array(instances) > 0
        np.testing.assert_array_equal(r.ap[present], np.array(aps)[present])


# ---------------------------------------------------------------------------------------------------------------
# Inputs and errors
# ---------------------------------------------------------------------------------------------------------------

def test_class_lists_csv_and_pbtxt(tmp_path):
    csv_list = tmp_path / "classes.csv"
    csv_list.write_text("/m/a,Apple\n/m/b,Bench\n")
    c = read_eval_classes(str(csv_list))
    assert (c.mids, c.names, c.ids) == (("/m/a", "/m/b"), ("Apple", "Bench"), (1, 2))
    pbtxt = tmp_path / "labels.pbtxt"
    pbtxt.write_text('# comment\nitem {\n  name: "/m/b"\n  id: 2\n  display_name: "Bench"\n}\n'
                     "item { name: '/m/a' id: 5 }\n")
    c = read_eval_classes(str(pbtxt))
    assert (c.mids, c.names, c.ids, c.max_id) == (("/m/b", "/m/a"), ("Bench", "/m/a"), (2, 5), 5)


def _run_script(tmp_path, capsys, predictions_text: str, boxes_text: str | None = None):
    pred = tmp_path / "pred.csv"
    pred.write_text(predictions_text)
    boxes = tmp_path / "boxes.csv"
    boxes.write_text(boxes_text or "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsGroupOf\n"
                                   "i1,x,/m/a,1,0.1,0.5,0.1,0.5,0\n")
    labels = tmp_path / "labels.csv"
    labels.write_text("ImageID,Source,LabelName,Confidence\ni1,v,/m/a,1\n")
    classes = tmp_path / "classes.csv"
    classes.write_text("/m/a,A\n/m/b,B\n")
    hierarchy = tmp_path / "h.json"
    hierarchy.write_text(json.dumps({"LabelName": "/m/root", "Subcategory": [
        {"LabelName": "/m/b", "Subcategory": [{"LabelName": "/m/a"}]}]}))
    out = tmp_path / "out"
    rc = script.main(["--predictions", str(pred), "--gt-boxes", str(boxes), "--gt-labels", str(labels),
                      "--classes", str(classes), "--hierarchy", str(hierarchy), "--output-dir", str(out)])
    return rc, capsys.readouterr(), out, pred, boxes


def test_script_small_kaggle_run_with_expansion(tmp_path, capsys):
    rc, cap, out, _, _ = _run_script(tmp_path, capsys, "ImageId,PredictionString\n"
                                                        "i1,/m/a 0.9 0.1 0.1 0.5 0.5 /m/b 0.8 0.1 0.1 0.5 0.5 \n")
    assert rc == 0
    per_class = pd.read_csv(out / "per_class_ap.csv").set_index("mid")
    assert per_class.loc["/m/a", "AP"] == 1.0 and per_class.loc["/m/b", "AP"] == 1.0  # /m/b from the expansion
    assert json.loads((out / "map.json").read_text())["mAP"] == 1.0


@pytest.mark.parametrize("predictions,message", [
    ("ImageId,PredictionString\ni1,/m/a 0.9 0.1 0.1 0.5\n", "row 2: bad prediction string: 5 tokens"),
    ("ImageId,PredictionString\ni1,/m/a 0.9 0.1 0.1 0.5 0.5\ni2,/m/a 0.9 0.1 x 0.5 0.5\n",
     "row 3: YMin of box 1 is not a number: 'x'"),
    ("ImageID,LabelName,Score,XMin,XMax,YMin,YMax\ni1,/m/a,0.5,0.1,0.2,0.1,0.2\ni1,/m/a,high,0.1,0.2,0.1,0.2\n",
     "row 3: Score is not a number: 'high'"),
    ("Image,Boxes\ni1,foo\n", "row 1: unknown prediction format"),
])
def test_script_bad_predictions_one_line_exit_2(tmp_path, capsys, predictions, message):
    rc, cap, out, pred, _ = _run_script(tmp_path, capsys, predictions)
    assert rc == 2
    last = cap.err.strip().splitlines()[-1]
    assert last.startswith(f"error: {pred}, ") and message in last, last
    assert "Traceback" not in cap.err
    assert not (out / "map.json").exists()


def test_script_ground_truth_label_outside_the_hierarchy(tmp_path, capsys):
    boxes = ("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsGroupOf\n"
             "i0,freeform,,1,,,,,0\ni1,x,/m/a,1,0.1,0.5,0.1,0.5,0\ni1,x,/m/q,1,0.1,0.5,0.1,0.5,0\n")
    rc, cap, _, _, path = _run_script(tmp_path, capsys, "ImageId,PredictionString\n", boxes)
    assert rc == 2
    assert cap.err.strip().splitlines()[-1].startswith(f"error: {path}, row 4: LabelName '/m/q' is not in the "
                                                       "hierarchy")


def test_rows_without_coordinates_are_images_not_boxes(tmp_path):
    """A level file's negative row (empty label and coordinates) makes its image a ground-truth image."""
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsGroupOf\n"
                     "i1,freeform,,1.0,,,,,0\ni2,x,/m/a,1,0.1,0.5,0.1,0.5,0\n")
    gt = read_ground_truth(str(boxes), None, CLASSES)
    assert list(gt.image_ids) == ["i1", "i2"] and len(gt.box_class) == 1
    r = run(gt, [("i1", "/m/a", 0.9, 0.1, 0.1, 0.5, 0.5), ("i2", "/m/a", 0.5, 0.1, 0.1, 0.5, 0.5)])
    assert r.counts["ignored_unverified_class"] == 1 and ap_of(r, "/m/a") == 1.0


def test_script_bad_ground_truth_coordinate(tmp_path, capsys):
    boxes = ("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsGroupOf\n"
             "i1,x,/m/a,1,0.1,0.5,0.1,0.5,0\ni1,x,/m/a,1,0.1,abc,0.1,0.5,0\n")
    rc, cap, _, _, path = _run_script(tmp_path, capsys, "ImageId,PredictionString\n", boxes)
    assert rc == 2
    assert cap.err.strip().splitlines()[-1] == f"error: {path}, row 3: XMax is not a number: 'abc'"


def test_script_missing_file(tmp_path, capsys):
    rc = script.main(["--predictions", str(tmp_path / "nope.csv"), "--gt-boxes", str(tmp_path / "b.csv"),
                      "--gt-labels", str(tmp_path / "l.csv"), "--output-dir", str(tmp_path / "out")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "No such file or directory" in err and "Traceback" not in err


def test_evaluator_refuses_chunks_after_evaluate():
    gt = make_gt([("i1", "/m/a", 0.1, 0.1, 0.5, 0.5, 0)])
    ev = OIDChallengeEvaluator(gt)
    first = ev.evaluate()
    assert ev.evaluate() is first
    with pytest.raises(RuntimeError):
        ev.add(DetectionChunk.from_arrays(["i1"], ["/m/a"], np.array([0.5]), np.array([[0.1, 0.1, 0.5, 0.5]])))


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exc:
        script.main(["--help"])
    assert exc.value.code == 0
    assert "--predictions" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------------
# The training callback (imports Keras)
# ---------------------------------------------------------------------------------------------------------------

def test_callback_logs_map_during_fit(tmp_path):
    keras = pytest.importorskip("keras")
    from oid_retinanet.train.callbacks import MeanAPCallback

    gt = make_gt([("i1", "/m/a", 0.1, 0.1, 0.5, 0.5, 0), ("i2", "/m/a", 0.1, 0.1, 0.5, 0.5, 0)])
    calls = []

    def predict(model):
        calls.append(model)
        epoch = len(calls)  # epoch 1 finds one of two boxes, epoch 2 both
        yield ImagePredictions("i1", np.array(["/m/a"]), np.array([0.9]), np.array([[0.1, 0.1, 0.5, 0.5]]))
        if epoch > 1:
            yield ImagePredictions("i2", np.array(["/m/a"]), np.array([0.8]), np.array([[0.1, 0.1, 0.5, 0.5]]))

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    report = tmp_path / "mAP_stat_resnet50.txt"
    callback = MeanAPCallback(predict, gt, report_path=str(report))
    history = model.fit(np.zeros((4, 2)), np.zeros((4, 1)), epochs=2, verbose=0, callbacks=[callback])
    assert history.history["mAP"] == [0.5, 1.0]
    first, *others = callback.last_result.classes.names  # /m/a has the boxes; the others none (AP 0, as there)
    none = [f"0 instances of class {name} with average precision: 0.0000" for name in others]
    assert others and report.read_text().splitlines() == [  # appended per epoch, in the original's format
        f"2 instances of class {first} with average precision: 0.5000", *none, "Ep 1: mAP: 0.5000",
        f"2 instances of class {first} with average precision: 1.0000", *none, "Ep 2: mAP: 1.0000"]
    assert calls[0] is model and callback.last_result.num_scored == 1
