"""Benchmark: stage 4 inference on this CPU, as `retinanet_inference_example.py` runs it.

ResNet50 with 443 classes at the original's 768/1024 sizes with flip TTA (the image and its mirror in one
call), through `predict_images` (reading and resizing in threads, caching, failures list). Prints images/s
and the share of the wall time spent outside the model call (reading, resizing, caching). Weights are the
model's initialisation (prior-probability head bias), so few boxes pass the 0.05 score filter: the filtering
cost of a trained model is not included. The GPU numbers need the device machine (not measured here).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import machine_info, peak_rss_mb, write_result  # noqa: E402


class TimedModel:
    """Wraps a model's predict_on_batch and adds up the seconds spent in it."""

    def __init__(self, model):
        self.model = model
        self.seconds = 0.0
        self.calls = 0

    def predict_on_batch(self, x):
        t = time.perf_counter()
        out = self.model.predict_on_batch(x)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        return out


def make_images(folder: Path, n: int) -> list[str]:
    """n JPEGs of 1024x768 with gradients, noise and shapes (made once, reused)."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"{i:016x}.jpg"
        if not path.exists():
            img = np.clip(rng.normal(128, 40, (768, 1024, 3)), 0, 255).astype(np.uint8)
            for _ in range(8):
                c = tuple(int(v) for v in rng.integers(0, 255, 3))
                cv2.circle(img, tuple(int(v) for v in rng.integers(0, 768, 2)), int(rng.integers(20, 150)), c, -1)
            cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(str(path))
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=6, help="images (default: %(default)s)")
    p.add_argument("--out-dir", default="bench_output")
    args = p.parse_args(argv)

    import keras

    from oid_retinanet.model.retinanet import retinanet, retinanet_bbox
    from oid_retinanet.predict.inference import predict_images

    out = Path(args.out_dir)
    paths = make_images(out / "inference_images", args.n + 1)
    model = TimedModel(retinanet_bbox(retinanet(443)))
    warm = out / "inference_cache_warmup"
    shutil.rmtree(warm, ignore_errors=True)
    predict_images(model, paths[:1], warm, 768, 1024, flip=True, progress=False)  # compile and warm up
    model.seconds, model.calls = 0.0, 0
    cache = out / "inference_cache"
    shutil.rmtree(cache, ignore_errors=True)
    t = time.perf_counter()
    report = predict_images(model, paths[1:], cache, 768, 1024, flip=True, progress=False)
    wall = time.perf_counter() - t
    result = {"backend": keras.backend.backend(), "images": report.predicted, "input": [768, 1024],
              "classes": 443, "flip": True, "wall_s": wall, "model_s": model.seconds,
              "images_per_s": report.predicted / wall, "outside_model_share": 1 - model.seconds / wall,
              "peak_rss_mb": peak_rss_mb(), "machine": machine_info()}
    write_result(args.out_dir, "bench_inference", result)
    print(f"inference ({result['backend']}, ResNet50, 443 classes, 768x1024, flip TTA): {report.predicted} images "
          f"in {wall:.1f} s = {result['images_per_s']:.3f} images/s; model call {model.seconds:.1f} s, "
          f"outside the model {100 * result['outside_model_share']:.1f}% of the wall time; "
          f"peak {result['peak_rss_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
