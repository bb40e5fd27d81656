"""Per-level training files: the class lists of each hierarchy level and the annotation rows a level keeps.

2018 (ZFTurbo, five levels and a level-1 variant for rare classes). For level K:
- the boxes directly labelled with a level-K class are kept; level 1 and the low-samples variant first drop
  every group-of box, level 2 drops group-of only among these direct boxes, levels 3-5 keep group-of;
- levels 2-5 add a relabelled copy of every box of a child class (the lower levels' classes and a few extra
  ones, repeats kept) for each of its ancestors that is a level-K class. Copies come from all boxes,
  group-of included;
- negative images (one row with an empty label) are images with none of the kept boxes and none of the
  higher levels' classes; level 1 takes them only among images of a fixed list of rare classes.
2019 (gujingxiao, seven levels): group-of boxes dropped, then the boxes of the level's classes, no copies
and no negatives.

Row order inside a file: direct boxes in file order, then copies by child and ancestor, then negatives in
order of first appearance. The original's negatives followed Python's set order, so compare as multisets.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm import tqdm

from oid_retinanet.errors import OIDInputError
from oid_retinanet.files import atomic_path
from oid_retinanet.oid.annotations import BOX_COLUMNS, negative_rows
from oid_retinanet.oid.classes import ClassList, write_class_descriptions
from oid_retinanet.oid.hierarchy import Hierarchy
from oid_retinanet.resources import resource_path

log = logging.getLogger(__name__)

LEVELS_2018 = ("1", "2", "3", "4", "5", "1_low_samples")
LEVELS_2019 = ("1", "2", "3", "4", "5", "6", "7")


@dataclass(frozen=True)
class LevelSpec:
    """What one level file set holds: its classes and the rules that select rows."""

    key: str                          # "1".."7" or "1_low_samples"
    classes: tuple[tuple[str, str], ...]  # (mid, display name) as written to the class-description file
    group_of: str = "keep"            # "drop_all" | "drop_direct" | "keep"
    children: tuple[str, ...] = ()    # MIDs whose boxes are copied to their level ancestors (repeats kept)
    negatives: str = "none"           # "none" | "all_images" | "candidate_images"
    negative_candidates: tuple[str, ...] = ()  # MIDs marking candidate negative images
    not_negative: tuple[str, ...] = ()  # MIDs whose images are never negatives
    thirteen_columns: bool = False    # write exactly the 13 train columns (2018 level 1)

    @property
    def mids(self) -> list[str]:
        return [m for m, _ in self.classes]

    @property
    def number(self) -> str:
        return self.key.split("_")[0]


@dataclass
class LevelSummary:
    """Counts logged per level and subset."""

    level: str
    subset: str
    direct_rows: int = 0
    copied_rows: int = 0
    negative_images: int = 0
    copies_by_parent: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        return (f"level {self.level} {self.subset}: {self.direct_rows} rows kept, {self.copied_rows} rows copied "
                f"to parents, {self.negative_images} negative images")


def _load_json(name: str) -> dict:
    with open(resource_path(name), encoding="utf-8") as f:
        return json.load(f)


def original_label_lists() -> dict[str, list[str]]:
    """The level label lists ZFTurbo's a00_utils_and_constants.py held, as display names in its order:
    LEVEL_1_LABELS ... LEVEL_5_LABELS, LEVEL_1_LABELS_LOW_SAMPLES and ALL_LABELS (levels 1 to 5, the 500 classes
    in the 2019 models' output order)."""
    data = _load_json("levels_2018.json")
    lists = {f"LEVEL_{k}_LABELS": list(names) for k, names in data["levels"].items()}
    lists["LEVEL_1_LABELS_LOW_SAMPLES"] = list(data["level_1_low_samples"])
    lists["ALL_LABELS"] = [n for k in sorted(data["levels"]) for n in data["levels"][k]]
    return lists


def levels_2018(classes: ClassList) -> dict[str, LevelSpec]:
    """The 2018 level specs, names resolved through the v4 class list `classes` (unique names)."""
    data = _load_json("levels_2018.json")
    named = {k: tuple((classes.mid(n), n) for n in names) for k, names in data["levels"].items()}
    lv = {k: [m for m, _ in pairs] for k, pairs in named.items()}
    extra = {k: [classes.mid(n) for n in names] for k, names in data["extra_children"].items()}
    negative_classes = [classes.mid(n) for n in data["negative_sample_classes"]]
    low_named = tuple((classes.mid(n), n) for n in data["level_1_low_samples"])
    low = {m for m, _ in low_named}

    def higher(k: int) -> tuple[str, ...]:
        return tuple(m for j in range(k + 1, 6) for m in lv[str(j)])

    def lower(k: int) -> tuple[str, ...]:
        return tuple(m for j in range(1, k) for m in lv[str(j)])

    specs = {
        "1": LevelSpec("1", named["1"], group_of="drop_all", negatives="candidate_images",
                       negative_candidates=tuple(negative_classes), not_negative=higher(1),
                       thirteen_columns=True),
        "1_low_samples": LevelSpec(
            "1_low_samples", low_named, group_of="drop_all", negatives="candidate_images", not_negative=higher(1),
            # the level-1 classes left out of this variant mark candidate negatives too, as in the original
            negative_candidates=tuple(negative_classes + [m for m in lv["1"] if m not in low])),
    }
    for k in (2, 3, 4, 5):
        specs[str(k)] = LevelSpec(str(k), named[str(k)], group_of="drop_direct" if k == 2 else "keep",
                                  children=lower(k) + tuple(extra[str(k)]), negatives="all_images",
                                  not_negative=higher(k))
    return specs


def released_class_list(num_classes: int, classes: ClassList) -> tuple[tuple[str, str], ...]:
    """(mid, name) of each output of ZFTurbo's released models, in output order, from their class count.

    443: the 2018 level-1 models, LEVEL_1_LABELS order; 500: the 2019 models, ALL_LABELS order (levels 1 to 5
    of 2018 one after the other). Names resolve through the v4 class list `classes`.
    """
    levels = _load_json("levels_2018.json")["levels"]
    if num_classes == len(levels["1"]):
        names = levels["1"]
    elif num_classes == sum(len(v) for v in levels.values()):
        names = [n for k in ("1", "2", "3", "4", "5") for n in levels[k]]
    else:
        raise OIDInputError(f"no released class list has {num_classes} classes (443: 2018 level 1, 500: 2019); "
                            f"give the model's class list")
    return tuple((classes.mid(n), n) for n in names)


def levels_2019(classes: ClassList | None = None) -> dict[str, LevelSpec]:
    """The 2019 level specs.

    classes=None: the shipped MIDs (every name resolved, see levels_2019.json). With a class list: the
    original's lookup, each name through that file with the last row winning, an unknown name an error.
    """
    data = _load_json("levels_2019.json")
    specs = {}
    for k, rows in data["levels"].items():
        try:
            pairs = tuple((mid, name) if classes is None else (classes.mid(name, last_wins=True), name)
                          for mid, name in rows)
        except OIDInputError as exc:
            raise OIDInputError(f"level {k}: {exc}") from None
        specs[k] = LevelSpec(k, pairs, group_of="drop_all")
    return specs


def frequency_band_levels(boxes: pd.DataFrame, bounds: list[int], classes: ClassList,
                          candidates: list[str] | None = None) -> dict[str, LevelSpec]:
    """Levels by box count, as the 2019 lists were made: the candidate classes ranked by their number of
    boxes (most first, ties by MID), cut at `bounds` (e.g. [38, 173, 308] gives ranks 0-37, 38-172, 173-307
    and 308 on). Candidates default to every class of `classes`; classes without boxes come last.
    """
    candidates = list(classes.mids if candidates is None else candidates)
    counts = boxes["LabelName"].value_counts()
    ranked = sorted(candidates, key=lambda m: (-int(counts.get(m, 0)), m))
    edges = [0, *sorted(bounds), len(ranked)]
    specs = {}
    for k in range(1, len(edges)):
        band = ranked[edges[k - 1]:edges[k]]
        specs[str(k)] = LevelSpec(str(k), tuple((m, classes.name(m)) for m in band), group_of="drop_all")
    return specs


def level_2019_children() -> list[str]:
    """The 443 MIDs of the 2019 leaf levels 1-5 (the original's LEVEL_CHILDREN)."""
    return list(_load_json("levels_2019.json")["children"])


@dataclass
class LevelRows:
    """One level file: its box rows (direct and copied) and its negative images."""

    boxes: pd.DataFrame
    negative_ids: list[str]
    summary: LevelSummary
    with_negatives: bool

    def _negatives(self) -> pd.DataFrame:
        return negative_rows(self.negative_ids).reindex(columns=self.boxes.columns)

    def to_frame(self) -> pd.DataFrame:
        """All rows as one frame, as the original's concat made it."""
        if not self.with_negatives:
            return self.boxes
        return pd.concat([self.boxes, self._negatives()], axis=0, ignore_index=True)

    def write_csv(self, path: str) -> None:
        """Write the file (box rows, then negatives) under a temporary name, renamed when complete.

        The negatives are appended as a second block instead of concatenated first, which would turn the
        coordinate columns into slow object columns; the text is the same.
        """
        with atomic_path(path) as tmp:
            self.boxes.to_csv(tmp, index=False)
            if self.with_negatives and self.negative_ids:
                self._negatives().to_csv(tmp, index=False, header=False, mode="a")


def build_level(boxes: pd.DataFrame, spec: LevelSpec, hierarchy: Hierarchy | None = None,
                source: str = "<boxes>", subset: str = "") -> LevelRows:
    """The rows of one level file made from one annotation frame (see the module docstring for the rules)."""
    summary = LevelSummary(spec.key, subset)
    if spec.group_of != "keep":
        if "IsGroupOf" not in boxes.columns:
            raise OIDInputError(f"level {spec.key} drops group-of boxes but there is no IsGroupOf column", source)
        not_group = (boxes["IsGroupOf"] == 0).to_numpy()
    if spec.group_of == "drop_all":
        boxes = boxes[not_group]
    labels = boxes["LabelName"]
    level_mids = set(spec.mids)
    direct = labels.isin(level_mids).to_numpy()
    if spec.group_of == "drop_direct":
        direct &= not_group
    parts = [boxes[direct]]
    summary.direct_rows = int(direct.sum())

    if spec.children:
        if hierarchy is None:
            raise ValueError("levels with child copies need the hierarchy")
        rows_by_label = pd.Series(np.arange(len(labels))).groupby(labels.to_numpy()).indices
        take, new_label = [], []
        for child in spec.children:
            idx = rows_by_label.get(child)
            if idx is None or child not in hierarchy:
                continue
            for parent in hierarchy.ancestors(child):
                if parent in level_mids:
                    take.append(idx)
                    new_label.append(np.full(len(idx), parent, dtype=object))
                    summary.copies_by_parent[parent] = summary.copies_by_parent.get(parent, 0) + len(idx)
        if take:
            copies = boxes.iloc[np.concatenate(take)].copy()
            copies["LabelName"] = np.concatenate(new_label)
            parts.append(copies)
            summary.copied_rows = len(copies)

    out = pd.concat(parts, axis=0, ignore_index=True) if len(parts) > 1 else parts[0]
    negatives: list[str] = []
    with_negatives = spec.negatives != "none"
    if with_negatives:
        image_ids = boxes["ImageID"].to_numpy(dtype=object)
        if spec.negatives == "all_images":
            candidates = pd.unique(image_ids)
        else:
            candidates = pd.unique(image_ids[labels.isin(set(spec.negative_candidates)).to_numpy()])
        kept = set(out["ImageID"].unique())
        kept.update(image_ids[labels.isin(set(spec.not_negative)).to_numpy()])
        negatives = [i for i in candidates if i not in kept]
        summary.negative_images = len(negatives)
        out = _confidence_as_float(out)
        # the original's concat with its negatives frame appended the columns the input lacked
        out = out.reindex(columns=list(out.columns) + [c for c in BOX_COLUMNS if c not in out.columns])
    if spec.thirteen_columns:
        out = out.reindex(columns=list(BOX_COLUMNS), fill_value="")
    return LevelRows(out, negatives, summary, with_negatives)


def _confidence_as_float(df: pd.DataFrame) -> pd.DataFrame:
    # The original always appended its negatives frame, whose float Confidence made the column float
    # ("1.0") even when it held no rows; keep that text whatever pandas does with empty frames.
    if "Confidence" in df.columns and pd.api.types.is_integer_dtype(df["Confidence"]):
        return df.astype({"Confidence": np.float64})
    return df


def level_folder(output_dir: str, key: str) -> str:
    """`output_dir/level_KEY_files/`, KEY a level ("1".."7") or "1_low_samples"."""
    return os.path.join(output_dir, f"level_{key}_files")


def level_file(output_dir: str, key: str, kind: str) -> str:
    """`level_KEY_files/{kind}-annotations-bbox-level-N.csv`, the original's names; kind e.g. 'train',
    'validation', 'train-exists'; N the level number ("1" for "1_low_samples")."""
    return os.path.join(level_folder(output_dir, key), f"{kind}-annotations-bbox-level-{key.split('_')[0]}.csv")


def level_class_file(output_dir: str, key: str) -> str:
    """`level_KEY_files/class-descriptions-boxable-level-N.csv`, the original's name."""
    return os.path.join(level_folder(output_dir, key), f"class-descriptions-boxable-level-{key.split('_')[0]}.csv")


# Where a level's training inputs come from. levels: stage 1's train/validation files, images in DATASET_PATH/train/
# and validation/; exists: the 2019 exists split (labelProcess/gen_exists_annotation.py), whose validation images
# are taken from the train folder, sized by train_image_params.csv, as gujingxiao's generator read them.
SPLITS = ("levels", "exists")


@dataclass
class LevelInputs:
    """The files of one level's train and validation subsets (see SPLITS), and what makes them if missing."""

    classes: str
    annotations: dict[str, str]
    params: dict[str, str]
    images: dict[str, str]
    advice: str

    def check(self, subsets: tuple[str, ...]) -> None:
        """OIDInputError naming the first missing file of `subsets`, and the step that writes it."""
        for path in [self.classes] + [p for s in subsets for p in (self.annotations[s], self.params[s])]:
            if not os.path.isfile(path):
                raise OIDInputError(f"not found: {self.advice}, or set --output-path", path)


def level_inputs(output_path: str, dataset_path: str, level: str, split: str = "levels",
                 select: bool = False) -> LevelInputs:
    """The files of `level` in `split`; select: train on the -select file of labelProcess/tooMuch_label_select.py."""
    subsets = ("train", "validation")
    classes = level_class_file(output_path, level)
    if split == "exists":
        train = level_file(output_path, level, "train-exists")
        return LevelInputs(classes, {"train": train[:-4] + "-select.csv" if select else train,
                                     "validation": level_file(output_path, level, "val-exists")},
                           dict.fromkeys(subsets, os.path.join(output_path, "train_image_params.csv")),
                           dict.fromkeys(subsets, os.path.join(dataset_path, "train")),
                           "run labelProcess/create_files_for_training_by_levels.py, gen_exists_annotation.py (and "
                           "tooMuch_label_select.py for --select) and collect_image_parameters.py first")
    if split != "levels":
        raise ValueError(f"unknown split {split!r}: one of {', '.join(SPLITS)}")
    return LevelInputs(classes, {s: level_file(output_path, level, s) for s in subsets},
                       {s: os.path.join(output_path, f"{s}_image_params.csv") for s in subsets},
                       {s: os.path.join(dataset_path, s) for s in subsets},
                       "run stage 1 (create_files_for_training_by_levels.py) and stage 2 (find_image_parameters.py) "
                       "first")


def write_level_files(specs: list[LevelSpec], inputs: dict[str, dict[str, str]], output_dir: str,
                      read: Callable[[str], pd.DataFrame], hierarchy: Hierarchy | None = None
                      ) -> list[LevelSummary]:
    """Write each level's class-description file and one annotation file per subset.

    inputs: level key -> {subset: annotation CSV path}; each distinct path is read once with `read`, and let go
    after the last level that reads it: levels sharing an input are written one after the other (the 2018 set's
    level 1 and low samples read the 2019 file, levels 2-5 the v4 one), so at full size one input is held at a
    time. Files go to `output_dir/level_KEY_files/`, each written under a temporary name and renamed when
    complete. The summaries come back in the order of `specs`.
    """
    def paths(i: int) -> set[str]:
        return set(inputs[specs[i].key].values())

    order = sorted(range(len(specs)), key=lambda i: next(j for j in range(len(specs)) if paths(j) & paths(i)))
    last_use = {path: n for n, i in enumerate(order) for path in paths(i)}
    frames: dict[str, pd.DataFrame] = {}
    summaries: dict[int, list[LevelSummary]] = {}
    for n, i in enumerate(tqdm(order, desc="levels", unit="level", disable=len(specs) < 2)):
        spec, built = specs[i], {}
        for subset, path in inputs[spec.key].items():  # read and check everything before writing anything
            if path not in frames:
                log.info("reading %s", path)
                frames[path] = read(path)
            built[subset] = build_level(frames[path], spec, hierarchy, source=path, subset=subset)
        for path in [p for p in frames if last_use[p] == n]:
            del frames[path]
        write_class_descriptions(level_class_file(output_dir, spec.key), spec.classes)
        summaries[i] = []
        for subset, rows in built.items():
            target = level_file(output_dir, spec.key, subset)
            rows.write_csv(target)
            log.info("%s -> %s", rows.summary.line(), target)
            summaries[i].append(rows.summary)
        del built
    return [summary for i in range(len(specs)) for summary in summaries[i]]
