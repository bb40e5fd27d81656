"""Kaggle prediction CSVs: `ImageId,PredictionString`, one row per image.

A prediction string holds 6 tokens per box: `label score XMin YMin XMax YMax` (note: not the annotation
CSVs' XMin,XMax,YMin,YMax order), coordinates normalised to [0, 1]. An image without boxes has an empty
string. The originals wrote `{MID} {score:.6f} {xmin:.4f} {ymin:.4f} {xmax:.4f} {ymax:.4f} ` per box, with a
trailing space.

One reader serves every stage (expansion, ensembling, the 2019 helpers, the evaluation):
`iter_prediction_blocks` streams a file in blocks of rows with Arrow's CSV reader (memory bounded by the block
size, not the file), splits each block's strings into tokens on ASCII whitespace (runs, leading and trailing
spaces allowed) and parses the numbers, all vectorised (`PredictionBlock`). A bad row raises OIDInputError
naming the file, the line and the value: a token count that is not a multiple of 6, a score or coordinate that
is not a number (or not finite, unless allowed), an empty ImageId, a row of 3 or more columns, a missing
header. Files Arrow's reader refuses (a row holding only an ImageId, a quoted newline, bad UTF-8) are read on,
from the row where it stopped, with the csv module, which reads odd rows as pandas did in the originals
(blank lines skipped, an ImageId alone means no boxes) and names the bad ones. Labels are checked by the
callers, who know which are allowed. `iter_predictions` gives the same data image by image.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from oid_retinanet.errors import OIDInputError
from oid_retinanet.files import atomic_output, native_input, open_input, reading
from oid_retinanet.oid.classes import MID_PATTERN, ClassList

log = logging.getLogger(__name__)

HEADER = ("ImageId", "PredictionString")
NUMBER_NAMES = ("score", "XMin", "YMin", "XMax", "YMax")
DEFAULT_BLOCK_SIZE = 2 << 20  # bytes of CSV read and parsed at a time (memory grows with it, speed does not)


# ----------------------------------------------------------------------------------------------------------
# Arrow <-> numpy without pandas (pa.array() and Array.to_numpy() import it: a quarter of a second at start)


def arrow_ints(values: np.ndarray) -> pa.Array:
    """An int64 (or int32) numpy array as an Arrow array, without a copy."""
    values = np.ascontiguousarray(values)
    kind = {np.dtype(np.int64): pa.int64(), np.dtype(np.int32): pa.int32()}[values.dtype]
    return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(values)])


def to_numpy(values: pa.Array, nulls: bool = False) -> np.ndarray:
    """A numeric or boolean Arrow array as numpy (read-only when it shares Arrow's buffer).

    Nulls are an error unless `nulls`: then their slots hold whatever the data buffer has.
    """
    if values.null_count and not nulls:
        raise ValueError("nulls")
    if pa.types.is_boolean(values.type):
        return to_numpy(pc.cast(values, pa.int8())).view(bool)
    data = np.frombuffer(values.buffers()[1], dtype=values.type.to_pandas_dtype())
    return data[values.offset:values.offset + len(values)]


def arrow_strings(values: Iterable[str]) -> pa.Array:
    """Python strings as an Arrow string array."""
    encoded = [v.encode("utf-8") for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return pa.Array.from_buffers(pa.large_string(), len(encoded),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]).cast(pa.string())


def value_offsets(strings: pa.Array) -> np.ndarray:
    """(len + 1,) offsets of a string array's values in its data buffer."""
    offsets = strings.buffers()[1]
    dtype = np.int64 if pa.types.is_large_string(strings.type) else np.int32
    return np.frombuffer(offsets, dtype=dtype)[strings.offset:strings.offset + len(strings) + 1]


def string_bytes(strings: pa.Array) -> memoryview:
    """The UTF-8 bytes of all values of a string array, concatenated (no copy)."""
    if len(strings) == 0:
        return memoryview(b"")
    data = strings.buffers()[2]
    off = value_offsets(strings)
    return memoryview(data)[int(off[0]):int(off[-1])] if data is not None else memoryview(b"")


def csv_quoted(values: pa.Array) -> pa.Array:
    """String values quoted as the csv module (and pandas) quote them, where they need it."""
    special = pc.match_substring_regex(values, r'[,"\r\n]')
    if not pc.any(special).as_py():
        return values
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    quoted = []
    for value in values.to_pylist():
        out.seek(0)
        out.truncate()
        writer.writerow([value])
        quoted.append(out.getvalue()[:-1])
    return arrow_strings(quoted)


def csv_rows(ids: pa.Array, strings: pa.Array) -> memoryview:
    """CSV text (UTF-8) of rows `ImageId,PredictionString\\n`, both kept verbatim, quoted where needed."""
    # Arrow scalars taken from an array: pa.scalar() would import pandas
    comma, empty, newline = arrow_strings([",", "", "\n"])
    ended = pc.binary_join_element_wise(csv_quoted(strings), empty, newline)
    return string_bytes(pc.binary_join_element_wise(csv_quoted(ids), ended, comma))


# ----------------------------------------------------------------------------------------------------------
# Parsed blocks


@dataclass
class PredictionBlock:
    """A block of rows of a predictions CSV, split into tokens, numbers parsed.

    ids, strings: the rows' ImageIds and prediction strings (Arrow string arrays, verbatim). values: every
    whitespace-separated piece of the strings (some empty); position: (6 * boxes,) indices into values of the
    real tokens, row by row, box by box; boxes_per_row: (rows,); numbers: (boxes, 5) float64 score, x1, y1,
    x2, y2 (XMin, YMin, XMax, YMax; read-only), parsed as Python's float() parses them (correctly rounded).
    first: index of the block's first data row in the file (0-based, blank lines not counted); lines: the file
    line of each row where known (otherwise found again for an error message).
    """

    path: str
    ids: pa.Array
    strings: pa.Array
    values: pa.Array
    position: np.ndarray
    boxes_per_row: np.ndarray
    numbers: np.ndarray
    first: int = 0
    lines: Sequence[int] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_boxes(self) -> int:
        return len(self.numbers)

    @cached_property
    def box_row(self) -> np.ndarray:
        """(boxes,) the row of every box."""
        return np.repeat(np.arange(len(self.boxes_per_row)), self.boxes_per_row)

    @cached_property
    def row_start(self) -> np.ndarray:
        """(rows,) the index of each row's first box."""
        return np.cumsum(self.boxes_per_row) - self.boxes_per_row

    def column(self, k: int) -> pa.Array:
        """Token k of every box (0 the label, 1 the score, 2-5 the coordinates), as written."""
        return self.values.take(arrow_ints(self.position[k::6]))

    @cached_property
    def mids(self) -> pa.Array:
        """The label of every box (Arrow strings)."""
        return self.column(0)

    def line(self, row: int) -> int:
        """The file line of row `row` of the block (rows not read from a file: data row + 2, after a header)."""
        if self.lines is not None:
            return int(self.lines[row])
        if not os.path.isfile(self.path):
            return self.first + row + 2
        return locate_row(self.path, self.first + row)

    def error(self, row: int, message: str) -> OIDInputError:
        """The error for row `row` of the block, naming the file and its line."""
        return OIDInputError(message, self.path, self.line(row))

    def box_error(self, box: int, message: Callable[[int], str]) -> OIDInputError:
        """The error for box `box` of the block; message(n) words it for the n-th box (1-based) of its row."""
        row = int(self.box_row[box])
        return self.error(row, message(int(box - self.row_start[row]) + 1))


def parse_prediction_strings(path: str, ids: pa.Array, strings: pa.Array, first: int = 0,
                             lines: Sequence[int] | None = None, finite: bool = True) -> PredictionBlock:
    """Tokenize and check rows (ImageIds and prediction strings as Arrow string arrays) of file `path`.

    first, lines: where the rows are in the file (see PredictionBlock). finite: refuse NaN and infinite
    numbers (the evaluation lets them through: the official metric drops what it cannot score).
    """
    # runs of ASCII whitespace separate tokens (the originals split on single spaces and failed on runs);
    # pyarrow's utf8 variant was seen gluing a trailing space to the last token
    lists = pc.ascii_split_whitespace(strings)
    values = pc.list_flatten(lists)
    list_offsets = to_numpy(lists.offsets).astype(np.int64)
    list_offsets -= list_offsets[0]
    piece_offsets = value_offsets(values)
    real = piece_offsets[1:] != piece_offsets[:-1]
    position = np.flatnonzero(real)
    empty = np.flatnonzero(~real)  # few: from leading or trailing whitespace, at most 2 a row
    counts = np.diff(list_offsets) - np.diff(np.searchsorted(empty, list_offsets))
    block = PredictionBlock(path, ids, strings, values, position, counts // 6, np.zeros((0, 5)), first, lines)
    empty_id = np.flatnonzero(to_numpy(pc.binary_length(ids)) == 0) if len(ids) else []
    if len(empty_id):
        raise block.error(int(empty_id[0]), "empty ImageId")
    bad = np.flatnonzero(counts % 6)
    if len(bad):
        raise block.error(int(bad[0]), f"bad prediction string: {counts[bad[0]]} tokens is not a multiple of 6")
    number_tokens = values.take(arrow_ints(position.reshape(-1, 6)[:, 1:].ravel()))
    try:
        numbers = to_numpy(pc.cast(number_tokens, pa.float64())).reshape(-1, 5)
    except pa.ArrowInvalid:
        at = _first_unparsable(number_tokens)
        text = number_tokens[at].as_py()
        raise block.box_error(at // 5, lambda n: f"{NUMBER_NAMES[at % 5]} of box {n} is not a number: {text!r}"
                              ) from None
    if finite:
        ok = np.isfinite(numbers)
        if not ok.all():
            box, k = (int(i) for i in np.argwhere(~ok)[0])
            text = number_tokens[5 * box + k].as_py()
            raise block.box_error(box, lambda n: f"{NUMBER_NAMES[k]} of box {n} is not finite: {text!r}")
    block.numbers = numbers
    return block


def _first_unparsable(tokens: pa.Array) -> int:
    """Index of the first token Arrow cannot parse as a number (Arrow decides: it parsed the rest)."""
    good, bad = 0, len(tokens)  # tokens[:good] parse, tokens[:bad] do not
    while bad - good > 1:
        middle = (good + bad) // 2
        try:
            pc.cast(tokens.slice(0, middle), pa.float64())
            good = middle
        except pa.ArrowInvalid:
            bad = middle
    return bad - 1


# ----------------------------------------------------------------------------------------------------------
# Reading files


def check_header(path: str) -> None:
    """Refuse a file that does not start with the `ImageId,PredictionString` header (spaces around names allowed)."""
    with open_input(path, "rt", newline="", encoding="utf-8-sig") as f:
        try:
            header = next(csv.reader(f), None)
        except UnicodeDecodeError:
            raise OIDInputError("not a UTF-8 text CSV", path) from None
        except csv.Error as exc:
            raise OIDInputError(f"bad CSV: {exc}", path, 1) from None
    if header is None:
        raise OIDInputError("file is empty", path)
    if tuple(h.strip() for h in header) != HEADER:
        raise OIDInputError(f"expected header {','.join(HEADER)}, got {','.join(header)}", path, 1)


def iter_prediction_rows(path: str) -> Iterator[tuple[int, str, str]]:
    """Stream (line number, ImageId, PredictionString) with the csv module (slow; the reader's fallback).

    The header is checked; blank lines are skipped and an ImageId alone means no boxes, as pandas read them in
    the originals; ImageIds stay strings.
    """
    check_header(path)
    with open_input(path, "rt", newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        next(reader, None)
        line = reader.line_num
        try:
            for row in reader:
                start, line = line + 1, reader.line_num
                if not row or row == [""]:
                    continue
                if len(row) > 2:
                    raise OIDInputError(f"expected 2 columns ImageId,PredictionString, got {len(row)}", path, start)
                if not row[0]:
                    raise OIDInputError("empty ImageId", path, start)
                yield start, row[0], row[1] if len(row) == 2 else ""
        except UnicodeDecodeError:
            raise OIDInputError("not a UTF-8 text CSV", path, reader.line_num + 1) from None
        except csv.Error as exc:
            raise OIDInputError(f"bad CSV: {exc}", path, reader.line_num) from None


def locate_row(path: str, index: int) -> int:
    """The file line of data row `index` (0-based, blank lines not counted); for error messages only."""
    for k, (line, _, _) in enumerate(iter_prediction_rows(path)):
        if k == index:
            return line
    return -1


class _ArrowRefused(Exception):
    """Arrow's CSV reader refused the rest of the file; the csv module reads on from there."""


def _arrow_row_blocks(path: str, block_size: int, progress: Callable[[int], None] | None
                      ) -> Iterator[tuple[pa.Array, pa.Array]]:
    # a native file (not a Python file object, which pyarrow's reader may release from its own thread); one
    # thread: read-ahead costs memory and, on few cores, time
    with native_input(path) as (source, raw):
        try:
            reader = pacsv.open_csv(
                source,
                read_options=pacsv.ReadOptions(block_size=block_size, skip_rows=1, column_names=list(HEADER),
                                               use_threads=False),
                parse_options=pacsv.ParseOptions(newlines_in_values=False),
                convert_options=pacsv.ConvertOptions(column_types={h: pa.string() for h in HEADER},
                                                     strings_can_be_null=False, quoted_strings_can_be_null=False))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise _ArrowRefused(str(exc)) from None
        done = 0
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise _ArrowRefused(str(exc)) from None
            if progress is not None:
                progress(raw.tell() - done)
                done = raw.tell()
            if batch.num_rows:
                yield batch.column(0), batch.column(1)


def _csv_row_blocks(path: str, block_size: int, skip: int, progress: Callable[[int], None] | None
                    ) -> Iterator[tuple[pa.Array, pa.Array, list[int]]]:
    ids: list[str] = []
    strings: list[str] = []
    lines: list[int] = []
    size = 0
    for k, (line, image_id, string) in enumerate(iter_prediction_rows(path)):
        if k < skip:
            continue
        ids.append(image_id)
        strings.append(string)
        lines.append(line)
        size += len(image_id) + len(string) + 2
        if size >= block_size:
            if progress is not None:
                progress(size)
            yield arrow_strings(ids), arrow_strings(strings), lines
            ids, strings, lines, size = [], [], [], 0
    if ids:
        if progress is not None:
            progress(size)
        yield arrow_strings(ids), arrow_strings(strings), lines


def iter_prediction_blocks(path: str | os.PathLike, block_size: int = DEFAULT_BLOCK_SIZE, finite: bool = True,
                           max_rows: int | None = None, progress: Callable[[int], None] | None = None
                           ) -> Iterator[PredictionBlock]:
    """Stream a Kaggle predictions CSV as PredictionBlocks of about `block_size` bytes of text each.

    finite: refuse NaN and infinite numbers; max_rows: at most this many rows a block; progress: called with
    the bytes read (approximately). Bad input raises OIDInputError naming the file, the line and the value.
    """
    path = os.fspath(path)
    with reading(path):  # a damaged .gz input: one error naming it
        check_header(path)
        first = 0

        def blocks(ids: pa.Array, strings: pa.Array, lines: list[int] | None) -> Iterator[PredictionBlock]:
            step = max_rows or len(ids)
            for a in range(0, len(ids), step):
                part = None if lines is None else lines[a:a + step]
                yield parse_prediction_strings(path, ids.slice(a, step), strings.slice(a, step), first + a, part,
                                               finite)

        try:
            for ids, strings in _arrow_row_blocks(path, block_size, progress):
                yield from blocks(ids, strings, None)
                first += len(ids)
            return
        except _ArrowRefused as exc:
            log.info("reading %s with the csv module from data row %d on (%s)", path, first + 1, str(exc).strip())
        for ids, strings, lines in _csv_row_blocks(path, block_size, first, progress):
            yield from blocks(ids, strings, lines)
            first += len(ids)


# ----------------------------------------------------------------------------------------------------------
# Image by image


@dataclass
class ImagePredictions:
    """The boxes of one image: `boxes` (N, 4) as x1, y1, x2, y2 normalised; `scores` (N,); `mids` (N,)."""

    image_id: str
    mids: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray


def check_labels_and_boxes(block: PredictionBlock, classes: ClassList | None = None,
                           check_range: bool = True) -> np.ndarray:
    """Check every box's label and coordinates; return the labels as a numpy string array.

    Labels must be in `classes` (None: look like a MID); with check_range coordinates must lie in [0, 1];
    always XMin <= XMax and YMin <= YMax. The error names the first bad box's row and its first problem.
    """
    encoded = block.mids.dictionary_encode()
    uniques = encoded.dictionary.to_pylist()
    codes = to_numpy(encoded.indices).astype(np.int64)
    mids = np.array(uniques, dtype=str)[codes] if uniques else np.zeros(0, dtype=str)
    if classes is not None:
        label_ok = np.array([m in classes for m in uniques], dtype=bool)
    else:
        label_ok = np.array([bool(MID_PATTERN.match(m)) for m in uniques], dtype=bool)
    boxes = block.numbers[:, 1:]
    problems = [~label_ok[codes] if len(uniques) else np.zeros(0, dtype=bool)]
    if check_range:
        problems += [(boxes[:, k] < 0) | (boxes[:, k] > 1) for k in range(4)]
    problems.append((boxes[:, 0] > boxes[:, 2]) | (boxes[:, 1] > boxes[:, 3]))
    bad = np.stack(problems, axis=1)
    if not bad.any():
        return mids
    box = int(np.flatnonzero(bad.any(axis=1))[0])
    kind = int(np.flatnonzero(bad[box])[0])
    mid = uniques[codes[box]]
    if kind == 0 and classes is not None:
        raise block.box_error(box, lambda n: f"unknown label {mid!r} in box {n}")
    if kind == 0:
        raise block.box_error(box, lambda n: f"bad label {mid!r} in box {n} (expected a MID like /m/0abc12)")
    if kind == len(problems) - 1:
        tokens = " ".join(block.values.take(arrow_ints(block.position[6 * box:6 * box + 6])).to_pylist())
        raise block.box_error(box, lambda n: f"box {n} has XMin > XMax or YMin > YMax: {tokens}")
    text = block.values[int(block.position[6 * box + 1 + kind])].as_py()
    raise block.box_error(box, lambda n: f"{NUMBER_NAMES[kind]} of box {n} = {text} is outside [0, 1]")


def iter_predictions(path: str | os.PathLike, chunk_rows: int | None = None, classes: ClassList | None = None,
                     check_range: bool = True, block_size: int = DEFAULT_BLOCK_SIZE) -> Iterator[ImagePredictions]:
    """Stream parsed predictions image by image (memory bounded by the block size; at most `chunk_rows` rows
    parsed at a time when given). Labels and boxes are checked as check_labels_and_boxes does."""
    for block in iter_prediction_blocks(path, block_size, max_rows=chunk_rows):
        mids = check_labels_and_boxes(block, classes, check_range)
        numbers = block.numbers.copy()
        scores, boxes = numbers[:, 0], numbers[:, 1:5]
        ends = np.cumsum(block.boxes_per_row)
        starts = ends - block.boxes_per_row
        for image_id, a, b in zip(block.ids.to_pylist(), starts.tolist(), ends.tolist()):
            yield ImagePredictions(image_id, mids[a:b], scores[a:b], boxes[a:b])


def iter_aligned_predictions(paths: Sequence[str], check_range: bool = True
                             ) -> Iterator[tuple[str, list[ImagePredictions | None]]]:
    """Rows of several prediction CSVs matched by ImageId: (ImageId, one ImagePredictions or None per file).

    Images come in the first file's order, then those only in later files in the order they are first met.
    Files in the same order stream; otherwise rows wait in memory until their ImageId comes up. An ImageId
    repeated within a file is an error; rows are checked as iter_predictions checks them.
    """
    iters = [iter_predictions(p, check_range=check_range) for p in paths]
    pending: list[dict[str, ImagePredictions]] = [{} for _ in paths]
    done = [False] * len(paths)
    seen: list[set[str]] = [set() for _ in paths]

    def read(k: int) -> ImagePredictions | None:
        row = next(iters[k], None)
        if row is None:
            done[k] = True
        elif row.image_id in seen[k]:
            raise OIDInputError(f"ImageId {row.image_id!r} appears twice", paths[k])
        else:
            seen[k].add(row.image_id)
        return row

    def take(k: int, image_id: str) -> ImagePredictions | None:
        if image_id in pending[k]:
            return pending[k].pop(image_id)
        while not done[k]:
            row = read(k)
            if row is None:
                break
            if row.image_id == image_id:
                return row
            pending[k][row.image_id] = row
        return None

    while (first := read(0)) is not None:
        yield first.image_id, [first] + [take(k, first.image_id) for k in range(1, len(paths))]
    for k in range(1, len(paths)):
        while not done[k]:
            row = read(k)
            if row is not None:
                pending[k][row.image_id] = row
        for image_id in list(pending[k]):
            yield image_id, [None] * k + [pending[k].pop(image_id)] + [take(j, image_id)
                                                                          for j in range(k + 1, len(paths))]


# ----------------------------------------------------------------------------------------------------------
# Writing


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
    with atomic_output(path, "w", encoding="utf-8", newline="") as f:
        f.write(",".join(HEADER) + "\n")
        for image_id, string in rows:
            f.write(f"{image_id},{string}\n")
            n += 1
    return n
