"""The losses of keras-retinanet: focal loss on the classification, smooth L1 on the regression.

Both take our targets (`data.targets`): classification (B, N, 1) = class index of a positive anchor,
LABEL_NEGATIVE (-1) or LABEL_IGNORE (-2); regression (B, N, 5) = 4 deltas + state (1 positive). Both are
summed over the batch and divided by the number of positive anchors in it (at least 1), as keras-retinanet did.

Focal loss, keras-retinanet's formula: for every non-ignored anchor and class, with t the one-hot target and
p the predicted probability clipped to [1e-7, 1 - 1e-7]:
`alpha_t * w^gamma * -(t log(p + 1e-7) + (1 - t) log(1 - p + 1e-7))`, alpha_t = alpha where t = 1 else
1 - alpha, w = 1 - p where t = 1 else p (the epsilons are those of tf.keras' binary_crossentropy).
The one-hot tensor is never built: every class is scored as a negative, then at each positive anchor the term
of its class is swapped for the positive one. Memory stays that of the predictions, whatever K is.

Written with keras.ops, so they run on every backend; mixed-precision predictions are cast to float32.
"""

from __future__ import annotations

import keras
from keras import ops

from oid_retinanet.data.targets import LABEL_IGNORE, STATE_POSITIVE

ALPHA = 0.25
GAMMA = 2.0
SIGMA = 3.0
EPSILON = 1e-7


def _negative_term(p, alpha: float, gamma: float):
    return (1.0 - alpha) * ops.power(p, gamma) * -ops.log(1.0 - p + EPSILON)


def _positive_term(p, alpha: float, gamma: float):
    return alpha * ops.power(1.0 - p, gamma) * -ops.log(p + EPSILON)


def focal_loss(y_true, y_pred, alpha: float = ALPHA, gamma: float = GAMMA):
    """Focal loss of class-index targets (B, N, 1) and probabilities (B, N, K): a scalar."""
    codes = ops.cast(y_true[..., 0], "int32")
    p = ops.clip(ops.cast(y_pred, "float32"), EPSILON, 1.0 - EPSILON)
    valid = ops.cast(ops.not_equal(codes, LABEL_IGNORE), "float32")
    positive = ops.cast(ops.greater_equal(codes, 0), "float32")
    all_negative = ops.sum(_negative_term(p, alpha, gamma), axis=-1)
    p_class = ops.take_along_axis(p, ops.expand_dims(ops.maximum(codes, 0), -1), axis=-1)[..., 0]
    swap = _positive_term(p_class, alpha, gamma) - _negative_term(p_class, alpha, gamma)
    total = ops.sum(all_negative * valid) + ops.sum(swap * positive)
    return total / ops.maximum(1.0, ops.sum(positive))


def smooth_l1_loss(y_true, y_pred, sigma: float = SIGMA):
    """Smooth L1 of regression targets (B, N, 5) and predictions (B, N, 4) over positive anchors: a scalar."""
    sigma_squared = sigma**2
    positive = ops.cast(ops.equal(y_true[..., 4], STATE_POSITIVE), "float32")
    diff = ops.abs(ops.cast(y_pred, "float32") - y_true[..., :4])
    per_value = ops.where(diff < 1.0 / sigma_squared, 0.5 * sigma_squared * ops.square(diff),
                          diff - 0.5 / sigma_squared)
    return ops.sum(ops.sum(per_value, axis=-1) * positive) / ops.maximum(1.0, ops.sum(positive))


@keras.saving.register_keras_serializable(package="oid_retinanet")
class FocalLoss(keras.losses.Loss):
    """`focal_loss` as a Keras loss (serialisable, so snapshots reload with their compile settings)."""

    def __init__(self, alpha: float = ALPHA, gamma: float = GAMMA, name: str = "focal", **kwargs):
        super().__init__(name=name, reduction="sum", **kwargs)
        self.alpha = alpha
        self.gamma = gamma

    def call(self, y_true, y_pred):
        return focal_loss(y_true, y_pred, self.alpha, self.gamma)

    def get_config(self) -> dict:
        return {"alpha": self.alpha, "gamma": self.gamma, "name": self.name}


@keras.saving.register_keras_serializable(package="oid_retinanet")
class SmoothL1Loss(keras.losses.Loss):
    """`smooth_l1_loss` as a Keras loss."""

    def __init__(self, sigma: float = SIGMA, name: str = "smooth_l1", **kwargs):
        super().__init__(name=name, reduction="sum", **kwargs)
        self.sigma = sigma

    def call(self, y_true, y_pred):
        return smooth_l1_loss(y_true, y_pred, self.sigma)

    def get_config(self) -> dict:
        return {"sigma": self.sigma, "name": self.name}
