"""Training augmentation as the original: a per-channel intensity change, then keras-retinanet's random affine.

`random_intensity_change(image, rng, -30, 30)`: ZFTurbo's `random_intensity_change1` on the uint8 BGR image: a
random integer in [min, max] added to each channel separately, clipped to [0, 255].

`RandomTransform`: keras-retinanet's `random_transform_generator`, a 3x3 matrix
`rotation @ translation @ shear @ scaling @ flip`, each drawn uniformly in its range (translation as a fraction
of the image size, flips with their chances), moved so that its origin is the image centre, then applied with
`cv2.warpAffine` (linear interpolation, border 'nearest' = replicate, keras-retinanet's default
TransformParameters) to the preprocessed float image; boxes become the axis-aligned box around their four
transformed corners. The original's training scripts used `RandomTransform.ORIGINAL_FULL` with
`--random-transform` and a horizontal flip with chance 0.5 (`RandomTransform.FLIP_X`) otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np


def random_intensity_change(image: np.ndarray, rng: np.random.Generator, min_change: int = -30,
                            max_change: int = 30) -> np.ndarray:
    """uint8 (H, W, C) image with a random integer in [min_change, max_change] added to each channel."""
    delta = rng.integers(min_change, max_change, size=image.shape[-1], endpoint=True)
    return np.clip(image.astype(np.int16) + delta.astype(np.int16), 0, 255).astype(np.uint8)


def _translation(tx: float, ty: float) -> np.ndarray:
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def transform_boxes(matrix: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The axis-aligned boxes (M, 4) x1, y1, x2, y2 around the four corners of each box moved by `matrix` (3x3)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    xs = boxes[:, [0, 2, 0, 2]]
    ys = boxes[:, [1, 3, 3, 1]]
    tx = matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2]
    ty = matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2]
    return np.stack([tx.min(1), ty.min(1), tx.max(1), ty.max(1)], axis=1)


@dataclass(frozen=True)
class RandomTransform:
    """Ranges of keras-retinanet's random transform: rotation and shear in radians, translation as a fraction of
    the image size, scaling factors, flip chances."""

    min_rotation: float = 0.0
    max_rotation: float = 0.0
    min_translation: tuple[float, float] = (0.0, 0.0)
    max_translation: tuple[float, float] = (0.0, 0.0)
    min_shear: float = 0.0
    max_shear: float = 0.0
    min_scaling: tuple[float, float] = (1.0, 1.0)
    max_scaling: tuple[float, float] = (1.0, 1.0)
    flip_x_chance: float = 0.0
    flip_y_chance: float = 0.0

    FLIP_X: ClassVar[RandomTransform]
    ORIGINAL_FULL: ClassVar[RandomTransform]

    def matrix(self, rng: np.random.Generator) -> np.ndarray:
        """A random 3x3 transform about the origin, drawn in keras-retinanet's order."""
        angle = rng.uniform(self.min_rotation, self.max_rotation)
        rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
        translation = _translation(*rng.uniform(self.min_translation, self.max_translation))
        shear_angle = rng.uniform(self.min_shear, self.max_shear)
        shear = np.array([[1, -np.sin(shear_angle), 0], [0, np.cos(shear_angle), 0], [0, 0, 1]])
        sx, sy = rng.uniform(self.min_scaling, self.max_scaling)
        flip_x = rng.uniform() < self.flip_x_chance
        flip_y = rng.uniform() < self.flip_y_chance
        scaling = np.diag([sx * (1 - 2 * flip_x), sy * (1 - 2 * flip_y), 1.0])
        return np.linalg.multi_dot([rotation, translation, shear, scaling])

    def for_image(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """A random transform for an image: translation scaled by its size, origin at its centre."""
        m = self.matrix(rng)
        m[0:2, 2] *= [width, height]
        return np.linalg.multi_dot([_translation(0.5 * width, 0.5 * height), m,
                                    _translation(-0.5 * width, -0.5 * height)])

    def apply(self, rng: np.random.Generator, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Transform an (H, W, C) image and its boxes (M, 4) in pixels with one random draw."""
        h, w = image.shape[:2]
        m = self.for_image(rng, h, w)
        if np.allclose(m, np.eye(3)):
            return image, np.asarray(boxes, np.float64).reshape(-1, 4)
        out = cv2.warpAffine(image, m[:2, :], dsize=(w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if out.ndim == 2:
            out = out[:, :, None]
        return out, transform_boxes(m, boxes)


RandomTransform.FLIP_X = RandomTransform(flip_x_chance=0.5)
RandomTransform.ORIGINAL_FULL = RandomTransform(
    min_rotation=-0.1, max_rotation=0.1, min_translation=(-0.1, -0.1), max_translation=(0.1, 0.1),
    min_shear=-0.1, max_shear=0.1, min_scaling=(0.8, 0.8), max_scaling=(1.2, 1.2),
    flip_x_chance=0.5, flip_y_chance=0.5,
)
