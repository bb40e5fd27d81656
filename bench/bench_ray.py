"""Benchmark: stage 4 on a local Ray cluster against the plain run, at equal cores.

The same images (ResNet50, 443 classes, the original's 768/1024 sides, flip TTA) predicted by the plain run
(`predict_to_cache`: one process, TensorFlow's threads on every core) and by `--ray` (a local cluster, one
replica per core, each with one thread), each from a cold start: model loading, and for Ray the cluster's start
and the replicas' loading, are part of the time, as a user meets them: a fixed cost that more images amortise.
Reports both walls and the overhead (Ray wall / plain wall - 1), and whether the cache files are the same bytes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_inference import make_images  # noqa: E402
from bench.common import machine_info, write_result  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=64, help="images (default: %(default)s)")
    p.add_argument("--out-dir", default="bench_output")
    args = p.parse_args(argv)
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        print("bench_ray: ray is not installed (pip install -r requirements-cluster.txt); skipped")
        return 0
    import keras

    from oid_retinanet.model.card import ModelCard, save_model
    from oid_retinanet.model.retinanet import retinanet, retinanet_bbox
    from oid_retinanet.predict.resolve import resolve_model
    from oid_retinanet.stages.inference import predict_to_cache

    out = Path(args.out_dir)
    paths = make_images(out / "inference_images", args.n)
    weights = out / "ray_bench_resnet50_443.keras"
    if not weights.exists():
        keras.utils.set_random_seed(0)
        save_model(retinanet_bbox(retinanet(443)), weights, ModelCard("resnet50", 443))
    cores = os.cpu_count() or 1
    timings = {}
    for name, ray in (("plain", None), ("ray", {"workers": cores, "cpus_per_worker": 1, "chunk": 4})):
        cache = out / f"ray_bench_cache_{name}"
        shutil.rmtree(cache, ignore_errors=True)
        t = time.perf_counter()
        resolved = resolve_model(str(weights), labels=None, need_classes=False)
        report = predict_to_cache(resolved, paths, str(cache), flip=True, ray=ray)
        timings[name] = {"wall_s": time.perf_counter() - t, "predicted": report.predicted}
    plain, ray = (out / f"ray_bench_cache_{n}" for n in ("plain", "ray"))
    files = sorted(f.name for f in plain.glob("*.npz"))
    same = bool(files) and files == sorted(f.name for f in ray.glob("*.npz")) and all(
        (plain / f).read_bytes() == (ray / f).read_bytes() for f in files)
    result = {"images": args.n, "cores": cores, "ray_workers": cores, "input": [768, 1024], "classes": 443,
              "flip": True, "plain_wall_s": timings["plain"]["wall_s"], "ray_wall_s": timings["ray"]["wall_s"],
              "overhead": timings["ray"]["wall_s"] / timings["plain"]["wall_s"] - 1, "same_cache_bytes": same,
              "machine": machine_info()}
    write_result(args.out_dir, "bench_ray", result)
    print(f"stage 4 on Ray ({cores} workers x 1 core) vs plain ({cores} cores), {args.n} images ResNet50 443 classes "
          f"768x1024 flip: {result['ray_wall_s']:.1f} s vs {result['plain_wall_s']:.1f} s, overhead "
          f"{100 * result['overhead']:+.1f}%; same cache bytes: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
