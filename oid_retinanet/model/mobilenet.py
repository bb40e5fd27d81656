"""MobileNet backbones as keras-retinanet offered them (`mobilenet128_1.0` ... `mobilenet224_0.25`).

A small, fast alternative to the ResNets, e.g. for training from scratch on a CPU (the demo). As in
keras-retinanet: keras.applications' MobileNet v1 of width `alpha` without its top, C3..C5 taken at
`conv_pw_5_relu`, `conv_pw_11_relu` and `conv_pw_13_relu`, the layer names of keras.applications. The number
in the name is the ImageNet weights' resolution in keras-retinanet; it does not change the network.

Two differences of substance from the ResNets, both handled here:
- MobileNet expects 'tf' preprocessing (x / 127.5 - 1 of the BGR image, keras-retinanet's mode for it). Our
  whole pipeline feeds caffe-preprocessed images (mean subtracted), so the network starts with `CaffeToTF`,
  which maps one to the other exactly; every reader, generator and server then stays the same.
- Its stride-2 depthwise convs pad only after ((0, 1), (0, 1)) then run 'valid': a side n becomes floor(n / 2),
  not ceil(n / 2) as `anchors.feature_shapes` assumes. `feature_shapes` here gives the real sizes, for the
  anchor targets of training (inference builds its anchors from the feature maps themselves).
"""

from __future__ import annotations

import re

import keras
from keras import ops

from oid_retinanet.model.backbones import CAFFE_MEAN_BGR

ALPHAS = ("0.25", "0.5", "0.75", "1.0")
RESOLUTIONS = ("128", "160", "192", "224")
BN_MOMENTUM = 0.9
FEATURE_LAYERS = ("conv_pw_5_relu", "conv_pw_11_relu", "conv_pw_13_relu")
_NAME = re.compile(r"^mobilenet(128|160|192|224)_(0\.25|0\.5|0\.75|1\.0)$")
_LAYER = re.compile(r"^(conv1|conv1_bn|conv1_relu|conv_(dw|pw|pad)_\d+\w*|caffe_to_tf)$")


def is_mobilenet(backbone: str) -> bool:
    """Whether `backbone` names a MobileNet ('mobilenet224_1.0' and the like)."""
    return bool(_NAME.match(str(backbone)))


def parse_mobilenet(backbone: str) -> float:
    """alpha of a MobileNet backbone name."""
    m = _NAME.match(str(backbone))
    if not m:
        raise ValueError(f"unknown MobileNet backbone {backbone!r}: expected mobilenet{{{','.join(RESOLUTIONS)}}}_"
                         f"{{{','.join(ALPHAS)}}}")
    return float(m.group(2))


def is_backbone_layer(name: str) -> bool:
    """Whether a layer of a MobileNet RetinaNet belongs to the backbone."""
    return bool(_LAYER.match(name))


@keras.saving.register_keras_serializable(package="oid_retinanet")
class CaffeToTF(keras.layers.Layer):
    """Caffe-preprocessed BGR (mean subtracted) -> 'tf' mode (BGR / 127.5 - 1)."""

    def call(self, inputs):
        mean = ops.convert_to_tensor(CAFFE_MEAN_BGR, dtype=inputs.dtype)
        return (inputs + mean) / 127.5 - 1.0


def mobilenet_features(inputs, alpha: float, bn_momentum: float = BN_MOMENTUM) -> dict[str, object]:
    """Apply MobileNet v1 (width alpha, random weights) to caffe-preprocessed `inputs`; return C3..C5.

    bn_momentum: of the moving statistics of its (trained) batch normalisation; Keras' 0.99 needs hundreds of
    steps before the statistics inference uses mean anything, 0.9 about fifty (only training is affected).
    """
    x = CaffeToTF(name="caffe_to_tf")(inputs)
    net = keras.applications.MobileNet(input_tensor=x, alpha=alpha, include_top=False, weights=None)
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = bn_momentum
    return {f"C{k + 3}": net.get_layer(name).output for k, name in enumerate(FEATURE_LAYERS)}


def feature_shapes(image_shape, pyramid_levels=(3, 4, 5, 6, 7)) -> list[tuple[int, int]]:
    """(H, W) of P3..P7 of the MobileNet RetinaNet for an input of `image_shape` (H, W, ...)."""
    sizes = []
    for n in (int(image_shape[0]), int(image_shape[1])):
        side = -(-n // 2)  # conv1: 3x3/2 'same'
        per_level = {}
        for level in (2, 3, 4, 5):  # conv_dw_2, _4, _6, _12: pad (0, 1), 3x3/2 'valid'
            side = side // 2
            per_level[level] = side
        per_level[6] = -(-per_level[5] // 2)  # P6: 3x3/2 'same' on C5
        per_level[7] = -(-per_level[6] // 2)
        sizes.append(per_level)
    return [(sizes[0][p], sizes[1][p]) for p in pyramid_levels]


# The backbone registry's interface (model/backbones.py).
def features(inputs, backbone: str, conv1: str = "", winograd: int = 0) -> dict[str, object]:
    """C3..C5 of the MobileNet named `backbone` on `inputs` (conv1 and winograd are the ResNets' options)."""
    return mobilenet_features(inputs, parse_mobilenet(backbone))


def detect(layer_names: set[str], conv1_filters: int | None) -> tuple[str | None, str]:
    """(name, '') when the layers are keras.applications' MobileNet (its width alpha from conv1's 32 * alpha
    filters; the resolution in the name does not change the network, so 224 is named), else (None, why)."""
    if "conv_pw_13" not in layer_names:
        return None, ""
    alpha = next((a for a in ALPHAS if conv1_filters is not None and round(32 * float(a)) == conv1_filters), None)
    if alpha is None:
        return None, (f"a MobileNet whose conv1 has {conv1_filters} filters: not one of keras-retinanet's widths "
                      f"{', '.join(ALPHAS)} (32 x alpha filters)")
    return f"mobilenet224_{alpha}", ""
