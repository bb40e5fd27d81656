"""Box decoding and clipping of keras-retinanet (`RegressBoxes`, `ClipBoxes`): the one home of the box coding.

Boxes and anchors are x1, y1, x2, y2 in pixels of the network input. The regression is per corner, relative to
the anchor's width and height and normalised by a std of 0.2 (mean 0):
`x1 = a_x1 + (d0 * std0 + mean0) * (a_x2 - a_x1)`, likewise y1 (height), x2, y2. No +1, no centre/log-size coding.

Clipping: keras-retinanet 1.0.0 clips x to [0, W - 1] and y to [0, H - 1]; versions up to 0.5.1 (those of
the 2018 Open Images releases) clipped to [0, W] and [0, H]. `ClipBoxes(size_minus_one=...)` picks the rule.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

BOX_MEAN: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)
BOX_STD: tuple[float, ...] = (0.2, 0.2, 0.2, 0.2)


def bbox_transform_inv(anchors, deltas, mean=BOX_MEAN, std=BOX_STD):
    """Apply regression `deltas` (..., 4) to `anchors` (..., 4), both x1, y1, x2, y2 (keras.ops, any backend)."""
    width = anchors[..., 2] - anchors[..., 0]
    height = anchors[..., 3] - anchors[..., 1]
    x1 = anchors[..., 0] + (deltas[..., 0] * std[0] + mean[0]) * width
    y1 = anchors[..., 1] + (deltas[..., 1] * std[1] + mean[1]) * height
    x2 = anchors[..., 2] + (deltas[..., 2] * std[2] + mean[2]) * width
    y2 = anchors[..., 3] + (deltas[..., 3] * std[3] + mean[3]) * height
    return ops.stack([x1, y1, x2, y2], axis=-1)


def bbox_transform_inv_np(anchors: np.ndarray, deltas: np.ndarray, mean=BOX_MEAN, std=BOX_STD) -> np.ndarray:
    """numpy `bbox_transform_inv`, in the dtype of the inputs (float32 reproduces the graph bit for bit)."""
    anchors = np.asarray(anchors)
    deltas = np.asarray(deltas)
    dt = np.result_type(anchors, deltas)
    mean = [dt.type(m) for m in mean]
    std = [dt.type(s) for s in std]
    width = anchors[..., 2] - anchors[..., 0]
    height = anchors[..., 3] - anchors[..., 1]
    sizes = (width, height, width, height)
    return np.stack([anchors[..., i] + (deltas[..., i] * std[i] + mean[i]) * sizes[i] for i in range(4)], axis=-1)


def bbox_transform(anchors: np.ndarray, gt_boxes: np.ndarray, mean=BOX_MEAN, std=BOX_STD) -> np.ndarray:
    """Regression targets (N, 4) of ground-truth boxes against anchors (N, 4): the inverse of the decoding."""
    anchors = np.asarray(anchors, np.float64)
    gt_boxes = np.asarray(gt_boxes, np.float64)
    width = anchors[:, 2] - anchors[:, 0]
    height = anchors[:, 3] - anchors[:, 1]
    sizes = np.stack([width, height, width, height], axis=1)
    return ((gt_boxes - anchors) / sizes - np.asarray(mean)) / np.asarray(std)


def clip_boxes_np(boxes: np.ndarray, height: int, width: int, size_minus_one: bool = True) -> np.ndarray:
    """numpy `ClipBoxes`: x to [0, W - 1], y to [0, H - 1] (or to [0, W], [0, H] with size_minus_one=False)."""
    off = 1 if size_minus_one else 0
    boxes = np.asarray(boxes)
    hi = np.array([width - off, height - off, width - off, height - off], dtype=boxes.dtype)
    return np.clip(boxes, np.zeros(4, boxes.dtype), hi)


@keras.saving.register_keras_serializable(package="oid_retinanet")
class RegressBoxes(keras.layers.Layer):
    """[anchors (B, N, 4), regression (B, N, 4)] -> decoded boxes (B, N, 4)."""

    def __init__(self, mean=BOX_MEAN, std=BOX_STD, **kwargs):
        super().__init__(**kwargs)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def call(self, inputs):
        anchors, regression = inputs
        return bbox_transform_inv(anchors, ops.cast(regression, anchors.dtype), self.mean, self.std)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        config = super().get_config()
        config.update(mean=list(self.mean), std=list(self.std))
        return config


@keras.saving.register_keras_serializable(package="oid_retinanet")
class ClipBoxes(keras.layers.Layer):
    """[image (B, H, W, C), boxes (B, N, 4)] -> boxes clipped to the image (see the module docstring)."""

    def __init__(self, size_minus_one: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.size_minus_one = bool(size_minus_one)

    def call(self, inputs):
        image, boxes = inputs
        shape = ops.shape(image)
        off = 1.0 if self.size_minus_one else 0.0
        height = ops.cast(shape[1], boxes.dtype) - off
        width = ops.cast(shape[2], boxes.dtype) - off
        x1 = ops.clip(boxes[..., 0], 0.0, width)
        y1 = ops.clip(boxes[..., 1], 0.0, height)
        x2 = ops.clip(boxes[..., 2], 0.0, width)
        y2 = ops.clip(boxes[..., 3], 0.0, height)
        return ops.stack([x1, y1, x2, y2], axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape[1]

    def get_config(self):
        config = super().get_config()
        config.update(size_minus_one=self.size_minus_one)
        return config
