"""Load keras-retinanet .h5 files (training snapshots or converted inference models) into our Keras 3 model.

Read with h5py only (no Keras 2): the legacy Keras HDF5 layout, `model_weights/<layer>/<weight name>` (or the
layer groups at the root for `save_weights` files), with `layer_names` / `weight_names` attributes stored as
variable-length strings (tf.keras) or fixed-length byte arrays (Keras 2.2). Nested submodels
(`regression_submodel`, `classification_submodel`) hold their layers' weights in their own group, named by the
inner layer ('pyramid_regression_0/kernel:0'). Optimizer state (`optimizer_weights`) is ignored.

From the file we infer the backbone (residual blocks per stage), the conv1 variant (a `padding_conv1`
layer means keras-resnet 0.1.0), the anchors per location and the class count (the last head convs), and, when
the file has a `model_config`, the anchor, box-decoding and filtering settings of an inference model.
Weights load by layer name; anything missing, unexpected or of another shape is an `OIDInputError` naming the
layers, unless `skip_mismatch=True` (then those layers keep their initial values and are logged).

The box clipping rule is not stored in a file: files written by standalone Keras <= 2.3 come from keras-retinanet
<= 0.5.1 (the Open Images releases), which clipped to [0, W] x [0, H]; later files to [0, W - 1] x [0, H - 1].
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import keras
import numpy as np

from oid_retinanet.errors import OIDInputError
from oid_retinanet.model import backbones
from oid_retinanet.model.anchors import DEFAULT_ANCHOR_PARAMS, AnchorParameters
from oid_retinanet.model.decode import BOX_MEAN, BOX_STD
from oid_retinanet.model.filter_detections import (
    CLASS_SPECIFIC_FILTER,
    MAX_DETECTIONS,
    NMS,
    NMS_THRESHOLD,
    SCORE_THRESHOLD,
)
from oid_retinanet.model.resnet import CONV1_SAME, CONV1_ZERO_PADDING
from oid_retinanet.model.retinanet import DTYPE_POLICY, retinanet, retinanet_bbox

log = logging.getLogger(__name__)

_MAX_LISTED = 12


def _text(value) -> str:
    """An HDF5 string attribute as str, whatever way it was stored (vlen str, bytes, numpy bytes)."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8")
    return str(value)


def _texts(value) -> list[str]:
    """An HDF5 string-array attribute (vlen or fixed-length) as a list of str."""
    if value is None:
        return []
    return [_text(v) for v in np.asarray(value).ravel()]


@dataclass
class H5ModelInfo:
    """What a keras-retinanet .h5 file holds, as far as building a matching model needs."""

    path: str
    backbone: str  # 'resnet50', 'resnet101', 'resnet152' or a MobileNet ('mobilenet224_1.0', ...)
    conv1: str
    num_classes: int
    num_anchors: int
    is_inference: bool
    keras_version: str = ""
    anchor_params: AnchorParameters = DEFAULT_ANCHOR_PARAMS
    box_mean: tuple = BOX_MEAN
    box_std: tuple = BOX_STD
    filter_config: dict = field(default_factory=dict)
    clip_size_minus_one: bool = True


@dataclass
class LoadReport:
    """What `load_weights_h5` did: counts, and the layers it skipped (only with skip_mismatch=True)."""

    loaded: int = 0
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    shape_mismatch: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No mismatch of any kind."""
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def describe(self) -> str:
        """One line listing every kind of mismatch with its first layer names."""
        parts = []
        for label, items in (("missing in the file", self.missing), ("not in the model", self.unexpected),
                             ("of another shape", self.shape_mismatch)):
            if items:
                shown = ", ".join(items[:_MAX_LISTED]) + (f", ... ({len(items)} in all)" if len(items) > _MAX_LISTED
                                                          else "")
                parts.append(f"{label}: {shown}")
        return "; ".join(parts)


def _string_list_attr(obj, name: str) -> list[str]:
    """A string-list attribute, also when Keras 2 split a large one into `name0`, `name1`, ... chunks."""
    if name in obj.attrs:
        return _texts(obj.attrs[name])
    out: list[str] = []
    chunk = 0
    while f"{name}{chunk}" in obj.attrs:
        out.extend(_texts(obj.attrs[f"{name}{chunk}"]))
        chunk += 1
    return out


def _weights_root(f: h5py.File) -> h5py.Group:
    return f["model_weights"] if "model_weights" in f else f


def _model_config(f: h5py.File) -> dict | None:
    raw = f.attrs.get("model_config")
    if raw is None:
        return None
    try:
        return json.loads(_text(raw))
    except ValueError:
        return None


def _config_layers(config: dict) -> list[dict]:
    """Every layer config of a (possibly nested) Keras model config, outer layers first."""
    out = []
    stack = [config]
    while stack:
        cfg = stack.pop(0)
        for layer in cfg.get("config", {}).get("layers", []):
            out.append(layer)
            if "layers" in layer.get("config", {}):
                stack.append(layer)
    return out


def _keras_version_is_standalone_2_3_or_older(version: str) -> bool:
    """keras_version of standalone Keras <= 2.3 (not tf.keras): files of keras-retinanet <= 0.5.1."""
    if not version or "tf" in version:
        return False
    m = re.match(r"^(\d+)\.(\d+)", version)
    return bool(m) and (int(m.group(1)), int(m.group(2))) < (2, 4)


def read_weight_groups(path: str | Path) -> dict[str, dict[str, tuple]]:
    """Every weight in the file: {top-level layer: {weight key: (dataset path, shape)}} without reading values.

    The weight key is 'param' for plain layers ('kernel', 'gamma', ...) and 'inner_layer/param' inside a nested
    submodel group ('pyramid_regression_0/kernel').
    """
    out: dict[str, dict[str, tuple]] = {}
    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise OIDInputError(f"not an HDF5 file ({exc})", path=str(path)) from None
    with f:
        root = _weights_root(f)
        names = _string_list_attr(root, "layer_names")
        if not names:
            raise OIDInputError("no 'layer_names' attribute: not a Keras HDF5 model or weights file", path=str(path))
        for name in names:
            group = root.get(name)
            if group is None:
                continue
            entries = {}
            for wname in _string_list_attr(group, "weight_names"):
                dataset = group.get(wname)
                if dataset is None:
                    raise OIDInputError(f"layer {name}: weight {wname} is listed but absent", path=str(path))
                parts = wname.split("/")
                param = parts[-1].split(":")[0]
                inner = parts[-2] if len(parts) >= 2 else name
                entries[(inner, param)] = (dataset.name, tuple(dataset.shape))
            out[name] = _weight_keys(name, entries)
    return out


def _weight_keys(group_name: str, entries: dict[tuple[str, str], tuple]) -> dict[str, tuple]:
    """Keys 'param' (plain layer) or 'inner/param' (nested model). Keras 2 under TF1 could save a nested model's
    layers with a graph-name suffix ('pyramid_regression_0_1', ..., 'pyramid_regression_1'); when every inner
    name of the group carries the same '_N' suffix and dropping it keeps them distinct, it is dropped."""
    inner_names = {inner for inner, _ in entries if inner != group_name}
    suffixes = {m.group(0) if (m := re.search(r"_\d+$", n)) else None for n in inner_names}
    strip = ""
    if len(suffixes) == 1 and None not in suffixes:
        candidate = suffixes.pop()
        if len({n[: -len(candidate)] for n in inner_names}) == len(inner_names):
            strip = candidate
    out = {}
    for (inner, param), entry in entries.items():
        if inner == group_name:
            out[param] = entry
        else:
            out[f"{inner[: len(inner) - len(strip)] if strip else inner}/{param}"] = entry
    return out


def _backbone_of(layer_names: list[str], groups: dict, path: str) -> str:
    """The backbone a file's layers make (model/backbones.py recognises each family by its layer names)."""
    conv1 = groups.get("conv1", {}).get("kernel")
    try:
        return backbones.detect(layer_names, conv1[1][-1] if conv1 else None)
    except ValueError as exc:
        raise OIDInputError(str(exc), path=path) from None


def inspect_h5(path: str | Path) -> H5ModelInfo:
    """Infer backbone, conv1 variant, anchors, classes and (if present) inference settings from a .h5 file."""
    path = str(path)
    groups = read_weight_groups(path)
    with h5py.File(path, "r") as f:
        root = _weights_root(f)
        layer_names = _string_list_attr(root, "layer_names")
        version = _text(f.attrs.get("keras_version", root.attrs.get("keras_version", "")))
        config = _model_config(f)

    backbone = _backbone_of(layer_names, groups, path)

    conv1 = CONV1_ZERO_PADDING if "padding_conv1" in layer_names else CONV1_SAME

    def head_bias(submodel: str, layer: str) -> tuple:
        entry = groups.get(submodel, {}).get(f"{layer}/bias") or groups.get(layer, {}).get("bias")
        if entry is None:
            raise OIDInputError(f"no weights for layer {layer} (in {submodel}): not a RetinaNet file", path=path)
        return entry[1]

    reg = head_bias("regression_submodel", "pyramid_regression")[0]
    cls = head_bias("classification_submodel", "pyramid_classification")[0]
    if reg % 4:
        raise OIDInputError(f"pyramid_regression has {reg} outputs, not a multiple of 4", path=path)
    num_anchors = reg // 4
    if cls % num_anchors:
        raise OIDInputError(f"pyramid_classification has {cls} outputs, not a multiple of {num_anchors} anchors",
                            path=path)
    is_inference = "filtered_detections" in layer_names
    info = H5ModelInfo(path=path, backbone=backbone, conv1=conv1, num_classes=cls // num_anchors,
                       num_anchors=num_anchors, is_inference=is_inference, keras_version=version,
                       clip_size_minus_one=not _keras_version_is_standalone_2_3_or_older(version))
    if config is not None:
        _read_inference_config(info, config)
    if info.anchor_params.num_anchors != num_anchors:
        raise OIDInputError(f"{num_anchors} anchors per location in the heads, but the anchor settings give "
                            f"{info.anchor_params.num_anchors}", path=path)
    return info


def _read_inference_config(info: H5ModelInfo, config: dict) -> None:
    layers = _config_layers(config)
    if any(layer.get("config", {}).get("name") == "padding_conv1" for layer in layers):
        info.conv1 = CONV1_ZERO_PADDING
    anchors = sorted((layer["config"] for layer in layers if layer.get("class_name") == "Anchors"),
                     key=lambda c: int(c["name"].rsplit("_", 1)[-1]))
    if anchors:
        ratios = tuple(float(r) for r in anchors[0].get("ratios") or DEFAULT_ANCHOR_PARAMS.ratios)
        scales = tuple(float(s) for s in anchors[0].get("scales") or DEFAULT_ANCHOR_PARAMS.scales)
        levels = tuple(int(np.log2(int(c["stride"]))) for c in anchors)
        info.anchor_params = AnchorParameters(sizes=tuple(int(c["size"]) for c in anchors),
                                              strides=tuple(int(c["stride"]) for c in anchors),
                                              ratios=ratios, scales=scales, pyramid_levels=levels)
    for layer in layers:
        cfg = layer.get("config", {})
        if layer.get("class_name") == "RegressBoxes":
            info.box_mean = tuple(float(v) for v in (cfg.get("mean") or BOX_MEAN))
            info.box_std = tuple(float(v) for v in (cfg.get("std") or BOX_STD))
        elif layer.get("class_name") == "FilterDetections":
            info.filter_config = {
                "nms": bool(cfg.get("nms", NMS)),
                "class_specific_filter": bool(cfg.get("class_specific_filter", CLASS_SPECIFIC_FILTER)),
                "nms_threshold": float(cfg.get("nms_threshold", NMS_THRESHOLD)),
                "score_threshold": float(cfg.get("score_threshold", SCORE_THRESHOLD)),
                "max_detections": int(cfg.get("max_detections", MAX_DETECTIONS)),
            }


def _model_weight_index(model: keras.Model) -> dict[str, dict[str, object]]:
    """{top-level layer name: {weight key: variable}}, keys as in `read_weight_groups`."""
    index: dict[str, dict[str, object]] = {}
    for layer in model.layers:
        entries = {}
        if isinstance(layer, keras.Model):
            for inner in layer.layers:
                for v in inner.weights:
                    entries[f"{inner.name}/{v.name}"] = v
        else:
            for v in layer.weights:
                entries[v.name] = v
        if entries:
            index[layer.name] = entries
    return index


def load_weights_h5(model: keras.Model, path: str | Path, skip_mismatch: bool = False) -> LoadReport:
    """Copy the weights of a keras-retinanet (or any legacy Keras) .h5 file into `model`, by layer name.

    Raises OIDInputError naming the layers when some are missing, unexpected or of another shape, unless
    skip_mismatch=True (then those are skipped and listed in the returned report).
    """
    path = str(path)
    file_groups = read_weight_groups(path)
    ours = _model_weight_index(model)
    report = LoadReport()
    assignments = []
    for layer_name, wanted in ours.items():
        have = file_groups.get(layer_name)
        if have is None:
            report.missing.append(layer_name)
            continue
        resolved = have
        for key, var in wanted.items():
            if key not in resolved:
                report.missing.append(f"{layer_name}/{key}")
                continue
            dpath, shape = resolved[key]
            if tuple(shape) != tuple(var.shape):
                report.shape_mismatch.append(f"{layer_name}/{key} (file {tuple(shape)}, model {tuple(var.shape)})")
                continue
            assignments.append((var, dpath))
        for key in resolved:
            if key not in wanted:
                report.unexpected.append(f"{layer_name}/{key}")
    for layer_name, have in file_groups.items():
        if have and layer_name not in ours:
            report.unexpected.append(layer_name)
    if not report.ok and not skip_mismatch:
        try:
            info = inspect_h5(path)
            holds = (f"the file holds a {info.backbone} (conv1 {info.conv1!r}) with {info.num_classes} classes; ")
        except OIDInputError:
            holds = ""
        raise OIDInputError(f"weights do not match the model {model.name!r}: {holds}{report.describe()}; "
                            "pass skip_mismatch=True to load the matching layers only", path=path)
    if not report.ok:
        log.warning("%s: skipped mismatched weights: %s", path, report.describe())
    with h5py.File(path, "r") as f:
        for var, dpath in assignments:
            var.assign(np.asarray(f[dpath][()], dtype=var.dtype))
    report.loaded = len(assignments)
    return report


def load_keras_retinanet(path: str | Path, inference: bool | None = None, skip_mismatch: bool = False,
                         num_classes: int | None = None, dtype_policy: str = DTYPE_POLICY,
                         **inference_kwargs) -> keras.Model:
    """Build the model a keras-retinanet .h5 file describes and load its weights.

    inference: True for the inference model (boxes, scores, labels), False for the training model (raw
    outputs), None for the kind the file holds. num_classes: build for another class count (the classification
    head is then skipped, as keras-retinanet's training did with --weights; needs skip_mismatch=True).
    dtype_policy: 'float32' (exact) or e.g. 'mixed_bfloat16' (faster on CPUs and GPUs with bf16 units).
    inference_kwargs override the file's settings (nms_threshold, score_threshold, max_detections,
    class_specific_filter, nms, clip_size_minus_one, ...).
    """
    info = inspect_h5(path)
    model = retinanet(num_classes or info.num_classes, backbone=info.backbone, conv1=info.conv1,
                      anchor_params=info.anchor_params, dtype_policy=dtype_policy)
    load_weights_h5(model, path, skip_mismatch=skip_mismatch)
    if inference is None:
        inference = info.is_inference
    if not inference:
        return model
    kwargs = dict(info.filter_config, anchor_params=info.anchor_params, box_mean=info.box_mean,
                  box_std=info.box_std, clip_size_minus_one=info.clip_size_minus_one)
    kwargs.update(inference_kwargs)
    return retinanet_bbox(model, **kwargs)


def load_model(path: str | Path, inference: bool | None = None, skip_mismatch: bool = False,
               **inference_kwargs) -> keras.Model:
    """Load a model saved by us (`.keras`) or by keras-retinanet (`.h5`); see `load_keras_retinanet`.

    For a `.keras` file, inference=True converts a training model (inference=False returns the training part).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    if path.suffix == ".keras":
        # Importing the model modules registers our layers with Keras' deserialisation.
        from oid_retinanet.model.backbones import register_layers
        from oid_retinanet.model.retinanet import is_inference_model, retinanet_bbox, training_model_of

        register_layers()
        try:
            model = keras.saving.load_model(path, compile=False)
        except (ValueError, OSError) as exc:
            raise OIDInputError(f"cannot load the Keras model ({exc})", path=str(path)) from None
        if inference is None or inference == is_inference_model(model):
            return model
        if inference:
            return retinanet_bbox(model, **inference_kwargs)
        return training_model_of(model)
    return load_keras_retinanet(path, inference=inference, skip_mismatch=skip_mismatch, **inference_kwargs)
