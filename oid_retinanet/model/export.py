"""Export an inference model for deployment, with its card beside it.

`savedmodel`: TensorFlow's SavedModel (Keras 3's `model.export`), a folder TF Serving loads; its `serve`
signature takes a batch of *prepared* images, float32 (B, H, W, 3): BGR, ImageNet means subtracted (caffe mode),
resized so the short side is the card's min_side and the long side at most its max_side (data/preprocess.py:
`prepare_image`), and returns boxes (B, N, 4) in input pixels, scores (B, N), labels (B, N) (-1 padded). The
graph does not include the preparation. The model card goes into the folder as `oid_retinanet_card.json`, so the
classes, sides and filter travel with it.

`onnx`: one ONNX file (Keras 3's `model.export` through tf2onnx, opset 17 or later: the filter's NMS becomes ONNX's
NonMaxSuppression), same inputs and outputs; the card is in the file's metadata (`metadata_props`, key
`oid_retinanet_card`: onnxruntime's `get_modelmeta().custom_metadata_map`). Winograd convolutions are exported as
direct ones (tf2onnx cannot convert their size test), which give the same results within float32 rounding. Needs
the optional packages of requirements-export.txt (tf2onnx, onnx; onnxruntime to run it).

TFLite is not offered: the filter's NMS (TensorFlow's combined and padded NMS ops) has no TFLite builtin, so a
converted model runs only with the Flex delegate, which the LiteRT interpreters on PyPI do not include.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from oid_retinanet.errors import OIDInputError
from oid_retinanet.model.card import CARD_MEMBER, ModelCard

FORMATS = ("savedmodel", "onnx")
ONNX_CARD_KEY = "oid_retinanet_card"
EXPORT_PACKAGES = {"onnx": ("tf2onnx", "onnx")}  # importable names; pinned in requirements-export.txt


def require_exporter(format: str) -> None:
    """OIDInputError naming the optional packages `format` needs and lacks (before any model is loaded)."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}: one of {', '.join(FORMATS)}")
    missing = [name for name in EXPORT_PACKAGES.get(format, ()) if importlib.util.find_spec(name) is None]
    if missing:
        raise OIDInputError(f"--format {format} needs {', '.join(missing)}: pip install -r requirements-export.txt")


def export_model(model, card: ModelCard | None, output: str | os.PathLike, format: str = "savedmodel") -> Path:
    """Write `model` (an inference model) to `output` in `format`; the folder is written under a temporary name
    and renamed when complete. Returns the output path."""
    require_exporter(format)
    output = Path(output)
    if output.exists():
        raise OIDInputError("exists: remove it or choose another output", str(output))
    tmp = output.with_name(f".{output.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if format == "onnx":
            _export_onnx(model, card, tmp)
        else:
            model.export(str(tmp), format="tf_saved_model", verbose=False)
            if card is not None:
                (tmp / CARD_MEMBER).write_text(card.to_json(), encoding="utf-8")
        os.replace(tmp, output)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    return output


def _export_onnx(model, card: ModelCard | None, path: Path) -> None:
    import keras
    import onnx

    from oid_retinanet.model.winograd import direct_convolutions

    # the signature given: Keras infers one only for a model it has called since loading
    signature = [keras.InputSpec(shape=tuple(x.shape), dtype=x.dtype) for x in model.inputs]
    with direct_convolutions(model):
        model.export(str(path), format="onnx", input_signature=signature, verbose=False)
    if card is not None:
        proto = onnx.load(str(path))
        entry = proto.metadata_props.add()
        entry.key, entry.value = ONNX_CARD_KEY, card.to_json()
        onnx.save(proto, str(path))
