"""Export an inference model for deployment, with its card.

Every format takes a batch of *prepared* images, float32 (B, H, W, 3): BGR, ImageNet means subtracted (caffe mode),
resized so the short side is the card's min_side and the long side at most its max_side (data/preprocess.py:
`prepare_image`), and returns boxes (B, N, 4) in input pixels, scores (B, N), labels (B, N) (-1 padded). The
graph does not include the preparation.

- `savedmodel`: TensorFlow's SavedModel (Keras 3's `model.export`), a folder TF Serving loads (signature `serve`);
  the card goes into the folder as `oid_retinanet_card.json`.
- `onnx`: one ONNX file (Keras 3's export through tf2onnx: the filter's NMS loops become ONNX Loop/If nodes); the
  card is in the file's metadata (`metadata_props`, key `oid_retinanet_card`: onnxruntime's
  `get_modelmeta().custom_metadata_map`). Needs requirements-export.txt (tf2onnx, onnx; onnxruntime runs it).
- `tflite`: one LiteRT (TFLite) flatbuffer of builtin ops only (no Flex delegate needed; weights frozen in), for
  TensorFlow's and LiteRT's interpreters; the card beside it as `<file>.card.json`. The file name must end in
  `.tflite`.

In the ONNX and TFLite files the Winograd convolutions are direct ones (the converters cannot take their size
test), which give the same results within float32 rounding.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from oid_retinanet.errors import OIDInputError
from oid_retinanet.model.card import CARD_MEMBER, ModelCard, write_sidecar

FORMATS = ("savedmodel", "onnx", "tflite")
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
    """Write `model` (an inference model) to `output` in `format`, under a temporary name renamed when complete
    (the card last). Returns the output path."""
    require_exporter(format)
    output = Path(output)
    if output.exists():
        raise OIDInputError("exists: remove it or choose another output", str(output))
    if format == "tflite" and output.suffix != ".tflite":
        raise OIDInputError("a TFLite file's name must end in .tflite", str(output))
    tmp = output.with_name(f".{output.stem}.tmp{os.getpid()}{output.suffix}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if format == "savedmodel":
            model.export(str(tmp), format="tf_saved_model", verbose=False)
            if card is not None:
                (tmp / CARD_MEMBER).write_text(card.to_json(), encoding="utf-8")
        else:
            _export_file(model, card, tmp, format)
        os.replace(tmp, output)
        if format == "tflite" and card is not None:
            write_sidecar(output, card)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    return output


def _export_file(model, card: ModelCard | None, path: Path, format: str) -> None:
    """The onnx and tflite formats: Keras 3's exporters, with direct convolutions."""
    import keras

    from oid_retinanet.model.winograd import direct_convolutions

    # the signature given: Keras infers one only for a model it has called since loading
    signature = [keras.InputSpec(shape=tuple(x.shape), dtype=x.dtype) for x in model.inputs]
    with direct_convolutions(model):
        if format == "tflite":
            import tensorflow as tf

            # builtin ops only, weights frozen in: any TFLite / LiteRT interpreter runs it
            model.export(str(path), format="litert", input_signature=signature, verbose=False,
                         target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]},
                         experimental_enable_resource_variables=False)
            return
        model.export(str(path), format="onnx", input_signature=signature, verbose=False)
    if card is not None:
        import onnx

        proto = onnx.load(str(path))
        entry = proto.metadata_props.add()
        entry.key, entry.value = ONNX_CARD_KEY, card.to_json()
        onnx.save(proto, str(path))
