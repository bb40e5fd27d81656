"""The 2019 submission helpers (gujingxiao's `retinanet_inference_submission/`), on Kaggle predictions CSVs.

- `delete_higher_level`: keep only the boxes of the 443 leaf classes of levels 1-5 (the original's
  LEVEL_CHILDREN), dropping the parent classes (`delete_higher_level_predictions.py`).
- `concat_submissions`: one row per image holding the boxes of every per-level submission
  (`concat_all_levels_submission.py`). Rows are matched by ImageId; the original paired them by position and
  took the ImageId from the first file, which mixed images whenever the files' orders differed.
  `by_position=True` keeps that pairing (files must then have as many rows; differing ImageIds are counted
  and logged).
- `split_submission`: a submission in parts of 20,000 rows (`split_csv.py`), so that the final ensemble of
  the original could run part by part in memory.
- `final_ensemble`: the final ensemble of two all-level submissions with gujingxiao's merge, numbers written
  as Python's str() writes them (`final_prediction_ensemble.py`'s `create_csv_final_ensemble_predictions`);
  `combine_parts`: the parts put back together (its `combine_final_parts`); `delete_low_scores`: keep the
  boxes scoring above a threshold (its `delete_low_scores`, the step its __main__ ran).

Every file is read by the shared reader (oid/predictions.py), so bad rows stop with the file, line and value.
Apart from the final ensemble's merged numbers, tokens are copied verbatim; every box is followed by a space
and an image without boxes is written `id,`.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from oid_retinanet.boxes.merge import CONF_TYPES, BoxBatch, merge_batch
from oid_retinanet.errors import OIDInputError
from oid_retinanet.files import atomic_output, is_gzip, open_input, reading
from oid_retinanet.oid.levels import level_2019_children
from oid_retinanet.oid.predictions import (
    DEFAULT_BLOCK_SIZE,
    HEADER,
    ImagePredictions,
    PredictionBlock,
    arrow_strings,
    csv_rows,
    iter_aligned_predictions,
    iter_prediction_blocks,
    iter_predictions,
    locate_row,
    parse_prediction_strings,
    to_numpy,
)
from oid_retinanet.predict.expand import join_rows, transform_csv

log = logging.getLogger(__name__)

# The original's per-level inputs and output (concat_all_levels_submission.py, run in the submission folder).
CONCAT_INPUTS = tuple(f"retinanet_level_{k}_ensemble_thr_0.05_iou_0.85_type_max.csv" for k in range(1, 6))
CONCAT_OUTPUT = "retinanet_ensemble_submission_0.05_0.55_predictions.csv"
# split_csv.py: its input, and 5 parts of 20,000 rows (the test set's 99,999 images)
SPLIT_INPUT = "retinanet_resnet152_101_new_ensemble_submission_0.05_0.55_predictions_all_levels.csv"
SPLIT_ROWS = 20_000
SPLIT_PARTS = 5
# final_prediction_ensemble.py: the files of its __main__ (two steps commented out there, the last one run)
FINAL_ENSEMBLE_INPUTS = ("retinanet_ensemble_submission_0.1_0.55_predictions_all_levels_part_0.csv",
                         "retinanet_resnet152_101_new_ensemble_submission_0.05_0.55_predictions_all_levels_part_0.csv")
FINAL_ENSEMBLE_OUTPUT = "retinanet_final_ensemble_submissions_type_{type}__part_0.csv"
FINAL_IOU_THR = 0.55
COMBINE_INPUTS = tuple(f"retinanet_final_ensemble_submissions_type_avg__part_{k}.csv" for k in range(5))
COMBINE_OUTPUT = "retinanet_final_ensemble_submissions_0.05_0.55_type_avg.csv"
LOW_SCORES_INPUT = "retinanet_final_ensemble_submissions.csv"
LOW_SCORES_THR = 0.02
LOW_SCORES_OUTPUT = "retinanet_final_ensemble_submissions_selected_{thr}_type_avg.csv"


@dataclass
class FilterSummary:
    """Counts of a box filter."""

    images: int = 0
    boxes: int = 0
    kept: int = 0

    def line(self) -> str:
        return f"{self.images} images, {self.boxes} boxes, {self.kept} kept"


def filter_block(block: PredictionBlock, keep_box: Callable[[pa.Array, np.ndarray], np.ndarray],
                 summary: FilterSummary | None = None) -> memoryview:
    """CSV text of a block keeping the boxes where keep_box(mids, numbers) is True.

    mids: (boxes,) Arrow strings; numbers: (boxes, 5) score, x1, y1, x2, y2.
    """
    keep = np.asarray(keep_box(block.mids, block.numbers), dtype=bool)
    rows = len(block)
    kept_per_row = np.bincount(block.box_row[keep], minlength=rows)
    row_offsets = np.concatenate([[0], np.cumsum(6 * kept_per_row + 1)])
    index = np.full(int(row_offsets[-1]), len(block.values), dtype=np.int64)  # "\n" unless set below
    boxes = np.flatnonzero(keep)
    rank = np.arange(len(boxes)) - np.repeat(np.cumsum(kept_per_row) - kept_per_row, kept_per_row)
    at = row_offsets[:-1][block.box_row[boxes]] + 6 * rank
    box_tokens = block.position.reshape(-1, 6)
    for k in range(6):
        index[at + k] = box_tokens[boxes, k]
    if summary is not None:
        summary.images += rows
        summary.boxes += len(keep)
        summary.kept += len(boxes)
    pieces = pa.concat_arrays([block.values, arrow_strings(["\n"])])
    return join_rows(block.ids, pieces, index, row_offsets)


def _filter_csv(input_csv: str, output_csv: str, keep_box: Callable[[pa.Array, np.ndarray], np.ndarray],
                block_size: int, progress: bool, desc: str) -> FilterSummary:
    summary = FilterSummary()
    transform_csv(input_csv, output_csv, lambda block: filter_block(block, keep_box, summary),
                  block_size=block_size, progress=progress, desc=desc)
    log.info("%s -> %s: %s", input_csv, output_csv, summary.line())
    return summary


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
    try:
        header = next(csv.reader([first.decode("utf-8-sig")]), [])
    except UnicodeDecodeError:
        raise OIDInputError("not a UTF-8 text CSV", path) from None
    if tuple(h.strip() for h in header) != HEADER:
        raise OIDInputError(f"expected header {','.join(HEADER)}, got {','.join(header)}", path, 1)


def _iter_lines(path: str) -> Iterator[tuple[int, int, str, str]]:
    """(byte offset, line, ImageId, PredictionString) of every data row."""
    with reading(path), open_input(path, "rb") as f:
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


# One output row of the concatenation: its ImageId and, per input holding it, (input, line, ImageId, string).
RawRow = tuple[str, list[tuple[int, int, str, str]]]


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
                       progress: bool = True, batch_images: int = 512) -> ConcatSummary:
    """One row per image with the boxes of every input, in input order (the 2019 per-level concatenation).

    By ImageId (default): images come in the first input's order, then those only in later inputs in the
    order they are first met; an image missing from some inputs gets the boxes of the others. Memory holds
    only the ImageIds and row offsets, not the boxes. by_position: the original's pairing of the k-th rows,
    ImageId from the first input (inputs must have as many rows). Rows are checked by the shared parser
    (oid.predictions.parse_prediction_strings), `batch_images` output rows at a time.
    """
    if not inputs:
        raise ValueError("nothing to concatenate")
    summary = ConcatSummary()
    if by_position:
        rows = _by_position(inputs, summary)
    else:
        rows = _by_image_id(inputs, summary)
    with atomic_output(output_csv) as out, \
            tqdm(total=summary.images, unit="images", desc="concatenating", disable=not progress) as bar:
        out.write((",".join(HEADER) + "\n").encode())
        while batch := list(itertools.islice(rows, batch_images)):
            text, boxes = _concat_text(inputs, batch)
            out.write(text)
            summary.boxes += boxes
            bar.update(len(batch))
    if summary.mismatched:
        log.warning("%d rows paired by position have different ImageIds; the first input's was written",
                    summary.mismatched)
    log.info("%s: %s", output_csv, summary.line())
    return summary


def _concat_text(inputs: list[str], batch: list[RawRow]) -> tuple[memoryview, int]:
    """CSV text of a batch of output rows: each row's tokens from its inputs, in input order; and the box count."""
    n = len(batch)
    entries: list[list[tuple[int, int, str, str]]] = [[] for _ in inputs]
    for i, (_, parts) in enumerate(batch):
        for k, line, image_id, string in parts:
            entries[k].append((i, line, image_id, string))
    blocks, images = [], []
    for k, rows in enumerate(entries):
        if rows:
            blocks.append(parse_prediction_strings(inputs[k], arrow_strings([r[2] for r in rows]),
                                                   arrow_strings([r[3] for r in rows]), lines=[r[1] for r in rows]))
            images.append(np.array([r[0] for r in rows], dtype=np.int64))
    tokens = [np.bincount(img, weights=6 * b.boxes_per_row, minlength=n).astype(np.int64)
              for img, b in zip(images, blocks)]
    total = np.sum(tokens, axis=0) if tokens else np.zeros(n, dtype=np.int64)
    row_offsets = np.concatenate([[0], np.cumsum(total + 1)])
    index = np.full(int(row_offsets[-1]), sum(len(b.values) for b in blocks), dtype=np.int64)  # "\n" by default
    before = row_offsets[:-1].copy()  # where the next input's tokens go in each row
    base = 0
    for img, b, count in zip(images, blocks, tokens):
        per_row = 6 * b.boxes_per_row
        start = np.repeat(before[img], per_row) + (np.arange(int(per_row.sum())) -
                                                   np.repeat(np.cumsum(per_row) - per_row, per_row))
        index[start] = b.position + base
        before += count
        base += len(b.values)
    pieces = pa.concat_arrays([b.values for b in blocks] + [arrow_strings(["\n"])])
    return join_rows(arrow_strings([r[0] for r in batch]), pieces, index, row_offsets), int(total.sum()) // 6


def _by_image_id(inputs: list[str], summary: ConcatSummary) -> Iterator[RawRow]:
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


def _gather(indexes: list[RowIndex], order: list[str]) -> Iterator[RawRow]:
    files = [open_input(index.path, "rb") for index in indexes]  # a .gz one seeks by decompressing
    try:
        for image_id in order:
            parts = []
            for k, (f, index) in enumerate(zip(files, indexes)):
                at = index.position.get(image_id)
                if at is None:
                    continue
                f.seek(index.offsets[at])
                row = _parse_line(f.readline(), index.path, index.lines[at])
                parts.append((k, index.lines[at], row[0], row[1]))
            yield image_id, parts
    finally:
        for f in files:
            f.close()


def _by_position(inputs: list[str], summary: ConcatSummary) -> Iterator[RawRow]:
    counts = [sum(1 for _ in _iter_lines(p)) for p in inputs]
    if len(set(counts)) > 1:
        sizes = ", ".join(f"{os.path.basename(p)} {n}" for p, n in zip(inputs, counts))
        raise OIDInputError(f"--by-position needs inputs with as many rows; rows: {sizes}", inputs[0])
    summary.images = counts[0]
    return _lockstep(inputs, summary)


def _lockstep(inputs: list[str], summary: ConcatSummary) -> Iterator[RawRow]:
    for rows in zip(*(_iter_lines(p) for p in inputs)):
        ids = {image_id for _, _, image_id, _ in rows}
        summary.mismatched += len(ids) > 1
        yield rows[0][2], [(k, line, image_id, s) for k, (_, line, image_id, s) in enumerate(rows)]


# ----------------------------------------------------------------------------------------------------------
# split_csv.py: a submission in parts of so many rows


def split_submission(input_csv: str, rows_per_part: int = SPLIT_ROWS, parts: int = SPLIT_PARTS,
                     output_dir: str | None = None, block_size: int = DEFAULT_BLOCK_SIZE,
                     progress: bool = True) -> list[tuple[str, int]]:
    """Split a predictions CSV into `{stem}_part_{k}.csv` files of `rows_per_part` data rows each, in order.

    At least `parts` files are written (header-only ones when the input is short, so that the names later
    steps read exist); more when the input needs them (the original dropped the rows past part `parts` and
    past row 99,999). Rows are copied verbatim and checked by the shared reader; every part is written under
    a temporary name and all are renamed at the end. output_dir: default the input's folder. Returns
    (path, rows) per part.
    """
    if rows_per_part < 1:
        raise ValueError(f"rows_per_part must be at least 1, got {rows_per_part}")
    name = os.path.basename(input_csv)
    suffix = ".csv.gz" if is_gzip(input_csv) else ".csv"  # the parts are compressed as the input is
    stem = name[: -len(suffix)] if name.endswith(suffix) else os.path.splitext(name)[0]
    folder = os.path.dirname(os.path.abspath(input_csv)) if output_dir is None else output_dir
    written: list[tuple[str, int]] = []
    size = os.path.getsize(input_csv)
    with contextlib.ExitStack() as stack, tqdm(total=size, unit="B", unit_scale=True, desc="splitting",
                                               disable=not progress) as bar:
        outputs: list = []

        def part_file(k: int):
            while len(outputs) <= k:
                path = os.path.join(folder, f"{stem}_part_{len(outputs)}{suffix}")
                f = stack.enter_context(atomic_output(path))
                f.write((",".join(HEADER) + "\n").encode())
                outputs.append(f)
                written.append((path, 0))
            return outputs[k]

        for block in iter_prediction_blocks(input_csv, block_size, progress=bar.update):
            part = (block.first + np.arange(len(block))) // rows_per_part
            for k in np.unique(part).tolist():
                rows = np.flatnonzero(part == k)
                a, n = int(rows[0]), len(rows)
                part_file(k).write(csv_rows(block.ids.slice(a, n), block.strings.slice(a, n)))
                written[k] = (written[k][0], written[k][1] + n)
        part_file(parts - 1)
        # files close, then the temporary names are renamed (ExitStack unwinds in reverse order)
    if len(written) > parts:
        log.warning("%s needed %d parts of %d rows (more than the %d asked for)", input_csv, len(written),
                    rows_per_part, parts)
    return written


# ----------------------------------------------------------------------------------------------------------
# final_prediction_ensemble.py: the final two-model ensemble, the parts put back together, low scores deleted


@dataclass
class CombineSummary:
    """Counts of one combination of parts."""

    rows: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        return f"{sum(self.rows.values())} images from {len(self.rows)} parts"


def combine_parts(inputs: list[str], output_csv: str, block_size: int = DEFAULT_BLOCK_SIZE,
                  progress: bool = True) -> CombineSummary:
    """The rows of several predictions CSVs one after the other, verbatim (the original's combine_final_parts).

    Rows are checked by the shared reader; an ImageId in more than one row is an error (the original wrote
    it twice).
    """
    if not inputs:
        raise ValueError("nothing to combine")
    summary = CombineSummary()
    seen: dict[str, tuple[int, int]] = {}  # ImageId -> (input, data row)
    with atomic_output(output_csv) as out, \
            tqdm(total=len(inputs), unit="files", desc="combining", disable=not progress) as bar:
        out.write((",".join(HEADER) + "\n").encode())
        for k, path in enumerate(inputs):
            summary.rows[path] = 0
            for block in iter_prediction_blocks(path, block_size):
                for i, image_id in enumerate(block.ids.to_pylist()):
                    if image_id in seen:
                        j, row = seen[image_id]
                        raise block.error(i, f"ImageId {image_id!r} repeated (first in {inputs[j]}, row "
                                              f"{locate_row(inputs[j], row)})")
                    seen[image_id] = (k, block.first + i)
                out.write(csv_rows(block.ids, block.strings))
                summary.rows[path] += len(block)
            bar.update(1)
    log.info("%s: %s", output_csv, summary.line())
    return summary


@dataclass
class FinalEnsembleSummary:
    """Counts of one final ensemble."""

    images: int = 0
    boxes_in: int = 0
    boxes_out: int = 0
    truncated_images: int = 0
    missing: dict[str, int] = field(default_factory=dict)  # input -> images of the output it lacks
    mismatched: int = 0  # by position: rows whose ImageIds differ between files

    def line(self) -> str:
        text = f"{self.images} images, {self.boxes_in} boxes in, {self.boxes_out} written"
        if self.truncated_images:
            text += f" ({self.truncated_images} images cut to the box limit)"
        gaps = ", ".join(f"{os.path.basename(p)} lacks {n}" for p, n in self.missing.items() if n)
        if gaps:
            text += f"; {gaps}"
        if self.mismatched:
            text += f"; {self.mismatched} rows paired by position have different ImageIds"
        return text


def final_ensemble(inputs: list[str], output_csv: str, iou_thr: float = FINAL_IOU_THR, type: str = "avg",
                   limit_boxes: int | None = None, by_position: bool = False, original_weights: bool = False,
                   batch_images: int = 256, progress: bool = True) -> FinalEnsembleSummary:
    """Merge several predictions CSVs (all levels) into one (the original's create_csv_final_ensemble_predictions).

    Each input is one list of boxes; per image the lists are merged with gujingxiao's merge (boxes/merge.py,
    variant 2019: against a snapshot of the clusters taken before each list), IoU above `iou_thr` with the same
    label, `type` avg, max or mul; every box kept, no clipping; numbers written as Python's str() writes them
    (the original's numpy string array), a space after every box, `id,` for an image without boxes.

    Rows are matched by ImageId (first input's order, then images only in later inputs); by_position pairs the
    k-th rows as the original did, ImageId from the first input (inputs must have as many rows). Every list
    weighs 1 / len(inputs); original_weights: 1 / the number of inputs with boxes for that image, as the
    original (which skipped empty rows when counting), so a box's score depended on whether the other inputs
    found anything in the image. limit_boxes: keep the best so many boxes of an image (highest score first;
    the original had this commented out).
    """
    if not inputs:
        raise ValueError("nothing to ensemble")
    if type not in CONF_TYPES:
        raise ValueError(f"unknown merge type {type!r}, expected one of {', '.join(CONF_TYPES)}")
    summary = FinalEnsembleSummary(missing={p: 0 for p in inputs})
    rows = _paired_predictions(inputs, summary) if by_position else iter_aligned_predictions(inputs)
    with atomic_output(output_csv) as out, \
            tqdm(unit="images", desc="ensembling", disable=not progress) as bar:
        out.write((",".join(HEADER) + "\n").encode())
        while batch := list(itertools.islice(rows, batch_images)):
            out.write(_final_batch_text(inputs, batch, iou_thr, type, limit_boxes, original_weights, summary))
            bar.update(len(batch))
    if summary.mismatched:
        log.warning("%d rows paired by position have different ImageIds; the first input's was written",
                    summary.mismatched)
    log.info("%s: %s", output_csv, summary.line())
    return summary


def _paired_predictions(inputs: list[str], summary: FinalEnsembleSummary
                        ) -> Iterator[tuple[str, list[ImagePredictions | None]]]:
    for rows in itertools.zip_longest(*(iter_predictions(p) for p in inputs)):
        if any(r is None for r in rows):
            short = [p for p, r in zip(inputs, rows) if r is None]
            raise OIDInputError(f"pairing rows by position needs inputs with as many rows; {short[0]} has fewer "
                                f"than {next(p for p, r in zip(inputs, rows) if r is not None)}", short[0])
        summary.mismatched += len({r.image_id for r in rows}) > 1
        yield rows[0].image_id, list(rows)


def _final_batch_text(inputs: list[str], batch: list[tuple[str, list[ImagePredictions | None]]], iou_thr: float,
                      type: str, limit_boxes: int | None, original_weights: bool,
                      summary: FinalEnsembleSummary) -> memoryview:
    image, list_index, weights, mids, scores, boxes = [], [], [], [], [], []
    for i, (_, preds) in enumerate(batch):
        for k, p in enumerate(preds):
            if p is None:
                summary.missing[inputs[k]] += 1
        present = [(k, p) for k, p in enumerate(preds) if p is not None and len(p.scores)]
        weight = 1 / (max(len(present), 1) if original_weights else len(inputs))
        for k, p in present:
            n = len(p.scores)
            image.append(np.full(n, i, dtype=np.int64))
            list_index.append(np.full(n, k, dtype=np.int64))
            weights.append(np.full(n, weight))
            mids.append(p.mids)
            scores.append(p.scores)
            boxes.append(p.boxes)
    ids = arrow_strings([image_id for image_id, _ in batch])
    summary.images += len(batch)
    if not image:
        return join_rows(ids, arrow_strings(["\n"]), np.zeros(len(batch), dtype=np.int64),
                         np.arange(len(batch) + 1))
    names, labels = np.unique(np.concatenate(mids), return_inverse=True)
    merged = BoxBatch(np.concatenate(image), np.concatenate(list_index), labels.astype(np.int64),
                      np.concatenate(scores), np.concatenate(boxes), np.concatenate(weights))
    out_image, out_rows = merge_batch(merged, iou_thr, type, "2019")
    summary.boxes_in += len(merged)
    if limit_boxes is not None:
        out_image, out_rows = _limit(out_image, out_rows, limit_boxes, summary)
    summary.boxes_out += len(out_rows)
    return _repr_rows(ids, out_image, out_rows, names)


def _limit(image: np.ndarray, rows: np.ndarray, limit: int, summary: FinalEnsembleSummary
           ) -> tuple[np.ndarray, np.ndarray]:
    """Images with more than `limit` rows keep their `limit` best, highest score first (ties: first one)."""
    counts = np.bincount(image)
    over = counts[image] > limit
    if not over.any():
        return image, rows
    summary.truncated_images += int((counts > limit).sum())
    order = np.lexsort((-rows[:, 1], image))  # by image, then score, highest first; stable
    rank = np.empty(len(rows), dtype=np.int64)
    firsts = np.cumsum(counts) - counts
    rank[order] = np.arange(len(rows)) - firsts[image[order]]
    position = np.arange(len(rows)) - firsts[image]
    key = np.where(over, rank, position)
    keep = np.flatnonzero(~over | (rank < limit))
    keep = keep[np.lexsort((key[keep], image[keep]))]
    return image[keep], rows[keep]


def _arrow_mask(mask: np.ndarray) -> pa.Array:
    """A numpy boolean array as an Arrow one (without pandas)."""
    return pa.Array.from_buffers(pa.bool_(), len(mask), [None, pa.py_buffer(np.packbits(mask, bitorder="little"))])


def repr_strings(values: np.ndarray) -> pa.Array:
    """float64 values as Python's repr()/str() writes them (shortest round trip), as Arrow strings.

    Arrow's cast writes the same digits for magnitudes in [1e-4, 1e9), without the ".0" of whole numbers,
    which is added; zeros are set directly; the other values (tiny, huge, NaN, infinite: rare here) go
    through Python.
    """
    values = np.ascontiguousarray(values, dtype=np.float64)
    text = pc.cast(pa.Array.from_buffers(pa.float64(), len(values), [None, pa.py_buffer(values)]), pa.string())
    magnitude = np.abs(values)
    with np.errstate(invalid="ignore"):
        usual = (magnitude >= 1e-4) & (magnitude < 1e9)
    whole = usual & (values == np.floor(values))
    zero = values == 0
    empty, point_zero, plus_zero, minus_zero = arrow_strings(["", ".0", "0.0", "-0.0"])
    if whole.any():
        text = pc.if_else(_arrow_mask(whole), pc.binary_join_element_wise(text, point_zero, empty), text)
    if zero.any():
        text = pc.if_else(_arrow_mask(zero), plus_zero, text)
        negative = zero & np.signbit(values)
        if negative.any():
            text = pc.if_else(_arrow_mask(negative), minus_zero, text)
    odd = ~usual & ~zero
    if odd.any():
        text = pc.replace_with_mask(text, _arrow_mask(odd), arrow_strings([repr(v) for v in values[odd].tolist()]))
    return text


def _repr_rows(ids: pa.Array, image: np.ndarray, rows: np.ndarray, names: np.ndarray) -> memoryview:
    """CSV text of merged rows `[label, score, x1, y1, x2, y2]`: `mid score x1 y1 x2 y2 ` per box, numbers as
    repr() writes them; image (K,) increasing, indexing ids."""
    n_images, k = len(ids), len(rows)
    numbers = repr_strings(rows[:, 1:].ravel())
    labels = rows[:, 0].astype(np.int64)
    per_row = 6 * np.bincount(image, minlength=n_images)
    row_offsets = np.concatenate([[0], np.cumsum(per_row + 1)])
    index = np.empty(int(row_offsets[-1]), dtype=np.int64)
    rank = np.arange(k) - np.repeat(np.cumsum(per_row // 6) - per_row // 6, per_row // 6)
    at = row_offsets[:-1][image] + 6 * rank
    n_names = len(names)
    index[at] = labels
    for j in range(5):
        index[at + 1 + j] = n_names + 5 * np.arange(k) + j
    index[row_offsets[1:] - 1] = n_names + 5 * k
    pieces = pa.concat_arrays([arrow_strings(names.tolist()), numbers, arrow_strings(["\n"])])
    return join_rows(ids, pieces, index, row_offsets)
