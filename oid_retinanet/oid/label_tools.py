"""The 2019 label tools (gujingxiao's labelProcess/): the exists split, the too-much selection and the class
distribution. pandas and numpy only; matplotlib is imported when a chart is drawn.

Exists split (gen_exists_annotation.py). For each level, the boxes of level_K_files/train-annotations-bbox-
level-K.csv whose ImageID names a file in the train image folder (the name with '.jpg' removed) are kept, then
split: the folder listing is shuffled and its first int(ratio * len(listing)) names are the validation images,
the rest the train images. Quirks of the original kept on purpose:
- the ratio applies to the whole folder listing, not to the level's own images, so a level whose images are
  a small part of the folder gets a validation share of its images equal to the ratio only on average
  (`split_level_images=True` splits the level's images instead);
- every entry of the folder counts in the listing: files of other types and sub-folders too.
Where we differ: the original shuffled with an unseeded random.shuffle, listed and shuffled the folder again
for every level (so each level got a different validation set) and left '.jpg' removal to str.replace
(anywhere in the name). We sort the listing, shuffle it once with a seeded generator and use the same order
for every level, so the validation images of a level with a smaller ratio are a subset of those of a level
with a larger one (with the original's ratios: level 6 inside every other level's validation set), and we
remove '.jpg' only as a suffix.

Too-much selection (tooMuch_label_select.py): an image is dropped, all its rows, when the boxes of a few very
frequent labels make up more than `max_share` of its rows (`n_too_much / n_all > 0.95`, so exactly 0.95 is
kept). Every row of the image counts in n_all, a level file's negative row included.

Class distribution (analyse_class_distribution.py). The original split the 2019 classes into leaves of the
hierarchy (Subcategory edges; it walked five levels deep, which covers the whole tree) and parents (every
other class of the class list), counted the train boxes of each (group-of boxes included) and printed the
ranked counts in bands: parents 0-20 and 20 on, leaves 0-38, 38-173, 173-308, 308 on (the bands of the 2019
levels 1-4). It mapped each leaf to its display name and back, so of two leaves sharing a display name only
the one read last from the class list stayed a leaf, the other counted as a parent; we classify by MID. It
listed only classes with boxes; we list every class, those without boxes last.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm import tqdm

from oid_retinanet.errors import OIDInputError
from oid_retinanet.files import atomic_path, write_csv
from oid_retinanet.oid.annotations import read_boxes
from oid_retinanet.oid.classes import MID_PATTERN, ClassList
from oid_retinanet.oid.hierarchy import Hierarchy
from oid_retinanet.oid.levels import level_file

log = logging.getLogger(__name__)

# Validation share of each 2019 level (gen_exists_annotation.py).
DEFAULT_VAL_RATIOS: dict[str, float] = {"1": 0.007, "2": 0.015, "3": 0.03, "4": 0.04, "5": 0.03, "6": 0.006,
                                        "7": 0.03}
# The "too much" labels of tooMuch_label_select.py: level 6 was its active setting (Tree, Person, Footwear;
# its comment named level 1's classes), level 1 the commented one (Man, Human face, Woman, Window).
TOO_MUCH_LABELS: dict[str, tuple[str, ...]] = {
    "6": ("/m/07j7r", "/m/01g317", "/m/09j5n"),
    "1": ("/m/04yx4", "/m/0dzct", "/m/03bt1vf", "/m/0d4v4"),
}
MAX_SHARE = 0.95
# Rank bounds of the bands analyse_class_distribution.py printed.
LEAF_BANDS = (38, 173, 308)
PARENT_BANDS = (20,)
DISTRIBUTION_COLUMNS = ("mid", "name", "boxes", "images", "group_of_boxes")


# ----------------------------------------------------------------------------------------------------------
# Level files
# ----------------------------------------------------------------------------------------------------------

def require_files(paths: Iterable[str]) -> None:
    """Raise FileNotFoundError for the first path that is not a file, before any work starts."""
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(2, "No such file", path)


# ----------------------------------------------------------------------------------------------------------
# Exists split
# ----------------------------------------------------------------------------------------------------------

def image_folder_listing(folder: str) -> list[str]:
    """Every entry of `folder` (files of any type and sub-folders, as os.listdir gives them), sorted, with a
    '.jpg' suffix removed: the names the exists split works on."""
    with os.scandir(folder) as it:  # scandir: no stat per entry on a folder of a million images
        entries = [(e.name, e.is_dir()) for e in it]
    names = sorted(n for n, _ in entries)
    folders = sum(is_dir for _, is_dir in entries)
    if folders:
        log.warning("%s holds %d sub-folder(s); they count in the listing as the original's did, their images "
                    "do not (flatten them with labelProcess/resize_move_images.py)", folder, folders)
    return [n.removesuffix(".jpg") for n in names]


def shuffle_listing(names: Sequence[str], seed: int | None) -> list[str]:
    """`names` in a random order, the same for the same names and seed (None: not reproducible)."""
    order = np.random.default_rng(seed).permutation(len(names))
    return [names[i] for i in order]


@dataclass
class ExistsSummary:
    """Counts of one level's exists split."""

    level: str
    boxes: int            # rows of the level file
    images: int           # images of the level file
    exist_images: int     # ... of them in the image folder
    exist_boxes: int
    val_images: int
    val_boxes: int
    train_images: int
    train_boxes: int
    ratio: float

    def line(self) -> str:
        return (f"level {self.level}: {self.boxes} boxes on {self.images} images; {self.exist_boxes} boxes on "
                f"{self.exist_images} images in the folder; val {self.val_images} images, {self.val_boxes} "
                f"boxes; train {self.train_images} images, {self.train_boxes} boxes (ratio {self.ratio})")


def split_exists(boxes: pd.DataFrame, shuffled: Sequence[str], ratio: float, split_level_images: bool = False,
                 level: str = "") -> tuple[pd.DataFrame, pd.DataFrame, ExistsSummary]:
    """(train, val, summary): the rows of `boxes` whose ImageID is in `shuffled`, split by image.

    shuffled: the image folder listing ('.jpg' removed) in its shuffled order. The first
    int(ratio * len(shuffled)) names are validation images (the original's rule), or with split_level_images
    the first int(ratio * n) of the n listed names that are images of `boxes`. Rows keep their file order.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    ids = boxes["ImageID"]
    exists = ids.isin(set(shuffled)).to_numpy()
    if split_level_images:
        level_ids = set(pd.unique(ids.to_numpy(dtype=object)[exists]))
        candidates = [n for n in shuffled if n in level_ids]
    else:
        candidates = list(shuffled)
    val_names = set(candidates[:int(ratio * len(candidates))])
    is_val = ids.isin(val_names).to_numpy() & exists
    is_train = exists & ~is_val
    train, val = boxes[is_train], boxes[is_val]
    summary = ExistsSummary(
        level=level, boxes=len(boxes), images=int(ids.nunique()), exist_images=int(ids[exists].nunique()),
        exist_boxes=int(exists.sum()), val_images=int(val["ImageID"].nunique()), val_boxes=len(val),
        train_images=int(train["ImageID"].nunique()), train_boxes=len(train), ratio=ratio)
    return train, val, summary


def write_exists_splits(levels: Sequence[str], output_dir: str, image_dir: str, ratios: dict[str, float],
                        seed: int | None = 0, split_level_images: bool = False) -> list[ExistsSummary]:
    """gen_exists_annotation for each level: read level_K_files/train-annotations-bbox-level-K.csv, write
    val-exists-... and train-exists-annotations-bbox-level-K.csv beside it. The folder is listed and shuffled
    once for all levels."""
    inputs = {k: level_file(output_dir, k, "train") for k in levels}
    require_files(inputs.values())
    listing = image_folder_listing(image_dir)
    log.info("%s: %d entries", image_dir, len(listing))
    shuffled = shuffle_listing(listing, seed)
    summaries = []
    for k in tqdm(levels, desc="levels", unit="level", disable=len(levels) < 2):
        boxes = read_boxes(inputs[k], allow_negatives=True)
        train, val, summary = split_exists(boxes, shuffled, ratios[k], split_level_images, level=k)
        write_csv(val, level_file(output_dir, k, "val-exists"))
        write_csv(train, level_file(output_dir, k, "train-exists"))
        log.info("%s", summary.line())
        summaries.append(summary)
    return summaries


# ----------------------------------------------------------------------------------------------------------
# Too-much selection
# ----------------------------------------------------------------------------------------------------------

def check_mids(mids: Iterable[str], what: str = "label") -> list[str]:
    """The MIDs as a list; a malformed one raises OIDInputError."""
    out = list(mids)
    for mid in out:
        if not MID_PATTERN.match(mid):
            raise OIDInputError(f"bad {what} MID {mid!r} (expected like /m/0abc12)")
    return out


def too_much_shares(boxes: pd.DataFrame, labels: Iterable[str]) -> pd.DataFrame:
    """Per image with at least one box of `labels`: columns too_much, all, share (too_much / all), indexed
    by ImageID in sorted order."""
    ids = boxes["ImageID"]
    hit = boxes["LabelName"].isin(set(labels))
    too_much = ids[hit].value_counts()
    if too_much.empty:
        return pd.DataFrame({"too_much": [], "all": [], "share": []}, index=pd.Index([], name="ImageID"))
    n_all = ids[ids.isin(too_much.index)].value_counts()
    table = pd.DataFrame({"too_much": too_much, "all": n_all.reindex(too_much.index)}).sort_index()
    table.index.name = "ImageID"
    table["share"] = table["too_much"].to_numpy(np.float64) / table["all"].to_numpy(np.float64)
    return table


def select_too_much(boxes: pd.DataFrame, labels: Iterable[str], max_share: float = MAX_SHARE
                    ) -> tuple[pd.DataFrame, list[str]]:
    """(kept rows, dropped ImageIDs): every row of an image whose share of `labels` boxes is > max_share is
    dropped; the rest keep their file order."""
    shares = too_much_shares(boxes, labels)
    dropped = shares.index[shares["share"].to_numpy() > max_share]
    kept = boxes[~boxes["ImageID"].isin(set(dropped))]
    return kept, list(dropped)


def label_count_table(before: pd.DataFrame, after: pd.DataFrame, classes: ClassList | None = None
                      ) -> pd.DataFrame:
    """Rows per LabelName before and after a selection (mid, name, before, after, dropped), most first.
    Negative rows (empty LabelName) are listed as mid ''."""
    b = before["LabelName"].value_counts()
    a = after["LabelName"].value_counts().reindex(b.index, fill_value=0)
    table = pd.DataFrame({"mid": b.index.astype(str), "before": b.to_numpy(), "after": a.to_numpy()})
    table["dropped"] = table["before"] - table["after"]
    if classes is not None:
        table.insert(1, "name", [classes.name(m) if m in classes else "" for m in table["mid"]])
    return table.sort_values(["before", "mid"], ascending=[False, True], kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------------------------------------
# Class distribution
# ----------------------------------------------------------------------------------------------------------

def class_distribution(boxes: pd.DataFrame, classes: ClassList | None = None) -> pd.DataFrame:
    """Boxes, images and group-of boxes per class (columns mid, name, boxes, images, group_of_boxes), most
    boxes first, ties by MID.

    Every class of `classes` is listed (0 where it has no boxes); a label of `boxes` outside `classes` is
    listed with an empty name. Negative rows (empty LabelName) are not counted. group_of_boxes is empty when
    there is no IsGroupOf column.
    """
    real = boxes[boxes["LabelName"] != ""]
    labels = real["LabelName"]
    counts = labels.value_counts()
    images = real.drop_duplicates(["ImageID", "LabelName"])["LabelName"].value_counts()
    mids = list(classes.mids) if classes is not None else []
    known = set(mids)
    extra = sorted(m for m in counts.index if m not in known)
    if classes is not None and extra:
        log.warning("%d label(s) not in %s, listed without a name: %s", len(extra), classes.source,
                    ", ".join(extra[:5]) + (" ..." if len(extra) > 5 else ""))
    mids = list(dict.fromkeys(mids + extra))
    table = pd.DataFrame({
        "mid": mids,
        "name": [classes.name(m) if classes is not None and m in classes else "" for m in mids],
        "boxes": counts.reindex(mids, fill_value=0).to_numpy(np.int64),
        "images": images.reindex(mids, fill_value=0).to_numpy(np.int64),
    })
    if "IsGroupOf" in real.columns:
        group_of = labels[pd.to_numeric(real["IsGroupOf"], errors="coerce").to_numpy() == 1].value_counts()
        table["group_of_boxes"] = group_of.reindex(mids, fill_value=0).to_numpy(np.int64)
    else:
        table["group_of_boxes"] = pd.array([pd.NA] * len(mids), dtype="Int64")
    return table.sort_values(["boxes", "mid"], ascending=[False, True], kind="stable").reset_index(drop=True)


def band_of_ranks(n: int, bounds: Sequence[int]) -> np.ndarray:
    """Band index of ranks 0..n-1 cut at `bounds` (e.g. (38, 173, 308): 0-37 -> 0, 38-172 -> 1, ...)."""
    return np.searchsorted(np.asarray(sorted(bounds), dtype=np.int64), np.arange(n), side="right")


def rank_leaves_and_parents(boxes: pd.DataFrame, classes: ClassList, hierarchy: Hierarchy,
                            leaf_bands: Sequence[int] = LEAF_BANDS, parent_bands: Sequence[int] = PARENT_BANDS
                            ) -> pd.DataFrame:
    """The original's analysis: the classes of `classes` split into hierarchy leaves and parents (every
    other class), each ranked by box count and cut into bands.

    Columns kind ('leaf' or 'parent'), rank (0-based within the kind), band, mid, name, boxes, images,
    group_of_boxes. Boxes of labels outside `classes` are not counted (the original ignored them too).
    """
    leaves = set(hierarchy.leaves())
    missing = [m for m in hierarchy.leaves() if m not in classes]
    if missing:
        # the original crashed here (KeyError in its name lookup)
        log.warning("%d leaves of %s are not in %s and are left out: %s", len(missing), hierarchy.source,
                    classes.source, ", ".join(missing[:5]))
    outside = int((~boxes["LabelName"].isin(set(classes.mids)) & (boxes["LabelName"] != "")).sum())
    if outside:
        log.warning("%d boxes have labels outside %s and are not counted", outside, classes.source)
    known = boxes[boxes["LabelName"].isin(set(classes.mids))]
    table = class_distribution(known, classes)
    parts = []
    for kind, bounds in (("leaf", leaf_bands), ("parent", parent_bands)):
        part = table[table["mid"].isin(leaves) == (kind == "leaf")].reset_index(drop=True)
        part.insert(0, "band", band_of_ranks(len(part), bounds))
        part.insert(0, "rank", np.arange(len(part)))
        part.insert(0, "kind", kind)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def band_summary(ranking: pd.DataFrame) -> pd.DataFrame:
    """Per kind and band: ranks, number of classes, most and fewest boxes (the original's printed bands)."""
    g = ranking.groupby(["kind", "band"], sort=False)
    return pd.DataFrame({
        "first_rank": g["rank"].min(), "last_rank": g["rank"].max(), "classes": g.size(),
        "most_boxes": g["boxes"].max(), "fewest_boxes": g["boxes"].min(), "boxes": g["boxes"].sum(),
    }).reset_index()


def plot_class_counts(table: pd.DataFrame, path: str, title: str, bands: Sequence[int] | None = None,
                      value: str = "boxes") -> None:
    """A horizontal bar chart of table[value] per class, in table order from the top, saved as PNG.

    Labels are display names (the MID where there is none). A log scale is used when the counts span more
    than two orders of magnitude. bands: colour the bars by rank band.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    n = len(table)
    labels = [name or mid for mid, name in zip(table["mid"], table["name"])]
    values = table[value].to_numpy(np.float64)
    # no pyplot: the Agg canvas directly, so no global backend state and no display needed
    fig = Figure(figsize=(10, max(3.0, 1.2 + 0.17 * n)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    y = np.arange(n)
    colors = None
    if bands is not None and n:
        palette = matplotlib.colormaps["tab10"]
        colors = [palette(int(b) % 10) for b in band_of_ranks(n, bands)]
    ax.barh(y, values, color=colors if colors is not None else "tab:blue", height=0.8)
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_ylim(n - 0.5, -0.5)
    positive = values[values > 0]
    if positive.size and positive.max() / positive.min() > 100:
        ax.set_xscale("log")
        ax.set_xlabel(f"{value} (log scale)")
    else:
        ax.set_xlabel(value)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title, fontsize=10)
    if bands is not None and n:
        edges = [0, *[b for b in sorted(bands) if b < n], n]
        handles = [Patch(color=palette(i % 10), label=f"ranks {lo}-{hi - 1}")
                   for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])) if hi > lo]
        ax.legend(handles=handles, loc="lower right", fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def distribution_title(label: str, table: pd.DataFrame, boxes: pd.DataFrame) -> str:
    """'{label}: N classes, B boxes on I images' for a class_distribution table and its boxes."""
    real = boxes[boxes["LabelName"] != ""]
    with_boxes = int((table["boxes"] > 0).sum())
    return (f"{label}: {len(table)} classes ({with_boxes} with boxes), {len(real)} boxes on "
            f"{real['ImageID'].nunique()} images")



def write_distribution(boxes: pd.DataFrame, classes: ClassList | None, out_dir: str, key: str, label: str,
                       plot: bool = True) -> pd.DataFrame:
    """class_distribution of `boxes` to out_dir/class_distribution_{key}.csv and, with plot, .png."""
    table = class_distribution(boxes, classes)
    base = os.path.join(out_dir, f"class_distribution_{key}")
    write_csv(table, base + ".csv")
    if plot:
        plot_class_counts(table, base + ".png", distribution_title(label, table, boxes))
    return table


def write_ranking(boxes: pd.DataFrame, classes: ClassList, hierarchy: Hierarchy, out_dir: str,
                  leaf_bands: Sequence[int] = LEAF_BANDS, parent_bands: Sequence[int] = PARENT_BANDS,
                  plot: bool = True) -> pd.DataFrame:
    """rank_leaves_and_parents to out_dir/class_ranking.csv and, with plot, class_ranking_leaves.png and
    class_ranking_parents.png (bars coloured by band)."""
    ranking = rank_leaves_and_parents(boxes, classes, hierarchy, leaf_bands, parent_bands)
    write_csv(ranking, os.path.join(out_dir, "class_ranking.csv"))
    if plot:
        for kind, bounds, plural in (("leaf", leaf_bands, "leaves"), ("parent", parent_bands, "parents")):
            part = ranking[ranking["kind"] == kind]
            title = (f"{plural}: {len(part)} classes, {int(part['boxes'].sum())} boxes "
                     f"({os.path.basename(hierarchy.source)})")
            plot_class_counts(part, os.path.join(out_dir, f"class_ranking_{plural}.png"), title, bands=bounds)
    return ranking
