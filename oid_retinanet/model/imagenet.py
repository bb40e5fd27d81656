"""ImageNet initialisation of the ResNet backbone (keras-retinanet's `--imagenet-weights`), from two sources.

'fizyr' (the default, what keras-retinanet used): fizyr/keras-models v0.0.1 `ResNet-{50,101,152}-model.keras.h5`,
Kaiming He's caffe ResNets converted to keras-resnet. Same layer names, conv without bias and BatchNormalization
epsilon 1e-5 as our backbone, so every weight copies by name; the classifier (`fc1000`) is ignored.

'keras': keras.applications' ResNet50/101/152 (`resnet{N}_weights_tf_dim_ordering_tf_kernels_notop.h5`). Also
caffe-style v1 (the stride of a downsampling block is on its first 1x1 conv and on the shortcut, as ours), but
named `conv{stage}_block{i}_{k}_conv|bn` (k = 0 shortcut, 1-3 the branch-2 convs a-c), with a bias on every
conv and BN epsilon 1.001e-5. Mapped to our names by stage and block; each conv bias b is folded into the BN
that follows (moving_mean - b: BN(conv(x) + b) with mean m equals BN(conv(x)) with mean m - b), and the
epsilon into gamma (gamma * sqrt((var + 1e-5) / (var + 1.001e-5))), so our layers compute what theirs did.

Both source networks pad conv1 by 3 and use a 'valid' 7x7/2 conv: our CONV1_ZERO_PADDING variant (keras-resnet
0.1.0). With our default CONV1_SAME (keras-resnet 0.2.0) the weights still load and serve as initialisation, but
on even input sides the first conv's windows sit one pixel off the pretrained network's. One more difference
with keras.applications, in the architecture rather than the weights: its pool1 is ZeroPadding2D(1) + 'valid'
3x3/2 max pooling, keras-resnet's (and caffe's) is 'same' max pooling; on an even conv1 output the windows are
one pixel apart. Our backbone with keras.applications weights therefore equals keras.applications' network
exactly only when the conv1 output side is odd (input side = 1 mod 4), which the tests use.

Files are legacy Keras HDF5 (Keras 2 `save`/`save_weights`, or Keras 3's legacy .h5 writer), read with h5py.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import keras
import numpy as np

from oid_retinanet.errors import OIDInputError
from oid_retinanet.model import download
from oid_retinanet.model.h5 import read_weight_groups
from oid_retinanet.model.resnet import (
    BN_EPSILON,
    block_names,
    blocks_per_stage,
    depth_of_blocks,
    parse_backbone,
)

log = logging.getLogger(__name__)

SOURCE_FIZYR = "fizyr"
SOURCE_KERAS = "keras"
DEFAULT_IMAGENET_SOURCE = SOURCE_FIZYR
IMAGENET_SOURCES: dict[str, str] = {
    SOURCE_FIZYR: "fizyr/keras-models v0.0.1 ResNet-{depth}-model.keras.h5: caffe ResNet in keras-resnet layout "
                  "(what keras-retinanet's --imagenet-weights downloaded)",
    SOURCE_KERAS: "keras.applications ResNet{depth} (include_top=False file), mapped by stage and block, conv "
                  "biases folded into BatchNormalization",
}

LAYOUT_KERAS_RESNET = "keras-resnet"
LAYOUT_KERAS_APPLICATIONS = "keras.applications"
KERAS_APPLICATIONS_BN_EPSILON = 1.001e-5
_FILE_EPSILON = {LAYOUT_KERAS_RESNET: BN_EPSILON, LAYOUT_KERAS_APPLICATIONS: KERAS_APPLICATIONS_BN_EPSILON}

_KERAS_BLOCK = re.compile(r"^conv([2-5])_block(\d+)_1_conv$")
_BRANCH_OF_K = {0: "1", 1: "2a", 2: "2b", 3: "2c"}
_BN_PARAMS = ("gamma", "beta", "moving_mean", "moving_variance")
_MAX_LISTED = 12


@dataclass
class ImagenetLoadReport:
    """What `load_imagenet_backbone` did. Layer names are ours; `ignored` names the file's own layers."""

    path: str
    layout: str
    depth: int
    loaded: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    shape_mismatch: list = field(default_factory=list)
    ignored: list = field(default_factory=list)
    folded_biases: int = 0

    @property
    def ok(self) -> bool:
        """Every backbone layer loaded."""
        return not (self.missing or self.shape_mismatch)

    def describe(self) -> str:
        """One line: counts, and the first names of each kind of mismatch."""
        parts = [f"{len(self.loaded)} backbone layers loaded from {self.layout} ResNet{self.depth} weights"]
        if self.folded_biases:
            parts.append(f"{self.folded_biases} conv biases folded into BatchNormalization")
        for label, items in (("missing in the file", self.missing), ("of another shape", self.shape_mismatch),
                             ("ignored (not in the backbone)", self.ignored)):
            if items:
                more = f", ... ({len(items)} in all)" if len(items) > _MAX_LISTED else ""
                parts.append(f"{label}: {', '.join(items[:_MAX_LISTED])}{more}")
        return "; ".join(parts)


def backbone_conv_bn_pairs(depth: int) -> list[tuple[str, str]]:
    """Our (conv, batch norm) layer names of a ResNet of `depth`, in network order: conv1/bn_conv1, then
    res2a_branch2a/bn2a_branch2a, ... with the shortcut (branch1) after branch2c in each stage's first block."""
    pairs = [("conv1", "bn_conv1")]
    for labels in block_names(depth):
        for b, label in enumerate(labels):
            branches = ("2a", "2b", "2c", "1") if b == 0 else ("2a", "2b", "2c")
            pairs += [(f"res{label}_branch{br}", f"bn{label}_branch{br}") for br in branches]
    return pairs


def keras_applications_name_map(depth: int) -> dict[str, str]:
    """keras.applications layer name -> ours, e.g. 'conv1_conv' -> 'conv1', 'conv4_block2_1_bn' -> 'bn4b_branch2a'
    (ResNet50) or 'bn4b1_branch2a' (ResNet101/152), 'conv3_block1_0_conv' -> 'res3a_branch1'."""
    mapping = {"conv1_conv": "conv1", "conv1_bn": "bn_conv1"}
    for stage, labels in enumerate(block_names(depth), start=2):
        for i, label in enumerate(labels, start=1):
            for k, branch in _BRANCH_OF_K.items():
                if k == 0 and i > 1:
                    continue
                mapping[f"conv{stage}_block{i}_{k}_conv"] = f"res{label}_branch{branch}"
                mapping[f"conv{stage}_block{i}_{k}_bn"] = f"bn{label}_branch{branch}"
    return mapping


def _flat_layers(model: keras.Model) -> dict[str, keras.layers.Layer]:
    out = {}
    stack = list(model.layers)
    while stack:
        layer = stack.pop(0)
        out.setdefault(layer.name, layer)
        if isinstance(layer, keras.Model):
            stack.extend(layer.layers)
    return out


def model_depth(model: keras.Model) -> int:
    """Depth (50, 101, 152) of the keras-resnet backbone inside `model`, from its residual block names."""
    depth = depth_of_blocks(blocks_per_stage(_flat_layers(model)))
    if depth is None:
        raise ValueError(f"model {model.name!r} holds no keras-resnet ResNet50/101/152 backbone")
    return depth


def file_layout(groups: dict, path: str) -> tuple[str, int]:
    """(layout, depth) of an ImageNet ResNet weights file, from its layer names (see `read_weight_groups`)."""
    if "conv2_block1_1_conv" in groups:
        layout, blocks = LAYOUT_KERAS_APPLICATIONS, blocks_per_stage(groups, _KERAS_BLOCK)
    elif "res2a_branch2a" in groups:
        layout, blocks = LAYOUT_KERAS_RESNET, blocks_per_stage(groups)
    else:
        raise OIDInputError("not an ImageNet ResNet weights file: no keras-resnet layer 'res2a_branch2a' and no "
                            "keras.applications layer 'conv2_block1_1_conv'", path=path)
    depth = depth_of_blocks(blocks)
    if depth is None:
        raise OIDInputError(f"{layout} weights with residual blocks per stage {blocks}: not a ResNet50/101/152",
                            path=path)
    return layout, depth


def fetch_imagenet_weights(depth: int | str, source: str = DEFAULT_IMAGENET_SOURCE,
                           models_path: str | os.PathLike = "models", progress: bool = True,
                           mirror: str | None = None, retries: int = download.RETRIES) -> Path:
    """Path of the ImageNet weights of ResNet`depth` from `source` (see IMAGENET_SOURCES), downloaded into
    `models_path` unless already there (checked by md5 after download). mirror: base URL to fetch from instead."""
    if source not in IMAGENET_SOURCES:
        raise OIDInputError(f"unknown ImageNet weights source {source!r}: expected one of {sorted(IMAGENET_SOURCES)}")
    depth = parse_backbone(depth)
    entry = download.weight_file(f"resnet{depth}_imagenet_{source}")
    if mirror:
        entry = download.with_mirror(entry, mirror)
    return download.download(entry, models_path, progress=progress, retries=retries)


def _plan_layer(ours: keras.layers.Layer, have: dict | None, src: str, report: ImagenetLoadReport,
                values: dict[str, np.ndarray] | None) -> list[tuple[object, np.ndarray]] | None:
    """Pairs (variable, value) for one of our layers, or None when it cannot load (recorded in the report)."""
    if have is None:
        report.missing.append(ours.name + (f" (file layer {src})" if src != ours.name else ""))
        return None
    out, bad = [], []
    for var in ours.weights:
        value = values.get(var.name) if values is not None else None
        if value is None:
            bad.append(f"{ours.name}/{var.name} (absent from file layer {src})")
            continue
        if tuple(value.shape) != tuple(var.shape):
            report.shape_mismatch.append(f"{ours.name}/{var.name} (file {tuple(value.shape)}, "
                                         f"model {tuple(var.shape)})")
            return None
        out.append((var, value))
    if bad:
        report.missing.extend(bad)
        return None
    return out


def load_imagenet_backbone(model: keras.Model, path_or_source: str | os.PathLike = DEFAULT_IMAGENET_SOURCE,
                           models_path: str | os.PathLike | None = None, skip_mismatch: bool = False,
                           progress: bool = True) -> ImagenetLoadReport:
    """Initialise the ResNet backbone of `model` (a RetinaNet or a bare backbone) from ImageNet weights.

    path_or_source: a weights file (keras-resnet / fizyr layout or keras.applications layout, told apart by
    its layer names), or a source name from IMAGENET_SOURCES, downloaded into `models_path` (required then).
    Layers outside the backbone (FPN, heads) are untouched. A file of another depth is always an error; layers
    missing from the file or of another shape are an OIDInputError naming them, unless skip_mismatch=True (then
    they keep their values and are listed in the report). Nothing is assigned when an error is raised.
    """
    depth = model_depth(model)
    source = str(path_or_source)
    if source in IMAGENET_SOURCES and not Path(source).is_file():
        if models_path is None:
            raise ValueError("models_path is needed to download ImageNet weights by source name")
        path = fetch_imagenet_weights(depth, source, models_path, progress=progress)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(2, "No such file or directory", str(path))
    path = str(path)
    groups = read_weight_groups(path)
    layout, file_depth = file_layout(groups, path)
    if file_depth != depth:
        raise OIDInputError(f"{layout} ResNet{file_depth} weights, but the model's backbone is a ResNet{depth}",
                            path=path)
    report = ImagenetLoadReport(path=path, layout=layout, depth=depth)
    name_of = ({v: k for k, v in keras_applications_name_map(depth).items()} if layout == LAYOUT_KERAS_APPLICATIONS
               else None)
    layers = _flat_layers(model)
    eps_file = _FILE_EPSILON[layout]
    assignments = []
    used = set()
    with h5py.File(path, "r") as f:
        def read(layer: str) -> dict[str, np.ndarray] | None:
            entries = groups.get(layer)
            return None if entries is None else {k: np.asarray(f[d][()]) for k, (d, _) in entries.items()}

        for conv_name, bn_name in backbone_conv_bn_pairs(depth):
            src_conv = name_of[conv_name] if name_of else conv_name
            src_bn = name_of[bn_name] if name_of else bn_name
            used.update((src_conv, src_bn))
            conv_values, bn_values = read(src_conv), read(src_bn)
            conv_plan = _plan_layer(layers[conv_name], groups.get(src_conv), src_conv, report,
                                    {"kernel": conv_values["kernel"]} if conv_values and "kernel" in conv_values
                                    else {})
            if conv_plan is not None:
                assignments += conv_plan
                report.loaded.append(conv_name)
            bn_layer = layers[bn_name]
            folded = None
            if (bn_values is not None and all(p in bn_values for p in _BN_PARAMS)
                    and len({bn_values[p].shape for p in _BN_PARAMS}) == 1):
                # (all four present with one shape; otherwise the plan below reports what is wrong)
                bias = conv_values.get("bias") if conv_values else None
                if bias is not None and bias.shape != bn_values["moving_mean"].shape:
                    report.shape_mismatch.append(f"{bn_name} (conv bias of {src_conv}: {bias.shape}, "
                                                 f"batch norm {bn_values['moving_mean'].shape})")
                    continue
                folded = _fold(bn_values, bias, eps_file, float(bn_layer.epsilon))
            bn_plan = _plan_layer(bn_layer, groups.get(src_bn), src_bn, report,
                                  folded if folded is not None else (bn_values or {}))
            if bn_plan is not None:
                assignments += bn_plan
                report.loaded.append(bn_name)
                if conv_values is not None and "bias" in conv_values:
                    report.folded_biases += 1
    report.ignored = sorted(name for name, entries in groups.items() if entries and name not in used)
    if not report.ok and not skip_mismatch:
        raise OIDInputError(f"ImageNet weights do not fit the backbone of {model.name!r}: {report.describe()}; "
                            "pass skip_mismatch=True to load the matching layers only", path=path)
    for var, value in assignments:
        var.assign(np.asarray(value, dtype=var.dtype))
    if not report.ok:
        log.warning("%s: %s", path, report.describe())
    else:
        log.info("%s: %s", path, report.describe())
    if "padding_conv1" not in layers:
        log.info("the ImageNet network padded conv1 by 3 ('zero_padding' variant); this model's conv1 uses 'same' "
                 "padding, a one-pixel shift on even input sides")
    return report


def _fold(bn: dict[str, np.ndarray], bias: np.ndarray | None, eps_file: float,
          eps_ours: float) -> dict[str, np.ndarray]:
    """BN parameters for our layer (epsilon eps_ours) computing what conv + bias, then BN with eps_file, did."""
    gamma, beta, mean, var = (np.asarray(bn[p], dtype=np.float64) for p in _BN_PARAMS)
    if bias is not None:
        mean = mean - np.asarray(bias, dtype=np.float64)
    if eps_file != eps_ours:
        gamma = gamma * np.sqrt((var + eps_ours) / (var + eps_file))
    return {"gamma": gamma, "beta": beta, "moving_mean": mean, "moving_variance": var}
