"""Build RetinaNet as keras-retinanet does: the training model (raw outputs) and the inference model (boxes).

Training model: image (B, H, W, 3), caffe-preprocessed BGR -> [regression (B, N, 4), classification (B, N, K)],
N = all anchors of P3..P7 (see `anchors.py` for the order). Inference model: the same image -> [boxes (B, M, 4)
in input pixels, scores (B, M), labels (B, M) int32], M = max_detections, -1 padded. Layer names are
keras-retinanet's, so its .h5 weights load by name (`h5.py`). Every default lives in the module that owns it
(anchors, heads, decode, filter_detections, resnet) and is a named argument here.
"""

from __future__ import annotations

import keras

from oid_retinanet.model import (
    backbones,
    torch_layout,  # noqa: F401  (on torch: convolutions without a copy of their input)
)
from oid_retinanet.model.anchors import DEFAULT_ANCHOR_PARAMS, AnchorParameters, Anchors
from oid_retinanet.model.decode import BOX_MEAN, BOX_STD, ClipBoxes, RegressBoxes
from oid_retinanet.model.filter_detections import (
    CLASS_SPECIFIC_FILTER,
    MAX_DETECTIONS,
    NMS,
    NMS_THRESHOLD,
    SCORE_THRESHOLD,
    FilterDetections,
)
from oid_retinanet.model.fpn import FEATURE_SIZE, feature_pyramid
from oid_retinanet.model.heads import PRIOR_PROBABILITY, classification_submodel, regression_submodel
from oid_retinanet.model.resnet import CONV1_SAME
from oid_retinanet.model.winograd import MATRICES, default_tile

TRAINING_NAME = "retinanet"
INFERENCE_NAME = "retinanet-bbox"
INPUT_NAME = "input_1"
DTYPE_POLICY = "float32"


def retinanet(num_classes: int, backbone: str = "resnet50", conv1: str = CONV1_SAME,
              anchor_params: AnchorParameters = DEFAULT_ANCHOR_PARAMS, feature_size: int = FEATURE_SIZE,
              prior_probability: float = PRIOR_PROBABILITY, input_shape=(None, None, 3),
              dtype_policy: str = DTYPE_POLICY, winograd: int | None = None,
              name: str = TRAINING_NAME) -> keras.Model:
    """The training model: ResNet (or MobileNet) backbone, FPN, shared regression and classification heads.

    backbone: a name of the registry (model/backbones.py): 'resnet50' / 'resnet101' / 'resnet152', or a MobileNet
    ('mobilenet224_1.0', see mobilenet.py).
    conv1 (ResNets): 'same' (keras-resnet 0.2.0) or 'zero_padding' (0.1.0, the 2018 releases).
    dtype_policy: 'float32' (exact) or a Keras mixed policy such as 'mixed_bfloat16' (variables stay float32,
    so the same weights load; outputs are then bfloat16).
    winograd: the 3x3 convs of at least 128 channels and filters (ResNet blocks from res3, P3..P5, the head
    towers, the classification conv of a many-class model) run as Winograd F(m x m, 3x3), m = winograd: 4 or 2,
    on inputs of at least winograd.MIN_PIXELS positions and not in training (model/winograd.py: same weights, same
    results within float32 rounding; m = 4 1.4-1.9x the whole model on a CPU at 768x1024); 0 (or False) keeps
    keras-retinanet's direct convolution everywhere; None (the default): 4 where the backend computes on a CPU, 0
    on a GPU.
    Outputs are named 'regression' and 'classification'.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype_policy)
    try:
        return _retinanet(num_classes, backbone, conv1, anchor_params, feature_size, prior_probability,
                          input_shape, winograd, name)
    finally:
        keras.config.set_dtype_policy(previous)


def _retinanet(num_classes, backbone, conv1, anchor_params, feature_size, prior_probability, input_shape, winograd,
               name):
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    winograd = default_tile() if winograd is None else int(winograd)
    if winograd and winograd not in MATRICES:
        raise ValueError(f"winograd must be 0 or one of {sorted(MATRICES)} (the output tile side), got {winograd}")
    levels = tuple(anchor_params.pyramid_levels)
    if not {3, 4, 5} <= set(levels) or not set(levels) <= {3, 4, 5, 6, 7}:
        raise ValueError(f"pyramid levels must include 3, 4 and 5 and lie in 3..7, got {levels}")
    inputs = keras.Input(shape=input_shape, name=INPUT_NAME)
    c = backbones.features(inputs, backbone, conv1=conv1, winograd=winograd)
    p = feature_pyramid(c["C3"], c["C4"], c["C5"], feature_size=feature_size, pyramid_levels=levels,
                        winograd=winograd)
    features = [p[f"P{level}"] for level in levels]
    heads = [
        ("regression", regression_submodel(anchor_params.num_anchors, pyramid_feature_size=feature_size,
                                           winograd=winograd)),
        ("classification", classification_submodel(num_classes, anchor_params.num_anchors,
                                                   pyramid_feature_size=feature_size,
                                                   prior_probability=prior_probability, winograd=winograd)),
    ]
    outputs = [keras.layers.Concatenate(axis=1, name=head_name)([head(f) for f in features])
               for head_name, head in heads]
    return keras.Model(inputs=inputs, outputs=outputs, name=name)


def retinanet_bbox(model: keras.Model, nms: bool = NMS, class_specific_filter: bool = CLASS_SPECIFIC_FILTER,
                   anchor_params: AnchorParameters = DEFAULT_ANCHOR_PARAMS, nms_threshold: float = NMS_THRESHOLD,
                   score_threshold: float = SCORE_THRESHOLD, max_detections: int = MAX_DETECTIONS,
                   box_mean=BOX_MEAN, box_std=BOX_STD, clip_size_minus_one: bool = True,
                   name: str = INFERENCE_NAME) -> keras.Model:
    """The inference model on top of a training model (shares its layers and weights).

    Adds anchors per level, `RegressBoxes` (box_mean, box_std), `ClipBoxes` (clip_size_minus_one: keras-retinanet
    1.0.0's [0, W - 1]; False for <= 0.5.1's [0, W]) and `FilterDetections`.
    """
    assert_training_model(model)
    levels = tuple(anchor_params.pyramid_levels)
    features = [model.get_layer(f"P{level}").output for level in levels]
    # The decoding and filtering run in float32 even when the network runs in a mixed precision policy.
    anchors = [Anchors(size, stride, anchor_params.ratios, anchor_params.scales, name=f"anchors_{i}",
                       dtype="float32")(f)
               for i, (size, stride, f) in enumerate(zip(anchor_params.sizes, anchor_params.strides, features))]
    anchors = keras.layers.Concatenate(axis=1, name="anchors", dtype="float32")(anchors)
    regression, classification = model.outputs[0], model.outputs[1]
    boxes = RegressBoxes(mean=box_mean, std=box_std, name="boxes", dtype="float32")([anchors, regression])
    boxes = ClipBoxes(size_minus_one=clip_size_minus_one, name="clipped_boxes", dtype="float32")(
        [model.inputs[0], boxes])
    detections = FilterDetections(nms=nms, class_specific_filter=class_specific_filter, nms_threshold=nms_threshold,
                                  score_threshold=score_threshold, max_detections=max_detections,
                                  name="filtered_detections", dtype="float32")([boxes, classification])
    return keras.Model(inputs=model.input, outputs=detections, name=name)


def convert_model(model: keras.Model, **kwargs) -> keras.Model:
    """Training model -> inference model (keras-retinanet's `models.convert_model`); kwargs go to retinanet_bbox."""
    return retinanet_bbox(model, **kwargs)


def is_training_model(model: keras.Model) -> bool:
    """True when `model` has the 'regression' and 'classification' outputs of a training model."""
    names = {layer.name for layer in model.layers}
    return {"regression", "classification", "P3"} <= names and len(model.outputs) == 2


def is_inference_model(model: keras.Model) -> bool:
    """True when `model` ends in keras-retinanet's 'filtered_detections' layer."""
    return any(layer.name == "filtered_detections" for layer in model.layers)


def assert_training_model(model: keras.Model) -> None:
    """Raise ValueError unless `model` is a training model."""
    if not is_training_model(model):
        raise ValueError(f"model {model.name!r} is not a RetinaNet training model (it needs the outputs "
                         "'regression' and 'classification' and the pyramid layers P3..P7)")


def training_model_of(model: keras.Model) -> keras.Model:
    """The training model inside an inference model (or the model itself when it is one)."""
    if is_training_model(model):
        return model
    regression = model.get_layer("regression").output
    classification = model.get_layer("classification").output
    return keras.Model(inputs=model.input, outputs=[regression, classification], name=TRAINING_NAME)


def inference_settings(model: keras.Model) -> dict:
    """The anchors, box decoding and filter an inference model's layers hold, as `retinanet_bbox`'s arguments and
    `filter` (its FilterDetections settings); {} for a training model."""
    by_class = {}
    for layer in model.layers:
        by_class.setdefault(type(layer).__name__, []).append(layer)
    if "FilterDetections" not in by_class:
        return {}
    anchors = sorted(by_class.get("Anchors", []), key=lambda layer: int(layer.name.rsplit("_", 1)[-1]))
    regress = by_class["RegressBoxes"][0].get_config()
    flt = by_class["FilterDetections"][0].get_config()
    out = {"box_mean": tuple(float(v) for v in regress["mean"]), "box_std": tuple(float(v) for v in regress["std"]),
           "filter": {k: flt[k] for k in ("nms", "class_specific_filter", "nms_threshold", "score_threshold",
                                          "max_detections")}}
    if anchors:
        first = anchors[0].get_config()
        out["anchors"] = AnchorParameters(
            sizes=tuple(int(a.get_config()["size"]) for a in anchors),
            strides=tuple(int(a.get_config()["stride"]) for a in anchors),
            ratios=tuple(float(r) for r in first["ratios"]), scales=tuple(float(s) for s in first["scales"]),
            pyramid_levels=tuple(int(a.get_config()["stride"]).bit_length() - 1 for a in anchors))
    return out
