"""What the generator gives the model, drawn, and how well the anchors cover the boxes (keras-retinanet's
debug.py): each image after the generator's resize (and random transform), its boxes green where some anchor is
positive for them and red where none is, and the positive anchors; the share of boxes no anchor learns, by box
size (the number anchor settings are tuned with)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from oid_retinanet.data.generator import OpenImagesGenerator
from oid_retinanet.data.targets import POSITIVE_OVERLAP, best_overlaps, matched_boxes
from oid_retinanet.files import atomic_path
from oid_retinanet.model.anchors import anchors_for_shape
from oid_retinanet.model.backbones import CAFFE_MEAN_BGR

# box sizes, sqrt(width x height) in network-input pixels: COCO's small / medium / large
SIZE_BINS = ((0.0, 32.0, "small (< 32 px)"), (32.0, 96.0, "medium (32-96 px)"), (96.0, np.inf, "large (>= 96 px)"))


@dataclass
class Coverage:
    """Boxes and boxes no anchor learns, per SIZE_BINS row."""

    boxes: list[int] = field(default_factory=lambda: [0] * len(SIZE_BINS))
    missed: list[int] = field(default_factory=lambda: [0] * len(SIZE_BINS))

    def add(self, boxes: np.ndarray, matched: np.ndarray) -> None:
        side = np.sqrt(np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0))
        for k, (low, high, _) in enumerate(SIZE_BINS):
            inside = (side >= low) & (side < high)
            self.boxes[k] += int(inside.sum())
            self.missed[k] += int((inside & ~matched).sum())

    def table(self) -> str:
        rows = [f"{'box size':<20}{'boxes':>8}{'no anchor':>11}{'share':>8}"]
        for (_, _, name), n, missed in zip(SIZE_BINS, self.boxes, self.missed):
            rows.append(f"{name:<20}{n:>8}{missed:>11}{missed / n if n else 0:>8.1%}")
        total, missed = sum(self.boxes), sum(self.missed)
        rows.append(f"{'all':<20}{total:>8}{missed:>11}{missed / total if total else 0:>8.1%}")
        return "\n".join(rows)


def draw(x: np.ndarray, boxes: np.ndarray, matched: np.ndarray, anchors: np.ndarray | None) -> np.ndarray:
    """The network input `x` (caffe-preprocessed) as a BGR uint8 picture: positive anchors yellow, boxes green
    where learnt and red where not."""
    import cv2

    image = np.clip(x + np.asarray(CAFFE_MEAN_BGR, np.float32), 0, 255).astype(np.uint8)
    for color, group in (((0, 255, 255), anchors if anchors is not None else np.zeros((0, 4))),
                         ((0, 255, 0), boxes[matched]), ((0, 0, 255), boxes[~matched])):
        for b in np.round(group).astype(int):
            cv2.rectangle(image, (int(b[0]), int(b[1])), (int(b[2]), int(b[3])), color, 1)
    return image


def debug_images(generator: OpenImagesGenerator, indices, save_path: str | os.PathLike | None = None,
                 random_transform: bool = False, show_anchors: bool = True, seed: int = 0,
                 show: Callable[[str, np.ndarray], bool] | None = None) -> Coverage:
    """Coverage over the images `indices` of the generator's data; with save_path, one PNG per image there; with
    `show(image_id, picture)`, each picture handed to it until it returns False (`show_in_window`)."""
    import cv2

    cfg, coverage = generator.config, Coverage()
    rng = np.random.default_rng(seed) if random_transform else None
    showing = show is not None
    for i in indices:
        x, boxes, _ = generator.load_entry(int(i), rng)
        anchors = anchors_for_shape(x.shape, cfg.anchor_params, cfg.feature_shapes)
        matched = matched_boxes(anchors, boxes)
        coverage.add(boxes, matched)
        if save_path is None and not showing:
            continue
        positive = None
        if show_anchors and len(boxes):
            positive = anchors[best_overlaps(anchors, boxes)[1] >= POSITIVE_OVERLAP]
        picture = draw(x, boxes, matched, positive)
        image_id = str(generator.data.image_ids[int(i)])
        if save_path is not None:
            out = Path(save_path) / f"{image_id}.png"
            with atomic_path(out, suffix=".png") as tmp:
                if not cv2.imwrite(str(tmp), picture):
                    raise OSError(f"cv2 could not write {out}")
        if showing:
            showing = show(image_id, picture)
    return coverage


def window_available() -> bool:
    """Whether matplotlib can open a window here (an interactive backend and a display)."""
    import matplotlib
    import matplotlib.pyplot  # noqa: F401  (resolves the backend: a non-interactive one where there is no display)
    from matplotlib.backends import BackendFilter, backend_registry

    return matplotlib.get_backend().lower() in backend_registry.list_builtin(BackendFilter.INTERACTIVE)


def show_in_window(image_id: str, picture: np.ndarray) -> bool:
    """Show a BGR picture in a matplotlib window until it is closed or a key is pressed; False after 'q'."""
    import matplotlib.pyplot as plt

    fig = plt.figure(image_id)
    plt.imshow(picture[:, :, ::-1])
    plt.axis("off")
    plt.title(f"{image_id}: any key for the next image, q to stop")
    keys: list[str] = []

    def on_key(event) -> None:
        keys.append(event.key)
        plt.close(fig)

    fig.canvas.mpl_connect("key_press_event", on_key)
    plt.show()
    return "q" not in keys
