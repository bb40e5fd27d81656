"""The last 2019 helpers: retinanet_inference_submission/split_csv.py and final_prediction_ensemble.py
(oid_retinanet/predict/submission_2019.py: split_submission, final_ensemble, combine_parts, delete_low_scores).

The fixtures hold no recorded output of these scripts (seed_pipeline/README.md lists them under "Not done"),
so: hand-worked cases, and for the ensemble an independent per-box port of the original's algorithm (its
create_csv_final_ensemble_predictions with gujingxiao's merge_all_boxes_for_image), compared as exact text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import read_lines

from oid_retinanet.errors import OIDInputError
from oid_retinanet.predict.submission_2019 import (
    COMBINE_INPUTS,
    COMBINE_OUTPUT,
    FINAL_ENSEMBLE_INPUTS,
    SPLIT_INPUT,
    combine_parts,
    final_ensemble,
    repr_strings,
    split_submission,
)
from retinanet_inference_submission import final_prediction_ensemble as final_script
from retinanet_inference_submission import split_csv as split_script

HEADER = "ImageId,PredictionString"


def _write(path, rows):
    path.write_text(HEADER + "\n" + "".join(f"{i},{s}\n" for i, s in rows), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------------------
# An independent port of the original final ensemble (per box, Python lists; numbers through a numpy string
# array as the original's np.array(new_boxes) made them)


def _iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    if inter == 0:
        return 0.0
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _merge_image(lists, thr, kind, weight):
    clusters = [list(b) for b in lists[0]]
    weights = [weight] * len(clusters)
    for boxes in lists[1:]:
        snapshot = [list(c) for c in clusters]
        for box in boxes:
            best, best_iou = -1, thr
            for i, c in enumerate(snapshot):
                if c[0] == box[0]:
                    iou = _iou(c[2:], box[2:])
                    if iou > best_iou:
                        best, best_iou = i, iou
            if best < 0:
                clusters.append(list(box))
                weights.append(weight)
                continue
            old, w1 = snapshot[best], weights[best]
            score = {"avg": (w1 * old[1] + weight * box[1]) / (w1 + weight), "max": max(old[1], box[1]),
                     "mul": np.sqrt(old[1] * box[1])}[kind]
            clusters[best] = [old[0], score] + [(w1 * old[j] + weight * box[j]) / (w1 + weight) for j in range(2, 6)]
            weights[best] += weight
    for c, w in zip(clusters, weights):
        c[1] *= w
    return clusters


def original_final_ensemble(paths, thr=0.55, kind="avg", constant_weight=False) -> list[str]:
    """Rows paired by position, ImageId from the first file, empty strings skipped; each list weighs
    1 / the lists with boxes (constant_weight: 1 / the files)."""
    files = [[line.split(",", 1) for line in read_lines(Path(p))[1:]] for p in paths]
    out = [HEADER]
    for rows in zip(*files):
        lists = []
        for _, string in rows:
            tokens = string.split()
            if tokens:
                lists.append([[tokens[j]] + [float(t) for t in tokens[j + 1:j + 6]] for j in range(0, len(tokens), 6)])
        if not lists:
            out.append(rows[0][0] + ",")
            continue
        merged = np.array(_merge_image(lists, thr, kind, 1 / (len(paths) if constant_weight else len(lists))))
        out.append(rows[0][0] + "," + "".join("{} {} {} {} {} {} ".format(*box) for box in merged))
    return out


LABELS = ("/m/01", "/m/02", "/m/03")


def _objects(rng, ids) -> dict:
    """Per image, three objects (centre, size, label) that every model's file sees."""
    return {i: (rng.random((3, 2)) * 0.6 + 0.2, rng.uniform(0.1, 0.3, (3, 2)), rng.choice(LABELS, 3)) for i in ids}


def _random_submission(rng, objects: dict, decimals=4):
    """Each object seen as several jittered boxes, mostly of its label: many merges, and several boxes of one
    file matching one cluster (where the original's snapshot merge overwrites)."""
    rows = []
    for image_id, (centres, sizes, object_labels) in objects.items():
        n = int(rng.integers(0, 12)) * int(rng.random() > 0.15)
        boxes = []
        for _ in range(n):
            o = rng.integers(0, 3)
            (cx, cy), (w, h) = centres[o] + rng.normal(0, 0.01, 2), sizes[o] * rng.uniform(0.9, 1.1, 2)
            coords = np.round(np.clip([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 0, 1), decimals)
            score = round(float(rng.uniform(0.01, 1)), 3)
            label = object_labels[o] if rng.random() < 0.8 else rng.choice(LABELS)
            boxes.append(f"{label} {score} " + " ".join(f"{c:.{decimals}f}" for c in coords))
        rows.append((image_id, " ".join(boxes) + (" " if boxes else "")))
    return rows


@pytest.mark.parametrize("kind", ["avg", "max", "mul"])
@pytest.mark.parametrize("seed", [0, 1])
def test_final_ensemble_matches_port_of_the_original(tmp_path, kind, seed):
    rng = np.random.default_rng(seed)
    objects = _objects(rng, [f"{rng.integers(0, 2**63):016x}" for _ in range(150)])
    paths = [str(_write(tmp_path / f"{k}.csv", _random_submission(rng, objects))) for k in range(3)]
    out = tmp_path / "out.csv"
    final_ensemble(paths, str(out), type=kind, by_position=True, original_weights=True, batch_images=37,
                   progress=False)
    assert read_lines(out) == original_final_ensemble(paths, kind=kind)
    # the default: rows by ImageId (here in the same order), every file weighs 1/3
    final_ensemble(paths, str(out), type=kind, progress=False)
    assert read_lines(out) == original_final_ensemble(paths, kind=kind, constant_weight=True)


def test_final_ensemble_matches_rows_by_image_id(tmp_path):
    rng = np.random.default_rng(5)
    objects = _objects(rng, [f"img{i:03d}" for i in range(80)])
    one, two = _random_submission(rng, objects), _random_submission(rng, objects)
    a, b = _write(tmp_path / "a.csv", one), _write(tmp_path / "b.csv", two)
    shuffled = _write(tmp_path / "b_shuffled.csv", [two[i] for i in rng.permutation(len(two))])
    final_ensemble([str(a), str(b)], str(tmp_path / "aligned.csv"), progress=False)
    summary = final_ensemble([str(a), str(shuffled)], str(tmp_path / "out.csv"), progress=False)
    assert read_lines(tmp_path / "out.csv") == read_lines(tmp_path / "aligned.csv")
    assert summary.images == 80 and summary.mismatched == 0
    # the original's pairing by position mixes the images
    summary = final_ensemble([str(a), str(shuffled)], str(tmp_path / "mixed.csv"), by_position=True,
                             progress=False)
    assert summary.mismatched > 70 and read_lines(tmp_path / "mixed.csv") != read_lines(tmp_path / "aligned.csv")


def test_final_ensemble_hand_worked(tmp_path, capsys):
    one = _write(tmp_path / "one.csv", [("a", "/m/01 0.9 0.1 0.1 0.5 0.5 /m/02 0.5 0.0000 0.0 1.0 1.0 "), ("b", ""),
                                        ("c", "/m/01 0.3 0.2 0.2 0.4 0.4 ")])
    two = _write(tmp_path / "two.csv", [("c", "/m/01 0.4 0.2 0.2 0.4 0.4"), ("a", "/m/01 0.7 0.1 0.12 0.5 0.5 "),
                                        ("d", "/m/03 0.2 0.1 0.1 0.2 0.2 ")])
    out = tmp_path / "out.csv"
    assert final_script.main(["ensemble", str(one), str(two), "-o", str(out)]) == 0
    # a: the /m/01 boxes overlap with IoU 0.152 / 0.16 = 0.95: mean score 0.8, y1 0.11, weight 1/2 + 1/2;
    # /m/02 only in one: 0.5 x 1/2. d only in two: 0.2 x 1/2. Numbers as Python writes floats.
    assert read_lines(out) == [HEADER, "a,/m/01 0.8 0.1 0.11 0.5 0.5 /m/02 0.25 0.0 0.0 1.0 1.0 ", "b,",
                               "c,/m/01 0.35 0.2 0.2 0.4 0.4 ", "d,/m/03 0.1 0.1 0.1 0.2 0.2 "]
    assert "one.csv lacks 1, two.csv lacks 1" in capsys.readouterr().out
    # the original's weights: d's box is alone in its image, so it keeps its score
    assert final_script.main(["ensemble", str(one), str(two), "-o", str(out), "--original-weights"]) == 0
    assert read_lines(out)[4] == "d,/m/03 0.2 0.1 0.1 0.2 0.2 "
    # max: the higher score, 0.9 x 1
    assert final_script.main(["ensemble", str(one), str(two), "-o", str(out), "--type", "max"]) == 0
    assert read_lines(out)[1] == "a,/m/01 0.9 0.1 0.11 0.5 0.5 /m/02 0.25 0.0 0.0 1.0 1.0 "
    # --limit-boxes 1: a keeps its best box
    assert final_script.main(["ensemble", str(one), str(two), "-o", str(out), "--limit-boxes", "1"]) == 0
    assert read_lines(out)[1] == "a,/m/01 0.8 0.1 0.11 0.5 0.5 "


def test_limit_keeps_the_best_boxes_best_first(tmp_path):
    boxes = " ".join(f"/m/0{k} {s} 0.1 0.1 0.2 0.2" for k, s in enumerate([0.3, 0.9, 0.3, 0.5]))
    src = _write(tmp_path / "in.csv", [("a", boxes), ("b", "/m/01 0.1 0.1 0.1 0.2 0.2 /m/02 0.2 0.1 0.1 0.2 0.2")])
    final_ensemble([str(src)], str(tmp_path / "out.csv"), limit_boxes=3, progress=False)
    assert read_lines(tmp_path / "out.csv")[1:] == [
        "a,/m/01 0.9 0.1 0.1 0.2 0.2 /m/03 0.5 0.1 0.1 0.2 0.2 /m/00 0.3 0.1 0.1 0.2 0.2 ",
        "b,/m/01 0.1 0.1 0.1 0.2 0.2 /m/02 0.2 0.1 0.1 0.2 0.2 "]  # under the limit: untouched


def test_final_ensemble_errors(tmp_path, capsys):
    one = _write(tmp_path / "one.csv", [("a", "/m/01 0.9 0.1 0.1 0.5 0.5"), ("b", "")])
    short = _write(tmp_path / "short.csv", [("a", "")])
    bad = _write(tmp_path / "bad.csv", [("a", ""), ("b", "/m/01 0.9 0.1 0.1 0.5 0.5 /m/01")])
    out = tmp_path / "out.csv"
    with pytest.raises(OIDInputError, match="short.csv has fewer than"):
        final_ensemble([str(one), str(short)], str(out), by_position=True, progress=False)
    assert final_script.main(["ensemble", str(one), str(bad), "-o", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {bad}, row 3: bad prediction string: 7 tokens is not a multiple of 6")
    assert not out.exists()


def test_repr_strings_as_python_writes_floats():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.random(20000), np.round(rng.random(5000), 4), rng.random(500) * 1e-5,
                             rng.random(500) * 1e12, np.arange(-3.0, 40.0), [0.0, -0.0, 1e-4, 1e9, 1e16, np.nan,
                                                                              np.inf, -np.inf, 5e-324]])
    values = np.concatenate([values, (values[:5000] + values[5000:10000]) / 2])
    assert repr_strings(values).to_pylist() == [repr(v) for v in values.tolist()]


# ----------------------------------------------------------------------------------------------------------
# Splitting and combining


ROWS = [("0a", "/m/01 0.5 0.1 0.1 0.2 0.2 "), ("0012", ""), ('"x,y"', "  /m/02 0.25 0.1 0.1 0.2 0.2"),
        ("0d", "/m/01 0.5 0.1 0.1 0.2 0.2 /m/03 0.125 0.3 0.3 0.4 0.4 "), ("0e", "")]


def test_split_hand_worked(tmp_path, capsys):
    src = _write(tmp_path / "sub.csv", ROWS)
    assert split_script.main([str(src), "--rows-per-part", "2", "--parts", "4"]) == 0
    parts = [read_lines(tmp_path / f"sub_part_{k}.csv") for k in range(4)]
    # rows verbatim (spacing, quoting and all-digit ids kept), 2 a part, the last part header-only
    assert parts == [[HEADER, "0a,/m/01 0.5 0.1 0.1 0.2 0.2 ", "0012,"],
                     [HEADER, '"x,y",  /m/02 0.25 0.1 0.1 0.2 0.2',
                      "0d,/m/01 0.5 0.1 0.1 0.2 0.2 /m/03 0.125 0.3 0.3 0.4 0.4 "],
                     [HEADER, "0e,"], [HEADER]]
    assert not (tmp_path / "sub_part_4.csv").exists()
    assert f"{tmp_path / 'sub_part_3.csv'}: 0 images" in capsys.readouterr().out
    # more rows than parts x rows: more parts, nothing dropped (the original dropped them)
    written = split_submission(str(src), rows_per_part=2, parts=1, output_dir=str(tmp_path / "out"),
                               progress=False)
    assert [n for _, n in written] == [2, 2, 1]
    # combined again, the parts give the input back
    combine_parts([p for p, _ in written], str(tmp_path / "back.csv"), progress=False)
    assert read_lines(tmp_path / "back.csv") == read_lines(src)


def test_split_with_the_original_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / SPLIT_INPUT, [(f"{i:04x}", "") for i in range(45_000)])
    assert split_script.main([]) == 0
    stem = SPLIT_INPUT[:-len(".csv")]
    assert [len(read_lines(tmp_path / f"{stem}_part_{k}.csv")) - 1 for k in range(5)] == [20_000, 20_000, 5_000, 0, 0]
    assert read_lines(tmp_path / f"{stem}_part_2.csv")[1] == f"{40_000:04x},"


def test_split_bad_row_leaves_no_parts(tmp_path, capsys):
    src = _write(tmp_path / "sub.csv", ROWS + [("0f", "/m/01 0.5 0.1 0.1 0.2")])
    assert split_script.main([str(src), "--rows-per-part", "2"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {src}, row 7: bad prediction string: 5 tokens is not a multiple of 6")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.csv"]


def test_combine_and_delete_with_the_original_names(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for k, name in enumerate(COMBINE_INPUTS):
        _write(tmp_path / name, ROWS[k:k + 1])
    assert final_script.main(["combine"]) == 0
    assert read_lines(tmp_path / COMBINE_OUTPUT)[1:] == [f"{i},{s}" for i, s in ROWS]
    # no step: the original's __main__, delete_low_scores('retinanet_final_ensemble_submissions.csv', 0.02)
    _write(tmp_path / "retinanet_final_ensemble_submissions.csv",
           [("a", "/m/01 0.02 0.1 0.1 0.2 0.2 /m/02 0.0201 0.1 0.1 0.2 0.2 ")])
    assert final_script.main([]) == 0
    assert read_lines(tmp_path / "retinanet_final_ensemble_submissions_selected_0.02_type_avg.csv") == [
        HEADER, "a,/m/02 0.0201 0.1 0.1 0.2 0.2 "]
    # a part given twice: an ImageId found twice is an error
    assert final_script.main(["combine", COMBINE_INPUTS[0], COMBINE_INPUTS[0], "-o", "twice.csv"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {COMBINE_INPUTS[0]}, row 2: ImageId '0a' repeated (first in {COMBINE_INPUTS[0]}, row 2)")
    assert not (tmp_path / "twice.csv").exists()


def test_ensemble_with_the_original_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / FINAL_ENSEMBLE_INPUTS[0], [("a", "/m/01 0.5 0.1 0.1 0.2 0.2 ")])
    _write(tmp_path / FINAL_ENSEMBLE_INPUTS[1], [("a", "")])
    assert final_script.main(["ensemble", "--type", "max"]) == 0
    assert read_lines(tmp_path / "retinanet_final_ensemble_submissions_type_max__part_0.csv") == [
        HEADER, "a,/m/01 0.25 0.1 0.1 0.2 0.2 "]


def test_help(capsys):
    for argv in (["--help"], ["ensemble", "--help"], ["combine", "--help"], ["delete-low-scores", "--help"]):
        with pytest.raises(SystemExit) as exc:
            final_script.main(argv)
        assert exc.value.code == 0
    with pytest.raises(SystemExit):
        split_script.main(["--help"])
    out = capsys.readouterr().out
    assert "--original-weights" in out and "--rows-per-part" in out
