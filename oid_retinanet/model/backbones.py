"""The backbones a RetinaNet is built on: one registry entry per family, asked by every other module.

An entry (`Family`) owns its names, its default image sides, how to build its C3..C5 features, the sizes of its
feature maps, which layers belong to it (what --freeze-backbone freezes), how to recognise it from a file's layer
names, and whether ImageNet weights exist for it. The model builder, the trainer, the `.h5` loader and the model
card look backbones up here. Adding a backbone: a module with its features (like `mobilenet.py`) and one `Family`
in `FAMILIES` below. No Keras import here: each family's module is imported when it builds something.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# The network input every backbone here takes: keras-retinanet's 'caffe' mode, BGR with the ImageNet means
# subtracted (a MobileNet converts it to its own 'tf' mode inside: mobilenet.CaffeToTF).
PREPROCESSING = "caffe"
CAFFE_MEAN_BGR: tuple[float, float, float] = (103.939, 116.779, 123.68)
KERAS_RETINANET_SIDES = (800, 1333)  # keras-retinanet's own defaults, for backbones the originals never ran


@dataclass(frozen=True)
class Family:
    """One family of backbones (ResNets, MobileNets, ...)."""

    name: str
    pattern: re.Pattern  # full match of the backbone names of this family
    usage: str  # the names, for help texts and errors
    module: str  # features(inputs, backbone, conv1, winograd), feature_shapes, is_backbone_layer, detect(names, conv1)
    sides: Callable[[str], tuple[int, int]]
    imagenet: bool  # ImageNet weights can initialise it (--imagenet-weights)

    def owns(self, backbone: str) -> bool:
        return bool(self.pattern.fullmatch(str(backbone)))

    def load(self):
        return importlib.import_module(self.module)


# The originals' sides: ResNet50/101 768/1024 (the README's release table), ResNet152 600/800.
_RESNET_SIDES = {"resnet50": (768, 1024), "resnet101": (768, 1024), "resnet152": (600, 800)}

FAMILIES: tuple[Family, ...] = (
    Family("resnet", re.compile(r"resnet(50|101|152)"), "resnet50, resnet101, resnet152", "oid_retinanet.model.resnet",
           lambda name: _RESNET_SIDES[name], imagenet=True),
    Family("mobilenet", re.compile(r"mobilenet(128|160|192|224)_(0\.25|0\.5|0\.75|1\.0)"),
           "mobilenet<128|160|192|224>_<0.25|0.5|0.75|1.0>", "oid_retinanet.model.mobilenet",
           lambda name: KERAS_RETINANET_SIDES, imagenet=False),
)


def family(backbone: str) -> Family:
    """The registry entry of `backbone`; ValueError naming every known form when there is none."""
    for fam in FAMILIES:
        if fam.owns(backbone):
            return fam
    raise ValueError(f"unknown backbone {backbone!r}: {usage()}")


def register_layers() -> None:
    """Import the model's modules (every family's and the RetinaNet's: FPN, heads, anchors, filter), so that Keras
    can deserialise their layers (before loading a `.keras` file)."""
    importlib.import_module("oid_retinanet.model.retinanet")
    for fam in FAMILIES:
        fam.load()


def usage() -> str:
    """Every backbone name form, for help texts."""
    return " or ".join(f.usage for f in FAMILIES)


def default_sides(backbone: str) -> tuple[int, int]:
    """(min_side, max_side) to train and predict at when nothing else says."""
    return family(backbone).sides(backbone)


def features(inputs, backbone: str, conv1: str, winograd: int) -> dict:
    """C3, C4, C5 of `backbone` applied to the network input."""
    return family(backbone).load().features(inputs, backbone, conv1=conv1, winograd=winograd)


def feature_shapes_fn(backbone: str):
    """The function giving the pyramid's feature-map sizes of `backbone` (for the anchors of training targets)."""
    return family(backbone).load().feature_shapes


def is_backbone_layer(layer_name: str) -> bool:
    """Whether a RetinaNet layer belongs to its backbone, whatever the backbone (what --freeze-backbone freezes)."""
    return any(f.load().is_backbone_layer(layer_name) for f in FAMILIES)


def detect(layer_names: Iterable[str], conv1_filters: int | None) -> str:
    """The backbone whose layers these are (conv1_filters: output channels of the layer named conv1, if any);
    ValueError saying what was found when none matches."""
    names = set(layer_names)
    reasons = []
    for fam in FAMILIES:
        found, reason = fam.load().detect(names, conv1_filters)
        if found:
            return found
        reasons.append(reason)
    raise ValueError("not a RetinaNet of a known backbone: " + "; ".join(r for r in reasons if r))


def backbone_of_model(model) -> str:
    """The backbone of a loaded Keras RetinaNet, from its layers."""
    names = {layer.name for layer in model.layers}
    conv1 = model.get_layer("conv1").kernel.shape[-1] if "conv1" in names else None
    return detect(names, conv1)
