"""Box annotation CSVs, image-level label CSVs and the per-level files made from them.

Box CSVs: the 13-column train layout (`ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,
IsTruncated,IsGroupOf,IsDepiction,IsInside`), the validation layouts with fewer columns, and the level files,
whose negative images are rows with an empty LabelName and empty coordinates. Coordinates are normalised to
[0, 1], in the order XMin, XMax, YMin, YMax (Kaggle prediction strings use XMin YMin XMax YMax).

Columns other than the ids keep the types pandas infers, so a file written back has the same text pandas
gave the original scripts (coordinates as float repr, `Confidence` as `1` or `1.0`).
"""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd

from oid_retinanet.errors import OIDInputError
from oid_retinanet.files import open_input, reading
from oid_retinanet.oid.classes import ClassList

BOX_COLUMNS = ("ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax",
               "IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside")
REQUIRED_BOX_COLUMNS = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax")
COORD_COLUMNS = ("XMin", "XMax", "YMin", "YMax")
ID_COLUMNS = ("ImageID", "Source", "LabelName")
FLAG_COLUMNS = ("IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside")
FLAG_VALUES = (0, 1, -1)  # -1: unknown, as the official files write it
IMAGE_LABEL_COLUMNS = ("ImageID", "Source", "LabelName", "Confidence")


def read_csv_checked(path: str, required: tuple[str, ...], str_columns: tuple[str, ...] = ID_COLUMNS,
                     **kwargs) -> pd.DataFrame:
    """pandas.read_csv with id columns kept as strings and parse errors named by file and line. Only an empty
    cell is missing: a text such as `nan`, `NA` or `null` stays text (an ImageID, or a value an error quotes)."""
    try:
        with reading(path):  # a damaged .gz input
            df = pd.read_csv(path, dtype={c: str for c in str_columns}, keep_default_na=False, na_values=[""],
                             **kwargs)
    except pd.errors.EmptyDataError:
        raise OIDInputError("file is empty", path) from None
    except pd.errors.ParserError as exc:
        raise OIDInputError(f"malformed CSV: {str(exc).strip()}", path) from None
    except UnicodeDecodeError as exc:
        raise OIDInputError(f"not a UTF-8 text file ({exc.reason} at byte {exc.start})", path) from None
    _check_header_names(path)
    if not isinstance(df.index, pd.RangeIndex):
        # pandas takes a first data row with one field more than the header (a trailing comma on every row) as
        # an index column and shifts every value one column to the left: the values checked would be wrong
        raise OIDInputError(f"row has more fields than the header's {len(df.columns)} (a trailing comma?)", path, 2)
    for c in str_columns:
        if c in df.columns and df[c].hasnans:
            df[c] = df[c].fillna("")  # an empty label is a negative image in level files, not a missing value
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise OIDInputError(f"missing column(s) {', '.join(missing)}; header is {','.join(map(str, df.columns))}",
                            path, 1)
    return df


def _check_header_names(path: str) -> None:
    """OIDInputError for a column name that occurs twice in the header (pandas would read the second as `X.1`
    and a stage would use only the first)."""
    with open(path, "rb") as f:
        line = f.readline(1 << 20).decode("utf-8-sig", errors="replace")
    names = [n.strip() for n in next(csv.reader([line]), [])]
    twice = sorted({n for n in names if n and names.count(n) > 1})
    if twice:
        raise OIDInputError(f"column {twice[0]} occurs {names.count(twice[0])} times in the header", path, 1)


def _first_bad(mask: np.ndarray) -> int | None:
    idx = np.flatnonzero(mask)
    return int(idx[0]) if idx.size else None


def file_line(path: str, row: int) -> int:
    """The line where data row `row` (0-based, as pandas counts rows: blank lines skipped) starts in the file, as
    an editor numbers lines (the header is line 1; blank lines and newlines inside quoted fields count). Found
    again only for an error message."""
    try:
        with open_input(path, "rt", newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.reader(f)
            next(reader, None)
            seen, start = -1, reader.line_num
            for record in reader:
                if record:  # csv gives [] for a blank line, which pandas skips
                    seen += 1
                    if seen == row:
                        return start + 1
                start = reader.line_num
    except (OSError, csv.Error):
        pass
    return row + 2


def _check_numbers(df: pd.DataFrame, path: str, column: str, allowed: tuple[float, ...] | None = None,
                   low: float = 0.0, high: float = 1.0, may_be_empty: np.ndarray | None = None) -> None:
    """OIDInputError for the column's first empty, non-numeric or out-of-domain cell (one of `allowed`, or within
    [low, high] when allowed is None; empty allowed where may_be_empty). One text cell makes pandas read a whole
    column as strings, where a comparison with 0 would then be false on every row: the column is checked, not
    trusted."""
    col = df[column]
    num = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
    empty = col.isna().to_numpy()
    bad = _first_bad(np.isnan(num) & ~(empty & may_be_empty if may_be_empty is not None else False))
    if bad is not None:
        what = "is empty" if empty[bad] else f"is not a number: {col.iloc[bad]!r}"
        raise OIDInputError(f"{column} {what}", path, file_line(path, bad))
    with np.errstate(invalid="ignore"):
        outside = ~np.isin(num, allowed) if allowed is not None else (num < low) | (num > high)
    bad = _first_bad(outside & ~np.isnan(num))
    if bad is not None:
        domain = " or ".join(f"{v:g}" for v in allowed) if allowed is not None else f"in [{low:g}, {high:g}]"
        value = col.iloc[bad]
        shown = repr(value) if isinstance(value, str) else f"{num[bad]:g}"
        raise OIDInputError(f"{column} = {shown} must be {domain}", path, file_line(path, bad))


def check_boxes(df: pd.DataFrame, path: str, classes: ClassList | None = None,
                allow_negatives: bool = False) -> None:
    """Raise OIDInputError for the first bad row: an empty ImageID, non-numeric or out-of-range coordinates,
    XMin > XMax, YMin > YMax, an empty or unknown LabelName, a Confidence outside [0, 1], a flag column
    (IsGroupOf, ...) that is not 0, 1 or the official -1.

    allow_negatives: rows with an empty LabelName and empty coordinates (level files' negative images).
    """
    labels = df["LabelName"]
    empty_label = (labels == "").to_numpy()
    negative = empty_label if allow_negatives else np.zeros(len(df), dtype=bool)
    bad = _first_bad((df["ImageID"].str.strip() == "").to_numpy())
    if bad is not None:
        raise OIDInputError("empty ImageID", path, file_line(path, bad))
    for c in FLAG_COLUMNS:
        if c in df.columns:
            _check_numbers(df, path, c, FLAG_VALUES, may_be_empty=negative)
    if "Confidence" in df.columns:
        _check_numbers(df, path, "Confidence", may_be_empty=negative)
    coords = {}
    for c in COORD_COLUMNS:
        col = df[c]
        if col.dtype == object:
            num = pd.to_numeric(col, errors="coerce")
            bad = _first_bad(num.isna().to_numpy() & col.notna().to_numpy())
            if bad is not None:
                raise OIDInputError(f"{c} is not a number: {col.iloc[bad]!r}", path, file_line(path, bad))
            col = num
        coords[c] = col.to_numpy(dtype=np.float64)
        bad = _first_bad(np.isnan(coords[c]) & ~negative)
        if bad is not None:
            raise OIDInputError(f"{c} is empty", path, file_line(path, bad))
        with np.errstate(invalid="ignore"):
            bad = _first_bad((coords[c] < 0) | (coords[c] > 1))
        if bad is not None:
            raise OIDInputError(f"{c} = {float(coords[c][bad])} is outside [0, 1]", path, file_line(path, bad))
    for lo, hi in (("XMin", "XMax"), ("YMin", "YMax")):
        with np.errstate(invalid="ignore"):
            bad = _first_bad(coords[lo] > coords[hi])
        if bad is not None:
            raise OIDInputError(f"{lo} = {float(coords[lo][bad])} > {hi} = {float(coords[hi][bad])}", path,
                                  file_line(path, bad))
    bad = _first_bad(empty_label & ~negative)
    if bad is not None:
        raise OIDInputError("empty LabelName", path, file_line(path, bad))
    if classes is not None:
        known = labels.isin(set(classes.mids)).to_numpy() | negative
        bad = _first_bad(~known)
        if bad is not None:
            raise OIDInputError(f"unknown MID {labels.iloc[bad]!r} (not in {classes.source})", path,
                                file_line(path, bad))


def read_boxes(path: str, classes: ClassList | None = None, allow_negatives: bool = False,
               required: tuple[str, ...] = REQUIRED_BOX_COLUMNS) -> pd.DataFrame:
    """Read and check a box annotation CSV (or a level file with allow_negatives)."""
    df = read_csv_checked(path, required)
    check_boxes(df, path, classes, allow_negatives)
    return df


def read_image_labels(path: str, classes: ClassList | None = None) -> pd.DataFrame:
    """Read and check an image-level label CSV (`ImageID,Source,LabelName,Confidence`, Confidence 0 or 1)."""
    df = read_csv_checked(path, ("ImageID", "LabelName", "Confidence"))
    conf = pd.to_numeric(df["Confidence"], errors="coerce").to_numpy()
    bad = _first_bad(~np.isin(conf, (0, 1)))
    if bad is not None:
        raise OIDInputError(f"Confidence must be 0 or 1, got {df['Confidence'].iloc[bad]}", path, file_line(path, bad))
    labels = df["LabelName"]
    bad = _first_bad((labels == "").to_numpy())
    if bad is not None:
        raise OIDInputError("empty LabelName", path, file_line(path, bad))
    if classes is not None:
        bad = _first_bad(~labels.isin(set(classes.mids)).to_numpy())
        if bad is not None:
            raise OIDInputError(f"unknown MID {labels.iloc[bad]!r} (not in {classes.source})", path,
                                file_line(path, bad))
    return df


def negative_rows(image_ids: list[str] | np.ndarray) -> pd.DataFrame:
    """Rows for negative images as the original level files hold them: `id,freeform,,1.0,,,,,0,0,0,0,0`."""
    n = len(image_ids)
    values = {"Source": "freeform", "LabelName": "", "Confidence": 1.0, "XMin": "", "XMax": "", "YMin": "",
              "YMax": "", "IsOccluded": 0, "IsTruncated": 0, "IsGroupOf": 0, "IsDepiction": 0, "IsInside": 0}
    data = {"ImageID": np.asarray(image_ids, dtype=object)}
    data.update({c: np.full(n, v, dtype=object if isinstance(v, str) else type(v)) for c, v in values.items()})
    return pd.DataFrame(data, columns=list(BOX_COLUMNS))
