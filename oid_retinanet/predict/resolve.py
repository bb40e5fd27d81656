"""Which model runs, and with which facts: the one place that combines a model file, its card and the flags.

Every fact comes from the first of, in this order:
1. an explicit flag (--labels, --min-side/--max-side, --config for the anchors);
2. the model's card (inside a `.keras` file, or a `<model file>.card.json` sidecar: model/card.py);
3. for the class list: the prediction cache folder's `classes.csv`;
4. what the file itself tells (`h5.inspect_h5`, or a loaded `.keras` model's layers), the released models' class
   lists for 443 and 500 classes (shipped with the package), and the backbone's default sides.
A flag that contradicts a recorded fact (another class count, other anchors) is an error naming both values; one
that only overrides (other sides, another class list of the same length) is logged. Stage 4, the web demo and the
demo call `resolve_model`; nothing else guesses a model's facts.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from oid_retinanet.errors import OIDInputError
from oid_retinanet.model.anchors import AnchorParameters
from oid_retinanet.model.card import ModelCard, card_of_h5, card_of_model, read_card
from oid_retinanet.oid.classes import ClassList, class_list_difference, read_class_descriptions
from oid_retinanet.resources import resource_path

log = logging.getLogger(__name__)

CLASS_DESCRIPTIONS = resource_path("class-descriptions-boxable.csv")  # the v4 names of the released class lists


@dataclass
class ResolvedModel:
    """A model file with its facts settled: `card` (flags applied) and its class list as a ClassList."""

    path: str
    card: ModelCard
    labels: ClassList | None  # None only when resolved with need_classes=False and nothing names them
    _loaded: object = None  # the model as stored, when resolving had to load it

    @property
    def sides(self) -> tuple[int, int]:
        return self.card.min_side, self.card.max_side

    def load(self):
        """The inference model: a training model is converted with the card's anchors, box decoding and filter."""
        from oid_retinanet.model.h5 import load_model
        from oid_retinanet.model.retinanet import is_inference_model, retinanet_bbox, training_model_of

        if self._loaded is None and not self.path.endswith(".keras"):  # keras-retinanet's .h5: its own settings
            return load_model(self.path, inference=True, anchor_params=self.card.anchors)
        model = self._loaded if self._loaded is not None else load_model(self.path)
        if is_inference_model(model):
            return model
        return retinanet_bbox(training_model_of(model), **self.card.filter, anchor_params=self.card.anchors,
                              box_mean=self.card.box_mean, box_std=self.card.box_std)

    def describe(self) -> str:
        """One line for the log."""
        card = self.card
        named = self.labels.source if self.labels is not None else "not named"
        return (f"{self.path}: {card.backbone}, {card.num_classes} classes ({named}), sides "
                f"{card.min_side}/{card.max_side}, anchors {card.anchors.describe()}")


def model_card(weights: str) -> tuple[ModelCard, object]:
    """The card stored with `weights`, else the one its contents imply; and the model when it had to be loaded."""
    if not os.path.exists(weights):
        raise FileNotFoundError(2, "No such file or directory", weights)
    card = read_card(weights)
    if card is not None:
        return card, None
    from oid_retinanet.model import h5

    if weights.endswith(".keras"):
        model = h5.load_model(weights)
        return card_of_model(model, weights), model
    return card_of_h5(h5.inspect_h5(weights)), None


def _classes(card: ModelCard, labels: str | ClassList | None, cache_dir: str | None, required: bool
             ) -> ClassList | None:
    n = card.num_classes
    if labels:
        given = labels if isinstance(labels, ClassList) else read_class_descriptions(labels, any_ids=True)
        if len(given) != n:
            raise OIDInputError(f"{len(given)} classes, but the model has {n} ({card.source})", given.source)
        if card.classes is not None and not card.is_assumed("classes"):
            recorded = ClassList(*map(tuple, zip(*card.classes)), source=card.source)
            detail = class_list_difference(recorded, given)
            if detail is not None:
                log.warning("--labels %s overrides the class list of %s (%s)", given.source, card.source, detail)
        return given
    if card.classes is not None and not card.is_assumed("classes"):
        return ClassList(*map(tuple, zip(*card.classes)), source=card.source)
    if cache_dir is not None:
        from oid_retinanet.predict.cache import recorded_classes

        recorded = recorded_classes(cache_dir)
        if recorded is not None:
            if len(recorded) != n:
                raise OIDInputError(f"{len(recorded)} classes, but the model has {n} ({card.source})",
                                    recorded.source)
            return recorded
    from oid_retinanet.oid.levels import released_class_list

    try:
        rows = released_class_list(n, read_class_descriptions(CLASS_DESCRIPTIONS))
    except OIDInputError as exc:
        if not required:
            return None
        raise OIDInputError(f"{card.source}: no card names its classes, and {exc}: pass them with --labels") \
            from None
    return ClassList(tuple(m for m, _ in rows), tuple(name for _, name in rows), source="released class list")


def _anchors(card: ModelCard, anchors: AnchorParameters | None, config: str | None) -> ModelCard:
    if anchors is None or anchors == card.anchors:
        return card
    if anchors.num_anchors != card.anchors.num_anchors:
        raise OIDInputError(f"{anchors.num_anchors} anchors per location ({len(anchors.ratios)} ratios x "
                            f"{len(anchors.scales)} scales), but the model's heads have {card.anchors.num_anchors} "
                            f"({card.source})", config)
    if not card.is_assumed("anchors"):
        raise OIDInputError(f"anchors {anchors.describe()}, but the model was made with {card.anchors.describe()}"
                            f" ({card.source}); leave --config out to use the model's", config)
    return card.with_(anchors=anchors)


def resolve_model(weights: str, labels: str | ClassList | None = None, min_side: int | None = None,
                  max_side: int | None = None, anchors: AnchorParameters | None = None, config: str | None = None,
                  cache_dir: str | None = None, need_classes: bool = True) -> ResolvedModel:
    """The model file `weights` with every fact settled (see the module docstring for the order).

    labels: a MID,DisplayName CSV (--labels) or the classes themselves; min_side/max_side: --min-side/--max-side;
    anchors: read from `config` (--config, keras-retinanet's config.ini); cache_dir: the prediction cache folder,
    whose classes.csv names the classes when no flag or card does. need_classes=False: a model whose classes nothing
    names resolves with labels None (for conversion, which only carries them on).
    """
    card, loaded = model_card(weights)
    card = _anchors(card, anchors, config)
    classes = _classes(card, labels, cache_dir, need_classes)
    sides = (min_side or card.min_side, max_side or card.max_side)
    if sides != card.sides:
        if not card.is_assumed("sides"):
            log.info("sides %d/%d instead of the %d/%d of %s", *sides, *card.sides, card.source)
        card = card.with_(min_side=sides[0], max_side=sides[1])
    if classes is not None:
        card = card.with_(classes=tuple(zip(classes.mids, classes.names)))
    resolved = ResolvedModel(weights, card, classes, loaded)
    log.info("%s", resolved.describe())
    return resolved
