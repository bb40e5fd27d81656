"""Benchmark: stage 4 inference on this CPU, as `retinanet_inference_example.py` runs it.

ResNet50 with 443 classes at the original's 768/1024 sizes with flip TTA (the image and its mirror in one
call), through `predict_images` (reading and resizing in threads, caching, failures list). Prints images/s
and the share of the wall time spent outside the model call (reading, resizing, caching). Weights are the
model's initialisation (prior-probability head bias), so few boxes pass the 0.05 score filter: the filtering
cost of a trained model is not included. The GPU numbers: bench/bench_gpu.py (bench/gpu/README.md).
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


def make_images(folder: Path, n: int, height: int = 768, width: int = 1024) -> list[str]:
    """n JPEGs of width x height with noise and shapes (made once, reused: keep one size per folder)."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"{i:016x}.jpg"
        if not path.exists():
            img = np.clip(rng.normal(128, 40, (height, width, 3)), 0, 255).astype(np.uint8)
            for _ in range(8):  # at 768 high: radius 20..149 px, centre in the left 768x768
                c = tuple(int(v) for v in rng.integers(0, 255, 3))
                centre = tuple(int(v) for v in rng.integers(0, height, 2))
                cv2.circle(img, centre, int(rng.integers(round(20 * height / 768), round(150 * height / 768))), c, -1)
            cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(str(path))
    return paths


def measure_stage4(model, paths: list[str], work: Path, min_side: int = 768, max_side: int = 1024,
                   flip: bool = True, batch_size: int = 1, workers: int = 2) -> dict:
    """Stage 4 (`predict_images`) over paths[batch_size:] after a warm-up run on paths[:batch_size] (the same
    call shapes, so compilation stays out): images/s and the share of the wall time outside the model call.

    model: an inference model; its caches go to `work`/inference_cache*, emptied first.
    """
    from oid_retinanet.predict.inference import predict_images

    timed = TimedModel(model)
    warm = work / "inference_cache_warmup"
    shutil.rmtree(warm, ignore_errors=True)
    predict_images(timed, paths[:batch_size], warm, min_side, max_side, flip=flip, batch_size=batch_size,
                   workers=workers, progress=False)
    timed.seconds, timed.calls = 0.0, 0
    cache = work / "inference_cache"
    shutil.rmtree(cache, ignore_errors=True)
    t = time.perf_counter()
    report = predict_images(timed, paths[batch_size:], cache, min_side, max_side, flip=flip, batch_size=batch_size,
                            workers=workers, progress=False)
    wall = time.perf_counter() - t
    if report.failures:
        raise RuntimeError(f"stage 4 could not read {len(report.failures)} images: {report.failures[0]}")
    return {"images": report.predicted, "input": [min_side, max_side], "flip": flip, "batch_size": batch_size,
            "workers": workers, "wall_s": wall, "model_s": timed.seconds, "model_calls": timed.calls,
            "images_per_s": report.predicted / wall, "outside_model_share": 1 - timed.seconds / wall}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=6, help="images (default: %(default)s)")
    p.add_argument("--out-dir", default="bench_output")
    args = p.parse_args(argv)

    import keras

    from oid_retinanet.model.retinanet import retinanet, retinanet_bbox

    out = Path(args.out_dir)
    paths = make_images(out / "inference_images", args.n + 1)
    stage4 = measure_stage4(retinanet_bbox(retinanet(443)), paths, out, 768, 1024, flip=True)
    wall = stage4["wall_s"]
    result = {"backend": keras.backend.backend(), "images": stage4["images"], "input": [768, 1024],
              "classes": 443, "flip": True, "wall_s": wall, "model_s": stage4["model_s"],
              "images_per_s": stage4["images_per_s"], "outside_model_share": stage4["outside_model_share"],
              "peak_rss_mb": peak_rss_mb(), "machine": machine_info()}
    write_result(args.out_dir, "bench_inference", result)
    print(f"inference ({result['backend']}, ResNet50, 443 classes, 768x1024, flip TTA): {result['images']} images "
          f"in {wall:.1f} s = {result['images_per_s']:.3f} images/s; model call {result['model_s']:.1f} s, "
          f"outside the model {100 * result['outside_model_share']:.1f}% of the wall time; "
          f"peak {result['peak_rss_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
