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

Large files stream in blocks of rows (oid.predictions.iter_prediction_blocks: memory bounded by the block size,
not the file) and everything inside a block is vectorised: the (box, parent) pairs and the NMS of every
(image, parent) group at once, and the output text.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from oid_retinanet.boxes.nms import batched_nms
from oid_retinanet.errors import OIDInputError
from oid_retinanet.files import atomic_output
from oid_retinanet.oid.classes import ClassList, read_class_descriptions
from oid_retinanet.oid.hierarchy import Hierarchy
from oid_retinanet.oid.predictions import (
    DEFAULT_BLOCK_SIZE,
    HEADER,
    PredictionBlock,
    arrow_ints,
    arrow_strings,
    csv_quoted,
    iter_prediction_blocks,
    string_bytes,
    to_numpy,
)

log = logging.getLogger(__name__)

VARIANTS = ("2018", "2019")
# The originals' NMS thresholds for the parent boxes.
DEFAULT_IOU_THR = {"2018": 0.75, "2019": 0.9}

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
# Writing rows


def join_rows(ids: pa.Array, pieces: pa.Array, index: np.ndarray, row_offsets: np.ndarray) -> memoryview:
    """CSV text of rows `id,` + " ".join(row's pieces): row r's pieces are
    pieces[index[row_offsets[r]:row_offsets[r + 1]]]. Callers end every row with a "\\n" piece, which also
    gives every token its trailing space (`id,a b \\n`) and an empty row `id,\\n`."""
    space, comma = arrow_strings([" ", ","])  # Arrow scalars without pa.scalar(), which would import pandas
    strings = pc.binary_join(pa.ListArray.from_arrays(arrow_ints(row_offsets.astype(np.int32)),
                                                      pieces.take(arrow_ints(index))), space)
    return string_bytes(pc.binary_join_element_wise(csv_quoted(ids), strings, comma))


# A block's transform: the CSV text of its rows.
Transform = Callable[[PredictionBlock], "bytes | memoryview"]


def transform_csv(input_csv: str, output_csv: str, transform: Transform, block_size: int = DEFAULT_BLOCK_SIZE,
                  progress: bool = True, desc: str = "rows", finite: bool = True) -> None:
    """Stream `input_csv` block by block (oid.predictions.iter_prediction_blocks) through `transform` into
    `output_csv`, written atomically under the same header. A bad row raises OIDInputError naming the file,
    the line and the problem; nothing is left under the output name then."""
    size = os.path.getsize(input_csv)
    with atomic_output(output_csv) as out, \
            tqdm(total=size, unit="B", unit_scale=True, desc=desc, disable=not progress) as bar:

        def advance(n: int) -> None:
            bar.update(max(0, min(size - bar.n, n)))

        out.write((",".join(HEADER) + "\n").encode())
        for block in iter_prediction_blocks(input_csv, block_size, finite=finite, progress=advance):
            out.write(transform(block))
        bar.update(size - bar.n)


# ----------------------------------------------------------------------------------------------------------
# Expansion


# Boxes the original expanded without a word; kept as they are (their parents copy them), counted and warned.
OUT_OF_DOMAIN = {"score": "a score outside [0, 1]", "coordinate": "a coordinate outside [0, 1]",
                 "reversed": "x1 > x2 or y1 > y2"}


@dataclass
class ExpansionSummary:
    """Counts of one run; out_of_domain: boxes of each kind in OUT_OF_DOMAIN, and where the first of each is."""

    images: int = 0
    boxes: int = 0
    parent_candidates: int = 0
    parent_boxes: int = 0
    out_of_domain: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUT_OF_DOMAIN, 0))
    first_out_of_domain: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        return (f"{self.images} images, {self.boxes} boxes; {self.parent_candidates} parent boxes found, "
                f"{self.parent_boxes} kept after NMS")

    def count_out_of_domain(self, block: PredictionBlock) -> None:
        score, x1, y1, x2, y2 = block.numbers.T
        coords = block.numbers[:, 1:]
        masks = {"score": (score < 0) | (score > 1), "coordinate": ((coords < 0) | (coords > 1)).any(axis=1),
                 "reversed": (x1 > x2) | (y1 > y2)}
        for kind, mask in masks.items():
            found = np.flatnonzero(mask)
            if len(found) and kind not in self.first_out_of_domain:
                box = int(found[0])
                values = " ".join(f"{v:g}" for v in block.numbers[box])
                self.first_out_of_domain[kind] = str(block.box_error(box, lambda n: f"box {n} ({values})"))
            self.out_of_domain[kind] += len(found)

    def warning(self) -> str | None:
        """One line for the file's out-of-domain boxes, or None."""
        kinds = [k for k, n in self.out_of_domain.items() if n]
        if not kinds:
            return None
        counts = ", ".join(f"{self.out_of_domain[k]} with {OUT_OF_DOMAIN[k]}" for k in kinds)
        return (f"{counts}; kept as they are, as the original did (first: "
                f"{'; '.join(self.first_out_of_domain[k] for k in kinds)})")


def expand_block(block: PredictionBlock, table: ParentTable, iou_thr: float, plus_one: bool,
                 return_only_new: bool, summary: ExpansionSummary | None = None) -> memoryview:
    """The output CSV text of one block of rows (see the module docstring)."""
    rows = len(block)
    n_boxes = block.n_boxes
    child = table.child_index(block.mids)
    unknown = np.flatnonzero(child < 0)
    if len(unknown):
        box = int(unknown[0])
        mid = block.mids[box].as_py()
        raise block.box_error(box, lambda n: f"unknown label {mid!r} in box {n}")
    numbers = block.numbers
    box_row = block.box_row

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
    own = np.zeros(rows, dtype=np.int64) if return_only_new else block.boxes_per_row * 6
    added = np.bincount(kept_row, minlength=rows) * 6
    row_offsets = np.concatenate([[0], np.cumsum(own + added + 1)])
    index = np.empty(int(row_offsets[-1]), dtype=np.int64)
    if not return_only_new:
        own_start = np.repeat(row_offsets[:-1], own) - np.repeat(np.cumsum(own) - own, own)
        index[own_start + np.arange(len(block.position))] = block.position
    rank = np.arange(len(kept)) - np.repeat(np.cumsum(added // 6) - added // 6, added // 6)
    at = (row_offsets[:-1] + own)[kept_row] + 6 * rank
    index[at] = len(block.values) + kept_parent
    box_tokens = block.position.reshape(-1, 6)
    for k in range(1, 6):
        index[at + k] = box_tokens[kept_box, k]
    index[row_offsets[1:] - 1] = len(block.values) + len(table.parent_mids)
    pieces = pa.concat_arrays([block.values, arrow_strings(table.parent_mids + ("\n",))])

    if summary is not None:
        summary.count_out_of_domain(block)
        summary.images += rows
        summary.boxes += n_boxes
        summary.parent_candidates += len(pair_box)
        summary.parent_boxes += len(kept)
    return join_rows(block.ids, pieces, index, row_offsets)


def expand_csv(input_csv: str, output_csv: str, table: ParentTable, iou_thr: float = DEFAULT_IOU_THR["2018"],
               plus_one: bool = True, return_only_new: bool = False, block_size: int = DEFAULT_BLOCK_SIZE,
               progress: bool = True) -> ExpansionSummary:
    """Add parent boxes to every row of a predictions CSV (the stage-5 script's work).

    Defaults are the 2018 original's; `table` from load_parent_table. The output is written atomically.
    """
    summary = ExpansionSummary()
    transform_csv(input_csv, output_csv,
                  lambda block: expand_block(block, table, iou_thr, plus_one, return_only_new, summary),
                  block_size=block_size, progress=progress, desc="expanding")
    log.info("%s -> %s: %s", input_csv, output_csv, summary.line())
    warning = summary.warning()
    if warning:
        log.warning("%s: %s", input_csv, warning)
    return summary
