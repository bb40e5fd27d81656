"""A model's card: the facts needed to use a trained RetinaNet right, kept with the model.

backbone and conv1 variant, the class list (MID, display name in output order), the image sides it was trained
at, the anchors (sizes, strides, ratios, scales, pyramid levels), the box regression's mean and std, the
preprocessing, the detection filter of an inference model, and what it was trained on (level, data, epoch).

Where it lives: inside a `.keras` file as the zip member `oid_retinanet_card.json` (Keras ignores members it
does not know), else in a sidecar `<model file>.card.json` (for a keras-retinanet `.h5`, written only when a
user asks: `convert_retinanet_model.py --write-card`). A file without either gets a card derived from what the
file holds (`derive_card`): the backbone, conv1, class count, and for an inference model its anchors and filter;
the facts it cannot hold (class names, sides, anchors of a training model) are the released models' and the
backbone's defaults, listed in `assumed`. `predict/resolve.py` combines a card with the command line's flags.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from oid_retinanet import __version__
from oid_retinanet.errors import OIDInputError
from oid_retinanet.files import atomic_path, atomic_write_text
from oid_retinanet.model.anchors import DEFAULT_ANCHOR_PARAMS, AnchorParameters
from oid_retinanet.model.backbones import PREPROCESSING, default_sides
from oid_retinanet.model.decode import BOX_MEAN, BOX_STD

log = logging.getLogger(__name__)

CARD_MEMBER = "oid_retinanet_card.json"  # inside a .keras zip
SIDECAR_SUFFIX = ".card.json"  # beside any other model file: <model file>.card.json
CARD_FORMAT = 1
ASSUMABLE = ("classes", "sides", "anchors")  # the facts a file without a card may not tell


@dataclass(frozen=True)
class ModelCard:
    """The facts of one trained model. `assumed` names those that are defaults, not recorded; `source` says where
    the card came from (not stored)."""

    backbone: str
    num_classes: int
    conv1: str = "same"
    classes: tuple[tuple[str, str], ...] | None = None
    min_side: int = 0
    max_side: int = 0
    anchors: AnchorParameters = DEFAULT_ANCHOR_PARAMS
    box_mean: tuple[float, ...] = BOX_MEAN
    box_std: tuple[float, ...] = BOX_STD
    preprocessing: str = PREPROCESSING
    filter: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    assumed: tuple[str, ...] = ()
    project: str = f"oid-retinanet {__version__}"
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.min_side or not self.max_side:
            sides = default_sides(self.backbone)
            object.__setattr__(self, "min_side", self.min_side or sides[0])
            object.__setattr__(self, "max_side", self.max_side or sides[1])
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple((str(m), str(n)) for m, n in self.classes))
            if len(self.classes) != self.num_classes:
                raise ValueError(f"{len(self.classes)} classes listed for a model of {self.num_classes}")
        if self.anchors.num_anchors < 1:
            raise ValueError("anchors: no ratios or scales")

    @property
    def sides(self) -> tuple[int, int]:
        return self.min_side, self.max_side

    def is_assumed(self, fact: str) -> bool:
        """Whether `fact` ('classes', 'sides', 'anchors') is a default rather than recorded with the model."""
        return fact in self.assumed

    def with_(self, **changes) -> ModelCard:
        """A copy with `changes`; each changed fact is no longer assumed."""
        assumed = tuple(a for a in self.assumed if not (a in changes or (a == "sides" and "min_side" in changes)))
        return replace(self, assumed=assumed, **changes)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("source")
        data["anchors"] = {k: list(v) for k, v in asdict(self.anchors).items()}
        data["classes"] = [list(c) for c in self.classes] if self.classes is not None else None
        data["assumed"] = list(self.assumed)
        return {"card_format": CARD_FORMAT, **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"

    @classmethod
    def from_dict(cls, data: dict, source: str = "") -> ModelCard:
        """The card a dict holds (as `to_dict` writes it); OIDInputError naming `source` when it is not one."""
        try:
            if not isinstance(data, dict) or data.get("card_format") != CARD_FORMAT:
                raise ValueError(f"card_format {data.get('card_format') if isinstance(data, dict) else None!r}, "
                                 f"expected {CARD_FORMAT}")
            known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "source"}
            anchors = known.pop("anchors", None)
            if anchors is not None:
                known["anchors"] = AnchorParameters(**{k: tuple(v) for k, v in anchors.items()})
            for key in ("box_mean", "box_std", "assumed"):
                if key in known:
                    known[key] = tuple(known[key])
            if known.get("classes") is not None:
                known["classes"] = tuple(tuple(c) for c in known["classes"])
            return cls(**known, source=source)
        except (TypeError, ValueError, AttributeError) as exc:
            raise OIDInputError(f"not a model card ({exc})", source) from None


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """Where the card of a model file that cannot hold one lives: `<model file>.card.json`."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + SIDECAR_SUFFIX)


def read_card(model_path: str | os.PathLike) -> ModelCard | None:
    """The card stored with a model file: inside a `.keras` file, else its sidecar; None when there is none."""
    model_path = Path(model_path)
    text, source = None, ""
    if model_path.suffix == ".keras" and zipfile.is_zipfile(model_path):
        with zipfile.ZipFile(model_path) as z:
            if CARD_MEMBER in z.namelist():
                text, source = z.read(CARD_MEMBER).decode("utf-8"), f"{model_path} (its card)"
    sidecar = sidecar_path(model_path)
    if text is None and sidecar.is_file():
        text, source = sidecar.read_text(encoding="utf-8"), str(sidecar)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise OIDInputError(f"the model card is not JSON ({exc})", source) from None
    return ModelCard.from_dict(data, source)


def add_card(keras_path: str | os.PathLike, card: ModelCard) -> None:
    """Put `card` into a `.keras` zip (a file being written: call it before the file gets its final name)."""
    with zipfile.ZipFile(keras_path, "a") as z:
        if CARD_MEMBER in z.namelist():
            raise ValueError(f"{keras_path} already holds a card")
        z.writestr(CARD_MEMBER, card.to_json())


def write_sidecar(model_path: str | os.PathLike, card: ModelCard) -> Path:
    """Write `card` beside `model_path` as `<model file>.card.json`; returns its path."""
    path = sidecar_path(model_path)
    atomic_write_text(path, card.to_json())
    return path


def save_model(model, path: str | os.PathLike, card: ModelCard | None) -> None:
    """`model.save` to a `.keras` file with `card` inside, under a temporary name renamed when complete."""
    path = Path(path)
    if path.suffix != ".keras":
        raise OIDInputError("a Keras 3 model file must end in .keras", str(path))
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
        if card is not None:
            add_card(tmp, card)


def card_of_h5(info, classes=None) -> ModelCard:
    """The card a keras-retinanet `.h5` implies (`info`: its `h5.inspect_h5`): its backbone, conv1, class count,
    and for an inference model its anchors, box decoding and filter. classes: (MID, name) pairs if known."""
    assumed = [fact for fact, known in (("classes", classes is not None), ("sides", False),
                                        ("anchors", info.is_inference)) if not known]
    return ModelCard(backbone=info.backbone, num_classes=info.num_classes, conv1=info.conv1, classes=classes,
                     anchors=info.anchor_params, box_mean=tuple(info.box_mean), box_std=tuple(info.box_std),
                     filter=dict(info.filter_config), assumed=tuple(assumed), source=f"{info.path} (derived)")


def card_of_model(model, path: str = "") -> ModelCard:
    """The card a loaded Keras model without one implies: backbone and conv1 from its layers, its class count, and
    for an inference model the anchors, box decoding and filter of its layers."""
    from oid_retinanet.model.backbones import backbone_of_model
    from oid_retinanet.model.resnet import CONV1_SAME, CONV1_ZERO_PADDING
    from oid_retinanet.model.retinanet import inference_settings

    names = {layer.name for layer in model.layers}
    settings = inference_settings(model)
    num_classes = int(model.get_layer("classification").output.shape[-1])
    assumed = ("classes", "sides") + (() if settings else ("anchors",))
    card = ModelCard(backbone=backbone_of_model(model), num_classes=num_classes,
                     conv1=CONV1_ZERO_PADDING if "padding_conv1" in names else CONV1_SAME, assumed=assumed,
                     source=f"{path} (derived)")
    return replace(card, **settings) if settings else card
