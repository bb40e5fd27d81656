"""The 2019 label tools: exists split, too-much selection, class distribution (oid_retinanet.oid.label_tools)
and moving / shrinking images (oid_retinanet.data.resize_move), with their labelProcess/ scripts.

No recorded outputs of these originals exist, so every check is a hand-worked case or a plain-Python count.
Output CSVs are compared as exact text with what pandas gives for the same rows, the originals' writer.
"""

from __future__ import annotations

import collections
import errno
import json
import os
import random

import numpy as np
import pandas as pd
import pytest
from conftest import fixture_path
from PIL import Image

from labelProcess import analyse_class_distribution, gen_exists_annotation, resize_move_images, tooMuch_label_select
from oid_retinanet.data import resize_move
from oid_retinanet.data.resize_move import target_size, transfer_images
from oid_retinanet.errors import OIDInputError
from oid_retinanet.oid.classes import ClassList, read_class_descriptions
from oid_retinanet.oid.hierarchy import Hierarchy
from oid_retinanet.oid.label_tools import (
    class_distribution,
    image_folder_listing,
    label_count_table,
    rank_leaves_and_parents,
    select_too_much,
    too_much_shares,
)

HEADER = "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside"
MIDS = ["/m/0a", "/m/0b", "/m/0c", "/m/0d", "/m/0e"]


def _row(image_id: str, mid: str, group_of: int = 0) -> str:
    return f"{image_id},xclick,{mid},1,0.1,0.5,0.2,0.6,0,0,{group_of},0,0"


def _write_csv(path, rows: list[str]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    return str(path)


def _lines(path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def _pandas_text(src, image_ids: set[str]) -> str:
    """What the originals wrote: read with pandas, keep the rows of image_ids, to_csv(index=False)."""
    df = pd.read_csv(src, dtype={"ImageID": str})
    return df[df["ImageID"].isin(image_ids)].to_csv(index=False)


def _ids(path) -> list[str]:
    return [line.split(",")[0] for line in _lines(path)[1:]]


# ------------------------------------------------------------------------------------------------------------
# Exists split
# ------------------------------------------------------------------------------------------------------------

@pytest.fixture
def exists_setup(tmp_path):
    """20 images in the folder (one id with leading zeros) plus 5 level-1 images that are not there; level 2
    holds every other folder image and one missing image."""
    rng = random.Random(1)
    folder = tmp_path / "train"
    folder.mkdir()
    present = ["0001"] + [f"img{i:02d}" for i in range(1, 20)]
    for name in present:
        (folder / f"{name}.jpg").write_bytes(b"")
    missing = [f"gone{i}" for i in range(5)]
    rows1 = [_row(i, rng.choice(MIDS)) for i in present + missing for _ in range(rng.randint(1, 3))]
    rng.shuffle(rows1)
    rows2 = [_row(i, rng.choice(MIDS)) for i in present[::2] + missing[:1] for _ in range(2)]
    out = tmp_path / "out"
    _write_csv(out / "level_1_files" / "train-annotations-bbox-level-1.csv", rows1)
    _write_csv(out / "level_2_files" / "train-annotations-bbox-level-2.csv", rows2)
    return folder, out, present


def _run_exists(folder, out, *extra: str) -> None:
    assert gen_exists_annotation.main(["--images", str(folder), "--output-path", str(out), "--levels", "1", "2",
                                       *extra]) == 0


def _split_files(out, k):
    d = out / f"level_{k}_files"
    return (d / f"train-annotations-bbox-level-{k}.csv", d / f"train-exists-annotations-bbox-level-{k}.csv",
            d / f"val-exists-annotations-bbox-level-{k}.csv")


def test_exists_split_partitions_the_boxes_of_present_images(exists_setup):
    folder, out, present = exists_setup
    _run_exists(folder, out, "--ratio", "0.29")
    for k in ("1", "2"):
        src, train, val = _split_files(out, k)
        train_ids, val_ids = set(_ids(train)), set(_ids(val))
        assert not train_ids & val_ids
        assert train_ids | val_ids == set(_ids(src)) & set(present)
        # every box of a present image lands in exactly one part, file order kept, pandas' text
        assert _lines(train)[0] == _lines(val)[0] == HEADER
        assert (train.read_text(), val.read_text()) == (_pandas_text(src, train_ids), _pandas_text(src, val_ids))
        assert "0001" in train_ids | val_ids
    # level 1 holds every folder image: the first int(0.29 * 20) = int(5.8) = 5 listed names are its validation
    # images
    v1 = set(_ids(_split_files(out, "1")[2]))
    assert len(v1) == 5
    # every level uses the same order: level 2's validation images are level 1's among level 2's images
    v2 = set(_ids(_split_files(out, "2")[2]))
    assert v2 == v1 & set(present[::2])


def test_exists_split_ratio_counts_the_whole_folder_listing(exists_setup):
    folder, out, present = exists_setup
    others = ["notes.txt", "a.png", "b.png", "c.png", "sub"]  # every entry counts, as in the original
    for name in others[:-1]:
        (folder / name).write_bytes(b"")
    (folder / "sub").mkdir()
    src1 = _split_files(out, "1")[0]
    with open(src1, "a", encoding="utf-8") as f:  # boxes on the other entries' names make them level images
        f.write("".join(_row(name, "/m/0a") + "\n" for name in others))
    # 25 entries, ratio 0.2: 5 validation names, all of them level-1 images
    _run_exists(folder, out, "--ratio", "0.2", "--seed", "3")
    assert len(set(_ids(_split_files(out, "1")[2]))) == 5
    assert set(_ids(_split_files(out, "1")[1])) | set(_ids(_split_files(out, "1")[2])) == set(present + others)
    # --split-level-images: int(0.2 * 25) = 5 of level 1's images, int(0.2 * 10) = 2 of level 2's
    _run_exists(folder, out, "--ratio", "0.2", "--seed", "3", "--split-level-images")
    assert len(set(_ids(_split_files(out, "1")[2]))) == 5
    assert len(set(_ids(_split_files(out, "2")[2]))) == 2


def test_exists_split_default_ratios_and_listing(exists_setup, tmp_path):
    folder, out, present = exists_setup
    # 0.007 * 20 and 0.015 * 20 are below 1: no validation images, everything in train
    _run_exists(folder, out)
    for k in ("1", "2"):
        src, train, val = _split_files(out, k)
        assert _lines(val) == [HEADER]
        assert set(_ids(train)) == set(_ids(src)) & set(present)
    odd = tmp_path / "odd"
    odd.mkdir()
    for name in ("b.jpg", "a.jpg.jpg", "c.JPG", "d.png"):
        (odd / name).write_bytes(b"")
    assert image_folder_listing(str(odd)) == ["a.jpg", "b", "c.JPG", "d.png"]


def test_exists_split_seed(exists_setup):
    folder, out, _ = exists_setup
    texts = {}
    for run, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        _run_exists(folder, out, "--ratio", "0.5", "--seed", seed)
        texts[run] = [p.read_bytes() for k in ("1", "2") for p in _split_files(out, k)[1:]]
    assert texts["a"] == texts["b"]
    assert texts["a"] != texts["c"]


# ------------------------------------------------------------------------------------------------------------
# Too-much selection
# ------------------------------------------------------------------------------------------------------------

TOO = ["/m/0a", "/m/0b"]


def _too_much_rows() -> list[str]:
    rows = []
    rows += [_row("A", TOO[i % 2]) for i in range(19)] + [_row("A", "/m/0c")]  # 19/20 = 0.95: kept
    rows += [_row("B", "/m/0a") for _ in range(24)] + [_row("B", "/m/0d")]     # 24/25 = 0.96: dropped
    rows += [_row("C", "/m/0b") for _ in range(3)]                             # 3/3 = 1.0: dropped
    rows += [_row("D", "/m/0c") for _ in range(5)]                             # 0/5: kept
    rows += [_row("E", "/m/0a"), _row("E", "/m/0e")]                           # 1/2 = 0.5: kept
    rows += ["F,freeform,,1.0,,,,,0,0,0,0,0"]                                  # negative row: kept
    random.Random(0).shuffle(rows)
    return rows


def test_too_much_hand_worked(tmp_path):
    src = _write_csv(tmp_path / "in.csv", _too_much_rows())
    from oid_retinanet.oid.annotations import read_boxes

    boxes = read_boxes(src, allow_negatives=True)
    shares = too_much_shares(boxes, TOO)
    assert shares.to_dict("index") == {
        "A": {"too_much": 19, "all": 20, "share": 0.95}, "B": {"too_much": 24, "all": 25, "share": 0.96},
        "C": {"too_much": 3, "all": 3, "share": 1.0}, "E": {"too_much": 1, "all": 2, "share": 0.5}}
    kept, dropped = select_too_much(boxes, TOO)
    assert sorted(dropped) == ["B", "C"]
    assert kept["ImageID"].tolist() == [i for i in boxes["ImageID"] if i not in ("B", "C")]
    table = label_count_table(boxes, kept)
    assert table.set_index("mid")[["before", "after"]].to_dict("index") == {
        "/m/0a": {"before": 10 + 24 + 1, "after": 10 + 1}, "/m/0b": {"before": 9 + 3, "after": 9},
        "/m/0c": {"before": 6, "after": 6}, "/m/0d": {"before": 1, "after": 0},
        "/m/0e": {"before": 1, "after": 1}, "": {"before": 1, "after": 1}}
    assert table["mid"].iloc[0] == "/m/0a"
    # exactly 0.5 is kept at --max-share 0.5, A (0.95) is not
    assert sorted(select_too_much(boxes, TOO, 0.5)[1]) == ["A", "B", "C"]


def test_too_much_against_a_plain_loop():
    rng = random.Random(5)
    rows = []
    for i in range(300):
        n = rng.randint(1, 25)
        p = rng.random()
        rows += [(f"i{i}", "/m/0a" if rng.random() < p else rng.choice(MIDS[1:])) for _ in range(n)]
    boxes = pd.DataFrame(rows, columns=["ImageID", "LabelName"])
    per_image = collections.defaultdict(lambda: [0, 0])
    for image_id, mid in rows:
        per_image[image_id][0] += mid == "/m/0a"
        per_image[image_id][1] += 1
    expected = sorted(i for i, (t, a) in per_image.items() if float(t) / float(a) > 0.95)
    assert 5 < len(expected) < 295
    kept, dropped = select_too_much(boxes, ["/m/0a"], 0.95)
    assert sorted(dropped) == expected
    assert len(kept) == sum(a for i, (_, a) in per_image.items() if i not in set(expected))


def test_too_much_script_paths_and_text(tmp_path, capsys):
    out = tmp_path / "out"
    src = _write_csv(out / "level_6_files" / "train-exists-annotations-bbox-level-6.csv",
                     [r.replace("/m/0a", "/m/07j7r").replace("/m/0b", "/m/09j5n") for r in _too_much_rows()])
    assert tooMuch_label_select.main(["--output-path", str(out)]) == 0
    dst = out / "level_6_files" / "train-exists-annotations-bbox-level-6-select.csv"
    assert dst.read_text() == _pandas_text(src, {"A", "D", "E", "F"})
    assert "/m/07j7r" in capsys.readouterr().err  # the per-label table is logged
    other = tmp_path / "sel.csv"
    assert tooMuch_label_select.main(["--input", src, "--output", str(other), "--labels", "/m/07j7r",
                                      "/m/09j5n", "--max-share", "0.5"]) == 0
    assert other.read_text() == _pandas_text(src, {"D", "E", "F"})  # E: 1/2 is not > 0.5


# ------------------------------------------------------------------------------------------------------------
# Class distribution
# ------------------------------------------------------------------------------------------------------------

def _random_boxes(seed: int = 2, n: int = 400) -> pd.DataFrame:
    rng = random.Random(seed)
    weights = [40, 20, 10, 5, 0]  # /m/0e never appears
    rows = [(f"img{rng.randint(0, 60)}", rng.choices(MIDS, weights)[0], int(rng.random() < 0.2)) for _ in range(n)]
    rows += [("img99", "/m/0zz", 0), ("neg", "", 0)]  # a label outside the class list, a negative row
    return pd.DataFrame(rows, columns=["ImageID", "LabelName", "IsGroupOf"])


def test_class_distribution_against_plain_counts():
    boxes = _random_boxes()
    classes = ClassList(tuple(MIDS), ("A", "B", "C", "D", "E"))
    table = class_distribution(boxes, classes)
    rows = [r for r in boxes.itertuples(index=False) if r.LabelName]
    expected = {}
    for mid in MIDS + ["/m/0zz"]:
        mine = [r for r in rows if r.LabelName == mid]
        expected[mid] = (len(mine), len({r.ImageID for r in mine}), sum(r.IsGroupOf for r in mine))
    got = {r.mid: (r.boxes, r.images, r.group_of_boxes) for r in table.itertuples()}
    assert got == expected
    assert table["boxes"].tolist() == sorted(table["boxes"], reverse=True)
    assert table["mid"].iloc[-1] == "/m/0e"  # listed with 0 boxes
    assert dict(zip(table["mid"], table["name"]))["/m/0zz"] == ""


def _png_ok(path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGBA"
        im.load()
        return im.size


def test_distribution_script_levels(tmp_path):
    out = tmp_path / "out"
    boxes = _random_boxes()
    for k, mids in (("1", MIDS[:3]), ("2", MIDS[3:])):
        folder = out / f"level_{k}_files"
        rows = [_row(r.ImageID, r.LabelName, r.IsGroupOf) for r in boxes.itertuples() if r.LabelName in mids]
        _write_csv(folder / f"train-annotations-bbox-level-{k}.csv", rows)
        (folder / f"class-descriptions-boxable-level-{k}.csv").write_text(
            "".join(f"{m},Name {m[-1]}\n" for m in mids))
    assert analyse_class_distribution.main(["--output-path", str(out), "--levels", "1", "2"]) == 0
    for k, mids in (("1", MIDS[:3]), ("2", MIDS[3:])):
        table = pd.read_csv(out / f"class_distribution_level_{k}.csv")
        assert list(table.columns) == ["mid", "name", "boxes", "images", "group_of_boxes"]
        counts = collections.Counter(m for m in boxes["LabelName"] if m in mids)
        assert dict(zip(table["mid"], table["boxes"])) == {m: counts.get(m, 0) for m in mids}
        assert table["name"].iloc[0] == f"Name {table['mid'].iloc[0][-1]}"
        width, height = _png_ok(out / f"class_distribution_level_{k}.png")
        assert width > 200 and height > 200


def test_ranking_hand_worked(tmp_path):
    tree = {"LabelName": "/m/0root", "Subcategory": [
        {"LabelName": "/m/0a"},
        {"LabelName": "/m/0b", "Subcategory": [{"LabelName": "/m/0c"}, {"LabelName": "/m/0d"}]},
        {"LabelName": "/m/0e", "Subcategory": [{"LabelName": "/m/0f", "Subcategory": [{"LabelName": "/m/0g"}]}],
         "Part": [{"LabelName": "/m/0a"}]},
    ]}
    hierarchy = Hierarchy(tree)
    names = {m: m[-1].upper() for m in ("/m/0a", "/m/0b", "/m/0c", "/m/0d", "/m/0e", "/m/0f", "/m/0g", "/m/0h")}
    classes = ClassList(tuple(names), tuple(names.values()))
    counts = {"/m/0a": 5, "/m/0b": 1, "/m/0c": 7, "/m/0d": 2, "/m/0e": 3, "/m/0f": 9, "/m/0g": 0, "/m/0h": 4}
    rows = [("i1", m) for m, n in counts.items() for _ in range(n)] + [("i2", "/m/0zz")]
    boxes = pd.DataFrame(rows, columns=["ImageID", "LabelName"])
    ranking = rank_leaves_and_parents(boxes, classes, hierarchy, leaf_bands=(2,), parent_bands=(1, 3))
    got = [(r.kind, r.rank, r.band, r.mid, r.boxes) for r in ranking.itertuples()]
    assert got == [
        ("leaf", 0, 0, "/m/0c", 7), ("leaf", 1, 0, "/m/0a", 5), ("leaf", 2, 1, "/m/0d", 2), ("leaf", 3, 1, "/m/0g", 0),
        ("parent", 0, 0, "/m/0f", 9), ("parent", 1, 1, "/m/0h", 4), ("parent", 2, 1, "/m/0e", 3),
        ("parent", 3, 2, "/m/0b", 1),
    ]


def _original_leaves(tree: dict) -> set[str]:
    """The original's get_children_labels walk: nodes without a 'Subcategory' key, five levels deep."""
    found = set()

    def walk(node, depth):
        for child in node.get("Subcategory", []):
            if "Subcategory" not in child:
                found.add(child["LabelName"])
            elif depth < 5:
                walk(child, depth + 1)
    walk(tree, 1)
    return found


def test_ranking_script_leaves_match_the_original_walk(tmp_path):
    meta = fixture_path("seed_pipeline", "inputs", "g19_standin_metadata")
    class_file = meta / "challenge-2019-classes-description-500.csv"
    hierarchy_file = meta / "challenge-2019-label500-hierarchy.json"
    classes = read_class_descriptions(str(class_file))
    rng = random.Random(4)
    rows = [_row(f"i{rng.randint(0, 50)}", rng.choice(classes.mids)) for _ in range(600)]
    annotations = _write_csv(tmp_path / "train.csv", rows)
    assert analyse_class_distribution.main([
        "--mode", "hierarchy", "--annotations", annotations, "--class-descriptions", str(class_file),
        "--hierarchy", str(hierarchy_file), "--out-dir", str(tmp_path / "rank")]) == 0
    ranking = pd.read_csv(tmp_path / "rank" / "class_ranking.csv")
    leaves = _original_leaves(json.loads(hierarchy_file.read_text()))
    assert set(ranking.loc[ranking["kind"] == "leaf", "mid"]) == leaves & set(classes.mids)
    assert set(ranking.loc[ranking["kind"] == "parent", "mid"]) == set(classes.mids) - leaves
    counts = collections.Counter(r.split(",")[2] for r in rows)
    assert dict(zip(ranking["mid"], ranking["boxes"])) == {m: counts.get(m, 0) for m in classes.mids}
    leaf_bands = ranking.loc[ranking["kind"] == "leaf", "band"].to_numpy()
    assert [int((leaf_bands == b).sum()) for b in range(4)] == [38, 135, 135, len(leaf_bands) - 308]
    for name in ("leaves", "parents"):
        _png_ok(tmp_path / "rank" / f"class_ranking_{name}.png")


# ------------------------------------------------------------------------------------------------------------
# Moving and resizing images
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size, max_side, expected", [
    ((1000, 500), 400, (400, 200)), ((500, 1000), 400, (200, 400)), ((1001, 500), 400, (400, 200)),
    ((300, 200), 400, (300, 200)), ((400, 400), 400, (400, 400)), ((1000, 1), 400, (400, 1)),
    ((1024, 768), None, (1024, 768)), ((1023, 767), 512, (512, 384)),
])
def test_target_size(size, max_side, expected):
    assert target_size(*size, max_side) == expected


def _image(path, size, mode="RGB", **save):
    arr = np.random.default_rng(0).integers(0, 255, (size[1], size[0], len(mode)), dtype=np.uint8)
    Image.fromarray(arr, mode).save(path, **save)


@pytest.fixture
def image_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: must survive re-encoding
    _image(src / "wide.jpg", (1000, 500), exif=exif.tobytes())
    _image(src / "tall.jpg", (300, 900))
    _image(src / "small.jpg", (300, 200))
    _image(src / "alpha.png", (800, 600), mode="RGBA")
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg" * 50)
    (src / "sub").mkdir()
    (src / "sub" / "inner.jpg").write_bytes(b"x")
    return src


def _contents(folder) -> dict[str, bytes]:
    """The folder's files (the destination's settings record left out)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())
            if p.is_file() and p.name != resize_move.SETTINGS_FILE}


def test_resize_sizes_formats_and_failures(image_folder, tmp_path):
    before = _contents(image_folder)
    dst = tmp_path / "dst"
    summary = transfer_images([str(image_folder)], str(dst), move=False, max_side=400, workers=2, batch_size=1,
                              progress=False)
    assert summary.counts == {"resized": 3, "copied": 1, "failed": 1}
    assert [os.path.basename(p) for p, _ in summary.failures] == ["broken.jpg"]
    sizes = {}
    for name in ("wide.jpg", "tall.jpg", "alpha.png"):
        with Image.open(dst / name) as im:
            sizes[name] = (im.size, im.format, im.mode)
            if name == "wide.jpg":
                assert im.getexif()[0x0112] == 6
    assert sizes == {"wide.jpg": ((400, 200), "JPEG", "RGB"), "tall.jpg": ((133, 400), "JPEG", "RGB"),
                     "alpha.png": ((400, 300), "PNG", "RGBA")}
    assert (dst / "small.jpg").read_bytes() == before["small.jpg"]  # untouched, not re-encoded
    assert _contents(image_folder) == before  # sources stay without --move
    # no temp files left; the settings the folder was made with
    assert sorted(os.listdir(dst)) == [resize_move.SETTINGS_FILE, "alpha.png", "small.jpg", "tall.jpg", "wide.jpg"]
    # a rerun skips what is there and leaves it alone
    (dst / "wide.jpg").write_bytes(b"marker")
    again = transfer_images([str(image_folder)], str(dst), move=False, max_side=400, workers=1, progress=False)
    assert again.counts == {"skipped": 4, "failed": 1}
    assert (dst / "wide.jpg").read_bytes() == b"marker"
    # another size would mix two sizes in the folder (names there are skipped): refused before any file is taken
    before_dst = _contents(dst)
    for max_side, diff in ((200, "max_side 400 -> 200"), (None, "max_side 400 -> None")):
        with pytest.raises(OIDInputError, match=f"{resize_move.SETTINGS_FILE}: made with other settings \\({diff}"):
            transfer_images([str(image_folder)], str(dst), move=False, max_side=max_side, workers=1, progress=False)
    assert _contents(dst) == before_dst and _contents(image_folder) == before
    # the record is not an image to take when the folder is a source later
    onward = transfer_images([str(dst)], str(tmp_path / "onward"), move=False, workers=1, progress=False)
    assert onward.counts == {"copied": 4}


def test_resize_with_move_removes_sources(image_folder, tmp_path):
    summary = transfer_images([str(image_folder)], str(tmp_path / "dst"), move=True, max_side=400, workers=1,
                              progress=False)
    assert summary.counts == {"resized": 3, "moved": 1, "failed": 1}
    assert sorted(p.name for p in image_folder.iterdir()) == ["broken.jpg", "sub"]


def test_move_and_copy(image_folder, tmp_path):
    before = _contents(image_folder)
    copied = transfer_images([str(image_folder)], str(tmp_path / "copy"), move=False, workers=2, batch_size=1,
                             progress=False)
    assert copied.counts == {"copied": 5}
    assert _contents(tmp_path / "copy") == before == _contents(image_folder)
    moved = transfer_images([str(image_folder)], str(tmp_path / "moved"), move=True, workers=1, progress=False)
    assert moved.counts == {"moved": 5}
    assert _contents(tmp_path / "moved") == before
    assert [p.name for p in image_folder.iterdir()] == ["sub"]  # sub-folders are left in place
    assert not (tmp_path / "moved" / "sub").exists()


def test_move_across_file_systems(image_folder, tmp_path, monkeypatch):
    before = _contents(image_folder)

    def no_rename(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(resize_move.os, "rename", no_rename)
    moved = transfer_images([str(image_folder)], str(tmp_path / "moved"), move=True, workers=1, progress=False)
    assert moved.counts == {"moved": 5}
    assert _contents(tmp_path / "moved") == before  # copied whole under a temporary name, no leftovers
    assert [p.name for p in image_folder.iterdir()] == ["sub"]


def test_resize_script_failures_file(image_folder, tmp_path, capsys):
    dst = tmp_path / "dst"
    rc = resize_move_images.main([str(image_folder), str(dst), "--max-side", "400", "--workers", "1",
                                  "--no-progress"])
    assert rc == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: 1 file(s) failed")
    failures = pd.read_csv(tmp_path / "dst_failures.csv")
    assert failures["path"].tolist() == [str(image_folder / "broken.jpg")]
    (image_folder / "broken.jpg").unlink()
    assert resize_move_images.main([str(image_folder), str(dst), "--max-side", "400", "--no-progress"]) == 0
    assert not (tmp_path / "dst_failures.csv").exists()  # the earlier list is gone once all is done
    assert (image_folder / "wide.jpg").exists()


# ------------------------------------------------------------------------------------------------------------
# Scripts: --help and missing inputs
# ------------------------------------------------------------------------------------------------------------

SCRIPTS = [gen_exists_annotation, tooMuch_label_select, analyse_class_distribution, resize_move_images]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.__name__.split(".")[-1])
def test_help(script, capsys):
    with pytest.raises(SystemExit) as exc:
        script.main(["--help"])
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("script, args, level_file", [
    (gen_exists_annotation, ["--output-path", "{tmp}/out", "--images", "{tmp}"], False),
    (gen_exists_annotation, ["--output-path", "{tmp}", "--images", "{tmp}/no_such_folder", "--levels", "1"], True),
    (tooMuch_label_select, ["--output-path", "{tmp}/out"], False),
    (analyse_class_distribution, ["--output-path", "{tmp}/out", "--levels", "3"], False),
    (analyse_class_distribution, ["--mode", "hierarchy", "--annotations", "{tmp}/none.csv"], False),
    (resize_move_images, ["{tmp}/no_such_folder", "{tmp}/dst"], False),
], ids=["exists-level-file", "exists-image-folder", "too-much", "distribution", "ranking", "resize"])
def test_missing_input_is_one_line_and_exit_2(script, args, level_file, tmp_path, capsys):
    if level_file:
        _write_csv(tmp_path / "level_1_files" / "train-annotations-bbox-level-1.csv", [_row("x", "/m/0a")])
    rc = script.main([a.format(tmp=tmp_path) for a in args])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert str(tmp_path) in err


def test_bad_label_mid_is_an_input_error(tmp_path, capsys):
    src = _write_csv(tmp_path / "in.csv", [_row("x", "/m/0a")])
    rc = tooMuch_label_select.main(["--input", src, "--labels", "Tree"])
    assert rc == 2
    assert "'Tree'" in capsys.readouterr().err

