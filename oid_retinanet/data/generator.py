"""The batches of stage 3: a Keras `PyDataset` over one subset's `LevelData` (`data.datasets`: Open Images level
files, keras-retinanet CSV or COCO JSON).

`OpenImagesGenerator` yields `(images, {"regression": ..., "classification": ...})` batches:
- training order as the original: every slot of a batch draws a class uniformly (among classes with images,
  plus "empty" for the negative images) and then an image of that class, so rare classes are seen as often
  as frequent ones; then (`group="ratio"`, the default) windows of 16 batches are sorted by aspect ratio so a
  batch holds images of similar shape and little padding. `group="random"` keeps the draw order (the original).
  `sampling="shuffle"` (keras-retinanet's order, the default for csv and coco datasets): each epoch a new random
  order of all the images (repeated when the epoch is longer than the data), then grouped as above.
  `sampling="sequential"` visits every image once per epoch, sorted by aspect ratio (validation).
- each image: read as BGR, the per-channel intensity change (training), caffe preprocessing, the random
  transform, resizing with the min/max side rule; boxes follow. Images are padded (zeros) to the batch's
  largest shape and targets computed for the padded anchors (`data.targets`).
- batch `i` of epoch `e` depends only on (seed, e, i) (each image's augmentation on its place in the batch),
  so parallel workers give the same batches as one.
- several training processes (`worker=(k, n)`): every process draws the same batches and takes the k-th of n
  equal slices of each, padded to the whole batch's shape (known from the image sizes), so the n slices
  together are the one-process batch exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import keras
import numpy as np

from oid_retinanet.data.augment import RandomTransform, random_intensity_change
from oid_retinanet.data.datasets import LevelData
from oid_retinanet.data.preprocess import (
    MAX_SIDE,
    MIN_SIDE,
    preprocess_image,
    read_image_bgr,
    resize_image,
    resized_shape,
)
from oid_retinanet.data.targets import anchor_targets
from oid_retinanet.errors import OIDInputError
from oid_retinanet.model.anchors import DEFAULT_ANCHOR_PARAMS, AnchorParameters, anchors_for_shape, feature_shapes

log = logging.getLogger(__name__)

RATIO_WINDOW = 16  # batches sorted together by aspect ratio
SAMPLING = ("balanced", "shuffle", "sequential")
TRAINING_SAMPLING = SAMPLING[:2]
GROUPING = ("ratio", "random")


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
    worker: tuple[int, int] = (0, 1)  # (k, n): this process takes the k-th of n slices of every batch


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
        if cfg.sampling == "balanced":
            picks = balanced_draw(self._by_class, steps * b, rng)
        else:
            passes = -(-steps * b // len(self.data))
            picks = np.concatenate([rng.permutation(len(self.data)) for _ in range(passes)])[:steps * b]
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

    def batch(self, indices: Sequence[int], rngs: Sequence[np.random.Generator | None] | None = None,
              shape: tuple[int, int, int] | None = None):
        """Inputs and targets of the images `indices` (rngs: each one's augmentation, None for none), padded to
        `shape` (default: the largest of them)."""
        rngs = rngs if rngs is not None else [None] * len(indices)
        entries = [self.load_entry(int(i), rng) for i, rng in zip(indices, rngs)]
        largest = tuple(max(e[0].shape[k] for e in entries) for k in range(3))
        shape = tuple(max(a, b) for a, b in zip(shape, largest)) if shape is not None else largest
        images = np.zeros((len(entries),) + shape, np.float32)
        for k, (x, _, _) in enumerate(entries):
            images[k, :x.shape[0], :x.shape[1]] = x
        anchors = anchors_for_shape(shape, self.config.anchor_params, self.config.feature_shapes)
        regression, classification = anchor_targets(anchors, [e[0].shape[:2] for e in entries],
                                                    [e[1] for e in entries], [e[2] for e in entries])
        return images, {"regression": regression, "classification": classification}

    def batch_shape(self, indices: Sequence[int]) -> tuple[int, int, int]:
        """The padded input shape of a batch of the images `indices`, from their sizes (the random transform keeps
        an image's size)."""
        cfg, data = self.config, self.data
        sides = [resized_shape((data.heights[i], data.widths[i]), cfg.min_side, cfg.max_side) for i in indices]
        return max(h for h, _ in sides), max(w for _, w in sides), 3

    def __getitem__(self, index: int):
        cfg = self.config
        group = self.groups[index]
        augment = cfg.sampling in TRAINING_SAMPLING and (cfg.transform or cfg.intensity)
        k, n = cfg.worker
        size = len(group) // n
        places = range(k * size, (k + 1) * size) if n > 1 else range(len(group))
        rngs = [np.random.default_rng([cfg.seed, self.epoch, index, 1, p]) if augment else None for p in places]
        shape = self.batch_shape(group) if n > 1 else None
        return self.batch([group[p] for p in places], rngs, shape)
