"""Anchor boxes of RetinaNet, as keras-retinanet makes them: the one home of the anchor parameters.

Boxes are x1, y1, x2, y2 in pixels of the network input (the resized image). For every pyramid level the 9
base anchors are ratio-major (`a = ratio_index * len(scales) + scale_index`) and are shifted to every cell
centre `((x + 0.5) * stride, (y + 0.5) * stride)`; the anchor index over a level is `(y * W + x) * A + a`, and
levels are concatenated P3, P4, ..., P7. That is also the order of the regression and classification outputs.

keras-retinanet stores the ratios and scales as float32 arrays (`keras.backend.floatx()`), so the scale
2^(1/3) it uses is 1.2599210739135742, not 1.2599210498948732; we keep that rounding, it moves anchors by up
to 1e-5 px. `anchors_for_shape` computes in float64 from those values as keras-retinanet's numpy code does;
the in-graph `Anchors` layer computes in float32 as its Keras layer does (they differ by up to 3e-5 px).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np
from keras import ops

PYRAMID_LEVELS: tuple[int, ...] = (3, 4, 5, 6, 7)
SIZES: tuple[int, ...] = (32, 64, 128, 256, 512)
STRIDES: tuple[int, ...] = (8, 16, 32, 64, 128)
RATIOS: tuple[float, ...] = tuple(float(r) for r in np.array([0.5, 1, 2], np.float32))
SCALES: tuple[float, ...] = tuple(float(s) for s in np.array([2**0, 2 ** (1.0 / 3.0), 2 ** (2.0 / 3.0)], np.float32))


@dataclass(frozen=True)
class AnchorParameters:
    """Sizes and strides per pyramid level, and the ratios and scales used at every location."""

    sizes: tuple[int, ...] = SIZES
    strides: tuple[int, ...] = STRIDES
    ratios: tuple[float, ...] = RATIOS
    scales: tuple[float, ...] = SCALES
    pyramid_levels: tuple[int, ...] = field(default=PYRAMID_LEVELS)

    def __post_init__(self):
        if not (len(self.sizes) == len(self.strides) == len(self.pyramid_levels)):
            raise ValueError(f"anchor sizes {self.sizes}, strides {self.strides} and pyramid levels "
                             f"{self.pyramid_levels} must have the same length")

    def describe(self) -> str:
        """The parameters in words, for messages."""
        return (f"sizes {list(self.sizes)} strides {list(self.strides)} ratios {[round(r, 4) for r in self.ratios]} "
                f"scales {[round(s, 4) for s in self.scales]}")

    @property
    def num_anchors(self) -> int:
        """Anchors per feature-map location (len(ratios) * len(scales))."""
        return len(self.ratios) * len(self.scales)


DEFAULT_ANCHOR_PARAMS = AnchorParameters()


def read_anchor_config(path: str) -> AnchorParameters:
    """keras-retinanet's `--config FILE` (config.ini): `[anchor_parameters]` with `sizes`, `strides`, `ratios` and
    `scales`, space-separated, and optionally `[pyramid_levels]` `P` (default: log2 of each stride). Ratios and
    scales are rounded to float32, as keras-retinanet stores them. OIDInputError naming the file and key."""
    import configparser

    from oid_retinanet.errors import OIDInputError

    config = configparser.ConfigParser()
    try:
        with open(path, encoding="utf-8") as f:
            config.read_file(f)
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise OIDInputError(f"not a keras-retinanet config.ini ({' '.join(str(exc).split())})", path) from None
    if "anchor_parameters" not in config:
        raise OIDInputError("no [anchor_parameters] section", path)
    section = config["anchor_parameters"]
    unknown = set(section) - {"sizes", "strides", "ratios", "scales"}
    if unknown:
        raise OIDInputError(f"[anchor_parameters]: unknown keys {', '.join(sorted(unknown))} (sizes, strides, ratios, "
                            "scales)", path)

    def values(sect: str, key: str, kind):
        if key not in config[sect]:
            raise OIDInputError(f"[{sect}] has no '{key}'", path)
        try:
            out = tuple(kind(v) for v in config[sect][key].split())
        except ValueError:
            raise OIDInputError(f"[{sect}] {key} = {config[sect][key]!r}: not {kind.__name__} values", path) from None
        if not out or any(v <= 0 for v in out):
            raise OIDInputError(f"[{sect}] {key} = {config[sect][key]!r}: expected positive values", path)
        return out

    sizes, strides = values("anchor_parameters", "sizes", int), values("anchor_parameters", "strides", int)
    ratios = tuple(float(v) for v in np.array(values("anchor_parameters", "ratios", float), np.float32))
    scales = tuple(float(v) for v in np.array(values("anchor_parameters", "scales", float), np.float32))
    if "pyramid_levels" in config:
        levels = values("pyramid_levels", "P", int)
    elif all(s & (s - 1) == 0 for s in strides):
        levels = tuple(s.bit_length() - 1 for s in strides)
    else:
        raise OIDInputError(f"strides {list(strides)} are not powers of 2: give [pyramid_levels] P", path)
    try:
        return AnchorParameters(sizes, strides, ratios, scales, levels)
    except ValueError as exc:
        raise OIDInputError(str(exc), path) from None


def generate_anchors(base_size: float, ratios=RATIOS, scales=SCALES) -> np.ndarray:
    """The (A, 4) float64 base anchors of one level, centred on the origin, ratio-major.

    `w = sqrt(size^2 s^2 / ratio)`, `h = w * ratio` (keras-retinanet's `generate_anchors`); ratios and scales are
    taken as float32 values, as keras-retinanet stores them.
    """
    ratios = np.asarray(ratios, np.float32)
    scales = np.asarray(scales, np.float32)
    sides = (np.float32(base_size) * np.tile(scales, len(ratios))).astype(np.float64)  # a float32 product there too
    areas = sides * sides
    rep_ratios = np.repeat(ratios, len(scales))
    w = np.sqrt(areas / rep_ratios)
    h = w * rep_ratios
    return np.stack([-0.5 * w, -0.5 * h, w - 0.5 * w, h - 0.5 * h], axis=1)


def shift(shape: tuple[int, int], stride: int, anchors: np.ndarray) -> np.ndarray:
    """Base anchors (A, 4) placed at every cell of a (H, W) feature map: (H * W * A, 4), row-major cells."""
    shift_x = (np.arange(shape[1]) + 0.5) * stride
    shift_y = (np.arange(shape[0]) + 0.5) * stride
    sx, sy = np.meshgrid(shift_x, shift_y)
    shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], axis=1)
    return (anchors[None, :, :] + shifts[:, None, :]).reshape(-1, 4)


def feature_shapes(image_shape, pyramid_levels=PYRAMID_LEVELS) -> list[tuple[int, int]]:
    """(H, W) of each pyramid level for an input of `image_shape` (H, W, ...): `ceil(side / 2^level)`."""
    h, w = int(image_shape[0]), int(image_shape[1])
    return [(-(-h // 2**p), -(-w // 2**p)) for p in pyramid_levels]


def anchors_for_shape(image_shape, anchor_params: AnchorParameters = DEFAULT_ANCHOR_PARAMS,
                      shapes_fn=feature_shapes) -> np.ndarray:
    """All anchors (N, 4) float64 for a network input of `image_shape` (H, W, ...), keras-retinanet's order.

    shapes_fn(image_shape, pyramid_levels): the feature map sizes of the backbone (default: ceil(side / 2^level)).
    """
    shapes = shapes_fn(image_shape, anchor_params.pyramid_levels)
    parts = [shift(shape, stride, generate_anchors(size, anchor_params.ratios, anchor_params.scales))
             for shape, size, stride in zip(shapes, anchor_params.sizes, anchor_params.strides)]
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, 4))


def num_anchors_for_shape(image_shape, anchor_params: AnchorParameters = DEFAULT_ANCHOR_PARAMS) -> int:
    """How many anchors `anchors_for_shape` gives (the length of the model's raw outputs)."""
    return sum(h * w for h, w in feature_shapes(image_shape, anchor_params.pyramid_levels)) * anchor_params.num_anchors


@keras.saving.register_keras_serializable(package="oid_retinanet")
class Anchors(keras.layers.Layer):
    """The anchors of one pyramid level, from the shape of its feature map (B, H, W, C): (B, H * W * A, 4).

    Computed in float32 like keras-retinanet's `Anchors` layer: `(arange(W) + 0.5) * stride` plus the base
    anchors rounded to float32.
    """

    def __init__(self, size: int, stride: int, ratios=RATIOS, scales=SCALES, **kwargs):
        super().__init__(**kwargs)
        self.size = int(size)
        self.stride = int(stride)
        self.ratios = tuple(float(r) for r in ratios)
        self.scales = tuple(float(s) for s in scales)
        self.num_anchors = len(self.ratios) * len(self.scales)
        self._base = generate_anchors(self.size, self.ratios, self.scales).astype(np.float32)

    def call(self, features):
        shape = ops.shape(features)
        batch, height, width = shape[0], shape[1], shape[2]
        stride = ops.cast(self.stride, "float32")
        shift_x = (ops.cast(ops.arange(width), "float32") + 0.5) * stride
        shift_y = (ops.cast(ops.arange(height), "float32") + 0.5) * stride
        sx, sy = ops.meshgrid(shift_x, shift_y)
        sx, sy = ops.reshape(sx, (-1,)), ops.reshape(sy, (-1,))
        shifts = ops.stack([sx, sy, sx, sy], axis=1)
        base = ops.convert_to_tensor(self._base, "float32")
        anchors = ops.reshape(base[None, :, :] + shifts[:, None, :], (-1, 4))
        return ops.broadcast_to(anchors[None], (batch, ops.shape(anchors)[0], 4))

    def compute_output_shape(self, input_shape):
        h, w = input_shape[1], input_shape[2]
        total = None if h is None or w is None else h * w * self.num_anchors
        return (input_shape[0], total, 4)

    def get_config(self):
        config = super().get_config()
        config.update(size=self.size, stride=self.stride, ratios=list(self.ratios), scales=list(self.scales))
        return config
