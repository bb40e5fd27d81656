"""keras-retinanet 1.0.0 itself, timed on this machine: the baseline of bench/bench_model.py.

Runs in its own venv (`make keras-retinanet-venv`: TensorFlow 2.15.1, keras-retinanet 1.0.0, keras-resnet 0.2.0,
the versions the fixture was recorded with; requirements.txt beside this file), never in ours. bench_model calls
it with the preprocessed image it times our models on. For each class count it builds keras-retinanet's ResNet50
inference model (convert_model defaults) with the fixture's weights:
- 7 classes: the fixture's inference.h5, materialized from layout.json.gz and loaded with
  keras_retinanet.models.load_model (the model and file of the fixture README's timing);
- any other count: models.backbone('resnet50').retinanet(num_classes=N), every weight drawn by the fixture's
  rule (materialize.weight_value on the Keras weight name, as bench_model draws ours).
It times predict_on_batch on the image (batch 1) and on the image with its mirror (batch 2) with bench_model's
`time_calls` (median wall and process CPU seconds after warm-up calls), and keeps the batch-1 detections.

Writes OUT_DIR/keras_retinanet_baseline.json ({"versions", "N classes": {"batch1", "flip_batch2"}}) and
OUT_DIR/detections_N.npz (boxes, scores, labels).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.bench_model import FIXTURE, _materialize_module, time_calls  # noqa: E402  (numpy only)


def inference_model(num_classes: int):
    """keras-retinanet's ResNet50 inference model with the fixture's weights (see the module doc)."""
    from keras_retinanet import models

    materialize = _materialize_module()
    layout = materialize.load_layout(str(FIXTURE / "layout.json.gz"))
    if num_classes == 7:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "inference.h5"
            materialize.materialize(layout, "inference", str(path))
            return models.load_model(str(path), backbone_name="resnet50")
    model = models.backbone("resnet50").retinanet(num_classes=num_classes)
    for layer in model.layers:
        for sub in (layer.layers if hasattr(layer, "layers") else [layer]):
            for weight in sub.weights:
                key = f"{sub.name}/{weight.name.split('/')[-1]}"
                weight.assign(materialize.weight_value(layout["seed"], key, tuple(weight.shape), layout["weight_rule"]))
    return models.convert_model(model)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="the preprocessed image, (H, W, 3) float32 .npy")
    p.add_argument("out_dir")
    p.add_argument("--classes", type=int, nargs="+", default=[7, 443])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    from importlib.metadata import version

    import numpy as np
    import tensorflow as tf

    x = np.load(args.input).astype(np.float32)
    single, flip = x[None], np.stack([x, x[:, ::-1]])
    out_dir = Path(args.out_dir)
    result = {"versions": {name: version(name) for name in ("tensorflow-cpu", "keras-retinanet", "keras-resnet")}}
    for n in args.classes:
        print(f"keras-retinanet 1.0.0, {n} classes ...", file=sys.stderr, flush=True)
        predict = inference_model(n).predict_on_batch
        result[f"{n} classes"] = {key: time_calls(lambda batch=batch: predict(batch), args.warmup, args.repeats)
                                  for key, batch in (("batch1", single), ("flip_batch2", flip))}
        boxes, scores, labels = predict(single)[:3]
        np.savez(out_dir / f"detections_{n}.npz", boxes=boxes, scores=scores, labels=labels)
        tf.keras.backend.clear_session()
    (out_dir / "keras_retinanet_baseline.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
