"""Ground-truth expansion through the class hierarchy, as the official Open Images tool does it.

The challenge metric is computed on expanded ground truth (TensorFlow Object Detection API,
`oid_hierarchical_labels_expansion.py`): every box row is kept and copied once to each ancestor of its class
(`IsGroupOf` and every other column kept, the root excluded); an image-level label with Confidence 1 is copied to
each ancestor, one with Confidence 0 to each descendant. Nothing is de-duplicated: a class with two parents gets
each common ancestor once, but two input rows that expand to the same (image, class, box) both stay, as they do
in the official output.

Ancestors and descendants are taken per occurrence in the JSON tree, as the official tool's walk does: X is an
ancestor of Y when Y appears somewhere below an occurrence of X; only `Subcategory` edges count. The official tool
writes the copies of a row in Python set order (hash dependent); here they come nearest ancestor first. Compare
expanded files as multisets of rows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from oid_retinanet.errors import OIDInputError
from oid_retinanet.files import atomic_path

BOXES = "boxes"
LABELS = "labels"


@dataclass(frozen=True)
class ExpansionMaps:
    """For every class of a hierarchy (the root excluded): its ancestors and its descendants, root excluded."""

    root: str
    ancestors: Mapping[str, tuple[str, ...]]
    descendants: Mapping[str, tuple[str, ...]]
    source: str = "<memory>"

    @classmethod
    def from_tree(cls, tree: dict, source: str = "<memory>") -> ExpansionMaps:
        """Build the maps from a parsed hierarchy JSON (`LabelName` / `Subcategory` nodes)."""
        if not isinstance(tree, dict) or "LabelName" not in tree:
            raise OIDInputError("hierarchy root has no LabelName", source)
        root = tree["LabelName"]
        ancestors: dict[str, dict[str, None]] = {}
        descendants: dict[str, dict[str, None]] = {}
        stack: list[tuple[dict, tuple[str, ...]]] = [(tree, ())]  # (node, path from the root's child down)
        while stack:
            node, path = stack.pop()
            mid = node["LabelName"]
            if mid != root:
                ancestors.setdefault(mid, {}).update(dict.fromkeys(reversed(path)))
                descendants.setdefault(mid, {})
                for a in path:
                    descendants[a][mid] = None
            child_path = path if mid == root else path + (mid,)
            children = node.get("Subcategory", [])
            if not isinstance(children, list):
                raise OIDInputError(f"Subcategory of {mid} is not a list", source)
            for child in reversed(children):
                if not isinstance(child, dict) or "LabelName" not in child:
                    raise OIDInputError(f"a Subcategory entry of {mid} has no LabelName", source)
                stack.append((child, child_path))
        return cls(root, {m: tuple(a) for m, a in ancestors.items()},
                   {m: tuple(d) for m, d in descendants.items()}, source)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> ExpansionMaps:
        """Read a hierarchy JSON file (e.g. bbox_labels_600_hierarchy.json)."""
        try:
            with open(path, encoding="utf-8") as f:
                tree = json.load(f)
        except json.JSONDecodeError as exc:
            raise OIDInputError(f"not valid JSON: {exc}", str(path)) from None
        return cls.from_tree(tree, str(path))

    def __contains__(self, mid: object) -> bool:
        return mid in self.ancestors

    def targets(self, mid: str, positive: bool = True) -> tuple[str, ...]:
        """The classes a row of `mid` is copied to: ancestors (boxes, positive labels) or descendants."""
        table = self.ancestors if positive else self.descendants
        try:
            return table[mid]
        except KeyError:
            raise OIDInputError(self._unknown(mid)) from None

    def _unknown(self, mid: str) -> str:
        if mid == self.root:
            return f"LabelName {mid!r} is the hierarchy root (not a class) in {self.source}"
        return f"LabelName {mid!r} is not in the hierarchy {self.source}"


def positive_flags(confidence: pd.Series, path: str = "<labels>") -> np.ndarray:
    """Confidence column as booleans (1 positive, 0 negative); anything else is an error naming the row."""
    values = pd.to_numeric(confidence, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isin(values, (0.0, 1.0)))
    if bad.size:
        raise OIDInputError(f"Confidence must be 0 or 1, got {confidence.iloc[bad[0]]!r}", path, int(bad[0]) + 2)
    return values == 1.0


def expansion_index(labels: np.ndarray, positive: np.ndarray, maps: ExpansionMaps, path: str = "<annotations>",
                    row_numbers: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The expanded rows as (source row index, LabelName): each row, then its copies (ancestors when positive,
    descendants otherwise). Vectorised: one lookup per distinct (label, sign), then np.repeat.

    row_numbers: the file line of each row, for errors (default: index + 2, a file with a header).
    """
    labels = np.asarray(labels, dtype=object)
    codes, uniques = pd.factorize(labels)
    if len(labels) and codes.min() < 0:  # missing labels: report them as the empty label
        codes = np.where(codes < 0, len(uniques), codes)
        uniques = np.append(np.asarray(uniques, dtype=object), "")
    key = codes * 2 + np.asarray(positive, dtype=np.int64)
    starts = np.zeros(2 * len(uniques), dtype=np.int64)
    lengths = np.zeros(2 * len(uniques), dtype=np.int64)
    flat: list[str] = []
    for k in np.unique(key):
        mid = uniques[k // 2]
        if mid not in maps:
            at = int(np.flatnonzero(key == k)[0])
            raise OIDInputError(maps._unknown(mid), path, int(row_numbers[at]) if row_numbers is not None else at + 2)
        targets = maps.targets(mid, positive=bool(k % 2))
        starts[k], lengths[k] = len(flat), len(targets)
        flat.extend(targets)
    counts = 1 + lengths[key]
    rows = np.repeat(np.arange(len(labels)), counts)
    within = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    copy = within > 0
    out = labels[rows]
    if copy.any():
        out[copy] = np.array(flat, dtype=object)[np.repeat(starts[key], counts)[copy] + within[copy] - 1]
    return rows, out


def _expand_frame(df: pd.DataFrame, maps: ExpansionMaps, positive: np.ndarray, path: str) -> pd.DataFrame:
    rows, labels = expansion_index(df["LabelName"].to_numpy(dtype=object), positive, maps, path)
    out = df.iloc[rows].reset_index(drop=True)
    out["LabelName"] = labels
    return out


def expand_boxes(boxes: pd.DataFrame, maps: ExpansionMaps, path: str = "<boxes>") -> pd.DataFrame:
    """Box rows with a copy for every ancestor of their class (other columns unchanged), each row followed by
    its copies as the official tool writes them. A LabelName outside the hierarchy is an error (the official
    tool stops with an AssertionError)."""
    return _expand_frame(boxes, maps, np.ones(len(boxes), dtype=bool), path)


def expand_image_labels(labels: pd.DataFrame, maps: ExpansionMaps, path: str = "<labels>") -> pd.DataFrame:
    """Image-level label rows plus copies: Confidence 1 to every ancestor, Confidence 0 to every descendant."""
    return _expand_frame(labels, maps, positive_flags(labels["Confidence"], path), path)


def expand_csv(src: str | os.PathLike, dst: str | os.PathLike, maps: ExpansionMaps, kind: str) -> tuple[int, int]:
    """Expand a box CSV (kind "boxes") or an image-level label CSV (kind "labels") line by line, as the official
    tool does: every input line is written unchanged, followed by its copies with only the LabelName field
    replaced (so coordinates keep their text). Output is written atomically. Returns (rows read, rows written).

    Differences from the official tool: blank lines are skipped, the last line gets a line end even if the input
    had none (the official tool glued the copies onto it), and Confidence `1.0` / `0.0` is accepted (the official
    tool's int() needs `1` / `0`).
    """
    if kind not in (BOXES, LABELS):
        raise ValueError(f"kind must be {BOXES!r} or {LABELS!r}, got {kind!r}")
    src = str(src)
    n_in = n_out = 0
    with open(src, encoding="utf-8", newline="") as fin, atomic_path(dst) as tmp, \
            open(tmp, "w", encoding="utf-8", newline="") as fout:
        header = fin.readline()
        if not header.strip():
            raise OIDInputError("file is empty", src)
        columns = header.rstrip("\r\n").split(",")
        required = ("LabelName", "Confidence") if kind == LABELS else ("LabelName",)
        missing = [c for c in required if c not in columns]
        if missing:
            raise OIDInputError(f"missing column(s) {', '.join(missing)}; header is {header.strip()}", src, 1)
        label_at = columns.index("LabelName")
        conf_at = columns.index("Confidence") if kind == LABELS else -1
        fout.write(header if header.endswith("\n") else header + "\n")
        n_out += 1
        for line_no, line in enumerate(fin, start=2):
            body = line.rstrip("\r\n")
            if not body.strip():
                continue
            end = line[len(body):] or "\n"
            fields = body.split(",")
            if len(fields) <= max(label_at, conf_at):
                raise OIDInputError(f"expected {len(columns)} columns, got {len(fields)}", src, line_no)
            positive = True
            if kind == LABELS:
                conf = fields[conf_at].strip()
                try:
                    value = float(conf)
                except ValueError:
                    value = -1.0
                if value not in (0.0, 1.0):
                    raise OIDInputError(f"Confidence must be 0 or 1, got {conf!r}", src, line_no)
                positive = value == 1.0
            mid = fields[label_at]
            if mid not in maps:
                raise OIDInputError(maps._unknown(mid), src, line_no)
            fout.write(body + end)
            for target in maps.targets(mid, positive):
                fields[label_at] = target
                fout.write(",".join(fields) + end)
            n_in += 1
            n_out += 1 + len(maps.targets(mid, positive))
    return n_in, n_out - 1
