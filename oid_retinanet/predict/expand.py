"""Stage 5: add parent-class boxes to a Kaggle predictions CSV through the label hierarchy.

For every box, one copy per parent class (label replaced, score and coordinates kept), then, per image and
parent class, greedy NMS over those copies (boxes/nms.py). The output row holds the input's boxes (unless
`return_only_new`), then the kept parent boxes grouped by parent MID in sorted order, each group by score,
highest first. Tokens are copied verbatim from the input, so numbers keep their text; every box is followed
by a space, and an image without boxes is written `id,`.

The originals (ZFTurbo 2018 `create_higher_level_predictions_from_level_1_predictions_csv.py`, gujingxiao
2019 `create_higher_level_predctions.py`) are reproduced exactly by default, quirks included:

- parents are looked up by display name. A box's MID is named through the label list (the 500-class list);
  that name's ancestors come from a hierarchy JSON whose nodes are named through a second list (2018: the v4
  600 hierarchy and the v4 class list; 2019: the 2019 hierarchy and the 2019 list itself); an ancestor is
  kept if its name is in the label list, and turned back into a MID there (the row read last wins). Where
  the label list names two MIDs alike (2018: Training bench and Bench are both "Bench", Computer mouse and
  Mouse both "Mouse"), both get the parents of the name: Training bench boxes gain Furniture, computer mice
  gain Animal;
- NMS threshold 0.75 (2018) or 0.9 (2019), IoU with the pixel '+1' on normalised coordinates, so almost
  every two boxes of a parent class overlap and only the best survives.

`corrected` parents are keyed by MID (the ancestors of the box's own MID in the hierarchy that are in the
label list) and the IoU has no '+1'.

Large files stream in blocks of rows (memory bounded by the block size, not the file) and everything inside a
block is vectorised: tokens, the (box, parent) pairs and the NMS of every (image, parent) group at once.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from tqdm import tqdm

from oid_retinanet.boxes.nms import batched_nms
from oid_retinanet.errors import OIDInputError
from oid_retinanet.files import atomic_path
from oid_retinanet.oid.classes import ClassList, read_class_descriptions
from oid_retinanet.oid.hierarchy import Hierarchy
from oid_retinanet.oid.predictions import HEADER

log = logging.getLogger(__name__)

VARIANTS = ("2018", "2019")
# The originals' NMS thresholds for the parent boxes.
DEFAULT_IOU_THR = {"2018": 0.75, "2019": 0.9}
DEFAULT_BLOCK_SIZE = 2 << 20  # bytes of CSV read and processed at a time (memory grows with it, speed does not)

# The numbers we accept: plain decimals (the originals' float() also took 'nan', 'inf', '1_0').
# Arrow parses them as Python's float() does (correctly rounded).
_NUMBER_NAMES = ("score", "XMin", "YMin", "XMax", "YMax")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def arrow_ints(values: np.ndarray) -> pa.Array:
    """An int64 (or int32) numpy array as an Arrow array, without a copy.

    pa.array() would import pandas (a quarter of a second) to check its argument's type.
    """
    values = np.ascontiguousarray(values)
    kind = {np.dtype(np.int64): pa.int64(), np.dtype(np.int32): pa.int32()}[values.dtype]
    return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(values)])


def to_numpy(values: pa.Array, nulls: bool = False) -> np.ndarray:
    """A numeric or boolean Arrow array as numpy (Array.to_numpy() would import pandas).

    Nulls are an error unless `nulls`: then their slots hold whatever the data buffer has.
    """
    if values.null_count and not nulls:
        raise ValueError("nulls")
    if pa.types.is_boolean(values.type):
        return to_numpy(pc.cast(values, pa.int8())).view(bool)
    data = np.frombuffer(values.buffers()[1], dtype=values.type.to_pandas_dtype())
    return data[values.offset:values.offset + len(values)]


def arrow_strings(values: Iterable[str]) -> pa.Array:
    """Python strings as an Arrow string array (see arrow_ints)."""
    encoded = [v.encode("utf-8") for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return pa.Array.from_buffers(pa.large_string(), len(encoded),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]).cast(pa.string())


# ----------------------------------------------------------------------------------------------------------
# Parent tables


@dataclass(frozen=True)
class ParentTable:
    """For every label a prediction may carry, the MIDs of the parent boxes the expansion adds for it.

    Arrays for vectorised joins: `parent_mids` is sorted (the order in which parent groups are written), and
    the parents of child_mids[c] are parent_mids[index[offsets[c]:offsets[c + 1]]].
    """

    child_mids: tuple[str, ...]
    parent_mids: tuple[str, ...]
    offsets: np.ndarray
    index: np.ndarray
    source: str = "<memory>"
    _children: pa.Array = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_children", arrow_strings(self.child_mids))

    @classmethod
    def from_mapping(cls, parents: dict[str, Iterable[str]], source: str = "<memory>") -> ParentTable:
        """Build from child MID -> parent MIDs (every possible label a key, possibly with no parents)."""
        children = tuple(parents)
        lists = [sorted(set(parents[c])) for c in children]
        parent_mids = tuple(sorted({p for ps in lists for p in ps}))
        where = {p: i for i, p in enumerate(parent_mids)}
        counts = np.array([len(ps) for ps in lists], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        index = np.array([where[p] for ps in lists for p in ps], dtype=np.int64)
        return cls(children, parent_mids, offsets, index, source)

    def parents(self, mid: str) -> list[str]:
        """The parent MIDs added for a box of `mid`, sorted."""
        try:
            c = self.child_mids.index(mid)
        except ValueError:
            raise OIDInputError(f"unknown label {mid!r}", self.source) from None
        return [self.parent_mids[i] for i in self.index[self.offsets[c]:self.offsets[c + 1]]]

    def as_dict(self) -> dict[str, list[str]]:
        """child MID -> parent MIDs."""
        return {m: self.parents(m) for m in self.child_mids}

    def child_index(self, mids: pa.Array) -> np.ndarray:
        """Index into child_mids of each MID (-1 where unknown)."""
        found = pc.index_in(mids, value_set=self._children)
        missing = to_numpy(pc.is_null(found))
        return np.where(missing, -1, to_numpy(found, nulls=True)).astype(np.int64)


def _load_tree(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            tree = json.load(f)
    except json.JSONDecodeError as exc:
        raise OIDInputError(f"not valid JSON: {exc}", path) from None
    if not isinstance(tree, dict) or "LabelName" not in tree:
        raise OIDInputError("hierarchy root has no LabelName", path)
    return tree


def _ancestor_names_by_path(tree: dict, names: ClassList, source: str) -> dict[str, set[str]]:
    """Display name -> the names of its ancestors along every path where a node of that name occurs.

    The originals' `get_parents_labels`: Subcategory edges only, the root excluded, nodes named through
    `names` (so two MIDs with one name pool their ancestors).
    """
    ancestors: dict[str, set[str]] = {}

    def name(node: dict) -> str:
        mid = node.get("LabelName") if isinstance(node, dict) else None
        if mid is None:
            raise OIDInputError("a Subcategory entry has no LabelName", source)
        if mid not in names:
            raise OIDInputError(f"hierarchy node {mid} has no display name in {names.source}", source)
        return names.name(mid)

    stack = [(top, [name(top)]) for top in tree.get("Subcategory", ())]
    while stack:
        node, path = stack.pop()
        for child in node.get("Subcategory", ()):
            child_name = name(child)
            ancestors.setdefault(child_name, set()).update(path)
            stack.append((child, path + [child_name]))
    return ancestors


def original_parent_table(labels: ClassList, tree: dict, tree_names: ClassList,
                          source: str = "<hierarchy>") -> ParentTable:
    """The originals' name-keyed parents of every label (see the module docstring).

    labels: the list predictions use (500 classes); tree, tree_names: the hierarchy and the list naming its
    nodes (2018: the v4 hierarchy and class list; 2019: the 2019 hierarchy and `labels` itself).
    """
    by_name = _ancestor_names_by_path(tree, tree_names, source)
    label_names = set(labels.names)
    unnamed = sorted({labels.name(m) for m in labels.mids} - set(tree_names.names))
    if unnamed:
        # the original raised KeyError on the first such box; they can have no parents
        log.warning("%d label names are not in %s and get no parents: %s", len(unnamed), tree_names.source,
                    ", ".join(unnamed[:10]))
    parents = {}
    for mid in dict.fromkeys(labels.mids):
        names = by_name.get(labels.name(mid), ())
        parents[mid] = [labels.mid(n, last_wins=True) for n in names if n in label_names]
    return ParentTable.from_mapping(parents, source)


def corrected_parent_table(labels: ClassList, hierarchy: Hierarchy) -> ParentTable:
    """Parents keyed by MID: every ancestor of the label's own MID in `hierarchy` that is in `labels`."""
    known = set(labels.mids)
    parents = {}
    for mid in dict.fromkeys(labels.mids):
        parents[mid] = [a for a in hierarchy.ancestors(mid) if a in known] if mid in hierarchy else []
    return ParentTable.from_mapping(parents, hierarchy.source)


def load_parent_table(labels_csv: str, hierarchy_json: str, hierarchy_names_csv: str | None = None,
                      corrected: bool = False) -> ParentTable:
    """Read the files and build the parent table.

    labels_csv: class list of the predictions (the 500 classes); hierarchy_json: the hierarchy;
    hierarchy_names_csv: the list naming the hierarchy's nodes for the original lookup (default labels_csv;
    the 2018 original used the v4 class list); corrected: MID-keyed parents instead.
    """
    labels = read_class_descriptions(labels_csv, allow_aliases=True)
    if corrected:
        return corrected_parent_table(labels, Hierarchy.from_json(hierarchy_json))
    names = labels if hierarchy_names_csv is None else read_class_descriptions(hierarchy_names_csv,
                                                                               allow_aliases=True)
    return original_parent_table(labels, _load_tree(hierarchy_json), names, source=hierarchy_json)


# ----------------------------------------------------------------------------------------------------------
# Reading predictions in blocks of rows


@dataclass
class RowBlock:
    """A block of CSV rows: ImageIds and prediction strings as Arrow string arrays.

    first: index of the block's first data row in the file (0-based, blank lines not counted); lines: the
    file line number of each row where the reader knows it (else found again on error).
    """

    ids: pa.Array
    strings: pa.Array
    first: int
    lines: list[int] | None = None


# A block's transform: the CSV text of its rows.
Transform = Callable[[RowBlock], "bytes | memoryview"]


class _UseSlowReader(Exception):
    """Arrow's CSV reader refused the file; the csv module reader decides (and names a bad row)."""


def _check_header(path: str) -> None:
    with open(path, newline="", encoding="utf-8-sig") as f:
        try:
            header = next(csv.reader(f), None)
        except UnicodeDecodeError:
            raise OIDInputError("not a UTF-8 text CSV", path) from None
    if header is None:
        raise OIDInputError("file is empty", path)
    if tuple(h.strip() for h in header) != HEADER:
        raise OIDInputError(f"expected header {','.join(HEADER)}, got {','.join(header)}", path, 1)


def _arrow_blocks(path: str, block_size: int) -> Iterator[RowBlock]:
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=block_size, skip_rows=1, column_names=list(HEADER)),
            parse_options=pacsv.ParseOptions(newlines_in_values=False),
            convert_options=pacsv.ConvertOptions(column_types={h: pa.string() for h in HEADER},
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False))
    except pa.ArrowInvalid as exc:
        raise _UseSlowReader(str(exc)) from None
    first = 0
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except pa.ArrowInvalid as exc:
            raise _UseSlowReader(str(exc)) from None
        if batch.num_rows:
            yield RowBlock(batch.column(0), batch.column(1), first)
            first += batch.num_rows


def _csv_rows(path: str) -> Iterator[tuple[int, str, str]]:
    """(line, ImageId, PredictionString) with the csv module: blank lines skipped, an ImageId alone means
    no boxes (as pandas read them in the originals)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        next(reader, None)
        try:
            for row in reader:
                line = reader.line_num
                if not row or row == [""]:
                    continue
                if len(row) > 2:
                    raise OIDInputError(f"expected 2 columns ImageId,PredictionString, got {len(row)}", path, line)
                if not row[0]:
                    raise OIDInputError("empty ImageId", path, line)
                yield line, row[0], row[1] if len(row) == 2 else ""
        except UnicodeDecodeError:
            raise OIDInputError("not a UTF-8 text CSV", path, reader.line_num + 1) from None
        except csv.Error as exc:
            raise OIDInputError(f"bad CSV: {exc}", path, reader.line_num) from None


def _python_blocks(path: str, block_size: int) -> Iterator[RowBlock]:
    chunk: list[tuple[int, str, str]] = []
    first, size = 0, 0
    for row in _csv_rows(path):
        chunk.append(row)
        size += len(row[1]) + len(row[2])
        if size >= block_size:
            yield _to_block(chunk, first)
            first += len(chunk)
            chunk, size = [], 0
    if chunk:
        yield _to_block(chunk, first)


def _to_block(chunk: list[tuple[int, str, str]], first: int) -> RowBlock:
    return RowBlock(arrow_strings([r[1] for r in chunk]), arrow_strings([r[2] for r in chunk]), first,
                    [r[0] for r in chunk])


def _locate(path: str, row_index: int) -> tuple[int, str]:
    """File line and prediction string of data row `row_index` (for error messages only)."""
    for k, (line, _, string) in enumerate(_csv_rows(path)):
        if k == row_index:
            return line, string
    return -1, ""


# ----------------------------------------------------------------------------------------------------------
# Tokens


@dataclass
class Tokens:
    """The tokens of a block of prediction strings.

    values: every space-separated piece (empty ones included); position: (6 * boxes,) indices into values of
    the real tokens, row by row; boxes_per_row: (rows,).
    """

    values: pa.Array
    position: np.ndarray
    boxes_per_row: np.ndarray

    @property
    def box_row(self) -> np.ndarray:
        """Row of every box."""
        return np.repeat(np.arange(len(self.boxes_per_row)), self.boxes_per_row)

    def column(self, k: int) -> pa.Array:
        """Token k (0 label, 1 score, 2-5 coordinates) of every box."""
        return self.values.take(arrow_ints(self.position[k::6]))


class _BadRow(Exception):
    """Row `index` of the block is bad; `detail` says why when known."""

    def __init__(self, index: int, detail: str | None = None):
        super().__init__(detail)
        self.index = index
        self.detail = detail


def tokenize(strings: pa.Array) -> Tokens:
    """Split prediction strings on spaces (runs, leading and trailing spaces allowed); check 6 per box."""
    lists = pc.split_pattern(strings, " ")
    values = lists.values
    list_offsets = to_numpy(lists.offsets)
    token_offsets = _value_offsets(values)
    real = token_offsets[1:] != token_offsets[:-1]  # empty pieces come from repeated or edge spaces
    position = np.flatnonzero(real)
    empty = np.flatnonzero(~real)  # few: about one a row
    counts = np.diff(list_offsets) - np.diff(np.searchsorted(empty, list_offsets))
    bad = np.flatnonzero(counts % 6)
    if len(bad):
        raise _BadRow(int(bad[0]), f"bad prediction string: {counts[bad[0]]} tokens is not a multiple of 6")
    return Tokens(values, position, counts // 6)


def _value_offsets(strings: pa.Array) -> np.ndarray:
    """(len + 1,) offsets of a string array's values in its data buffer."""
    offsets = strings.buffers()[1]
    dtype = np.int64 if pa.types.is_large_string(strings.type) else np.int32
    return np.frombuffer(offsets, dtype=dtype)[strings.offset:strings.offset + len(strings) + 1]


def _row_problem(string: str, known: ParentTable | None) -> str | None:
    """Why one prediction string is bad (slow, exact), or None; `known`: the labels allowed (None: any)."""
    tokens = string.split()
    if len(tokens) % 6:
        return f"bad prediction string: {len(tokens)} tokens is not a multiple of 6"
    for b in range(0, len(tokens), 6):
        mid = tokens[b]
        if known is not None and mid not in known.child_mids:
            return f"unknown label {mid!r} in box {b // 6 + 1}"
        for name, tok in zip(_NUMBER_NAMES, tokens[b + 1:b + 6]):
            if not _NUMBER.match(tok):
                return f"{name} of box {b // 6 + 1} is not a number: {tok!r}"
    return None


def parse_numbers(tokens: Tokens) -> np.ndarray:
    """(boxes, 5) float64 score, x1, y1, x2, y2, parsed as Python's float() would (correctly rounded)."""
    where = tokens.position.reshape(-1, 6)[:, 1:].ravel()
    try:
        numbers = to_numpy(pc.cast(tokens.values.take(arrow_ints(where)), pa.float64()))
    except pa.ArrowInvalid:
        raise _BadRow(-1) from None
    numbers = numbers.reshape(-1, 5)
    finite = np.isfinite(numbers)
    if not finite.all():
        box, k = (int(i) for i in np.argwhere(~finite)[0])
        text = tokens.values[int(tokens.position[6 * box + k + 1])].as_py()
        raise _BadRow(int(tokens.box_row[box]),
                      f"{_NUMBER_NAMES[k]} of box {_box_in_row(tokens, box)} is not finite: {text!r}")
    return numbers


def _box_in_row(tokens: Tokens, box: int) -> int:
    row = tokens.box_row[box]
    return int(box - (np.cumsum(tokens.boxes_per_row)[row] - tokens.boxes_per_row[row]) + 1)


def join_rows(ids: pa.Array, pieces: pa.Array, index: np.ndarray, row_offsets: np.ndarray) -> memoryview:
    """CSV text of rows `id,` + " ".join(row's pieces): row r's pieces are
    pieces[index[row_offsets[r]:row_offsets[r + 1]]]. Callers end every row with a "\\n" piece, which also
    gives every token its trailing space (`id,a b \\n`) and an empty row `id,\\n`."""
    space, comma = arrow_strings([" ", ","])  # scalars made from Python strings would import pandas
    strings = pc.binary_join(pa.ListArray.from_arrays(arrow_ints(row_offsets.astype(np.int32)),
                                                      pieces.take(arrow_ints(index))), space)
    return _string_bytes(pc.binary_join_element_wise(_csv_quoted(ids), strings, comma))


def _csv_quoted(ids: pa.Array) -> pa.Array:
    """ImageIds quoted as the csv module (and pandas) quote them, where they need it."""
    special = pc.match_substring_regex(ids, r'[,"\r\n]')
    if not pc.any(special).as_py():
        return ids
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    quoted = []
    for value in ids.to_pylist():
        out.seek(0)
        out.truncate()
        writer.writerow([value])
        quoted.append(out.getvalue()[:-1])
    return arrow_strings(quoted)


def _string_bytes(strings: pa.Array) -> memoryview:
    """The UTF-8 bytes of all values of a string array, concatenated (no copy)."""
    if len(strings) == 0:
        return memoryview(b"")
    data = strings.buffers()[2]
    off = _value_offsets(strings)
    return memoryview(data)[int(off[0]):int(off[-1])] if data is not None else memoryview(b"")


# ----------------------------------------------------------------------------------------------------------
# Expansion


@dataclass
class ExpansionSummary:
    """Counts of one run."""

    images: int = 0
    boxes: int = 0
    parent_candidates: int = 0
    parent_boxes: int = 0

    def line(self) -> str:
        return (f"{self.images} images, {self.boxes} boxes; {self.parent_candidates} parent boxes found, "
                f"{self.parent_boxes} kept after NMS")


def expand_block(block: RowBlock, table: ParentTable, iou_thr: float, plus_one: bool,
                 return_only_new: bool, summary: ExpansionSummary | None = None) -> memoryview:
    """The output CSV text of one block of rows (see the module docstring)."""
    tokens = tokenize(block.strings)
    rows = len(tokens.boxes_per_row)
    n_boxes = len(tokens.position) // 6
    child = table.child_index(tokens.column(0))
    unknown = np.flatnonzero(child < 0)
    if len(unknown):
        box = int(unknown[0])
        raise _BadRow(int(tokens.box_row[box]), f"unknown label {tokens.column(0)[box].as_py()!r} in box "
                                                f"{_box_in_row(tokens, box)}")
    numbers = parse_numbers(tokens)
    box_row = tokens.box_row

    # every (box, parent) pair, box by box, as the original appended them
    n_parents = table.offsets[child + 1] - table.offsets[child]
    pair_box = np.repeat(np.arange(n_boxes), n_parents)
    starts = np.repeat(table.offsets[child], n_parents)
    pair_parent = table.index[starts + (np.arange(len(pair_box)) - np.repeat(np.cumsum(n_parents) - n_parents,
                                                                              n_parents))]
    group = box_row[pair_box] * max(len(table.parent_mids), 1) + pair_parent
    kept = batched_nms(numbers[pair_box, 1:], numbers[pair_box, 0], group, iou_thr, plus_one)
    kept_box, kept_parent = pair_box[kept], pair_parent[kept]
    kept_row = box_row[kept_box]

    # output pieces per row: its own tokens, 6 per kept parent box (parent MID + the box's 5), then "\n"
    own = np.zeros(rows, dtype=np.int64) if return_only_new else tokens.boxes_per_row * 6
    added = np.bincount(kept_row, minlength=rows) * 6
    row_offsets = np.concatenate([[0], np.cumsum(own + added + 1)])
    index = np.empty(int(row_offsets[-1]), dtype=np.int64)
    if not return_only_new:
        own_start = np.repeat(row_offsets[:-1], own) - np.repeat(np.cumsum(own) - own, own)
        index[own_start + np.arange(len(tokens.position))] = tokens.position
    rank = np.arange(len(kept)) - np.repeat(np.cumsum(added // 6) - added // 6, added // 6)
    at = (row_offsets[:-1] + own)[kept_row] + 6 * rank
    index[at] = len(tokens.values) + kept_parent
    box_tokens = tokens.position.reshape(-1, 6)
    for k in range(1, 6):
        index[at + k] = box_tokens[kept_box, k]
    index[row_offsets[1:] - 1] = len(tokens.values) + len(table.parent_mids)
    pieces = pa.concat_arrays([tokens.values, arrow_strings(table.parent_mids + ("\n",))])

    if summary is not None:
        summary.images += rows
        summary.boxes += n_boxes
        summary.parent_candidates += len(pair_box)
        summary.parent_boxes += len(kept)
    return join_rows(block.ids, pieces, index, row_offsets)


def iter_blocks(path: str, block_size: int = DEFAULT_BLOCK_SIZE, slow: bool = False) -> Iterator[RowBlock]:
    """Blocks of rows of a Kaggle predictions CSV (header checked); Arrow's reader unless `slow`."""
    _check_header(path)
    return _python_blocks(path, block_size) if slow else _arrow_blocks(path, block_size)


def transform_csv(input_csv: str, output_csv: str, make_transform: Callable[[], Transform],
                  known: ParentTable | None = None, block_size: int = DEFAULT_BLOCK_SIZE,
                  progress: bool = True, desc: str = "rows") -> None:
    """Stream `input_csv` block by block through a transform (block -> CSV text) into `output_csv`, atomically.

    make_transform() gives a fresh transform for each pass: files Arrow's CSV reader refuses (a row without
    a comma, a quoted newline) are read again from the start with the csv module. A bad row raises
    OIDInputError naming the file, the line and the problem (`known`: the labels a row may carry).
    """
    try:
        _transform(input_csv, output_csv, make_transform(), known, block_size, progress, desc, slow=False)
    except _UseSlowReader as exc:
        log.info("reading %s with the csv module (%s)", input_csv, exc)
        _transform(input_csv, output_csv, make_transform(), known, block_size, progress, desc, slow=True)


def _transform(input_csv: str, output_csv: str, transform: Transform, known: ParentTable | None,
               block_size: int, progress: bool, desc: str, slow: bool) -> None:
    size = os.path.getsize(input_csv)
    blocks = iter_blocks(input_csv, block_size, slow)
    with atomic_path(output_csv) as tmp, open(tmp, "wb") as out, \
            tqdm(total=size, unit="B", unit_scale=True, desc=desc, disable=not progress) as bar:
        out.write((",".join(HEADER) + "\n").encode())
        for block in blocks:
            try:
                out.write(transform(block))
            except _BadRow as bad:
                raise _row_error(input_csv, block, bad, known) from None
            bar.update(min(size - bar.n, block.ids.nbytes + block.strings.nbytes))
        bar.update(size - bar.n)


def _row_error(path: str, block: RowBlock, bad: _BadRow, known: ParentTable | None) -> OIDInputError:
    """The OIDInputError for a bad row: its file line and the exact problem."""
    index = bad.index
    if index < 0:  # a bad number somewhere in the block: find the row the slow way
        for i, string in enumerate(block.strings.to_pylist()):
            if _row_problem(string, known) is not None:
                index = i
                break
        else:
            return OIDInputError("bad number in a prediction string", path)
    string = block.strings[index].as_py()
    if block.lines is not None:
        line = block.lines[index]
    else:
        line, string = _locate(path, block.first + index)
    detail = bad.detail or _row_problem(string, known) or "bad prediction string"
    return OIDInputError(detail, path, line)


def expand_csv(input_csv: str, output_csv: str, table: ParentTable, iou_thr: float = DEFAULT_IOU_THR["2018"],
               plus_one: bool = True, return_only_new: bool = False, block_size: int = DEFAULT_BLOCK_SIZE,
               progress: bool = True) -> ExpansionSummary:
    """Add parent boxes to every row of a predictions CSV (the stage-5 script's work).

    Defaults are the 2018 original's; `table` from load_parent_table. The output is written atomically.
    """
    summaries: list[ExpansionSummary] = []

    def make_transform() -> Transform:
        summaries.append(ExpansionSummary())
        return lambda block: expand_block(block, table, iou_thr, plus_one, return_only_new, summaries[-1])

    transform_csv(input_csv, output_csv, make_transform, known=table, block_size=block_size, progress=progress,
                  desc="expanding")
    log.info("%s -> %s: %s", input_csv, output_csv, summaries[-1].line())
    return summaries[-1]
