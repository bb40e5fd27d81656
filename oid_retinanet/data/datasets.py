"""What training, `debug.py` and the evaluation of a model read: one subset's images and boxes as `LevelData`.

Three formats, each converted by its reader; from `LevelData` on there is one code path (generator, anchor
targets, per-epoch mAP, prediction caches):
- `oid`: an Open Images level file of stage 1 (`load_level_data`) with its class file, stage 2's image sizes
  (`{subset}_image_params.csv`) and the images in a folder, flat or in subfolders (`train/0a1/…jpg` as the 2018
  layout, any one level deep). Rows with an empty LabelName are images without boxes.
- `csv`: keras-retinanet's CSV dataset (`load_csv_dataset`): rows `path,x1,y1,x2,y2,class_name` in pixels, no
  header, `path,,,,,` an image without boxes, paths relative to the annotation file's folder (or --csv-base-dir);
  a `class_name,id` file whose ids are the model's output indices (keras-retinanet: max id + 1 outputs; ids
  nobody names become placeholder classes `unused-<id>`). Its messages say what keras-retinanet's said ("x2 (1)
  must be higher than x1 (1)"), with the file and line. Coordinates may be decimal (keras-retinanet took integers
  only). Image sizes come from each image's header.
- `coco`: COCO's instances JSON (`load_coco_dataset`), as keras-retinanet's CocoGenerator read it: classes are the
  categories sorted by id (MID: the id as text, name: its name), crowd boxes and boxes under a pixel wide or high
  are left out, `[x, y, w, h]` becomes x1, y1, x2, y2; images without boxes stay as negatives.

Rules every format shares (`assemble`): an image missing on disk or unreadable is skipped with a count in the log
(an error when none is left); a box reaching outside its image is dropped with a count (keras-retinanet's
filter_annotations); a box empty once rounded to pixels is dropped with a count (the original's generator); a
malformed row or an unknown class is an error naming the file, the row and the value (and so is a csv box with
x2 <= x1, as keras-retinanet's). Images
are identified by their file name without extension (the caches and ground truth key on it): two paths with one
name are an error naming both.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image

from oid_retinanet.errors import OIDInputError
from oid_retinanet.files import open_input, reading
from oid_retinanet.oid.annotations import read_boxes, read_csv_checked
from oid_retinanet.oid.classes import ClassList, read_class_descriptions

log = logging.getLogger(__name__)

FORMATS = ("oid", "csv", "coco")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# keras-retinanet's coco layout: COCO_PATH/annotations/instances_<set>.json, images in COCO_PATH/images/<set>/
COCO_SETS = {"train": "train2017", "validation": "val2017"}


@dataclass
class LevelData:
    """Images of one subset with their boxes. Boxes are x1, y1, x2, y2 normalised; image i owns
    boxes[offsets[i]:offsets[i + 1]]."""

    classes: ClassList
    image_ids: np.ndarray
    paths: list[str]
    widths: np.ndarray
    heights: np.ndarray
    offsets: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def image_boxes(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Normalised boxes (M, 4) and class indices (M,) of image i."""
        part = slice(self.offsets[i], self.offsets[i + 1])
        return self.boxes[part], self.labels[part]

    def images_by_class(self) -> list[np.ndarray]:
        """For each class, the images holding at least one of its boxes; last, the images without boxes."""
        box_image = np.repeat(np.arange(len(self)), np.diff(self.offsets))
        pairs = np.unique(np.stack([self.labels.astype(np.int64), box_image], axis=1), axis=0)
        split = np.searchsorted(pairs[:, 0], np.arange(self.num_classes + 1))
        per_class = [pairs[split[c]:split[c + 1], 1] for c in range(self.num_classes)]
        return per_class + [np.flatnonzero(np.diff(self.offsets) == 0)]

    def aspect_ratios(self) -> np.ndarray:
        return self.widths / self.heights

    def only(self, wanted: Sequence[str] | None) -> LevelData:
        """These classes only (MIDs or display names), in this order (keras-retinanet's labels filter): their
        boxes are kept, the images left without a box by it are dropped (images that had none stay, as
        negatives). None or empty: self."""
        if not wanted:
            return self
        kept = filter_classes(self.classes, wanted)
        remap = pd.Index(kept.mids).get_indexer(np.asarray(self.classes.mids, dtype=object))
        box_class = remap[self.labels]
        counts = np.diff(self.offsets)
        box_image = np.repeat(np.arange(len(self)), counts)[box_class >= 0]
        still = np.bincount(box_image, minlength=len(self))
        keep = (counts == 0) | (still > 0)
        log.info("labels filter: %d classes; %d images without a box of them dropped", len(kept),
                 int((~keep).sum()))
        offsets = np.concatenate([[0], np.cumsum(still[keep])])
        return LevelData(kept, self.image_ids[keep], [p for p, k in zip(self.paths, keep) if k], self.widths[keep],
                         self.heights[keep], offsets, self.boxes[box_class >= 0],
                         box_class[box_class >= 0].astype(np.int32))


@dataclass(frozen=True)
class Source:
    """One subset's annotations in one of FORMATS and where its images are.

    classes: the class file (oid: MID,DisplayName; csv: class_name,id; coco: none, the JSON has them);
    images: the image folder (csv: the folder the paths are relative to); params: oid's image sizes;
    advice: what makes a missing oid file."""

    format: str
    annotations: str
    classes: str | None = None
    images: str | None = None
    params: str | None = None
    advice: str = ""

    def load(self, labels_filter: Sequence[str] | None = None) -> LevelData:
        """The subset as LevelData (labels_filter: these classes only, in this order: `filter_labels`)."""
        for path in (self.classes, self.annotations, self.params):
            if path is not None and self.advice and not os.path.isfile(path):
                raise OIDInputError(f"not found: {self.advice}, or set --output-path", path)
        if self.format == "oid":
            return load_level_data(self.annotations, self.classes, self.params, self.images, labels_filter)
        if self.format == "csv":
            return load_csv_dataset(self.annotations, self.classes, self.images, labels_filter)
        if self.format == "coco":
            return load_coco_dataset(self.annotations, self.images, labels_filter)
        raise ValueError(f"unknown dataset format {self.format!r}: one of {', '.join(FORMATS)}")

    @property
    def class_source(self) -> str:
        """The file the classes are read from (for the model card)."""
        return self.classes or self.annotations


def dataset_sources(fmt: str, dataset_path: str, output_path: str = "", level: str = "1", split: str = "levels",
                    select: bool = False, train: str | None = None, validation: str | None = None,
                    classes: str | None = None, base_dir: str | None = None) -> dict[str, Source]:
    """The train and validation Sources of a run (a subset the format gives no file for is absent).

    oid: the level's files (`oid.levels.level_inputs`; train / validation replace the split's annotation files);
    csv: train and validation annotation files with the class file `classes`; coco: `dataset_path` is the COCO
    folder, train / validation replace its instances_train2017.json / instances_val2017.json."""
    if fmt == "oid":
        from oid_retinanet.oid.levels import level_inputs

        inputs = level_inputs(output_path, dataset_path, level, split, select)
        given = {"train": train, "validation": validation}
        return {s: Source("oid", given[s] or inputs.annotations[s], inputs.classes, inputs.images[s],
                          inputs.params[s], inputs.advice) for s in inputs.annotations}
    if fmt == "csv":
        if not classes:
            raise OIDInputError("a csv dataset needs its class file (`csv ANNOTATIONS CLASSES`, or --csv-classes)")
        files = {"train": train, "validation": validation}
        return {s: Source("csv", path, classes, base_dir) for s, path in files.items() if path}
    if fmt == "coco":
        files = {s: given or os.path.join(dataset_path, "annotations", f"instances_{name}.json")
                 for (s, name), given in zip(COCO_SETS.items(), (train, validation))}
        return {s: Source("coco", path, images=os.path.join(dataset_path, "images", _coco_set(path)))
                for s, path in files.items()}
    raise OIDInputError(f"unknown dataset format {fmt!r}: one of {', '.join(FORMATS)}")


def add_dataset_options(parser, files: str) -> None:
    """--dataset-format and --csv-classes on a command line (`files`: the flags that name the annotation files)."""
    parser.add_argument("--dataset-format", choices=FORMATS, default="oid",
                        help=f"oid: the level files of stages 1 and 2; csv: keras-retinanet's CSV dataset ({files}, "
                             "--csv-classes; or `csv ANNOTATIONS CLASSES`); coco: COCO's instances JSON, "
                             "--dataset-path the COCO folder (annotations/instances_<set>.json, images/<set>/; or "
                             "`coco COCO_PATH`) (default: %(default)s)")
    parser.add_argument("--csv-classes", metavar="CSV", help="csv: the class file, `class_name,id` lines")


def dataset_words(words: Sequence[str]) -> dict[str, str]:
    """keras-retinanet's dataset arguments as our settings: `oid DATASET_PATH`, `csv ANNOTATIONS CLASSES` or
    `coco COCO_PATH` -> {"format", and "dataset_path" or "annotations" and "classes"}; {} for no words."""
    if not words:
        return {}
    kind, rest = words[0], list(words[1:])
    if kind in ("oid", "coco") and len(rest) == 1:
        return {"format": kind, "dataset_path": rest[0]}
    if kind == "csv" and len(rest) == 2:
        return {"format": "csv", "annotations": rest[0], "classes": rest[1]}
    raise OIDInputError(f"unexpected arguments {' '.join(words)}: keras-retinanet's forms are `oid DATASET_PATH`, "
                        "`csv ANNOTATIONS CLASSES` and `coco COCO_PATH` (pascal and kitti are not read here)")


def _coco_set(instances_json: str) -> str:
    """`instances_val2017.json` -> `val2017` (the image folder's name in keras-retinanet's layout)."""
    stem = os.path.basename(instances_json).split(".")[0]
    return stem[len("instances_"):] if stem.startswith("instances_") else stem


def index_images(folder: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> dict[str, str]:
    """ImageID (file name without extension) -> path, for images in `folder` and its subfolders one level down."""
    found: dict[str, str] = {}

    def scan(path: str, depth: int) -> None:
        with os.scandir(path) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    if depth == 0:
                        scan(entry.path, 1)
                elif entry.name.lower().endswith(tuple(extensions)):
                    found.setdefault(os.path.splitext(entry.name)[0], entry.path)

    if not os.path.isdir(folder):
        raise OIDInputError("image folder not found", str(folder))
    scan(str(folder), 0)
    return found


def filter_classes(classes: ClassList, wanted: Sequence[str]) -> ClassList:
    """The classes named in `wanted` (MIDs or display names), in that order (keras-retinanet's labels filter)."""
    mids = []
    for item in wanted:
        if item in classes:
            mids.append(item)
            continue
        found = [m for m, n in zip(classes.mids, classes.names) if n.lower() == item.strip().lower()]
        if len(found) != 1:
            raise OIDInputError(f"labels filter: {item!r} is {'ambiguous' if found else 'not a class'} of this level",
                                classes.source)
        mids.append(found[0])
    if len(set(mids)) != len(mids):
        raise OIDInputError(f"labels filter names a class twice: {list(wanted)}", classes.source)
    return ClassList(tuple(mids), tuple(classes.name(m) for m in mids), source=f"{classes.source} (filtered)")


def assemble(source: str, classes: ClassList, ids: Sequence[str], paths: Sequence[str], widths: np.ndarray,
             heights: np.ndarray, box_image: np.ndarray, boxes: np.ndarray, box_class: np.ndarray,
             labels_filter: Sequence[str] | None = None) -> LevelData:
    """LevelData from the images found (ids, paths, sizes) and their boxes (`box_image` indexes the images,
    `boxes` normalised x1, y1, x2, y2, `box_class` indexes `classes`), by the rules every format shares (module
    docstring); then `LevelData.only(labels_filter)`."""
    widths, heights = np.asarray(widths, np.int64), np.asarray(heights, np.int64)
    box_image, box_class = np.asarray(box_image, np.int64), np.asarray(box_class, np.int64)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    w, h = widths[box_image], heights[box_image]
    # The original dropped boxes whose corners round to the same pixel column or row.
    empty = (np.round(boxes[:, 0] * w) == np.round(boxes[:, 2] * w)) | \
            (np.round(boxes[:, 1] * h) == np.round(boxes[:, 3] * h))
    del w, h
    if empty.any():
        log.warning("%s: %d boxes are less than a pixel wide or high once rounded; dropped", source, int(empty.sum()))
    kept = np.flatnonzero(~empty)
    kept = kept[np.argsort(box_image[kept], kind="stable")]  # by image, in file order within one
    data = LevelData(classes, np.asarray(ids, dtype=object), list(paths), widths, heights,
                     np.searchsorted(box_image[kept], np.arange(len(ids) + 1)), boxes[kept],
                     box_class[kept].astype(np.int32))
    log.info("%s: %d images (%d without boxes), %d boxes, %d classes", source, len(data),
             int((np.diff(data.offsets) == 0).sum()), len(data.boxes), data.num_classes)
    return data.only(labels_filter)


def _read_image_params(path: str) -> pd.DataFrame:
    df = read_csv_checked(path, ("id", "width", "height"), str_columns=("id",))
    for c in ("width", "height"):
        values = pd.to_numeric(df[c], errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy())
        if bad.size:
            raise OIDInputError(f"{c} is not a number: {df[c].iloc[bad[0]]!r}", path, int(bad[0]) + 2)
        df[c] = values.astype(np.int64)
    return df.drop_duplicates("id", keep="last").set_index("id")


def load_level_data(annotations_csv: str, classes_csv: str, image_params_csv: str, images_dir: str,
                    labels_filter: Sequence[str] | None = None) -> LevelData:
    """An Open Images level file with its class file and image sizes; the images found in `images_dir`.

    As the original's generator: images missing on disk or from the image parameters (or listed there with size 0:
    unreadable) are skipped with a count; a row with XMin > XMax, a label outside the class file or a coordinate
    outside [0, 1] is an error naming the file and row."""
    classes = read_class_descriptions(classes_csv)
    df = read_boxes(annotations_csv, classes, allow_negatives=True)
    params = _read_image_params(image_params_csv)
    on_disk = index_images(images_dir)

    ids = pd.unique(df["ImageID"].to_numpy(dtype=object))
    sizes = params.reindex(ids)
    known = sizes["width"].notna().to_numpy()
    readable = known & (sizes["width"].fillna(0).to_numpy() > 0) & (sizes["height"].fillna(0).to_numpy() > 0)
    present = np.array([i in on_disk for i in ids], dtype=bool)
    keep = readable & present
    if (~present).any():
        log.warning("%s: %d of %d images are not in %s; skipped", annotations_csv, int((~present).sum()), len(ids),
                    images_dir)
    if (present & ~known).any():
        log.warning("%s: %d images have no row in %s; skipped", annotations_csv, int((present & ~known).sum()),
                    image_params_csv)
    if (present & known & ~readable).any():
        log.warning("%s: %d images are unreadable (size 0 in %s); skipped", annotations_csv,
                    int((present & known & ~readable).sum()), image_params_csv)
    ids = ids[keep]
    if not len(ids):
        raise OIDInputError(f"no image of this file was found in {images_dir} with a size in {image_params_csv}",
                            annotations_csv)
    # index arrays into the file's columns, not copies of the frame (a full-size level file is 10 M rows)
    labels = df["LabelName"].to_numpy(dtype=object)
    rows = np.flatnonzero(labels != "")
    image_index = pd.Index(ids).get_indexer(df["ImageID"].to_numpy(dtype=object)[rows])
    rows, image_index = rows[image_index >= 0], image_index[image_index >= 0]
    boxes = np.stack([df[c].to_numpy(dtype=np.float64)[rows] for c in ("XMin", "YMin", "XMax", "YMax")], axis=1)
    box_class = pd.Index(classes.mids).get_indexer(labels[rows])
    del df, labels
    return assemble(annotations_csv, classes, ids, [on_disk[i] for i in ids],
                    sizes["width"].to_numpy()[keep], sizes["height"].to_numpy()[keep], image_index, boxes, box_class,
                    labels_filter)


def _csv_rows(path: str):
    """(line number, row) of a CSV file, blank lines skipped; a file that is no UTF-8 text is one error."""
    try:
        with reading(path), open_input(path, "rt", newline="", encoding="utf-8-sig") as f:
            for line, row in enumerate(csv.reader(f), start=1):
                if row and any(cell.strip() for cell in row):
                    yield line, row
    except UnicodeDecodeError as exc:
        raise OIDInputError(f"not a UTF-8 text file ({exc.reason} at byte {exc.start})", path) from None
    except csv.Error as exc:
        raise OIDInputError(f"malformed CSV: {exc}", path) from None


def read_csv_classes(path: str) -> ClassList:
    """keras-retinanet's class file (`class_name,id` lines) as the model's classes in output order: index = id;
    ids nobody names (keras-retinanet still gave them an output) become `unused-<id>`."""
    by_id: dict[int, str] = {}
    seen: dict[str, int] = {}
    for line, row in _csv_rows(path):
        if len(row) != 2:
            raise OIDInputError(f"format should be 'class_name,class_id', got {row!r}", path, line)
        name, text = row[0], row[1].strip()
        try:
            class_id = int(text)
        except ValueError:
            raise OIDInputError(f"malformed class ID: {text!r}", path, line) from None
        if class_id < 0:
            raise OIDInputError(f"class ID {class_id} is negative", path, line)
        if name in seen:
            raise OIDInputError(f"duplicate class name: {name!r} (first on line {seen[name]})", path, line)
        if class_id in by_id:
            raise OIDInputError(f"duplicate class ID {class_id} ({by_id[class_id]!r} has it too)", path, line)
        seen[name] = line
        by_id[class_id] = name
    if not by_id:
        raise OIDInputError("no classes in file", path)
    unused = [i for i in range(max(by_id) + 1) if i not in by_id]
    if unused:
        log.warning("%s: ids %s name no class; the model keeps an output for each (as keras-retinanet)", path,
                    ", ".join(map(str, unused[:10])) + (" ..." if len(unused) > 10 else ""))
    names = tuple(by_id.get(i, f"unused-{i}") for i in range(max(by_id) + 1))
    return ClassList(names, names, source=path)


CSV_FIELDS = ("x1", "y1", "x2", "y2")


def read_csv_annotations(path: str, classes: ClassList) -> tuple[list[str], list[int], np.ndarray, np.ndarray,
                                                                 np.ndarray]:
    """keras-retinanet's annotation rows: (image paths in first-seen order, the line each was first seen on,
    box image indices, pixel boxes x1, y1, x2, y2, class indices)."""
    images: dict[str, int] = {}
    first_line: list[int] = []
    box_image, boxes, labels = [], [], []
    index = {name: i for i, name in enumerate(classes.mids)}
    for line, row in _csv_rows(path):
        if len(row) < 6:
            raise OIDInputError(f"format should be 'img_file,x1,y1,x2,y2,class_name' or 'img_file,,,,,', got {row!r}",
                                path, line)
        img_file, values, class_name = row[0], row[1:5], row[5]
        if img_file not in images:
            images[img_file] = len(images)
            first_line.append(line)
        if not any(v.strip() for v in values) and not class_name.strip():
            continue  # an image without boxes
        coords = []
        for name, text in zip(CSV_FIELDS, values):
            try:
                coords.append(float(text))
            except ValueError:
                raise OIDInputError(f"malformed {name}: {text!r}", path, line) from None
            if not np.isfinite(coords[-1]):
                raise OIDInputError(f"malformed {name}: {text!r}", path, line)
        x1, y1, x2, y2 = coords
        if x2 <= x1:
            raise OIDInputError(f"x2 ({values[2]}) must be higher than x1 ({values[0]})", path, line)
        if y2 <= y1:
            raise OIDInputError(f"y2 ({values[3]}) must be higher than y1 ({values[1]})", path, line)
        if class_name not in index:
            raise OIDInputError(f"unknown class name: {class_name!r} (classes: {', '.join(classes.mids[:20])}"
                                f"{' ...' if len(classes) > 20 else ''})", path, line)
        box_image.append(images[img_file])
        boxes.append(coords)
        labels.append(index[class_name])
    if not images:
        raise OIDInputError("no rows in file", path)
    return (list(images), first_line, np.asarray(box_image, np.int64), np.asarray(boxes, np.float64).reshape(-1, 4),
            np.asarray(labels, np.int64))


def _header_size(path: str) -> tuple[int, int] | str:
    """(width, height) from an image's header, or why it cannot be read."""
    try:
        with Image.open(path) as img:
            return img.size
    except Exception as exc:  # noqa: BLE001 - any reader failure means: skip this image, say why
        return f"{type(exc).__name__}: {exc}"


def _unique_ids(ids: list[str], paths: list[str], source: str, rows: Sequence[int] | None = None) -> None:
    seen: dict[str, int] = {}
    for k, image_id in enumerate(ids):
        if image_id in seen:
            j = seen[image_id]
            where = f" (rows {rows[j]} and {rows[k]})" if rows is not None else ""
            raise OIDInputError(f"two images have the file name {image_id!r}{where}: {paths[j]} and {paths[k]}; "
                                "images are told apart by file name here: rename one", source)
        seen[image_id] = k


def _pixel_boxes(source: str, boxes: np.ndarray, box_image: np.ndarray, widths: np.ndarray,
                 heights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised boxes of pixel boxes inside their images, and the mask of those kept (keras-retinanet's
    filter_annotations dropped the others with a warning; so do we, with a count)."""
    w, h = widths[box_image].astype(np.float64), heights[box_image].astype(np.float64)
    inside = (boxes[:, 0] >= 0) & (boxes[:, 1] >= 0) & (boxes[:, 2] <= w) & (boxes[:, 3] <= h)
    if not inside.all():
        k = int(np.flatnonzero(~inside)[0])
        log.warning("%s: %d boxes reach outside their image; dropped (the first: %s in a %dx%d image)", source,
                    int((~inside).sum()), boxes[k].tolist(), widths[box_image[k]], heights[box_image[k]])
    scale = np.stack([w, h, w, h], axis=1)
    return boxes[inside] / scale[inside], inside


def _found(source: str, ids: list[str], paths: list[str], sizes: list, rows: Sequence[int] | None = None
           ) -> np.ndarray:
    """The mask of images present and readable (a size, not a reason), the others counted in the log."""
    ok = np.array([not isinstance(s, str) for s in sizes], bool)
    if not ok.all():
        k = int(np.flatnonzero(~ok)[0])
        where = f" (row {rows[k]})" if rows is not None else ""
        log.warning("%s: %d of %d images are missing or unreadable; skipped (the first%s: %s: %s)", source,
                    int((~ok).sum()), len(ids), where, paths[k], sizes[k])
    if not ok.any():
        raise OIDInputError(f"none of its {len(ids)} images could be read (the first: {paths[0]}: {sizes[0]})", source)
    return ok


def load_csv_dataset(annotations_csv: str, classes_csv: str, base_dir: str | None = None,
                     labels_filter: Sequence[str] | None = None) -> LevelData:
    """keras-retinanet's CSV dataset (module docstring); image paths are relative to `base_dir` (default: the
    annotation file's folder, as keras-retinanet)."""
    classes = read_csv_classes(classes_csv)
    names, lines, box_image, boxes, labels = read_csv_annotations(annotations_csv, classes)
    base = base_dir if base_dir is not None else os.path.dirname(annotations_csv)
    paths = [os.path.join(base, name) for name in names]
    ids = [os.path.splitext(os.path.basename(name))[0] for name in names]
    _unique_ids(ids, paths, annotations_csv, lines)
    with ThreadPoolExecutor(8) as pool:  # header reads: I/O bound
        sizes = list(pool.map(_header_size, paths))
    return _subset(annotations_csv, classes, ids, paths, sizes, box_image, boxes, labels, labels_filter, lines)


def _subset(source: str, classes: ClassList, ids: list[str], paths: list[str], sizes: list, box_image: np.ndarray,
            boxes: np.ndarray, labels: np.ndarray, labels_filter: Sequence[str] | None,
            rows: Sequence[int] | None = None) -> LevelData:
    """`assemble` for pixel boxes: the images found (`sizes`: (width, height), or why an image is not usable)
    and their boxes inside the image."""
    ok = _found(source, ids, paths, sizes, rows)
    widths = np.array([s[0] if k else 1 for s, k in zip(sizes, ok)], np.int64)
    heights = np.array([s[1] if k else 1 for s, k in zip(sizes, ok)], np.int64)
    on = ok[box_image]
    box_image, boxes, labels = box_image[on], boxes[on], labels[on]
    normalised, inside = _pixel_boxes(source, boxes, box_image, widths, heights)
    new_index = np.cumsum(ok) - 1
    return assemble(source, classes, [i for i, k in zip(ids, ok) if k], [p for p, k in zip(paths, ok) if k],
                    widths[ok], heights[ok], new_index[box_image[inside]], normalised, labels[inside], labels_filter)


def _coco_fields(item: object, where: str, path: str, fields: dict[str, type | tuple[type, ...]]) -> dict:
    if not isinstance(item, dict):
        raise OIDInputError(f"{where} is not an object: {item!r}", path)
    for name, kind in fields.items():
        if name not in item:
            raise OIDInputError(f"{where} has no {name!r}: {json.dumps(item)[:200]}", path)
        if not isinstance(item[name], kind) or isinstance(item[name], bool):
            expected = " or ".join(t.__name__ for t in (kind if isinstance(kind, tuple) else (kind,)))
            raise OIDInputError(f"{where}: {name} {item[name]!r} is not {expected}", path)
    return item


def load_coco_dataset(instances_json: str, images_dir: str, labels_filter: Sequence[str] | None = None
                      ) -> LevelData:
    """COCO's instances JSON with the images in `images_dir` (module docstring)."""
    try:
        with reading(instances_json), open_input(instances_json, "rt", encoding="utf-8") as f:
            doc = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OIDInputError(f"not a JSON file ({exc})", instances_json) from None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "categories")):
        raise OIDInputError("not a COCO instances file: it needs the lists 'images', 'categories' and "
                            "'annotations'", instances_json)
    number = (int, float)
    categories = sorted((_coco_fields(c, f"categories[{k}]", instances_json, {"id": int, "name": str})
                         for k, c in enumerate(doc["categories"])), key=lambda c: c["id"])
    if not categories:
        raise OIDInputError("no categories", instances_json)
    category_index = {c["id"]: k for k, c in enumerate(categories)}
    if len(category_index) != len(categories):
        raise OIDInputError("a category id is given twice", instances_json)
    classes = ClassList(tuple(str(c["id"]) for c in categories), tuple(c["name"] for c in categories),
                        source=instances_json)
    images = [_coco_fields(im, f"images[{k}]", instances_json,
                           {"id": (int, str), "file_name": str, "width": int, "height": int})
              for k, im in enumerate(doc["images"])]
    image_index = {im["id"]: k for k, im in enumerate(images)}
    box_image, boxes, labels = [], [], []
    crowd = small = 0
    for k, a in enumerate(doc.get("annotations") or []):
        a = _coco_fields(a, f"annotations[{k}]", instances_json,
                         {"image_id": (int, str), "category_id": int, "bbox": list})
        if a["image_id"] not in image_index:
            raise OIDInputError(f"annotations[{k}]: image_id {a['image_id']!r} is not in images", instances_json)
        if a["category_id"] not in category_index:
            raise OIDInputError(f"annotations[{k}]: category_id {a['category_id']} is not in categories",
                                instances_json)
        bbox = a["bbox"]
        if len(bbox) != 4 or not all(isinstance(v, number) and np.isfinite(v) for v in bbox):
            raise OIDInputError(f"annotations[{k}]: bbox {bbox!r} is not [x, y, width, height]", instances_json)
        if a.get("iscrowd", 0):
            crowd += 1
            continue
        if bbox[2] < 1 or bbox[3] < 1:
            small += 1
            continue
        box_image.append(image_index[a["image_id"]])
        boxes.append([bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]])
        labels.append(category_index[a["category_id"]])
    if crowd or small:
        log.info("%s: %d crowd boxes and %d boxes under a pixel wide or high left out (as keras-retinanet)",
                 instances_json, crowd, small)
    paths = [os.path.join(images_dir, im["file_name"]) for im in images]
    ids = [os.path.splitext(os.path.basename(im["file_name"]))[0] for im in images]
    _unique_ids(ids, paths, instances_json)
    sizes = [(im["width"], im["height"]) if im["width"] > 0 and im["height"] > 0 else "size 0 in the JSON"
             for im in images]
    sizes = [s if isinstance(s, str) or os.path.isfile(p) else "not found" for s, p in zip(sizes, paths)]
    return _subset(instances_json, classes, ids, paths, sizes, np.asarray(box_image, np.int64),
                   np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(labels, np.int64), labels_filter)
