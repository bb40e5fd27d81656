"""Class-description CSVs: no header, one `MID,DisplayName` per line.

MIDs are the keys. Display names are not unique in every official file (the 2018 challenge 500 list names
both /m/0cvnqh and /m/076lb9 "Bench", both /m/04rmv and /m/020lf "Mouse"), so a name lookup either refuses
an ambiguous name or, where the original's behaviour is asked for, keeps the row read last as its dicts did.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from oid_retinanet.errors import OIDInputError
from oid_retinanet.files import atomic_path, open_input

MID_PATTERN = re.compile(r"^/[mg]/[0-9a-z_]+$")
# A model's class list written beside what it made (its snapshots, its prediction cache): MID,DisplayName lines
# in output order.
CLASSES_FILE = "classes.csv"


@dataclass(frozen=True)
class ClassList:
    """An ordered list of classes read from one class-description file."""

    mids: tuple[str, ...]
    names: tuple[str, ...]
    source: str = "<memory>"
    _name_by_mid: dict[str, str] = field(init=False, repr=False, compare=False)
    _mids_by_name: dict[str, list[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_mid = dict(zip(self.mids, self.names))
        by_name: dict[str, list[str]] = {}
        for mid, name in zip(self.mids, self.names):
            by_name.setdefault(name, []).append(mid)
        object.__setattr__(self, "_name_by_mid", by_mid)
        object.__setattr__(self, "_mids_by_name", by_name)

    def __len__(self) -> int:
        return len(self.mids)

    def __contains__(self, mid: object) -> bool:
        return mid in self._name_by_mid

    def name(self, mid: str) -> str:
        """Display name of `mid` in this file."""
        try:
            return self._name_by_mid[mid]
        except KeyError:
            raise OIDInputError(f"unknown MID {mid!r}", self.source) from None

    def mid(self, name: str, *, last_wins: bool = False) -> str:
        """MID of display name `name`.

        An ambiguous name raises, naming the candidate MIDs, unless `last_wins` (the originals' dict
        behaviour: the row read last).
        """
        mids = self._mids_by_name.get(name)
        if not mids:
            raise OIDInputError(f"unknown display name {name!r}", self.source)
        if len(mids) > 1 and not last_wins:
            raise OIDInputError(f"display name {name!r} is ambiguous: MIDs {', '.join(mids)}", self.source)
        return mids[-1]

    def ambiguous_names(self) -> dict[str, list[str]]:
        """Display names carried by more than one MID, with their MIDs in file order."""
        return {n: list(m) for n, m in self._mids_by_name.items() if len(m) > 1}


def read_class_descriptions(path: str, allow_aliases: bool = False, any_ids: bool = False) -> ClassList:
    """Read a class-description CSV (no header, `MID,DisplayName`); malformed rows raise OIDInputError.

    allow_aliases: accept a MID on several rows (extra names for it, as a name lookup table); otherwise a
    repeated MID is an error. any_ids: the first column may be any identifier, not only an Open Images MID (a
    model's class list: one trained on a csv or coco dataset names its classes by name or category id).
    """
    mids: list[str] = []
    names: list[str] = []
    seen: dict[str, int] = {}
    with open_input(path, "rt", newline="", encoding="utf-8-sig") as f:
        for row_number, row in enumerate(csv.reader(f), start=1):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != 2:
                raise OIDInputError(f"expected 2 columns MID,DisplayName, got {len(row)}: {row!r}", path,
                                    row_number)
            mid, name = row[0].strip(), row[1].strip()
            if not mid or not (any_ids or MID_PATTERN.match(mid)):
                raise OIDInputError(f"bad MID {mid!r} (expected like /m/0abc12)", path, row_number)
            if not name:
                raise OIDInputError(f"empty display name for {mid}", path, row_number)
            if mid in seen and not allow_aliases:
                raise OIDInputError(f"MID {mid} repeated (first on row {seen[mid]})", path, row_number)
            seen[mid] = row_number
            mids.append(mid)
            names.append(name)
    if not mids:
        raise OIDInputError("no classes in file", path)
    return ClassList(tuple(mids), tuple(names), source=str(path))


def format_class_descriptions(rows: Iterable[tuple[str, str]]) -> str:
    """The text of a class-description CSV for (mid, name) rows, as the originals wrote it."""
    return "".join(f"{mid},{name}\n" for mid, name in rows)


def write_class_descriptions(path: str, rows: Iterable[tuple[str, str]]) -> None:
    """Write (mid, name) rows as a class-description CSV, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(format_class_descriptions(rows), encoding="utf-8", newline="\n")


def class_list_difference(recorded: ClassList, labels: ClassList) -> str | None:
    """How `labels` differs from `recorded` in MIDs and their order (None when they agree), in words for an
    error message: the counts, or the first label that differs."""
    if recorded.mids == labels.mids:
        return None
    if len(recorded) != len(labels):
        return f"{len(recorded)} classes, not the {len(labels)} of {labels.source}"
    i = next(i for i, (a, b) in enumerate(zip(recorded.mids, labels.mids)) if a != b)
    return f"label {i} is {recorded.mids[i]} ({recorded.names[i]}), not {labels.mids[i]} ({labels.names[i]})"
