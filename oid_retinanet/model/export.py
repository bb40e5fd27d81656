"""Export an inference model for deployment, with its card beside it.

`savedmodel`: TensorFlow's SavedModel (Keras 3's `model.export`), a folder TF Serving loads; its `serve`
signature takes a batch of *prepared* images, float32 (B, H, W, 3): BGR, ImageNet means subtracted (caffe mode),
resized so the short side is the card's min_side and the long side at most its max_side (data/preprocess.py:
`prepare_image`), and returns boxes (B, N, 4) in input pixels, scores (B, N), labels (B, N) (-1 padded). The
graph does not include the preparation. The model card goes into the folder as `oid_retinanet_card.json`, so the
classes, sides and filter travel with it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from oid_retinanet.errors import OIDInputError
from oid_retinanet.model.card import CARD_MEMBER, ModelCard

FORMATS = ("savedmodel",)


def export_model(model, card: ModelCard | None, output: str | os.PathLike, format: str = "savedmodel") -> Path:
    """Write `model` (an inference model) to `output` in `format`; the folder is written under a temporary name
    and renamed when complete. Returns the output path."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}: one of {', '.join(FORMATS)}")
    output = Path(output)
    if output.exists():
        raise OIDInputError("exists: remove it or choose another output", str(output))
    tmp = output.with_name(f".{output.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.export(str(tmp), format="tf_saved_model", verbose=False)
        if card is not None:
            (tmp / CARD_MEMBER).write_text(card.to_json(), encoding="utf-8")
        os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output
