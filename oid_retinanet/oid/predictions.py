"""Kaggle prediction CSVs: `ImageId,PredictionString`, one row per image.

A prediction string holds 6 tokens per box: `label score XMin YMin XMax YMax` (note: not the annotation
CSVs' XMin,XMax,YMin,YMax order), coordinates normalised to [0, 1]. An image without boxes has an empty
string. The originals wrote `{MID} {score:.6f} {xmin:.4f} {ymin:.4f} {xmax:.4f} {ymax:.4f} ` per box, with a
trailing space. Parsing is vectorised per chunk of rows; only a bad chunk is rescanned row by row to name
the row and the token.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from oid_retinanet.errors import OIDInputError
from oid_retinanet.files import atomic_path
from oid_retinanet.oid.classes import MID_PATTERN, ClassList

HEADER = ("ImageId", "PredictionString")


@dataclass
class ImagePredictions:
    """The boxes of one image: `boxes` (N, 4) as x1, y1, x2, y2 normalised; `scores` (N,); `mids` (N,)."""

    image_id: str
    mids: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray


def _check_tokens(tokens: list[str], path: str, row: int, classes: ClassList | None, check_range: bool) -> None:
    """Slow, exact check of one row's tokens, naming the first bad token."""
    if len(tokens) % 6:
        raise OIDInputError(f"bad prediction string: {len(tokens)} tokens is not a multiple of 6", path, row)
    for b in range(0, len(tokens), 6):
        mid = tokens[b]
        if classes is not None and mid not in classes:
            raise OIDInputError(f"unknown label {mid!r} in box {b // 6 + 1}", path, row)
        if classes is None and not MID_PATTERN.match(mid):
            raise OIDInputError(f"bad label {mid!r} in box {b // 6 + 1} (expected a MID like /m/0abc12)", path, row)
        values = []
        for name, tok in zip(("score", "XMin", "YMin", "XMax", "YMax"), tokens[b + 1:b + 6]):
            try:
                v = float(tok)
            except ValueError:
                raise OIDInputError(f"{name} of box {b // 6 + 1} is not a number: {tok!r}", path, row) from None
            if not np.isfinite(v):
                raise OIDInputError(f"{name} of box {b // 6 + 1} is not finite: {tok!r}", path, row)
            if check_range and name != "score" and not 0.0 <= v <= 1.0:
                raise OIDInputError(f"{name} of box {b // 6 + 1} = {tok} is outside [0, 1]", path, row)
            values.append(v)
        _, x1, y1, x2, y2 = values
        if x1 > x2 or y1 > y2:
            raise OIDInputError(f"box {b // 6 + 1} has XMin > XMax or YMin > YMax: {' '.join(tokens[b:b + 6])}",
                                path, row)


def parse_rows(rows: list[tuple[str, str]], path: str = "<predictions>", first_row: int = 2,
               classes: ClassList | None = None, check_range: bool = True) -> list[ImagePredictions]:
    """Parse (image_id, prediction_string) rows; `first_row` is the file line number of rows[0]."""
    token_lists = [s.split() for _, s in rows]
    counts = np.fromiter((len(t) for t in token_lists), dtype=np.int64, count=len(rows))
    try:
        if (counts % 6).any():
            raise ValueError
        flat = np.array([tok for t in token_lists for tok in t], dtype=object).reshape(-1, 6)
        mids = flat[:, 0].astype(str)
        numbers = flat[:, 1:].astype(np.float64)
        scores, boxes = numbers[:, 0], numbers[:, 1:5]
        ok = np.isfinite(numbers).all()
        ok &= bool((boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all())
        if check_range:
            ok &= bool(((boxes >= 0) & (boxes <= 1)).all())
        if classes is not None:
            ok &= bool(np.isin(mids, np.array(classes.mids)).all())
        else:
            ok &= all(MID_PATTERN.match(m) for m in np.unique(mids))
        if not ok:
            raise ValueError
    except ValueError:
        for i, tokens in enumerate(token_lists):
            _check_tokens(tokens, path, first_row + i, classes, check_range)
        raise AssertionError("a chunk failed the vectorised check but no row failed the exact one") from None
    ends = np.cumsum(counts // 6)
    starts = ends - counts // 6
    return [ImagePredictions(image_id, mids[a:b], scores[a:b], boxes[a:b])
            for (image_id, _), a, b in zip(rows, starts, ends)]


def iter_prediction_rows(path: str) -> Iterator[tuple[int, str, str]]:
    """Stream (line number, ImageId, PredictionString) from a Kaggle predictions CSV; ImageId stays a string."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise OIDInputError("file is empty", path)
        if tuple(h.strip() for h in header) != HEADER:
            raise OIDInputError(f"expected header {','.join(HEADER)}, got {','.join(header)}", path, 1)
        for line, row in enumerate(reader, start=2):
            if not row or (len(row) == 1 and row[0] == ""):
                continue  # blank line, skipped as pandas skips it
            if len(row) == 1:
                row = [row[0], ""]
            if len(row) != 2:
                raise OIDInputError(f"expected 2 columns ImageId,PredictionString, got {len(row)}", path, line)
            if not row[0]:
                raise OIDInputError("empty ImageId", path, line)
            yield line, row[0], row[1]


def iter_predictions(path: str, chunk_rows: int = 20000, classes: ClassList | None = None,
                     check_range: bool = True) -> Iterator[ImagePredictions]:
    """Stream parsed predictions image by image, `chunk_rows` rows parsed at a time (bounded memory)."""
    chunk: list[tuple[str, str]] = []
    first = 2
    for line, image_id, string in iter_prediction_rows(path):
        if not chunk:
            first = line
        chunk.append((image_id, string))
        if len(chunk) >= chunk_rows:
            yield from parse_rows(chunk, path, first, classes, check_range)
            chunk = []
    if chunk:
        yield from parse_rows(chunk, path, first, classes, check_range)


def format_prediction_string(mids: Iterable[str], scores: np.ndarray, boxes: np.ndarray,
                             score_decimals: int = 6, coord_decimals: int = 4) -> str:
    """The original's prediction string: `{mid} {score} {x1} {y1} {x2} {y2} ` per box (trailing space)."""
    fmt = f"{{}} {{:.{score_decimals}f}} {{:.{coord_decimals}f}} {{:.{coord_decimals}f}} " \
          f"{{:.{coord_decimals}f}} {{:.{coord_decimals}f}} "
    return "".join(fmt.format(m, s, *b) for m, s, b in zip(mids, np.asarray(scores).tolist(),
                                                            np.asarray(boxes).tolist()))


def write_predictions(path: str, rows: Iterable[tuple[str, str]]) -> int:
    """Write (ImageId, PredictionString) rows with the header, atomically; returns the number of rows."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(",".join(HEADER) + "\n")
        for image_id, string in rows:
            f.write(f"{image_id},{string}\n")
            n += 1
    return n
