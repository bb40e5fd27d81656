"""The regression and classification submodels of RetinaNet, shared over the pyramid levels.

Each is a small functional model applied to every P level (keras-retinanet's layer names): four 3x3 convs of
256 filters with ReLU, then a 3x3 conv to A*4 (regression) or A*K (classification), reshaped to (B, H*W*A, 4)
or (B, H*W*A, K) in NHWC order, so anchor index = (y * W + x) * A + a. The classification output goes through
a sigmoid; its last bias starts at -log((1 - pi) / pi) so every score starts at the prior probability pi.
With `winograd` set, the 3x3 convs of at least 128 channels and filters (the four of each tower, the last classification
conv of the 443- and 500-class models) are computed with Winograd F(m x m, 3x3) (model/winograd.py): the same
weights, results within float32 rounding, 4x fewer multiplications for m = 4.
"""

from __future__ import annotations

import math

import keras

from oid_retinanet.model.winograd import conv3x3

PRIOR_PROBABILITY = 0.01
HEAD_FEATURE_SIZE = 256
HEAD_DEPTH = 4


@keras.saving.register_keras_serializable(package="oid_retinanet")
class PriorProbability(keras.initializers.Initializer):
    """Constant bias -log((1 - probability) / probability): sigmoid(bias) == probability."""

    def __init__(self, probability: float = PRIOR_PROBABILITY):
        self.probability = float(probability)

    def __call__(self, shape, dtype=None):
        value = -math.log((1.0 - self.probability) / self.probability)
        return keras.ops.full(shape, value, dtype=dtype or "float32")

    def get_config(self):
        return {"probability": self.probability}


def _head(name: str, prefix: str, outputs_per_anchor: int, num_anchors: int, pyramid_feature_size: int,
          feature_size: int, bias_initializer, depth: int = HEAD_DEPTH, winograd: int = 0) -> keras.Model:
    inputs = keras.Input(shape=(None, None, pyramid_feature_size))
    x = inputs
    normal = keras.initializers.RandomNormal(mean=0.0, stddev=0.01)
    channels = pyramid_feature_size
    for i in range(depth):
        x = conv3x3(feature_size, channels, winograd, padding="same", activation="relu", kernel_initializer=normal,
                    bias_initializer="zeros", name=f"{prefix}_{i}")(x)
        channels = feature_size
    x = conv3x3(num_anchors * outputs_per_anchor, channels, winograd, padding="same", kernel_initializer=normal,
                bias_initializer=bias_initializer, name=prefix)(x)
    x = keras.layers.Reshape((-1, outputs_per_anchor), name=f"{prefix}_reshape")(x)
    if prefix == "pyramid_classification":
        x = keras.layers.Activation("sigmoid", name=f"{prefix}_sigmoid")(x)
    return keras.Model(inputs=inputs, outputs=x, name=name)


def regression_submodel(num_anchors: int = 9, num_values: int = 4, pyramid_feature_size: int = 256,
                        feature_size: int = HEAD_FEATURE_SIZE, name: str = "regression_submodel",
                        winograd: int = 0) -> keras.Model:
    """keras-retinanet's `default_regression_model`: (B, H, W, 256) -> (B, H*W*A, num_values).

    winograd: the output tile side of its Winograd 3x3 convs (model/winograd.py), 0 for direct ones."""
    return _head(name, "pyramid_regression", num_values, num_anchors, pyramid_feature_size, feature_size, "zeros",
                 winograd=winograd)


def classification_submodel(num_classes: int, num_anchors: int = 9, pyramid_feature_size: int = 256,
                            prior_probability: float = PRIOR_PROBABILITY, feature_size: int = HEAD_FEATURE_SIZE,
                            name: str = "classification_submodel", winograd: int = 0) -> keras.Model:
    """keras-retinanet's `default_classification_model`: (B, H, W, 256) -> sigmoid scores (B, H*W*A, K).

    winograd: the output tile side of its Winograd 3x3 convs (model/winograd.py), 0 for direct ones.
    """
    return _head(name, "pyramid_classification", num_classes, num_anchors, pyramid_feature_size, feature_size,
                 PriorProbability(prior_probability), winograd=winograd)
