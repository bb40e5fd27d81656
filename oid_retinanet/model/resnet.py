"""ResNet50/101/152 backbones built as keras-resnet builds them, with its layer names, so weights load by name.

What keras-resnet does (and torchvision / keras.applications do not):
- Caffe ResNet v1: the stride of a downsampling bottleneck sits on its first 1x1 conv (`resXa_branch2a`) and
  on the 1x1 shortcut (`resXa_branch1`); 3x3 convs are `ZeroPadding2D(1)` + 'valid'; no conv has a bias.
- BatchNormalization with epsilon 1e-5, frozen: always inference mode, never trained (`FrozenBatchNormalization`).
- Names: stage letters for ResNet50 (`res4a` .. `res4f`); ResNet101/152 number the blocks after the first in
  stages 3 and 4 (`res3b1`, `res4b1` .. `res4b22`), stages 2 and 5 keep letters.
- conv1, in two variants found in real files: keras-resnet 0.2.0 uses a 7x7/2 conv with 'same' padding (TF
  pads an even side 2 before and 3 after); keras-resnet 0.1.0 (the 2018 releases) has `padding_conv1` =
  ZeroPadding2D(3) and a 'valid' conv1. Same output size; on even sides the outputs differ by a one-pixel shift.
"""

from __future__ import annotations

import re
from collections import Counter

import keras

from oid_retinanet.model.winograd import conv3x3

CONV1_SAME = "same"
CONV1_ZERO_PADDING = "zero_padding"
CONV1_VARIANTS = (CONV1_SAME, CONV1_ZERO_PADDING)

BLOCKS: dict[int, tuple[int, int, int, int]] = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
NUMERICAL_NAMES: dict[int, tuple[bool, bool, bool, bool]] = {
    50: (False, False, False, False),
    101: (False, True, True, False),
    152: (False, True, True, False),
}
BN_EPSILON = 1e-5
BLOCK_LAYER = re.compile(r"^res([2-5])(?:[a-z]|b\d+)_branch2a$")  # one layer per residual block, group 1 its stage


@keras.saving.register_keras_serializable(package="oid_retinanet")
class FrozenBatchNormalization(keras.layers.BatchNormalization):
    """BatchNormalization that always normalises with its moving statistics (keras-resnet's freeze=True).

    Created non-trainable, like keras-resnet's layer; the moving statistics never update, even in training.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("epsilon", BN_EPSILON)
        kwargs["trainable"] = False
        super().__init__(**kwargs)

    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=False, mask=mask)


def blocks_per_stage(names, pattern: re.Pattern = BLOCK_LAYER) -> tuple[int, int, int, int]:
    """Residual blocks in stages 2..5, counted from layer names (`pattern` matches one layer per block and
    captures its stage)."""
    counts = Counter(m.group(1) for m in map(pattern.match, names) if m)
    return tuple(counts.get(s, 0) for s in "2345")


def depth_of_blocks(blocks: tuple[int, ...]) -> int | None:
    """50, 101 or 152 for the blocks per stage of a ResNet (`blocks_per_stage`), else None."""
    return next((d for d, b in BLOCKS.items() if b == tuple(blocks)), None)


def backbone_name(depth: int) -> str:
    """'resnet50', 'resnet101' or 'resnet152'."""
    return f"resnet{depth}"


def parse_backbone(backbone: str | int) -> int:
    """Depth of a backbone given as 'resnet50' / 'resnet101' / 'resnet152' (or the number)."""
    text = str(backbone).lower()
    depth = int(text[len("resnet"):]) if text.startswith("resnet") and text[len("resnet"):].isdigit() else None
    if depth is None and text.isdigit():
        depth = int(text)
    if depth not in BLOCKS:
        raise ValueError(f"unknown backbone {backbone!r}: expected one of resnet50, resnet101, resnet152")
    return depth


def block_name(stage: int, block: int, numerical: bool) -> str:
    """keras-resnet's block label: 'res' + stage + this, e.g. '4a', '4b3' (numerical) or '4d' (letters)."""
    if block > 0 and numerical:
        return f"{stage + 2}b{block}"
    return f"{stage + 2}{chr(ord('a') + block)}"


def block_names(depth: int) -> list[list[str]]:
    """Block labels per stage (2..5) of a ResNet of `depth`, e.g. [['2a', '2b', '2c'], ['3a', ...], ...]."""
    return [[block_name(stage, b, NUMERICAL_NAMES[depth][stage]) for b in range(n)]
            for stage, n in enumerate(BLOCKS[depth])]


def _bn(x, name: str):
    return FrozenBatchNormalization(axis=-1, epsilon=BN_EPSILON, name=name)(x)


def bottleneck(x, filters: int, label: str, stride: int, shortcut_conv: bool, winograd: int = 0):
    """One keras-resnet bottleneck block `res<label>` (stride on the first 1x1 conv and the shortcut); its 3x3
    conv as `winograd.conv3x3` (Winograd F(m x m, 3x3), m = winograd, from 128 filters on; 0: direct)."""
    conv = keras.layers.Conv2D
    y = conv(filters, 1, strides=stride, use_bias=False, name=f"res{label}_branch2a")(x)
    y = _bn(y, f"bn{label}_branch2a")
    y = keras.layers.Activation("relu", name=f"res{label}_branch2a_relu")(y)
    y = keras.layers.ZeroPadding2D(1, name=f"padding{label}_branch2b")(y)
    y = conv3x3(filters, filters, winograd, use_bias=False, name=f"res{label}_branch2b")(y)
    y = _bn(y, f"bn{label}_branch2b")
    y = keras.layers.Activation("relu", name=f"res{label}_branch2b_relu")(y)
    y = conv(filters * 4, 1, use_bias=False, name=f"res{label}_branch2c")(y)
    y = _bn(y, f"bn{label}_branch2c")
    if shortcut_conv:
        shortcut = conv(filters * 4, 1, strides=stride, use_bias=False, name=f"res{label}_branch1")(x)
        shortcut = _bn(shortcut, f"bn{label}_branch1")
    else:
        shortcut = x
    y = keras.layers.Add(name=f"res{label}")([y, shortcut])
    return keras.layers.Activation("relu", name=f"res{label}_relu")(y)


def resnet_features(inputs, depth: int = 50, conv1: str = CONV1_SAME, winograd: int = 0) -> dict[str, object]:
    """Apply a keras-resnet ResNet to `inputs` (B, H, W, 3, caffe-preprocessed BGR); return C2..C5 tensors.

    depth: 50, 101 or 152. conv1: CONV1_SAME (keras-resnet 0.2.0) or CONV1_ZERO_PADDING (0.1.0).
    winograd: the output tile side of the blocks' Winograd 3x3 convs (model/winograd.py), 0 for direct ones.
    """
    if depth not in BLOCKS:
        raise ValueError(f"unknown ResNet depth {depth}: expected one of {sorted(BLOCKS)}")
    if conv1 not in CONV1_VARIANTS:
        raise ValueError(f"unknown conv1 variant {conv1!r}: expected one of {CONV1_VARIANTS}")
    x = inputs
    if conv1 == CONV1_ZERO_PADDING:
        x = keras.layers.ZeroPadding2D(3, name="padding_conv1")(x)
        x = keras.layers.Conv2D(64, 7, strides=2, use_bias=False, name="conv1")(x)
    else:
        x = keras.layers.Conv2D(64, 7, strides=2, padding="same", use_bias=False, name="conv1")(x)
    x = _bn(x, "bn_conv1")
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    features = {}
    filters = 64
    for stage, labels in enumerate(block_names(depth)):
        for b, label in enumerate(labels):
            stride = 2 if (b == 0 and stage > 0) else 1
            x = bottleneck(x, filters, label, stride, shortcut_conv=(b == 0), winograd=winograd)
        features[f"C{stage + 2}"] = x
        filters *= 2
    return features


def feature_layer_names(depth: int) -> dict[str, str]:
    """Names of the layers whose outputs are C2..C5 (the last ReLU of each stage), e.g. C3 -> 'res3d_relu'."""
    return {f"C{stage + 2}": f"res{labels[-1]}_relu" for stage, labels in enumerate(block_names(depth))}


_BACKBONE_LAYER = re.compile(r"^(padding_conv1|conv1|bn_conv1|conv1_relu|pool1"
                             r"|res[2-5]\w*|bn[2-5]\w*|padding[2-5]\w*)$")


def is_backbone_layer(name: str) -> bool:
    """Whether a layer of our RetinaNet belongs to the ResNet (what --freeze-backbone freezes)."""
    return bool(_BACKBONE_LAYER.match(name))


# The backbone registry's interface (model/backbones.py).
from oid_retinanet.model.anchors import feature_shapes  # noqa: E402,F401  (ceil(side / 2^level) per level)


def features(inputs, backbone: str, conv1: str = CONV1_SAME, winograd: int = 0) -> dict[str, object]:
    """C2..C5 of the ResNet named `backbone` ('resnet50', ...) on `inputs`."""
    return resnet_features(inputs, depth=parse_backbone(backbone), conv1=conv1, winograd=winograd)


def detect(layer_names: set[str], conv1_filters: int | None) -> tuple[str | None, str]:
    """(name, '') when the layers are a keras-resnet ResNet's, else (None, what was found): counted residual
    blocks per stage."""
    blocks = blocks_per_stage(layer_names)
    depth = depth_of_blocks(blocks)
    if depth is None:
        return None, f"residual blocks per stage {blocks} (a ResNet has one of {sorted(BLOCKS.values())})"
    return backbone_name(depth), ""
