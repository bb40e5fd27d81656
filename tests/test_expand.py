"""Stage 5, hierarchy expansion (create_higher_level_predictions_from_level_1_predictions_csv.py and the 2019
retinanet_inference_submission/create_higher_level_predctions.py), and the NMS it uses (boxes/nms.py).

Checked against: the originals' recorded outputs (rule: exact text, which the fixture README says is
achievable because the original copies tokens verbatim), an independent per-box Python port of the
original's algorithm on random inputs (exact text, ties in score included), and hand-worked cases for the
corrected mode.
"""

from __future__ import annotations

import csv
import gzip
import json
import re

import numpy as np
import pytest
from conftest import fixture_path, read_lines

import create_higher_level_predictions_from_level_1_predictions_csv as script
from oid_retinanet.boxes.iou import pairwise_iou
from oid_retinanet.boxes.nms import batched_nms, nms, score_order
from oid_retinanet.errors import OIDInputError
from oid_retinanet.oid.classes import read_class_descriptions
from oid_retinanet.predict.expand import expand_csv, load_parent_table
from oid_retinanet.resources import resource_path
from retinanet_inference_submission import create_higher_level_predctions as script_2019

LABELS_2018 = resource_path("challenge-2018-class-descriptions-500.csv")
HIERARCHY_2018 = resource_path("bbox_labels_600_hierarchy.json")
NAMES_2018 = resource_path("class-descriptions-boxable.csv")
FURNITURE, ANIMAL = "/m/0c_jw", "/m/0jbk"
TRAINING_BENCH, COMPUTER_MOUSE = "/m/076lb9", "/m/020lf"


def _standin(name: str) -> str:
    return str(fixture_path("seed_pipeline", "inputs", "g19_standin_metadata", name))


def _files_2019() -> list[str]:
    return ["--class-descriptions", _standin("challenge-2019-classes-description-500.csv"),
            "--hierarchy", _standin("challenge-2019-label500-hierarchy.json")]


def _text(path) -> str:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        return f.read()


@pytest.fixture(scope="module")
def z18_input(tmp_path_factory):
    src = fixture_path("seed_pipeline", "inputs", "z18_level1_predictions.csv.gz")
    dst = tmp_path_factory.mktemp("z18") / "z18_level1_predictions.csv"
    dst.write_text(_text(src), encoding="utf-8")
    return dst


# ----------------------------------------------------------------------------------------------------------
# The recorded outputs


@pytest.mark.parametrize("only_new, expected", [(False, "level1_all_levels.csv.gz"), (True, "level1_only_new.csv.gz")])
def test_2018_matches_recorded_output(z18_input, tmp_path, only_new, expected):
    out = tmp_path / "out.csv"
    assert script.main([str(z18_input), str(out)] + (["--only-new"] if only_new else [])) == 0
    assert _text(out) == _text(fixture_path("seed_pipeline", "expected", "zfturbo", "expand", expected))


def test_2018_recorded_facts(z18_input, tmp_path):
    """What the README records: 4230 parent boxes in only_new; the ambiguous names' extra parents."""
    out = tmp_path / "new.csv"
    assert script.main([str(z18_input), str(out), "--only-new"]) == 0
    rows = list(csv.reader(open(out, newline="")))[1:]
    assert sum(len(s.split()) for _, s in rows) == 6 * 4230
    assert any(image_id.startswith("0") and image_id.isdigit() for image_id, _ in rows)  # leading zero kept
    table = load_parent_table(LABELS_2018, HIERARCHY_2018, NAMES_2018)
    assert table.parents(TRAINING_BENCH) == [FURNITURE] and table.parents(COMPUTER_MOUSE) == [ANIMAL]
    corrected = load_parent_table(LABELS_2018, HIERARCHY_2018, corrected=True)
    assert corrected.parents(TRAINING_BENCH) == [] and corrected.parents(COMPUTER_MOUSE) == []
    # elsewhere the name lookup and the MID lookup agree
    assert {m for m in table.child_mids if table.parents(m) != corrected.parents(m)} == {TRAINING_BENCH,
                                                                                         COMPUTER_MOUSE}


@pytest.mark.parametrize("only_new, expected", [(False, "all_levels.csv"), (True, "only_new.csv")])
def test_2019_matches_recorded_output(tmp_path, only_new, expected):
    src = fixture_path("seed_pipeline", "inputs", "g19_predictions_all500.csv")
    out = tmp_path / "out.csv"
    args = [str(src), str(out)] + _files_2019() + (["--only-new"] if only_new else [])
    assert script_2019.main(args) == 0
    assert _text(out) == _text(fixture_path("seed_pipeline", "expected", "gujingxiao", "expand", expected))
    # the 2018 script with --variant 2019 is the same thing
    out2 = tmp_path / "out2.csv"
    assert script.main([str(src), str(out2), "--variant", "2019"] + args[2:]) == 0
    assert _text(out2) == _text(out)


def test_2019_pools_the_parents_of_a_shared_name():
    table = load_parent_table(_standin("challenge-2019-classes-description-500.csv"),
                              _standin("challenge-2019-label500-hierarchy.json"))
    assert table.parents(TRAINING_BENCH) == table.parents("/m/0cvnqh")
    assert table.parents(COMPUTER_MOUSE) == table.parents("/m/04rmv")
    assert FURNITURE in table.parents(TRAINING_BENCH) and ANIMAL in table.parents(COMPUTER_MOUSE)


# ----------------------------------------------------------------------------------------------------------
# An independent per-box port of the original (ZFTurbo's extend_boxes / nms_standard, gujingxiao's copy)


def _names(path):
    by_mid, by_name = {}, {}
    for line in open(path, encoding="utf-8"):
        mid, name = line.strip().split(",")
        by_mid[mid] = name
        by_name[name] = mid
    return by_mid, by_name


def _parents_by_name(tree, node_names):
    parents = {name: set() for name in node_names.values()}

    def visit(node, path):
        for child in node.get("Subcategory", []):
            name = node_names[child["LabelName"]]
            parents[name].update(path)
            if "Subcategory" in child:
                visit(child, path + [name])

    for top in tree["Subcategory"]:
        if "Subcategory" in top:
            visit(top, [node_names[top["LabelName"]]])
    return parents


def _nms_standard(dets, thr):
    scores, x1, y1, x2, y2 = dets.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        order = rest[np.where(inter / (areas[i] + areas[rest] - inter) <= thr)[0]]
    return keep


def _slow_expand(input_csv, labels, hierarchy, node_names, thr, only_new):
    d1, d2 = _names(labels)
    parents = _parents_by_name(json.load(open(hierarchy)), _names(node_names)[0])
    lines = ["ImageId,PredictionString"]
    with open(input_csv, newline="") as f:
        reader = csv.reader(f)
        next(reader)
        for row in reader:
            image_id, string = (row + [""])[:2]
            tokens = string.split()
            boxes = [tokens[j:j + 6] for j in range(0, len(tokens), 6)]
            new = [[d2[p]] + box[1:] for box in boxes for p in parents[d1[box[0]]] if p in d2]
            kept = []
            for label in sorted({b[0] for b in new}):
                part = [b for b in new if b[0] == label]
                kept += [part[k] for k in _nms_standard(np.array([[float(v) for v in b[1:]] for b in part]), thr)]
            out = kept if only_new else boxes + kept
            lines.append(image_id + "," + "".join(t + " " for box in out for t in box))
    return "\n".join(lines) + "\n"


def _random_predictions(path, mids, rng, images=150, max_boxes=40):
    """Predictions with many score ties (one or two decimals), repeated boxes and odd spacing."""
    weights = np.ones(len(mids))
    weights[np.isin(mids, [TRAINING_BENCH, COMPUTER_MOUSE, "/m/0cvnqh", "/m/04rmv"])] = 20
    weights /= weights.sum()
    with open(path, "w", encoding="utf-8") as f:
        f.write("ImageId,PredictionString\n")
        for i in range(images):
            n = int(rng.integers(0, max_boxes + 1)) if i % 7 else 0
            labels = rng.choice(mids, size=n, p=weights)
            scores = np.round(rng.random(n), int(rng.integers(1, 3)))
            xy = np.sort(rng.integers(0, 11, (n, 2, 2)) / 10, axis=2)
            xy[:, :, 1] += 0.05
            parts = [f"{m} {s:.2f} {a[0]:.4f} {b[0]:.4f} {a[1]:.4f} {b[1]:.4f}"
                     for m, s, a, b in zip(labels, scores, xy[:, 0], xy[:, 1])]
            sep = " " if i % 5 else "  "
            f.write(f"{i:08d},{sep.join(parts)}{' ' if i % 3 else ''}\n")


@pytest.mark.parametrize("variant", ["2018", "2019"])
def test_random_inputs_match_slow_port(tmp_path, variant):
    if variant == "2018":
        labels, hierarchy, names, thr = LABELS_2018, HIERARCHY_2018, NAMES_2018, 0.75
    else:
        labels = _standin("challenge-2019-classes-description-500.csv")
        hierarchy, names, thr = _standin("challenge-2019-label500-hierarchy.json"), labels, 0.9
    rng = np.random.default_rng(int(variant))
    mids = np.array(read_class_descriptions(labels).mids)
    src = tmp_path / "in.csv"
    _random_predictions(src, mids, rng)
    table = load_parent_table(labels, hierarchy, names)
    for only_new in (False, True):
        for iou_thr in (thr, 0.8):
            out = tmp_path / "out.csv"
            # a small block size: the rows go through many blocks
            expand_csv(str(src), str(out), table, iou_thr, True, only_new, block_size=4096, progress=False)
            assert _text(out) == _slow_expand(src, labels, hierarchy, names, iou_thr, only_new)
    # a row without a comma: Arrow's reader refuses the file, the csv module reads it in blocks as well
    with open(src, "a", encoding="utf-8") as f:
        f.write("lonely\n")
    expand_csv(str(src), str(out), table, thr, True, False, block_size=4096, progress=False)
    assert _text(out) == _slow_expand(src, labels, hierarchy, names, thr, False)
    assert _text(out).endswith("\nlonely,\n")


# ----------------------------------------------------------------------------------------------------------
# Corrected mode, hand-worked


@pytest.fixture
def tiny(tmp_path):
    """Classes: Thing (/m/t) with children Seat (/m/s) and Bench (/m/b); Gym (/m/g) with child Bench2
    (/m/b2), whose display name is also "Bench"."""
    tree = {"LabelName": "/m/root", "Subcategory": [
        {"LabelName": "/m/t", "Subcategory": [{"LabelName": "/m/s"}, {"LabelName": "/m/b"}]},
        {"LabelName": "/m/g", "Subcategory": [{"LabelName": "/m/b2"}]}]}
    (tmp_path / "h.json").write_text(json.dumps(tree))
    (tmp_path / "c.csv").write_text("/m/t,Thing\n/m/s,Seat\n/m/b,Bench\n/m/g,Gym\n/m/b2,Bench\n")
    return str(tmp_path / "c.csv"), str(tmp_path / "h.json")


def _run(tmp_path, rows, *options):
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    src.write_text("ImageId,PredictionString\n" + "".join(f"{i},{s}\n" for i, s in rows))
    assert script.main([str(src), str(out), *options]) == 0
    return read_lines(out)[1:]


def test_corrected_mode_hand_worked(tmp_path, tiny):
    labels, hierarchy = tiny
    files = ["--variant", "2019", "--class-descriptions", labels, "--hierarchy", hierarchy]
    # two Seat boxes: IoU 1/3 plainly, (1.25 * 1.5) / (2 * 1.5 * 1.5 - 1.25 * 1.5) = 0.714 with '+1'
    a, b = "/m/s 0.9 0.0 0.0 0.5 0.5", "/m/s 0.8 0.25 0.0 0.75 0.5"
    rows = [("img", f"{a} {b} ")]
    assert _run(tmp_path, rows, *files, "--iou-thr", "0.5", "--only-new") == ["img,/m/t 0.9 0.0 0.0 0.5 0.5 "]
    assert _run(tmp_path, rows, *files, "--iou-thr", "0.5", "--only-new", "--corrected") == [
        "img,/m/t 0.9 0.0 0.0 0.5 0.5 /m/t 0.8 0.25 0.0 0.75 0.5 "]
    # an IoU equal to the threshold keeps the box; just above it does not
    assert _run(tmp_path, rows, *files, "--iou-thr", str(1 / 3), "--only-new", "--corrected")[0].count("/m/t") == 2
    assert _run(tmp_path, rows, *files, "--iou-thr", "0.33", "--only-new", "--corrected")[0].count("/m/t") == 1
    # "Bench" names two MIDs: by name both get Thing and Gym (Gym sorts first); by MID each its own parent
    rows = [("x", "/m/b2 0.5 0.1 0.1 0.2 0.2 "), ("y", "")]
    assert _run(tmp_path, rows, *files) == ["x,/m/b2 0.5 0.1 0.1 0.2 0.2 /m/g 0.5 0.1 0.1 0.2 0.2 "
                                            "/m/t 0.5 0.1 0.1 0.2 0.2 ", "y,"]
    assert _run(tmp_path, rows, *files, "--corrected") == ["x,/m/b2 0.5 0.1 0.1 0.2 0.2 /m/g 0.5 0.1 0.1 0.2 0.2 ",
                                                           "y,"]


def test_out_of_domain_boxes_are_kept_counted_and_warned_once(tmp_path, tiny, capsys):
    """A score of 7.5, a negative coordinate and x1 > x2: expanded as the original did (the parent copies the box),
    one warning for the file with each kind's count and its first box's line; a clean file gets no warning."""
    labels, hierarchy = tiny
    files = ["--variant", "2019", "--class-descriptions", labels, "--hierarchy", hierarchy]
    rows = [("a", "/m/s 7.5 0.1 0.1 0.2 0.2 /m/s 0.5 -0.1 0.1 0.2 0.2"), ("b", "/m/s 0.5 0.1 0.1 0.2 0.2"),
            ("c", "/m/g 0.5 0.3 0.1 0.2 0.2 /m/g 9 0.1 0.1 0.2 0.2")]
    capsys.readouterr()
    out = _run(tmp_path, rows, *files, "--only-new")
    assert out == ["a,/m/t 7.5 0.1 0.1 0.2 0.2 /m/t 0.5 -0.1 0.1 0.2 0.2 ", "b,/m/t 0.5 0.1 0.1 0.2 0.2 ", "c,"]
    warnings = [line for line in capsys.readouterr().err.splitlines() if " WARNING " in line]
    assert len(warnings) == 1, warnings
    src = tmp_path / "in.csv"
    assert warnings[0].endswith(
        f"{src}: 2 with a score outside [0, 1], 1 with a coordinate outside [0, 1], 1 with x1 > x2 or y1 > y2; kept "
        f"as they are, as the original did (first: {src}, row 2: box 1 (7.5 0.1 0.1 0.2 0.2); {src}, row 2: box 2 "
        f"(0.5 -0.1 0.1 0.2 0.2); {src}, row 4: box 1 (0.5 0.3 0.1 0.2 0.2))"), warnings[0]
    _run(tmp_path, rows[1:2], *files)
    assert " WARNING " not in capsys.readouterr().err


def test_rows_without_parents_and_odd_rows(tmp_path, tiny):
    labels, hierarchy = tiny
    files = ["--variant", "2019", "--class-descriptions", labels, "--hierarchy", hierarchy]
    rows = [("a", "/m/t 0.5 0.1 0.1 0.2 0.2"), ("b", "   "), ("c", " /m/g  0.5 0.1 0.1 0.2 0.2  "),
            ('"d,1"', "/m/g 0.5 0.1 0.1 0.2 0.2 ")]
    assert _run(tmp_path, rows, *files) == ["a,/m/t 0.5 0.1 0.1 0.2 0.2 ", "b,", "c,/m/g 0.5 0.1 0.1 0.2 0.2 ",
                                            '"d,1",/m/g 0.5 0.1 0.1 0.2 0.2 ']
    assert _run(tmp_path, rows, *files, "--only-new") == ["a,", "b,", "c,", '"d,1",']


def test_csv_module_reader_gives_the_same(tmp_path, tiny):
    """A row holding only an ImageId (no comma) sends the file through the csv-module reader."""
    labels, hierarchy = tiny
    files = ["--variant", "2019", "--class-descriptions", labels, "--hierarchy", hierarchy]
    rows = [("a", "/m/s 0.5 0.1 0.1 0.2 0.2 /m/b 0.7 0.1 0.1 0.3 0.2 "), ("b", "")]
    fast = _run(tmp_path, rows, *files)
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    src.write_text("ImageId,PredictionString\na,/m/s 0.5 0.1 0.1 0.2 0.2 /m/b 0.7 0.1 0.1 0.3 0.2 \n\nb\n")
    assert script.main([str(src), str(out)] + files) == 0
    # Bench pools Thing and Gym (the name is Bench2's too); the Seat copy to Thing loses to Bench's ('+1' IoU)
    assert read_lines(out)[1:] == fast == ["a,/m/s 0.5 0.1 0.1 0.2 0.2 /m/b 0.7 0.1 0.1 0.3 0.2 "
                                           "/m/g 0.7 0.1 0.1 0.3 0.2 /m/t 0.7 0.1 0.1 0.3 0.2 ", "b,"]


# ----------------------------------------------------------------------------------------------------------
# Bad input


def _bad_file(tmp_path, bad_row, rows_before=0, blank=False):
    good = "/m/s 0.5 0.1 0.1 0.2 0.2 "
    lines = ["ImageId,PredictionString"] + [f"g{i},{good}" for i in range(rows_before)]
    if blank:
        lines.append("")
    lines += [f"bad,{bad_row}", f"after,{good}"]
    path = tmp_path / "preds.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, len(lines) - 1  # the bad row's line number


@pytest.mark.parametrize("bad_row, message", [
    ("/m/s 0.5 0.1 0.1 0.2", "bad prediction string: 5 tokens is not a multiple of 6"),
    ("/m/s 0.5 0.1 0.1 0.2 0.2 /m/s", "bad prediction string: 7 tokens is not a multiple of 6"),
    ("/m/zz 0.5 0.1 0.1 0.2 0.2", "unknown label '/m/zz' in box 1"),
    ("/m/s 0.5 0.1 0.1 0.2 0.2 /m/s 0.5 0.1 abc 0.2 0.2", "YMin of box 2 is not a number: 'abc'"),
    ("/m/s nan 0.1 0.1 0.2 0.2", "score of box 1 is not finite: 'nan'"),
])
@pytest.mark.parametrize("rows_before, blank", [(0, False), (3000, True)])
def test_bad_row_is_one_line_naming_file_and_row(tmp_path, tiny, capsys, bad_row, message, rows_before, blank):
    labels, hierarchy = tiny
    path, line = _bad_file(tmp_path, bad_row, rows_before, blank)
    out = tmp_path / "out.csv"
    rc = script.main([str(path), str(out), "--variant", "2019", "--class-descriptions", labels,
                      "--hierarchy", hierarchy, "--block-size", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1] == f"error: {path}, row {line}: {message}"
    assert "Traceback" not in "\n".join(err)
    assert not out.exists() and list(tmp_path.glob(".out.csv*")) == []
    # the same through the library with blocks of 2 KB: the bad row may sit in a later block
    table = load_parent_table(labels, hierarchy)
    with pytest.raises(OIDInputError, match=re.escape(f"{path}, row {line}: {message}")):
        expand_csv(str(path), str(out), table, block_size=2048, progress=False)


def test_bad_files(tmp_path, capsys):
    (tmp_path / "h.csv").write_text("Id,Pred\n")
    (tmp_path / "e.csv").write_text("")
    (tmp_path / "c.csv").write_text("ImageId,PredictionString\na,b,c\n")
    for name, message in [("h.csv", "row 1: expected header ImageId,PredictionString, got Id,Pred"),
                          ("e.csv", "file is empty"), ("c.csv", "row 2: expected 2 columns"),
                          ("missing.csv", "No such file")]:
        assert script.main([str(tmp_path / name), str(tmp_path / "out.csv")]) == 2
        assert message in capsys.readouterr().err
    assert script.main([str(tmp_path / "c.csv"), str(tmp_path / "out.csv"), "--variant", "2019",
                        "--class-descriptions", str(tmp_path / "none.csv")]) == 2
    assert "the 2019 class list and hierarchy are not shipped" in capsys.readouterr().err


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        script.main(["--help"])
    assert exc.value.code == 0
    assert "--corrected" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        script_2019.main(["--help"])
    assert re.search(r"\(default:\s+2019\)", capsys.readouterr().out)


# ----------------------------------------------------------------------------------------------------------
# NMS


def _slow_nms(boxes, scores, thr, plus_one):
    """The original's nms_standard loop, box by box, in the order np.argsort(scores)[::-1] gives."""
    one = 1.0 if plus_one else 0.0
    keep = []
    for i in np.argsort(scores)[::-1]:
        suppressed = False
        for k in keep:
            iw = min(boxes[i][2], boxes[k][2]) - max(boxes[i][0], boxes[k][0]) + one
            ih = min(boxes[i][3], boxes[k][3]) - max(boxes[i][1], boxes[k][1]) + one
            inter = max(iw, 0.0) * max(ih, 0.0)
            area = lambda b: (b[2] - b[0] + one) * (b[3] - b[1] + one)  # noqa: E731
            union = area(boxes[k]) + area(boxes[i]) - inter
            if union > 0 and inter / union > thr:
                suppressed = True
                break
        if not suppressed:
            keep.append(int(i))
    return keep


def test_batched_nms_matches_slow_loop():
    rng = np.random.default_rng(7)
    for trial in range(400):
        n = int(rng.integers(0, 60))
        xy = np.sort(rng.integers(0, 12, (n, 2, 2)) / 10, axis=2)
        boxes = np.stack([xy[:, 0, 0], xy[:, 1, 0], xy[:, 0, 1], xy[:, 1, 1]], axis=1)  # some empty boxes
        scores = rng.integers(0, 6, n) / 5  # many ties
        groups = rng.integers(0, 5, n) * 3
        thr, plus_one = float(rng.choice([0.0, 0.3, 0.5, 0.75, 0.9])), bool(trial % 2)
        expected = []
        for g in np.unique(groups):
            members = np.flatnonzero(groups == g)
            expected += list(members[_slow_nms(boxes[members], scores[members], thr, plus_one)])
        assert batched_nms(boxes, scores, groups, thr, plus_one).tolist() == expected
        if n:
            assert nms(boxes, scores, thr, plus_one).tolist() == _slow_nms(boxes, scores, thr, plus_one)


def test_nms_hand_worked():
    boxes = np.array([[0, 0, 2, 2], [1, 1, 3, 3], [0, 0, 2, 2.5], [5, 5, 6, 6]], dtype=float)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    # IoU(0, 1) = 1/7, IoU(0, 2) = 4/5
    assert nms(boxes, scores, 0.5).tolist() == [3, 0, 1]
    assert nms(boxes, scores, 0.1).tolist() == [3, 0]
    assert nms(boxes, scores, 0.8).tolist() == [3, 0, 1, 2]  # equal to the threshold: kept
    assert nms(boxes, scores, 0.79).tolist() == [3, 0, 1]
    assert batched_nms(boxes, scores, np.array([1, 1, 0, 0]), 0.1).tolist() == [3, 2, 0]
    # two empty boxes at one point: IoU 0 (the original's 0/0 dropped the second)
    assert nms(np.zeros((2, 4)), np.array([0.5, 0.6]), 0.5).tolist() == [1, 0]
    with pytest.raises(ValueError):
        nms(boxes, np.array([0.1, np.nan, 0.2, 0.3]), 0.5)


def test_score_order_is_numpys_for_ties():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, 500) / 4
    groups = rng.integers(0, 20, 500)
    order = score_order(scores, groups)
    for g in range(20):
        members = np.flatnonzero(groups == g)
        got = order[np.isin(order, members)]
        assert got.tolist() == members[np.argsort(scores[members])[::-1]].tolist()


def test_paired_iou_is_pairwise_iou():
    from oid_retinanet.boxes.iou import areas
    from oid_retinanet.boxes.nms import _paired_iou
    rng = np.random.default_rng(5)
    xy = np.sort(rng.random((300, 2, 2)), axis=2)
    a = np.stack([xy[:, 0, 0], xy[:, 1, 0], xy[:, 0, 1], xy[:, 1, 1]], axis=1)
    b = a[::-1].copy()
    for plus_one in (False, True):
        got = _paired_iou(a, b, areas(a, plus_one), areas(b, plus_one), plus_one)
        assert np.array_equal(got, np.diag(pairwise_iou(a, b, plus_one)))  # bit for bit
