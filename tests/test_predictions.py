"""The one reader of Kaggle prediction CSVs (oid_retinanet/oid/predictions.py) and its users: the expansion
and the 2019 filters (predict/expand.py, predict/submission_2019.py), the evaluation (evaluate/oid_map.py) and
the image-by-image reader of the ensembling (iter_predictions).

Checked against an independent slow reader (the csv module, str.split() and float(), as the originals read
these files with pandas and Python): the same rows, tokens and numbers (exact: the parse is correctly
rounded), for any block size, also when Arrow's reader gives up mid-file. Bad rows: every user names the same
file, line and value (hand-written cases).
"""

from __future__ import annotations

import csv
import logging
import re

import numpy as np
import pyarrow as pa
import pytest

from oid_retinanet.errors import OIDInputError
from oid_retinanet.evaluate.oid_map import iter_prediction_chunks
from oid_retinanet.oid.predictions import (
    _first_unparsable,
    csv_rows,
    iter_aligned_predictions,
    iter_prediction_blocks,
    iter_predictions,
    parse_prediction_strings,
    value_offsets,
)
from oid_retinanet.predict.expand import expand_csv, load_parent_table
from oid_retinanet.predict.submission_2019 import delete_low_scores
from oid_retinanet.resources import resource_path

HEADER = "ImageId,PredictionString"


def slow_read(path) -> list[tuple[str, list[str], list[float]]]:
    """(ImageId, tokens, numbers) per data row, with the csv module, str.split() and float()."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader)
        for row in reader:
            if not row or row == [""]:
                continue
            tokens = (row[1] if len(row) > 1 else "").split()
            numbers = [float(t) for b in range(0, len(tokens), 6) for t in tokens[b + 1:b + 6]]
            rows.append((row[0], tokens, numbers))
    return rows


def fast_read(path, **options) -> list[tuple[str, list[str], list[float]]]:
    rows = []
    for block in iter_prediction_blocks(path, **options):
        tokens = block.values.take(pa.array(block.position)).to_pylist()
        ends = np.cumsum(block.boxes_per_row)
        for image_id, a, b in zip(block.ids.to_pylist(), ends - block.boxes_per_row, ends):
            rows.append((image_id, tokens[6 * a:6 * b], block.numbers[a:b].ravel().tolist()))
    return rows


def random_file(path, rng, n_rows=400, odd_row_at=None):
    """Rows as people and tools write them: varied spacing, number formats, empty rows, quoted and all-digit
    ImageIds, blank lines, CRLF line ends; odd_row_at: a row holding only an ImageId (no comma) there."""
    formats = ["{:.6f}", "{:.4f}", "{:.3f}", "{!r}", "{:.3e}", "{:g}"]
    lines = [HEADER]
    for i in range(n_rows):
        image_id = str(rng.choice([f"{rng.integers(0, 2**63):016x}", f"0{i:07d}", f'"im,{i}"', f"img{i}"]))
        boxes = []
        for _ in range(int(rng.integers(0, 8)) * int(rng.random() > 0.2)):
            label = str(rng.choice(["/m/01g317", "/m/0k4j", "/m/04yx4", "/g/11bc_x"]))
            score, a, b, c, d = rng.random(5).tolist()
            values = [score, min(a, c), min(b, d), max(a, c), max(b, d)]  # formats round monotonically
            boxes.append(" ".join([label] + [formats[rng.integers(0, len(formats))].format(v) for v in values]))
        gap = rng.choice([" ", "  ", "   "])
        string = gap.join(boxes) + rng.choice(["", " ", "  "])
        if rng.random() < 0.1:
            string = " " + string
        if i == odd_row_at:
            lines.append(image_id)
        else:
            lines.append(f"{image_id},{string}")
        if rng.random() < 0.03:
            lines.append("")
    end = "\r\n" if rng.random() < 0.3 else "\n"
    path.write_bytes((end.join(lines) + end).encode())
    return path


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("block_size", [256, 4096, 1 << 21])
def test_reader_equals_slow_reader(tmp_path, seed, block_size):
    rng = np.random.default_rng(seed)
    path = random_file(tmp_path / "p.csv", rng)
    expected = slow_read(path)
    assert fast_read(path, block_size=block_size) == expected
    assert fast_read(path, block_size=block_size, max_rows=7) == expected


def test_csv_module_takes_over_where_arrow_stops(tmp_path, caplog):
    """A row without a comma (an image without boxes, as pandas read it) late in the file: Arrow's blocks
    before it are kept, the csv module reads on from the row after them; nothing is lost or read twice."""
    path = random_file(tmp_path / "p.csv", np.random.default_rng(7), n_rows=600, odd_row_at=500)
    with caplog.at_level(logging.INFO, logger="oid_retinanet.oid.predictions"):
        rows = fast_read(path, block_size=1024)
    assert rows == slow_read(path)
    taken_over = [int(m) for m in re.findall(r"with the csv module from data row (\d+) on", caplog.text)]
    assert len(taken_over) == 1 and 100 < taken_over[0] <= 501


def test_blocks_are_bounded(tmp_path):
    """Memory follows the block size, not the file: a block holds at most block_size bytes of text plus a row."""
    path = random_file(tmp_path / "p.csv", np.random.default_rng(3), n_rows=3000)
    longest = max(len(line) for line in path.read_bytes().splitlines())
    sizes = []
    for block in iter_prediction_blocks(path, block_size=2048):
        ids, strings = value_offsets(block.ids), value_offsets(block.strings)
        sizes.append(int(ids[-1] - ids[0] + strings[-1] - strings[0]))
    assert len(sizes) > 50 and max(sizes) <= 2048 + longest


def test_iter_predictions_equals_slow_reader(tmp_path):
    path = random_file(tmp_path / "p.csv", np.random.default_rng(11))
    got = [(p.image_id, p.mids.tolist(), np.column_stack([p.scores, p.boxes]).ravel().tolist())
           for p in iter_predictions(path, check_range=False)]
    assert got == [(i, t[0::6], n) for i, t, n in slow_read(path)]


def test_first_unparsable_is_the_first_token_float_refuses():
    rng = np.random.default_rng(0)
    for _ in range(200):
        tokens = [f"{v:.4f}" for v in rng.random(int(rng.integers(1, 300)))]
        bad = int(rng.integers(0, len(tokens)))
        tokens[bad] = rng.choice(["x", "0.5.1", "1e", "--1", "0,5", "1_0"])
        assert _first_unparsable(pa.array(tokens)) == bad


def test_csv_rows_quote_as_the_csv_module(tmp_path):
    ids = ["a", "b,c", 'd"e', "0123"]
    strings = ["/m/01 0.5 0.1 0.1 0.2 0.2 ", "", "x,y", " "]
    text = bytes(csv_rows(pa.array(ids), pa.array(strings))).decode()
    assert list(csv.reader(text.splitlines())) == [[i, s] for i, s in zip(ids, strings)]
    assert text.splitlines()[0] == "a,/m/01 0.5 0.1 0.1 0.2 0.2 "


def test_aligned_rows(tmp_path):
    box = "/m/01 0.5 0.1 0.1 0.2 0.2 "
    one = tmp_path / "1.csv"
    two = tmp_path / "2.csv"
    one.write_text(f"{HEADER}\na,{box}\nb,\nc,{box}{box}\n")
    two.write_text(f"{HEADER}\nd,{box}\nc,\na,{box}\n")
    got = [(image_id, [None if p is None else len(p.scores) for p in preds])
           for image_id, preds in iter_aligned_predictions([str(one), str(two)])]
    assert got == [("a", [1, 1]), ("b", [0, None]), ("c", [2, 0]), ("d", [None, 1])]
    two.write_text(f"{HEADER}\na,\nd,\na,{box}\n")
    with pytest.raises(OIDInputError, match="2.csv: ImageId 'a' appears twice"):
        list(iter_aligned_predictions([str(one), str(two)]))


# ----------------------------------------------------------------------------------------------------------
# Bad rows: every user of the reader names the same file, line and value


GOOD = "/m/01g317 0.5 0.1 0.1 0.2 0.2 "


def _bad_file(tmp_path, bad_row: str) -> tuple[str, int]:
    """A file with 2,000 good rows (several blocks), a blank line, a row without a comma (the csv module takes
    over there), then the bad row and a good one; the bad row's line number."""
    lines = [HEADER] + [f"g{i},{GOOD}" for i in range(2000)] + ["", "lonely", bad_row, f"after,{GOOD}"]
    path = tmp_path / "preds.csv"
    path.write_text("\n".join(lines) + "\n")
    return str(path), len(lines) - 1


def _users(path: str, out: str):
    table = load_parent_table(resource_path("challenge-2018-class-descriptions-500.csv"),
                              resource_path("bbox_labels_600_hierarchy.json"),
                              resource_path("class-descriptions-boxable.csv"))
    return {
        "blocks": lambda: list(iter_prediction_blocks(path, block_size=4096)),
        "iter_predictions": lambda: list(iter_predictions(path)),
        "expansion": lambda: expand_csv(path, out, table, block_size=4096, progress=False),
        "2019 filter": lambda: delete_low_scores(path, out, progress=False),
        "evaluation": lambda: list(iter_prediction_chunks(path, block_bytes=4096)),
    }


@pytest.mark.parametrize("row, message", [
    (f"b,{GOOD}/m/01g317 0.5", "bad prediction string: 8 tokens is not a multiple of 6"),
    ("b,/m/01g317 high 0.1 0.1 0.2 0.2", "score of box 1 is not a number: 'high'"),
    (f"b,{GOOD} /m/01g317 0.5 0.1 0.1 0.2 -", "YMax of box 2 is not a number: '-'"),
    (f"b,{GOOD}{GOOD}/m/01g317 0.5 0.1 1.2.3 0.2 0.2", "YMin of box 3 is not a number: '1.2.3'"),
    (",/m/01g317 0.5 0.1 0.1 0.2 0.2", "empty ImageId"),
    ("b,c,d", "expected 2 columns ImageId,PredictionString, got 3"),
])
def test_bad_row_named_alike_by_every_user(tmp_path, row, message):
    path, line = _bad_file(tmp_path, row)
    for name, read in _users(path, str(tmp_path / "out.csv")).items():
        with pytest.raises(OIDInputError) as exc:
            read()
        assert str(exc.value) == f"{path}, row {line}: {message}", name
    assert not (tmp_path / "out.csv").exists()


def test_bad_row_in_an_arrow_block_is_located(tmp_path):
    """Without the csv module taking over, the line is found again (blank lines counted)."""
    lines = [HEADER] + [f"g{i},{GOOD}" for i in range(3000)] + ["", "", "b,/m/01g317 0.5 0.1 0.1 0.2 x", "c,"]
    path = tmp_path / "preds.csv"
    path.write_text("\n".join(lines) + "\n")
    for name, read in _users(str(path), str(tmp_path / "out.csv")).items():
        with pytest.raises(OIDInputError, match=re.escape(f"{path}, row 3004: YMax of box 1 is not a number: 'x'")):
            read()


def test_non_finite_numbers(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text(f"{HEADER}\na,{GOOD}\nb,/m/01g317 nan 0.1 0.1 0.2 0.2\n")
    with pytest.raises(OIDInputError, match=re.escape(f"{path}, row 3: score of box 1 is not finite: 'nan'")):
        list(iter_prediction_blocks(path))
    # the evaluation lets them through: the official metric drops NaN scores itself
    chunk, = list(iter_prediction_chunks(str(path)))
    assert np.isnan(chunk.scores[1])


@pytest.mark.parametrize("text, message", [
    ("", "file is empty"),
    ("ImageID,LabelName\na,b\n", "row 1: expected header ImageId,PredictionString, got ImageID,LabelName"),
    (b"ImageId,PredictionString\na,/m/01 \xff\n", "not a UTF-8 text CSV"),
])
def test_bad_files(tmp_path, text, message):
    path = tmp_path / "p.csv"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    with pytest.raises(OIDInputError, match=re.escape(message)):
        list(iter_prediction_blocks(path))
    with pytest.raises(OIDInputError, match=re.escape(message)):
        list(iter_predictions(path))


def test_rows_not_from_a_file(tmp_path):
    """Rows parsed from memory (the web demo's) number their rows as a file with a header would."""
    with pytest.raises(OIDInputError, match=re.escape("<upload>, row 3: XMin of box 1 is not a number: 'x'")):
        parse_prediction_strings("<upload>", pa.array(["a", "b"]), pa.array([GOOD, "/m/01 0.5 x 0.1 0.2 0.2"]))
    block = parse_prediction_strings("<upload>", pa.array(["a"]), pa.array([f"  {GOOD} {GOOD}"]))
    assert block.boxes_per_row.tolist() == [2] and block.numbers[:, 0].tolist() == [0.5, 0.5]
