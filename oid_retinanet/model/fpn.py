"""The feature pyramid of keras-retinanet: P3..P7 from C3..C5, with its layer names.

- `C5_reduced` (1x1) is what gets upsampled, not P5; `P5 = 3x3(C5_reduced)`.
- `P4_merged = upsample(C5_reduced) + C4_reduced`, `P4 = 3x3(P4_merged)`;
  `P3 = 3x3(upsample(P4_merged) + C3_reduced)`.
- P6 is a 3x3/2 conv on C5 (not on P5); `P7 = 3x3/2(relu(P6))`, the ReLU layer being named `C6_relu`.
- Every conv has a bias, no activation and 'same' padding.
- Upsampling (`UpsampleLike`) is TF1's nearest-neighbour resize (`align_corners=False`, no half-pixel
  centres): source index `floor(dst * in / out)`. TF2's `tf.image.resize(..., 'nearest')` differs on odd sizes.
"""

from __future__ import annotations

import keras
from keras import ops

from oid_retinanet.model.winograd import conv3x3

FEATURE_SIZE = 256


def legacy_nearest_indices(in_size, out_size):
    """Source indices of TF1 nearest resizing: `min(floor(i * (in / out)), in - 1)` in float32, i < out."""
    scale = ops.cast(in_size, "float32") / ops.cast(out_size, "float32")
    src = ops.floor(ops.cast(ops.arange(out_size), "float32") * scale)
    return ops.minimum(ops.cast(src, "int32"), ops.cast(in_size, "int32") - 1)


@keras.saving.register_keras_serializable(package="oid_retinanet")
class UpsampleLike(keras.layers.Layer):
    """Resize `source` (B, h, w, C) to the height and width of `target` (B, H, W, ...) by legacy nearest."""

    def call(self, inputs):
        source, target = inputs
        src_shape, dst_shape = ops.shape(source), ops.shape(target)
        rows = legacy_nearest_indices(src_shape[1], dst_shape[1])
        cols = legacy_nearest_indices(src_shape[2], dst_shape[2])
        return ops.take(ops.take(source, rows, axis=1), cols, axis=2)

    def compute_output_shape(self, input_shape):
        source, target = input_shape
        return (source[0], target[1], target[2], source[3])


def feature_pyramid(c3, c4, c5, feature_size: int = FEATURE_SIZE, pyramid_levels=(3, 4, 5, 6, 7),
                    winograd: int = 0) -> dict:
    """keras-retinanet's `__create_pyramid_features`: a dict 'P3'..'P7' of tensors (P6/P7 only if in levels).

    winograd: the output tile side of the Winograd P3..P5 convs (model/winograd.py), 0 for direct ones."""
    conv = keras.layers.Conv2D
    p5 = conv(feature_size, 1, padding="same", name="C5_reduced")(c5)
    p5_upsampled = UpsampleLike(name="P5_upsampled")([p5, c4])
    p5 = conv3x3(feature_size, feature_size, winograd, padding="same", name="P5")(p5)

    p4 = conv(feature_size, 1, padding="same", name="C4_reduced")(c4)
    p4 = keras.layers.Add(name="P4_merged")([p5_upsampled, p4])
    p4_upsampled = UpsampleLike(name="P4_upsampled")([p4, c3])
    p4 = conv3x3(feature_size, feature_size, winograd, padding="same", name="P4")(p4)

    p3 = conv(feature_size, 1, padding="same", name="C3_reduced")(c3)
    p3 = keras.layers.Add(name="P3_merged")([p4_upsampled, p3])
    p3 = conv3x3(feature_size, feature_size, winograd, padding="same", name="P3")(p3)

    out = {"P3": p3, "P4": p4, "P5": p5}
    if 7 in pyramid_levels and 6 not in pyramid_levels:
        raise ValueError("P6 is required to use P7")
    if 6 in pyramid_levels:
        out["P6"] = conv(feature_size, 3, strides=2, padding="same", name="P6")(c5)  # from C5, not P5
    if 7 in pyramid_levels:
        p7 = keras.layers.Activation("relu", name="C6_relu")(out["P6"])
        out["P7"] = conv(feature_size, 3, strides=2, padding="same", name="P7")(p7)
    return out
