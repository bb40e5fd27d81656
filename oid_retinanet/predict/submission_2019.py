"""The 2019 submission helpers (gujingxiao's `retinanet_inference_submission/`), on Kaggle predictions CSVs.

- `delete_higher_level`: keep only the boxes of the 443 leaf classes of levels 1-5 (the original's
  LEVEL_CHILDREN), dropping the parent classes (`delete_higher_level_predictions.py`).
- `concat_submissions`: one row per image holding the boxes of every per-level submission
  (`concat_all_levels_submission.py`). Rows are matched by ImageId; the original paired them by position and
  took the ImageId from the first file, which mixed images whenever the files' orders differed.
  `by_position=True` keeps that pairing (files must then have as many rows; differing ImageIds are counted
  and logged).
- `delete_low_scores`: keep the boxes scoring above a threshold (`final_prediction_ensemble.py`'s
  `delete_low_scores`).

Tokens are copied verbatim; every box is followed by a space and an image without boxes is written `id,`.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from oid_retinanet.errors import OIDInputError
from oid_retinanet.files import atomic_path
from oid_retinanet.oid.levels import level_2019_children
from oid_retinanet.oid.predictions import HEADER
from oid_retinanet.predict.expand import (
    DEFAULT_BLOCK_SIZE,
    RowBlock,
    Transform,
    arrow_strings,
    join_rows,
    parse_numbers,
    to_numpy,
    tokenize,
    transform_csv,
)

log = logging.getLogger(__name__)

# The original's per-level inputs and output (concat_all_levels_submission.py, run in the submission folder).
CONCAT_INPUTS = tuple(f"retinanet_level_{k}_ensemble_thr_0.05_iou_0.85_type_max.csv" for k in range(1, 6))
CONCAT_OUTPUT = "retinanet_ensemble_submission_0.05_0.55_predictions.csv"


@dataclass
class FilterSummary:
    """Counts of a box filter."""

    images: int = 0
    boxes: int = 0
    kept: int = 0

    def line(self) -> str:
        return f"{self.images} images, {self.boxes} boxes, {self.kept} kept"


def filter_block(block: RowBlock, keep_box: Callable[[pa.Array, np.ndarray], np.ndarray],
                 summary: FilterSummary | None = None) -> memoryview:
    """CSV text of a block keeping the boxes where keep_box(mids, numbers) is True.

    mids: (boxes,) Arrow strings; numbers: (boxes, 5) score, x1, y1, x2, y2.
    """
    tokens = tokenize(block.strings)
    numbers = parse_numbers(tokens)  # checks every number, as the other stages do
    keep = np.asarray(keep_box(tokens.column(0), numbers), dtype=bool)
    rows = len(tokens.boxes_per_row)
    kept_per_row = np.bincount(tokens.box_row[keep], minlength=rows)
    row_offsets = np.concatenate([[0], np.cumsum(6 * kept_per_row + 1)])
    index = np.full(int(row_offsets[-1]), len(tokens.values), dtype=np.int64)  # "\n" unless set below
    boxes = np.flatnonzero(keep)
    rank = np.arange(len(boxes)) - np.repeat(np.cumsum(kept_per_row) - kept_per_row, kept_per_row)
    at = row_offsets[:-1][tokens.box_row[boxes]] + 6 * rank
    box_tokens = tokens.position.reshape(-1, 6)
    for k in range(6):
        index[at + k] = box_tokens[boxes, k]
    if summary is not None:
        summary.images += rows
        summary.boxes += len(keep)
        summary.kept += len(boxes)
    pieces = pa.concat_arrays([tokens.values, arrow_strings(["\n"])])
    return join_rows(block.ids, pieces, index, row_offsets)


def _filter_csv(input_csv: str, output_csv: str, keep_box: Callable[[pa.Array, np.ndarray], np.ndarray],
                block_size: int, progress: bool, desc: str) -> FilterSummary:
    summaries: list[FilterSummary] = []

    def make_transform() -> Transform:
        summaries.append(FilterSummary())
        return lambda block: filter_block(block, keep_box, summaries[-1])

    transform_csv(input_csv, output_csv, make_transform, block_size=block_size, progress=progress, desc=desc)
    log.info("%s -> %s: %s", input_csv, output_csv, summaries[-1].line())
    return summaries[-1]


def delete_higher_level(input_csv: str, output_csv: str, keep_mids: Iterable[str] | None = None,
                        block_size: int = DEFAULT_BLOCK_SIZE, progress: bool = True) -> FilterSummary:
    """Keep only the boxes whose label is in keep_mids (default: the 443 leaf classes of the 2019 levels 1-5)."""
    value_set = arrow_strings(sorted(set(level_2019_children() if keep_mids is None else keep_mids)))

    def keep_box(mids: pa.Array, numbers: np.ndarray) -> np.ndarray:
        return to_numpy(pc.is_in(mids, value_set=value_set))

    return _filter_csv(input_csv, output_csv, keep_box, block_size, progress, "deleting")


def delete_low_scores(input_csv: str, output_csv: str, threshold: float = 0.02,
                      block_size: int = DEFAULT_BLOCK_SIZE, progress: bool = True) -> FilterSummary:
    """Keep only the boxes scoring strictly above `threshold` (the original's __main__ used 0.02)."""
    return _filter_csv(input_csv, output_csv, lambda mids, numbers: numbers[:, 0] > threshold, block_size,
                       progress, "filtering")


# ----------------------------------------------------------------------------------------------------------
# Concatenation


@dataclass
class RowIndex:
    """Where each row of a predictions CSV starts: ImageIds, byte offsets and line numbers, in file order."""

    path: str
    ids: list[str]
    offsets: list[int]
    lines: list[int]
    position: dict[str, int] = field(default_factory=dict)


def _parse_line(raw: bytes, path: str, line: int) -> tuple[str, str] | None:
    """(ImageId, PredictionString) of one CSV line, None for a blank one."""
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise OIDInputError("not UTF-8 text", path, line) from None
    if not text.strip():
        return None
    if '"' in text:
        try:
            row = next(csv.reader([text]))
        except csv.Error as exc:
            raise OIDInputError(f"bad CSV: {exc} (a quoted field spanning lines is not supported)", path,
                                line) from None
    else:
        row = text.split(",")
    if len(row) > 2:
        raise OIDInputError(f"expected 2 columns ImageId,PredictionString, got {len(row)}", path, line)
    if not row[0]:
        raise OIDInputError("empty ImageId", path, line)
    return row[0], row[1] if len(row) == 2 else ""


def _read_header(f, path: str) -> None:
    first = f.readline()
    if not first:
        raise OIDInputError("file is empty", path)
    header = next(csv.reader([first.decode("utf-8-sig", errors="replace")]), [])
    if tuple(h.strip() for h in header) != HEADER:
        raise OIDInputError(f"expected header {','.join(HEADER)}, got {','.join(header)}", path, 1)


def _iter_lines(path: str) -> Iterator[tuple[int, int, str, str]]:
    """(byte offset, line, ImageId, PredictionString) of every data row."""
    with open(path, "rb") as f:
        _read_header(f, path)
        line, offset = 1, f.tell()
        for raw in f:
            line += 1
            row = _parse_line(raw, path, line)
            if row is not None:
                yield offset, line, row[0], row[1]
            offset += len(raw)


def index_rows(path: str) -> RowIndex:
    """Read a predictions CSV's ImageIds and row offsets (not its boxes); a repeated ImageId is an error."""
    index = RowIndex(path, [], [], [])
    for offset, line, image_id, _ in _iter_lines(path):
        if image_id in index.position:
            first = index.lines[index.position[image_id]]
            raise OIDInputError(f"ImageId {image_id!r} repeated (first on row {first})", path, line)
        index.position[image_id] = len(index.ids)
        index.ids.append(image_id)
        index.offsets.append(offset)
        index.lines.append(line)
    return index


def _tokens(string: str, path: str, line: int) -> list[str]:
    tokens = string.split()
    if len(tokens) % 6:
        raise OIDInputError(f"bad prediction string: {len(tokens)} tokens is not a multiple of 6", path, line)
    return tokens


def _joined(parts: list[list[str]]) -> str:
    tokens = [t for part in parts for t in part]
    return " ".join(tokens) + " " if tokens else ""


@dataclass
class ConcatSummary:
    """Counts of one concatenation."""

    images: int = 0
    boxes: int = 0
    missing: dict[str, int] = field(default_factory=dict)  # input -> images of the output it lacks
    mismatched: int = 0  # by position: rows whose ImageIds differ between files

    def line(self) -> str:
        gaps = ", ".join(f"{os.path.basename(p)} lacks {n}" for p, n in self.missing.items() if n)
        text = f"{self.images} images, {self.boxes} boxes"
        if gaps:
            text += f" ({gaps})"
        if self.mismatched:
            text += f"; {self.mismatched} rows paired by position have different ImageIds"
        return text


def concat_submissions(inputs: list[str], output_csv: str, by_position: bool = False,
                       progress: bool = True) -> ConcatSummary:
    """One row per image with the boxes of every input, in input order (the 2019 per-level concatenation).

    By ImageId (default): images come in the first input's order, then those only in later inputs in the
    order they are first met; an image missing from some inputs gets the boxes of the others. Memory holds
    only the ImageIds and row offsets, not the boxes. by_position: the original's pairing of the k-th rows,
    ImageId from the first input (inputs must have as many rows).
    """
    if not inputs:
        raise ValueError("nothing to concatenate")
    summary = ConcatSummary()
    if by_position:
        rows = _by_position(inputs, summary)
    else:
        rows = _by_image_id(inputs, summary)
    with atomic_path(output_csv) as tmp, open(tmp, "w", encoding="utf-8", newline="") as out:
        out.write(",".join(HEADER) + "\n")
        writer = csv.writer(out, lineterminator="\n")
        for image_id, parts in tqdm(rows, total=summary.images, unit="images", desc="concatenating",
                                    disable=not progress):
            summary.boxes += sum(len(p) for p in parts) // 6
            if _needs_quotes(image_id):
                writer.writerow([image_id, _joined(parts)])
            else:
                out.write(f"{image_id},{_joined(parts)}\n")
    if summary.mismatched:
        log.warning("%d rows paired by position have different ImageIds; the first input's was written",
                    summary.mismatched)
    log.info("%s: %s", output_csv, summary.line())
    return summary


def _needs_quotes(value: str) -> bool:
    return any(c in value for c in ',"\r\n')


def _by_image_id(inputs: list[str], summary: ConcatSummary) -> Iterator[tuple[str, list[list[str]]]]:
    indexes = [index_rows(p) for p in inputs]
    order: dict[str, None] = {}
    for index in indexes:
        order.update(dict.fromkeys(index.ids))
    summary.images = len(order)
    for index in indexes:
        summary.missing[index.path] = len(order) - len(index.ids)
        if len(order) - len(index.ids):
            log.warning("%s lacks %d of the %d images", index.path, len(order) - len(index.ids), len(order))
    return _gather(indexes, list(order))


def _gather(indexes: list[RowIndex], order: list[str]) -> Iterator[tuple[str, list[list[str]]]]:
    files = [open(index.path, "rb") for index in indexes]
    try:
        for image_id in order:
            parts = []
            for f, index in zip(files, indexes):
                k = index.position.get(image_id)
                if k is None:
                    continue
                f.seek(index.offsets[k])
                row = _parse_line(f.readline(), index.path, index.lines[k])
                parts.append(_tokens(row[1], index.path, index.lines[k]))
            yield image_id, parts
    finally:
        for f in files:
            f.close()


def _by_position(inputs: list[str], summary: ConcatSummary) -> Iterator[tuple[str, list[list[str]]]]:
    counts = [sum(1 for _ in _iter_lines(p)) for p in inputs]
    if len(set(counts)) > 1:
        sizes = ", ".join(f"{os.path.basename(p)} {n}" for p, n in zip(inputs, counts))
        raise OIDInputError(f"--by-position needs inputs with as many rows; rows: {sizes}", inputs[0])
    summary.images = counts[0]
    return _lockstep(inputs, summary)


def _lockstep(inputs: list[str], summary: ConcatSummary) -> Iterator[tuple[str, list[list[str]]]]:
    for rows in zip(*(_iter_lines(p) for p in inputs)):
        ids = {image_id for _, _, image_id, _ in rows}
        summary.mismatched += len(ids) > 1
        yield rows[0][2], [_tokens(s, p, line) for p, (_, line, _, s) in zip(inputs, rows)]
