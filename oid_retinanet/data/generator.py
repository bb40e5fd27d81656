"""The training data of stage 3: one level's boxes, images and sizes, and a Keras `PyDataset` over them.

`load_level_data` reads what stages 1 and 2 wrote (a level annotation file, its class-description file and the
subset's `{subset}_image_params.csv`) and finds the images in a folder, flat or in subfolders (`train/0a1/…jpg`
as the 2018 layout, `train/0/…jpg`, any one level deep). As the original's generator:
- rows with an empty LabelName are negative images: they stay, with no boxes (every anchor negative);
- images missing on disk or from the image parameters (or listed there with size 0: unreadable) are skipped,
  with a count in the log;
- boxes that are empty once rounded to pixels are dropped with a count; a row with XMin > XMax, a label
  outside the class file or a coordinate outside [0, 1] is an error naming the file and row.

`OpenImagesGenerator` yields `(images, {"regression": ..., "classification": ...})` batches:
- training order as the original: every slot of a batch draws a class uniformly (among classes with images,
  plus "empty" for the negative images) and then an image of that class, so rare classes are seen as often
  as frequent ones; then (`group="ratio"`, the default) windows of 16 batches are sorted by aspect ratio so a
  batch holds images of similar shape and little padding. `group="random"` keeps the draw order (the original).
  `sampling="sequential"` visits every image once per epoch, sorted by aspect ratio (validation).
- each image: read as BGR, the per-channel intensity change (training), caffe preprocessing, the random
  transform, resizing with the min/max side rule; boxes follow. Images are padded (zeros) to the batch's
  largest shape and targets computed for the padded anchors (`data.targets`).
- batch `i` of epoch `e` depends only on (seed, e, i), so parallel workers give the same batches as one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd

from oid_retinanet.data.augment import RandomTransform, random_intensity_change
from oid_retinanet.data.preprocess import MAX_SIDE, MIN_SIDE, preprocess_image, read_image_bgr, resize_image
from oid_retinanet.data.targets import anchor_targets
from oid_retinanet.errors import OIDInputError
from oid_retinanet.model.anchors import DEFAULT_ANCHOR_PARAMS, AnchorParameters, anchors_for_shape, feature_shapes
from oid_retinanet.oid.annotations import read_boxes, read_csv_checked
from oid_retinanet.oid.classes import ClassList, read_class_descriptions

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
RATIO_WINDOW = 16  # batches sorted together by aspect ratio
SAMPLING = ("balanced", "sequential")
GROUPING = ("ratio", "random")


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


def _read_image_params(path: str) -> pd.DataFrame:
    df = read_csv_checked(path, ("id", "width", "height"), str_columns=("id",))
    for c in ("width", "height"):
        values = pd.to_numeric(df[c], errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy())
        if bad.size:
            raise OIDInputError(f"{c} is not a number: {df[c].iloc[bad[0]]!r}", path, int(bad[0]) + 2)
        df[c] = values.astype(np.int64)
    return df.drop_duplicates("id", keep="last").set_index("id")


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


def load_level_data(annotations_csv: str, classes_csv: str, image_params_csv: str, images_dir: str,
                    labels_filter: Sequence[str] | None = None) -> LevelData:
    """Read a level file with its class file and image parameters; keep the images found in `images_dir`.

    labels_filter: train only these classes (MIDs or display names, in this order): boxes of other classes
    are dropped, and so are the images left without boxes (images that had none stay, as negatives).
    """
    classes = read_class_descriptions(classes_csv)
    df = read_boxes(annotations_csv, classes, allow_negatives=True)
    if labels_filter:
        classes = filter_classes(classes, labels_filter)
        keep_rows = df["LabelName"].isin(set(classes.mids)).to_numpy()
        had_boxes = set(df.loc[df["LabelName"] != "", "ImageID"])
        still = set(df.loc[keep_rows, "ImageID"])
        df = df[keep_rows | ((df["LabelName"] == "") & ~df["ImageID"].isin(had_boxes))]
        log.info("labels filter: %d classes; %d images without a box of them dropped", len(classes),
                 len(had_boxes - still))
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
    widths = sizes["width"].to_numpy()[keep].astype(np.int64)
    heights = sizes["height"].to_numpy()[keep].astype(np.int64)
    if not len(ids):
        raise OIDInputError(f"no image of this file was found in {images_dir} with a size in {image_params_csv}",
                            annotations_csv)

    rows = df[df["LabelName"] != ""]
    image_index = pd.Index(ids).get_indexer(rows["ImageID"].to_numpy(dtype=object))
    rows = rows[image_index >= 0]
    image_index = image_index[image_index >= 0]
    coords = rows[["XMin", "YMin", "XMax", "YMax"]].to_numpy(dtype=np.float64)
    w = widths[image_index][:, None]
    h = heights[image_index][:, None]
    # The original dropped boxes whose corners round to the same pixel column or row.
    empty = (np.round(coords[:, 0:1] * w) == np.round(coords[:, 2:3] * w))[:, 0] | \
            (np.round(coords[:, 1:2] * h) == np.round(coords[:, 3:4] * h))[:, 0]
    if empty.any():
        log.warning("%s: %d boxes are less than a pixel wide or high once rounded; dropped", annotations_csv,
                    int(empty.sum()))
    class_index = pd.Index(classes.mids).get_indexer(rows["LabelName"].to_numpy(dtype=object))
    order = np.argsort(image_index[~empty], kind="stable")
    box_image = image_index[~empty][order]
    offsets = np.searchsorted(box_image, np.arange(len(ids) + 1))
    data = LevelData(classes, np.asarray(ids, dtype=object), [on_disk[i] for i in ids], widths, heights, offsets,
                     coords[~empty][order], class_index[~empty][order].astype(np.int32))
    log.info("%s: %d images (%d without boxes), %d boxes, %d classes", annotations_csv, len(data),
             int((np.diff(offsets) == 0).sum()), len(data.boxes), data.num_classes)
    return data


def balanced_draw(images_by_class: list[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """n image indices: each a uniformly drawn non-empty class (or the no-box list), then one of its images."""
    lists = [a for a in images_by_class if len(a)]
    if not lists:
        raise ValueError("no images to draw from")
    picks = rng.integers(0, len(lists), size=n)
    sizes = np.array([len(a) for a in lists])
    within = (rng.random(n) * sizes[picks]).astype(np.int64)
    flat = np.concatenate(lists)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return flat[starts[picks] + within]


@dataclass(frozen=True)
class GeneratorConfig:
    """How images become network inputs: sizes, augmentation, batching."""

    batch_size: int = 1
    min_side: int = MIN_SIDE
    max_side: int = MAX_SIDE
    transform: RandomTransform | None = None
    intensity: tuple[int, int] | None = None
    sampling: str = "balanced"
    group: str = "ratio"
    steps: int | None = None
    seed: int = 0
    anchor_params: AnchorParameters = DEFAULT_ANCHOR_PARAMS
    feature_shapes: Callable = feature_shapes  # of the backbone (`model.retinanet.backbone_feature_shapes`)


class OpenImagesGenerator(keras.utils.PyDataset):
    """Batches `(images (B, H, W, 3) float32, {"regression": (B, N, 5), "classification": (B, N, 1)})`.

    config.steps: batches per epoch ("balanced" sampling; default: as many as images / batch size).
    `groups`: the image indices of each batch of the current epoch.
    workers / use_multiprocessing / max_queue_size: Keras' PyDataset parallelism.
    """

    def __init__(self, data: LevelData, config: GeneratorConfig = GeneratorConfig(), workers: int = 1,
                 use_multiprocessing: bool = False, max_queue_size: int = 10) -> None:
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
        if config.sampling not in SAMPLING or config.group not in GROUPING:
            raise ValueError(f"sampling must be one of {SAMPLING} and group one of {GROUPING}")
        self.data = data
        self.config = config
        self.epoch = 0
        self._by_class = data.images_by_class()
        self.groups = self._make_groups()

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def __len__(self) -> int:
        return len(self.groups)

    def on_epoch_end(self) -> None:
        self.start_epoch(self.epoch + 1)

    def start_epoch(self, epoch: int) -> None:
        """Draw the batches of `epoch` (a resumed run continues with the draws it would have had)."""
        self.epoch = epoch
        self.groups = self._make_groups()

    def _make_groups(self) -> list[np.ndarray]:
        cfg = self.config
        b = cfg.batch_size
        ratios = self.data.aspect_ratios()
        if cfg.sampling == "sequential":
            order = np.argsort(ratios, kind="stable")
            return [order[i:i + b] for i in range(0, len(order), b)]
        steps = cfg.steps or max(1, -(-len(self.data) // b))
        rng = np.random.default_rng([cfg.seed, self.epoch])
        picks = balanced_draw(self._by_class, steps * b, rng)
        if cfg.group == "ratio":
            window = RATIO_WINDOW * b
            picks = np.concatenate([chunk[np.argsort(ratios[chunk], kind="stable")]
                                    for chunk in np.array_split(picks, range(window, len(picks), window))])
        return [picks[i * b:(i + 1) * b] for i in range(steps)]

    def load_entry(self, i: int, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image i as the network sees it (float32, resized) with its boxes in those pixels and class indices.

        rng: None for no augmentation."""
        cfg = self.config
        try:
            image = read_image_bgr(self.data.paths[i])
        except Exception as exc:
            raise OIDInputError(f"cannot read image: {type(exc).__name__}: {exc}", self.data.paths[i]) from None
        boxes, labels = self.data.image_boxes(i)
        h, w = image.shape[:2]
        boxes = boxes * np.array([w, h, w, h], np.float64)
        if rng is not None and cfg.intensity is not None:
            image = random_intensity_change(image, rng, *cfg.intensity)
        x = preprocess_image(image)
        if rng is not None and cfg.transform is not None:
            x, boxes = cfg.transform.apply(rng, x, boxes)
        x, scale = resize_image(x, cfg.min_side, cfg.max_side)
        return x, boxes * scale, labels

    def batch(self, indices: Sequence[int], rng: np.random.Generator | None):
        """Inputs and targets of the images `indices`."""
        entries = [self.load_entry(int(i), rng) for i in indices]
        shape = tuple(max(e[0].shape[k] for e in entries) for k in range(3))
        images = np.zeros((len(entries),) + shape, np.float32)
        for k, (x, _, _) in enumerate(entries):
            images[k, :x.shape[0], :x.shape[1]] = x
        anchors = anchors_for_shape(shape, self.config.anchor_params, self.config.feature_shapes)
        regression, classification = anchor_targets(anchors, [e[0].shape[:2] for e in entries],
                                                    [e[1] for e in entries], [e[2] for e in entries])
        return images, {"regression": regression, "classification": classification}

    def __getitem__(self, index: int):
        augment = self.config.sampling == "balanced" and (self.config.transform or self.config.intensity)
        rng = np.random.default_rng([self.config.seed, self.epoch, index, 1]) if augment else None
        return self.batch(self.groups[index], rng)
