"""Stage 6 ensembling and the single-model mirror merge (stage 4's CSV step), the prediction cache, weighted
boxes fusion.

- Every recorded output of the originals in seed_pipeline (README "Stage 2" and the 2019 `ensemble/` part of
  "Stage 4") is reproduced from the recorded inputs, the packed caches written out as one cache file per
  image as the fixtures' runner did. CSVs are compared by the README's rule: rows as a multiset keyed by
  ImageId (the originals followed glob order), the boxes of a row in order, MIDs exact, numbers within
  1e-4 for coordinates and 1e-5 (2019: 1e-3) for scores, the last printed digit. The raw merged arrays are
  compared with rtol 1e-9.
- The merge against an independent per-box Python transcription of the originals' functions on random
  inputs built to hit ties, duplicates and same-list joins: exactly equal.
- Weighted boxes fusion against the ensemble-boxes package on random inputs: exactly equal.
- Bad input ends with one line naming the file and the row or value, exit code 2.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import fixture_path, read_lines

import ensemble_predictions_with_weighted_method as ensemble_script
from oid_retinanet.boxes.merge import (
    BoxBatch,
    filter_rows,
    merge_all_boxes_for_image,
    merge_batch,
)
from oid_retinanet.boxes.wbf import fuse_batch, prefilter, weighted_boxes_fusion
from oid_retinanet.errors import OIDInputError
from oid_retinanet.oid.classes import ClassList, read_class_descriptions, write_class_descriptions
from oid_retinanet.oid.levels import levels_2018, levels_2019
from oid_retinanet.predict.cache import (
    cache_file,
    cache_ids,
    read_cache,
    read_packed,
    record_classes,
    unpack_to_dir,
    write_cache,
)
from oid_retinanet.predict.ensemble import (
    finish_rows,
    format_rows,
    merge_caches,
    write_ensembled_csv,
    write_mirror_merged_csv,
)
from oid_retinanet.resources import resource_path
from retinanet_inference_submission import ensemble_predictions_with_weighted_method as ensemble_script_2019

SEED = "seed_pipeline"


# ---- the originals, per box in Python (independent of the library) -----------------------------------------

def slow_iou(a, b):
    xa, ya, xb, yb = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, xb - xa) * max(0, yb - ya)
    if inter == 0:
        return 0.0
    return inter / float((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def slow_merge(lists, thr, conf_type, variant="2018", weights=None):
    """merge_all_boxes_for_image of ZFTurbo (2018) or gujingxiao (2019), generalised to per-list weights."""
    weights = [1 / len(lists)] * len(lists) if weights is None else weights
    clusters = [list(b) for b in lists[0]]
    w = [weights[0]] * len(clusters)
    snapshot = list(clusters)
    for j in range(1, len(lists)):
        for box in lists[j]:
            box = list(box)
            against = clusters if variant == "2018" else snapshot
            best, index = thr, -1
            for i, c in enumerate(against):
                if c[0] == box[0]:
                    iou = slow_iou(c[2:], box[2:])
                    if iou > best:
                        best, index = iou, i
            if index == -1:
                clusters.append(box)
                w.append(weights[j])
                continue
            c, w1, w2 = against[index], w[index], weights[j]
            if conf_type == "avg":
                score = ((w1 * c[1]) + (w2 * box[1])) / (w1 + w2)
            elif conf_type == "max":
                score = max(c[1], box[1])
            else:
                score = np.sqrt(c[1] * box[1])
            clusters[index] = [c[0], score] + [(w1 * c[k] + w2 * box[k]) / (w1 + w2) for k in range(2, 6)]
            w[index] += w2
        snapshot = list(clusters)
    return np.array([[c[0], c[1] * w[i]] + c[2:] for i, c in enumerate(clusters)]).reshape(-1, 6)


def slow_filter(boxes, scores, labels, thr):
    """filter_boxes: each row up to its first score below thr, row 1 mirrored back."""
    lists = []
    for i in range(boxes.shape[0]):
        rows = []
        for j in range(boxes.shape[1]):
            if float(scores[i, j]) < thr:
                break
            b = [float(v) for v in boxes[i, j]]
            if i > 0:
                b = [1 - b[2], b[1], 1 - b[0], b[3]]
            rows.append([int(labels[i, j]), float(scores[i, j])] + b)
        lists.append(np.array(rows).reshape(-1, 6))
    return lists


def random_lists(rng, n_lists, n_objects=6, n_labels=3, max_boxes=30):
    """Box lists around a few objects, with exact duplicates (IoU ties), boxes outside [0, 1] and a few
    labels, so that clusters merge, several boxes of one list join one cluster and ties happen."""
    objects = rng.random((n_objects, 4)) * 1.1 - 0.05
    objects[:, 2:] = objects[:, :2] + 0.05 + rng.random((n_objects, 2)) * 0.5
    lists = []
    for _ in range(n_lists):
        n = int(rng.integers(0, max_boxes))
        boxes = objects[rng.integers(0, n_objects, n)] + rng.normal(0, 0.03, (n, 4))
        labels = rng.integers(0, n_labels, n)
        if n > 4:
            boxes[1], labels[1] = boxes[0], labels[0]
            boxes[3], labels[3] = boxes[2], labels[2]
        lists.append(np.column_stack([labels, rng.random(n), boxes]))
    return lists


# ---- the merge against the per-box transcription ------------------------------------------------------------

@pytest.mark.parametrize("variant", ["2018", "2019"])
@pytest.mark.parametrize("conf_type", ["avg", "max", "mul"])
def test_merge_equals_per_box_original(variant, conf_type):
    rng = np.random.default_rng(14)
    for _ in range(60):
        lists = random_lists(rng, int(rng.integers(1, 7)))
        expected = slow_merge(lists, 0.55, conf_type, variant)
        np.testing.assert_array_equal(merge_all_boxes_for_image(lists, 0.55, conf_type, variant), expected)


def test_merge_with_list_weights_and_thresholds():
    rng = np.random.default_rng(5)
    for _ in range(40):
        lists = random_lists(rng, 4)
        weights = list(rng.random(4) + 0.2)
        thr = float(rng.choice([0.0, 0.3, 0.55, 0.9]))
        for variant in ("2018", "2019"):
            np.testing.assert_array_equal(merge_all_boxes_for_image(lists, thr, "avg", variant, weights),
                                          slow_merge(lists, thr, "avg", variant, weights))


@pytest.mark.parametrize("variant", ["2018", "2019"])
def test_batch_of_images_equals_image_by_image(variant):
    """One merge_batch call over many images (groups of very different sizes, so several waves and buckets)
    gives each image's rows as a merge of that image alone."""
    rng = np.random.default_rng(7)
    images = [random_lists(rng, 4, n_objects=int(rng.integers(1, 12)), n_labels=int(rng.integers(1, 5)),
                           max_boxes=int(rng.integers(1, 120))) for _ in range(25)]
    parts = []
    for i, lists in enumerate(images):
        for j, a in enumerate(lists):
            parts.append((np.full(len(a), i), np.full(len(a), j), a))
    flat = np.concatenate([p[2] for p in parts])
    batch = BoxBatch(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                     flat[:, 0].astype(np.int64), flat[:, 1].copy(), flat[:, 2:].copy(), np.full(len(flat), 0.25))
    image, rows = merge_batch(batch, 0.55, "avg", variant)
    for i, lists in enumerate(images):
        np.testing.assert_array_equal(rows[image == i], slow_merge(lists, 0.55, "avg", variant))


def test_hand_worked_2018_and_2019():
    """List 0: one box; list 1: two boxes of the same label both overlapping it (weights 1/2 each)."""
    a = [0, 0.8, 0.0, 0.0, 1.0, 1.0]
    b1 = [0, 0.6, 0.0, 0.0, 1.0, 0.9]
    b2 = [0, 0.4, 0.0, 0.0, 0.9, 1.0]
    lists = [np.array([a]), np.array([b1, b2])]
    # 2018: b1 joins a (IoU 0.9): score 0.7, box y2 0.95, weight 1; b2 then joins that cluster (IoU 0.859):
    # score (1 * 0.7 + 0.5 * 0.4) / 1.5 = 0.6, x2 = (1 * 1 + 0.5 * 0.9) / 1.5, y2 = (0.95 + 0.5) / 1.5;
    # weight 1.5, so the final score is 0.9
    got = merge_all_boxes_for_image(lists, 0.55, "avg", "2018")
    np.testing.assert_allclose(got, [[0, 0.9, 0, 0, 1.45 / 1.5, 1.45 / 1.5]])
    # max keeps 0.8 and multiplies by 1.5: a score above 1, as the original wrote it
    assert merge_all_boxes_for_image(lists, 0.55, "max", "2018")[0, 1] == pytest.approx(1.2)
    # 2019: b2 matches the snapshot box a and overwrites b1's merge: (1 * a + 0.5 * b2) / 1.5 with the
    # weight b1 left (1.0); score (0.8 + 0.2) / 1.5 * 1.5 = 1.0
    got = merge_all_boxes_for_image(lists, 0.55, "avg", "2019")
    np.testing.assert_allclose(got, [[0, 1.0, 0, 0, 1.45 / 1.5, 1.0]])
    # a third box in list 1 that does not overlap becomes a new cluster, after the others
    far = [0, 0.3, 2.0, 2.0, 3.0, 3.0]
    got = merge_all_boxes_for_image([np.array([a]), np.array([b1, far, b2])], 0.55, "avg", "2018")
    np.testing.assert_allclose(got[:, 2], [0, 2.0])


def test_filter_rows_equals_original():
    rng = np.random.default_rng(3)
    for _ in range(30):
        n = 40
        scores = -np.ones((2, n), dtype=np.float32)
        labels = -np.ones((2, n), dtype=np.int32)
        boxes = -np.ones((2, n, 4), dtype=np.float32)
        for r in range(2):
            k = int(rng.integers(0, n))
            scores[r, :k] = np.sort(rng.random(k))[::-1]
            labels[r, :k] = rng.integers(0, 5, k)
            boxes[r, :k] = rng.random((k, 4))
            if k > 5:
                scores[r, 3] = 0.001  # the original stops here, even though later scores are higher
        row, lab, sc, bx = filter_rows(boxes, scores, labels, 0.01)
        expected = slow_filter(boxes, scores, labels, 0.01)
        for r in range(2):
            got = np.column_stack([lab[row == r], sc[row == r], bx[row == r]])
            np.testing.assert_array_equal(got, expected[r])


# ---- weighted boxes fusion against ensemble-boxes -----------------------------------------------------------

@pytest.mark.parametrize("conf_type", ["avg", "max", "box_and_model_avg", "absent_model_aware_avg"])
def test_wbf_equals_ensemble_boxes(conf_type):
    eb = pytest.importorskip("ensemble_boxes")
    rng = np.random.default_rng(9)
    for it in range(80):
        n_lists = int(rng.integers(1, 6))
        lists = random_lists(rng, n_lists, n_labels=int(rng.integers(1, 4)))
        dtype = np.float32 if it % 2 else np.float64
        boxes = [a[:, 2:].astype(dtype) for a in lists]
        scores = [(a[:, 1] if it % 5 else np.round(a[:, 1] * 4) / 4).astype(dtype) for a in lists]  # ties
        labels = [a[:, 0].astype(np.int64) for a in lists]
        weights = [None, list(rng.integers(1, 4, n_lists)), list(rng.random(n_lists) + 0.5)][it % 3]
        thr = float(rng.choice([0.0, 0.3]))
        for overflow in (False, True):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the package warns about every clipped box
                expected = eb.weighted_boxes_fusion(boxes, scores, labels, weights=weights, iou_thr=0.55,
                                                    skip_box_thr=thr, conf_type=conf_type,
                                                    allows_overflow=overflow)
            got = weighted_boxes_fusion(boxes, scores, labels, weights=weights, iou_thr=0.55, skip_box_thr=thr,
                                        conf_type=conf_type, allows_overflow=overflow)
            for e, g in zip(expected, got):
                np.testing.assert_array_equal(g, e)


def test_wbf_zero_scores_as_the_package():
    """Zero confidences (scores 0 kept by skip_box_thr=0) make NaN fused boxes in the package, which then
    absorb every later box of their label; ours does the same."""
    eb = pytest.importorskip("ensemble_boxes")
    boxes = [np.array([[0.1, 0.1, 0.5, 0.5], [0.11, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]]),
             np.array([[0.1, 0.12, 0.5, 0.5], [0.7, 0.7, 0.8, 0.8]])]
    scores = [np.array([0.0, 0.0, 0.3]), np.array([0.0, 0.2])]
    labels = [np.array([1, 1, 1]), np.array([1, 1])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = eb.weighted_boxes_fusion(boxes, scores, labels)
    got = weighted_boxes_fusion(boxes, scores, labels)
    assert np.isnan(expected[0]).any()
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g, e)


def test_wbf_batch_equals_image_by_image():
    rng = np.random.default_rng(11)
    weights = np.array([1.0, 1.0, 2.0, 2.0])
    images = [random_lists(rng, 4, n_objects=int(rng.integers(1, 10)), max_boxes=int(rng.integers(1, 80)))
              for _ in range(20)]
    flat, image, lists = [], [], []
    for i, ls in enumerate(images):
        for j, a in enumerate(ls):
            flat.append(a)
            image.append(np.full(len(a), i))
            lists.append(np.full(len(a), j))
    flat = np.concatenate(flat)
    image, lists = np.concatenate(image), np.concatenate(lists)
    img, lst, lab, conf, bw, bx = prefilter(image, lists, flat[:, 0].astype(np.int64), flat[:, 1], flat[:, 2:],
                                            weights, 0.1)
    out_image, out_boxes, out_scores, out_labels = fuse_batch(img, lst, lab, conf, bw, bx, weights)
    for i, ls in enumerate(images):
        b, s, lab_i = weighted_boxes_fusion([a[:, 2:] for a in ls], [a[:, 1] for a in ls], [a[:, 0] for a in ls],
                                            weights=weights, skip_box_thr=0.1)
        sel = out_image == i
        np.testing.assert_array_equal(out_boxes[sel], b)
        np.testing.assert_array_equal(out_scores[sel], s)
        np.testing.assert_array_equal(out_labels[sel], lab_i)


# ---- output rules and formatting ------------------------------------------------------------------------------

def test_finish_rows_limit_clip_and_skips():
    rows = np.array([
        [0, 0.5, -0.1, 0.2, 0.5, 1.3],      # clipped to 0 and 1
        [1, 0.7, 0.2, 0.2, 0.4, 0.4],
        [2, 0.5, 0.3, 0.3, 0.3000001, 0.6],  # under 1e-5 wide: dropped
        [3, 0.9, 0.6, 0.1, 0.4, 0.3],       # x2 < x1: dropped
        [4, 0.2, 1.2, 0.1, 1.5, 0.3],       # wholly right of the image: clipped to zero width, dropped
    ])
    image = np.zeros(5, dtype=np.int64)
    out_image, out = finish_rows(image, rows, 1, 4, sorted_desc=False)
    # over the limit: the first 4 of argsort()[::-1] (numpy's order for the tied 0.5s), then the checks
    keep = np.argsort(rows[:, 1])[::-1][:4]
    expected = [r for r in keep if r in (0, 1)]
    assert out[:, 0].tolist() == [float(r) for r in expected]
    np.testing.assert_array_equal(out[out[:, 0] == 0, 2:], [[0.0, 0.2, 0.5, 1.0]])
    _, out = finish_rows(image, rows, 1, 10, sorted_desc=False)
    assert out[:, 0].tolist() == [0.0, 1.0]  # under the limit: the merge's order


def test_format_rows_equals_python_formatting():
    rng = np.random.default_rng(2)
    edge = [0.0, -0.0, 1.0, 0.03125, 0.5, 0.99995, 0.999995, 0.0000049, 0.12345, 1 / 3, 0.15625, 9.999996, 10.0,
            12.3456, 2.19]
    k = 3000
    rows = np.column_stack([rng.integers(0, 4, k), rng.random(k) * 2.5, rng.random((k, 4))])
    rows[:len(edge), 1] = edge
    rows[len(edge):2 * len(edge), 2] = edge
    rows[2 * len(edge):2 * len(edge) + 60, 1:] = np.round(rng.random((60, 5)), 5) + 0.000005  # near ties
    image = np.sort(rng.integers(0, 40, k))
    mids = np.array(["/m/0a", "/m/0bcdef", "/g/11x", "/m/012"], dtype=object)
    ids = [f"{i:03d}" for i in range(42)]
    for sd, cd in [(5, 4), (6, 4), (3, 3)]:
        box = f"{{}} {{:.{sd}f}} " + " ".join([f"{{:.{cd}f}}"] * 4) + " "
        expected = "".join(ids[i] + "," + "".join(box.format(mids[int(r[0])], *r[1:])
                                                   for r in rows[image == i].tolist()) + "\n" for i in range(42))
        assert format_rows(ids, image, rows, mids, sd, cd).decode() == expected


# ---- the recorded outputs of the originals -------------------------------------------------------------------

def _unpack(tmp_path_factory, prefix: str, n_models: int) -> list[str]:
    out = tmp_path_factory.mktemp(prefix)
    dirs = []
    for m in range(n_models):
        packed = fixture_path(SEED, "inputs", f"{prefix}_caches", f"{prefix}_model_{m}.npz")
        unpack_to_dir(packed, out / f"model_{m}")
        dirs.append(str(out / f"model_{m}"))
    return dirs


@pytest.fixture(scope="module")
def z18_dirs(tmp_path_factory):
    return _unpack(tmp_path_factory, "z18", 3)


@pytest.fixture(scope="module")
def g19_dirs(tmp_path_factory):
    return _unpack(tmp_path_factory, "g19", 2)


@pytest.fixture(scope="module")
def level1_mids():
    classes = read_class_descriptions(resource_path("class-descriptions-boxable.csv"))
    return levels_2018(classes)["1"].mids


def assert_same_predictions(expected_path, actual_path, score_tol, coord_tol=1e-4):
    """README rule: header exact; rows a multiset keyed by ImageId; each row's boxes in order, MIDs exact,
    numbers within the tolerance of their last printed digit."""
    expected, actual = read_lines(expected_path), read_lines(actual_path)
    assert actual[0] == expected[0]
    exp = dict(line.split(",", 1) for line in expected[1:])
    got = dict(line.split(",", 1) for line in actual[1:])
    assert len(exp) == len(expected) - 1 and len(got) == len(actual) - 1, "repeated ImageIds"
    assert got.keys() == exp.keys()
    for image_id, string in exp.items():
        e, g = string.split(), got[image_id].split()
        assert len(g) == len(e), f"{image_id}: {len(g) // 6} boxes, expected {len(e) // 6}"
        e, g = np.array(e, dtype=object).reshape(-1, 6), np.array(g, dtype=object).reshape(-1, 6)
        assert (g[:, 0] == e[:, 0]).all(), f"{image_id}: labels differ"
        np.testing.assert_allclose(g[:, 1].astype(float), e[:, 1].astype(float), rtol=0, atol=score_tol * 1.01)
        np.testing.assert_allclose(g[:, 2:].astype(float), e[:, 2:].astype(float), rtol=0, atol=coord_tol * 1.01)


@pytest.mark.parametrize("conf_type", ["avg", "max", "mul"])
def test_merged_raw_2018(z18_dirs, conf_type):
    expected = np.load(fixture_path(SEED, "expected", "zfturbo", "ensemble", f"merged_raw_{conf_type}.npz"))
    seen = 0
    for chunk, image, rows in merge_caches(z18_dirs, 443, 0.01, 0.55, conf_type, "2018", batch_images=7):
        for i, image_id in enumerate(chunk):
            np.testing.assert_allclose(rows[image == i], expected[image_id], rtol=1e-9, atol=0)
            seen += 1
    assert seen == len(expected.files) == 100


@pytest.mark.parametrize("conf_type", ["avg", "max"])
def test_merged_raw_2019(g19_dirs, conf_type):
    expected = np.load(fixture_path(SEED, "expected", "gujingxiao", "ensemble", f"merged_raw_{conf_type}.npz"))
    seen = 0
    for chunk, image, rows in merge_caches(g19_dirs, 133, 0.15, 0.55, conf_type, "2019", batch_images=9):
        for i, image_id in enumerate(chunk):
            np.testing.assert_allclose(rows[image == i], expected[image_id], rtol=1e-9, atol=0)
            seen += 1
    assert seen == len(expected.files) == 50


@pytest.mark.parametrize("conf_type, workers", [("avg", "1"), ("max", "2"), ("mul", "1")])
def test_ensemble_csv_2018(z18_dirs, tmp_path, conf_type, workers):
    out = tmp_path / "ensemble.csv"
    rc = ensemble_script.main(["--cache-dirs", *z18_dirs, "--type", conf_type, "--output", str(out),
                               "--batch-images", "16", "--workers", workers])
    assert rc == 0
    assert_same_predictions(fixture_path(SEED, "expected", "zfturbo", "ensemble", f"ensemble_{conf_type}.csv.gz"),
                            out, score_tol=1e-5)


@pytest.mark.parametrize("limit", [300, 20])
def test_mirror_merge(z18_dirs, level1_mids, tmp_path, limit):
    out = tmp_path / "single.csv"
    write_mirror_merged_csv(z18_dirs[0], out, level1_mids, 0.01, 0.55, limit, "avg", workers=1)
    assert_same_predictions(fixture_path(SEED, "expected", "zfturbo", "mirror_merge",
                                         f"single_mirror_avg_limit{limit}.csv"), out, score_tol=1e-6)


@pytest.mark.parametrize("conf_type", ["avg", "max"])
def test_ensemble_csv_2019(g19_dirs, tmp_path, conf_type):
    labels = tmp_path / "class-descriptions-boxable-level-2.csv"
    write_class_descriptions(labels, levels_2019()["2"].classes)
    out = tmp_path / "ensemble.csv"
    args = ["--cache-dirs", *g19_dirs, "--labels", str(labels), "--type", conf_type, "--output", str(out),
            "--workers", "1"]
    if conf_type == "avg":  # the 2019 script, whose defaults are gujingxiao's
        rc = ensemble_script_2019.main(args)
    else:
        rc = ensemble_script.main(args + ["--variant", "2019"])
    assert rc == 0  # the 2019 defaults: thr 0.15, IoU 0.55, 600 boxes
    assert_same_predictions(fixture_path(SEED, "expected", "gujingxiao", "ensemble",
                                         f"ensemble_level2_{conf_type}.csv"), out, score_tol=1e-3, coord_tol=1e-3)


def test_workers_do_not_change_the_output(z18_dirs, level1_mids, tmp_path):
    texts = []
    for workers in (1, 3):
        out = tmp_path / f"w{workers}.csv"
        write_ensembled_csv(out, cache_dirs=z18_dirs, labels=level1_mids, type="wbf", batch_images=9,
                            workers=workers)
        texts.append(out.read_bytes())
    assert texts[0] == texts[1]


# ---- prediction CSVs as input ---------------------------------------------------------------------------------

def _write_csv(path, rows):
    path.write_text("ImageId,PredictionString\n" + "".join(f"{i},{s}\n" for i, s in rows))
    return str(path)


def test_ensemble_of_csvs(tmp_path):
    a = "/m/01 0.9 0.1 0.1 0.5 0.5 /m/02 0.6 0.5 0.5 0.9 0.9 /m/01 0.005 0.1 0.1 0.5 0.5 "
    b = "/m/01 0.7 0.12 0.1 0.52 0.5 /m/03 0.4 0.0 0.0 0.2 0.2 "
    f1 = _write_csv(tmp_path / "a.csv", [("img1", a), ("img2", "/m/02 0.3 0.1 0.1 0.2 0.2 ")])
    f2 = _write_csv(tmp_path / "b.csv", [("img3", b), ("img1", b)])  # another order, an image only here
    out = tmp_path / "out.csv"
    stats = write_ensembled_csv(out, csvs=[f1, f2], type="avg", skip_box_thr=0.01)
    lines = read_lines(out)
    assert [line.split(",")[0] for line in lines[1:]] == ["img1", "img2", "img3"]
    # img1 by hand: the /m/01 boxes merge (IoU 0.905), weights 1/2: score 0.8 * 1.0, x1 0.11, x2 0.51
    assert lines[1] == ("img1,/m/01 0.80000 0.1100 0.1000 0.5100 0.5000 /m/02 0.30000 0.5000 0.5000 0.9000 "
                        "0.9000 /m/03 0.20000 0.0000 0.0000 0.2000 0.2000 ")
    assert lines[2] == "img2,/m/02 0.15000 0.1000 0.1000 0.2000 0.2000 "
    assert lines[3] == "img3,/m/01 0.35000 0.1200 0.1000 0.5200 0.5000 /m/03 0.20000 0.0000 0.0000 0.2000 0.2000 "
    assert stats.missing_rows == {f1: 1, f2: 1}


# ---- the cache ----------------------------------------------------------------------------------------------

def test_cache_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    boxes = rng.random((2, 7, 4)).astype(np.float32)
    scores = np.sort(rng.random((2, 7)).astype(np.float32))[:, ::-1]
    labels = rng.integers(-1, 9, (2, 7)).astype(np.int32)
    write_cache(cache_file(tmp_path, "0001"), boxes, scores, labels)
    write_cache(cache_file(tmp_path, "abc"), boxes[:1], scores[:1], labels[:1])
    (tmp_path / ".abc.npz.tmp123").write_bytes(b"half")  # an interrupted write is never read
    assert cache_ids(tmp_path) == ["0001", "abc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".abc.npz.tmp123", "0001.npz", "abc.npz"]
    got = read_cache(cache_file(tmp_path, "0001"), n_classes=9)
    for a, b in [(got.boxes, boxes), (got.scores, scores), (got.labels, labels)]:
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert read_cache(cache_file(tmp_path, "abc")).rows == 1
    # a file saved by numpy itself (float64, compressed) reads the same way
    np.savez_compressed(tmp_path / "f64.npz", boxes=boxes.astype(np.float64), scores=scores.astype(np.float64),
                        labels=labels)
    np.testing.assert_array_equal(read_cache(tmp_path / "f64.npz").boxes, boxes.astype(np.float64))


def test_packed_fixture_layout(tmp_path):
    packed = fixture_path(SEED, "inputs", "z18_caches", "z18_model_0.npz")
    ids, boxes, scores, labels = read_packed(packed)
    assert len(ids) == 100 and boxes.shape == (100, 2, 50, 4)
    assert unpack_to_dir(packed, tmp_path) == ids
    got = read_cache(cache_file(tmp_path, ids[5]))
    np.testing.assert_array_equal(got.boxes, boxes[5])
    np.testing.assert_array_equal(got.labels, labels[5])


@pytest.mark.parametrize("arrays, message", [
    ({"boxes": np.zeros((2, 5, 3)), "scores": np.zeros((2, 5)), "labels": np.zeros((2, 5), np.int32)},
     r"boxes have shape \(2, 5, 3\), expected \(R, N, 4\)"),
    ({"boxes": np.zeros((2, 5, 4)), "scores": np.zeros((2, 4)), "labels": np.zeros((2, 5), np.int32)},
     r"scores \(2, 4\) and labels \(2, 5\) do not match boxes \(2, 5, 4\)"),
    ({"boxes": np.zeros((2, 5, 4)), "scores": np.zeros((2, 5))}, "not a prediction cache: no labels"),
    ({"boxes": np.zeros((2, 5, 4)), "scores": np.zeros((2, 5)), "labels": np.full((2, 5), 500, np.int32)},
     "label 500 is out of range for a list of 443 classes"),
])
def test_bad_cache_file_names_the_file(tmp_path, arrays, message):
    path = tmp_path / "img.npz"
    np.savez(path, **arrays)
    with pytest.raises(OIDInputError, match=f"img.npz: {message}"):
        read_cache(path, n_classes=443)


def test_corrupt_cache_file(tmp_path):
    path = tmp_path / "img.npz"
    path.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(OIDInputError, match="img.npz: not a readable prediction cache"):
        read_cache(path)
    write_cache(path, np.zeros((2, 50, 4)), np.zeros((2, 50)), np.zeros((2, 50)))
    data = bytearray(path.read_bytes())
    data[400] ^= 1  # one bit of the boxes' data
    path.write_bytes(bytes(data))
    with pytest.raises(OIDInputError, match="img.npz: not a readable prediction cache .*CRC"):
        read_cache(path)


# ---- the script's bad input: one line, exit code 2 -------------------------------------------------------------

def _one_error_line(capsys) -> str:
    """The one `error: ...` line on stderr (the log's progress lines aside), and no traceback."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_script_bad_prediction_row(tmp_path, capsys):
    good = _write_csv(tmp_path / "good.csv", [("a", "/m/01 0.5 0.1 0.1 0.2 0.2 ")])
    bad = _write_csv(tmp_path / "bad.csv", [("a", "/m/01 0.5 0.1 0.1 0.2 0.2 "), ("b", "/m/01 0.5 0.1 0.1 0.2 0.2 x")])
    out = tmp_path / "out.csv"
    assert ensemble_script.main(["--csvs", good, bad, "--output", str(out)]) == 2
    line = _one_error_line(capsys)
    assert "bad.csv, row 3" in line and "7 tokens is not a multiple of 6" in line
    assert not out.exists()


def test_script_bad_cache_file(z18_dirs, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for image_id in cache_ids(z18_dirs[1]):
        (broken / f"{image_id}.npz").symlink_to(cache_file(z18_dirs[1], image_id))
    victim = cache_ids(z18_dirs[1])[42]
    (broken / f"{victim}.npz").unlink()
    np.savez(broken / f"{victim}.npz", boxes=np.zeros((2, 50)), scores=np.zeros((2, 50)),
             labels=np.zeros((2, 50), np.int32))
    out = tmp_path / "out.csv"
    assert ensemble_script.main(["--cache-dirs", z18_dirs[0], str(broken), "--output", str(out)]) == 2
    line = _one_error_line(capsys)
    assert f"{victim}.npz" in line and "boxes have shape (2, 50)" in line
    assert not out.exists() and not list(tmp_path.glob(".out.csv*"))


def test_script_missing_cache(z18_dirs, tmp_path, capsys):
    partial = tmp_path / "partial"
    partial.mkdir()
    for image_id in cache_ids(z18_dirs[1])[:10]:
        (partial / f"{image_id}.npz").symlink_to(cache_file(z18_dirs[1], image_id))
    assert ensemble_script.main(["--cache-dirs", z18_dirs[0], str(partial), "--output",
                                 str(tmp_path / "o.csv")]) == 2
    line = _one_error_line(capsys)
    assert "partial" in line and "no cache file for 90 of the 100 images" in line


def test_script_weights_must_match_models(z18_dirs, tmp_path, capsys):
    assert ensemble_script.main(["--cache-dirs", *z18_dirs, "--weights", "1", "2", "--output",
                                 str(tmp_path / "o.csv")]) == 2
    assert "2 weights given for 3 models" in _one_error_line(capsys)


def test_unequal_model_weights(z18_dirs, level1_mids):
    """Model weights 2 and 1: lists weigh 2/6, 2/6, 1/6, 1/6 in the merge."""
    weights = [2 / 6, 2 / 6, 1 / 6, 1 / 6]
    for chunk, image, rows in merge_caches(z18_dirs[:2], 443, 0.01, 0.55, "avg", weights=[2, 1], batch_images=50):
        for i, image_id in enumerate(chunk[:5]):
            lists = []
            for d in z18_dirs[:2]:
                c = read_cache(cache_file(d, image_id))
                lists += slow_filter(c.boxes, c.scores, c.labels, 0.01)
            expected = slow_merge(lists, 0.55, "avg", "2018", weights)
            np.testing.assert_array_equal(rows[image == i], expected)
        break


def _recorded_copies(tmp_path, dirs, classes):
    """Links to the cache files of `dirs` in new folders, each recording its list of `classes` (ClassList)."""
    copies = []
    for k, (folder, listing) in enumerate(zip(dirs, classes)):
        copy = tmp_path / f"recorded_{k}"
        copy.mkdir()
        for image_id in cache_ids(folder):
            (copy / f"{image_id}.npz").symlink_to(cache_file(folder, image_id))
        record_classes(copy, listing)
        copies.append(str(copy))
    return copies


def test_class_list_recorded_in_the_caches_is_used(g19_dirs, tmp_path):
    """No --labels: the folders' classes.csv names the labels (the level-2 list, not the built-in level 5)."""
    level2 = ClassList(*zip(*levels_2019()["2"].classes))
    dirs = _recorded_copies(tmp_path, g19_dirs, [level2, level2])
    out = tmp_path / "ensemble.csv"
    assert ensemble_script_2019.main(["--cache-dirs", *dirs, "--output", str(out), "--workers", "1"]) == 0
    assert_same_predictions(fixture_path(SEED, "expected", "gujingxiao", "ensemble", "ensemble_level2_avg.csv"),
                            out, score_tol=1e-3, coord_tol=1e-3)


def test_caches_of_different_class_lists_are_an_error(g19_dirs, tmp_path, capsys):
    level2 = ClassList(*zip(*levels_2019()["2"].classes))
    other = ClassList(level2.mids[:5] + ("/m/0other",) + level2.mids[6:], level2.names[:5] + ("Other",)
                      + level2.names[6:])
    dirs = _recorded_copies(tmp_path, g19_dirs, [level2, other])
    out = tmp_path / "ensemble.csv"
    assert ensemble_script.main(["--cache-dirs", *dirs, "--variant", "2019", "--output", str(out)]) == 2
    line = _one_error_line(capsys)
    assert "recorded_1" in line and "classes.csv" in line and "label 5 is /m/0other (Other)" in line
    labels = tmp_path / "labels.csv"
    write_class_descriptions(labels, zip(level2.mids, level2.names))
    assert ensemble_script.main(["--cache-dirs", dirs[1], "--variant", "2019", "--labels", str(labels),
                                 "--output", str(out)]) == 2
    assert "label 5 is /m/0other (Other), not " in _one_error_line(capsys)
    short = ClassList(level2.mids[:7], level2.names[:7], source="short.csv")
    with pytest.raises(OIDInputError, match="holds predictions of another class list: 133 classes, not the 7 of "
                                            "short.csv"):
        record_classes(dirs[0], short)
    assert not out.exists()


def test_soft_nms_merge_decays_the_pooled_lists(tmp_path):
    """--type soft-nms: the two files' boxes of an image and label pooled and run through soft-NMS (gaussian, sigma
    0.5, kept above 0.001), computed here on the pooled boxes directly."""
    from oid_retinanet.boxes.nms import batched_soft_nms
    from oid_retinanet.predict.ensemble import merge_csvs

    rng = np.random.default_rng(3)
    mids = np.array(["/m/03120", "/m/06m11"])
    files, pooled = [], []
    for k in range(2):
        rows = []
        for image in ("a", "b"):
            n = 12
            xy = rng.uniform(0, 0.5, size=(n, 2))
            boxes = np.round(np.concatenate([xy, xy + rng.uniform(0.1, 0.4, size=(n, 2))], axis=1), 4)
            scores, labels = np.round(rng.uniform(0.02, 1, size=n), 6), rng.integers(0, 2, size=n)
            rows.append(f"{image}," + "".join(f"{mids[c]} {s} {' '.join(map(str, b))} "
                                                for c, s, b in zip(labels, scores, boxes)))
            pooled += [(image, mids[c], s, b) for c, s, b in zip(labels, scores, boxes)]
        files.append(tmp_path / f"m{k}.csv")
        files[-1].write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    (batch,) = merge_csvs(files, skip_box_thr=0.0, iou_thr=0.55, type="soft-nms")
    got = sorted((batch.ids[i], batch.mids[int(r[0])], round(r[1], 9), *np.round(r[2:], 6))
                 for i, r in zip(batch.image, batch.rows))
    groups = np.array([hash((i, m)) % 10**9 for i, m, _, _ in pooled])
    keep, decayed = batched_soft_nms(np.array([b for *_, b in pooled]), np.array([s for _, _, s, _ in pooled]),
                                     groups, iou_thr=0.55, sigma=0.5, score_thr=0.001, method="gaussian")
    expected = sorted((pooled[k][0], pooled[k][1], round(d, 9), *np.round(pooled[k][3], 6))
                      for k, d in zip(keep, decayed))
    assert got == expected and len(got) > 30
    assert any(round(d, 9) < s for d, (_, _, s, _) in zip(decayed, [pooled[k] for k in keep]))
