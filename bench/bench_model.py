"""Benchmark: RetinaNet ResNet50 inference on CPU at 768x1024, batch 1 and the flip-TTA batch of 2.

The baseline is keras-retinanet 1.0.0 itself, timed in the same run in its own venv (TensorFlow 2.15.1, the
fixture's versions; `make keras-retinanet-venv` creates .venv-keras-retinanet, bench/keras_retinanet/baseline.py
runs there) on the same weights and the same input. Without that venv the 7-class ratio falls back to the time
recorded in the fixture README and the 443-class one to our direct-convolution model (keras-retinanet's
computation on our stack). Two models, both with keras-retinanet's default filtering (class-specific NMS 0.5,
score > 0.05, 300 boxes):
- the fixture's 7-class keras-retinanet model (../shared/fixtures/keras_retinanet, materialized into a
  temporary folder), on its image img_a_480x640 resized to 768x1024: the model, input size and call of the
  keras-retinanet timing recorded in the fixture README;
- a 443-class model (the 2018 level-1 class count) with weights drawn by the fixture's weight rule (so about
  as many scores pass 0.05 as in the fixture), the configuration the project runs, with its 3x3 convs of
  >= 128 channels as Winograd F(4x4, 3x3) (the CPU default, model/winograd.py) and, in the same run, with
  keras-retinanet's direct convolutions (`winograd=0`).
Both models' detections are compared with keras-retinanet's. The achieved GFLOP/s (direct-convolution FLOPs /
time) are set against the backend's float32 matmul rate measured in the same run.

The 7-class model is also timed on the other Keras backends where installed (torch, JAX; a subprocess each),
on torch with and without model/torch_layout.py (Keras' own layout copies every conv input to NCHW).

CPU seconds are the process's (all threads), as in the fixture README; wall seconds are printed too but are
noisy on a shared machine. Times are medians over --repeats calls after --warmup calls.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from bench.common import machine_info, write_result  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FIXTURE = Path(os.environ.get("OID_SHARED", REPO.parent / "shared")) / "fixtures" / "keras_retinanet"
HEIGHT, WIDTH = 768, 1024
NUM_CLASSES = 443
KERAS_RETINANET_PYTHON = Path(os.environ.get("OID_KERAS_RETINANET_PYTHON",
                                             REPO / ".venv-keras-retinanet" / "bin" / "python"))


def _materialize_module():
    spec = importlib.util.spec_from_file_location("kr_materialize", FIXTURE / "materialize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def conv_gflop(model, height: int, width: int) -> float:
    """Multiply-adds of every convolution for one (height, width) image, times 2, in GFLOP."""
    import keras

    from oid_retinanet.model.anchors import feature_shapes

    def conv_macs(layer, out_h: int, out_w: int) -> int:
        kh, kw = layer.kernel_size
        return out_h * out_w * kh * kw * layer.kernel.shape[-2] * layer.filters

    fixed = keras.Model(model.input, [layer.output for layer in model.layers
                                      if isinstance(layer, keras.layers.Conv2D)])
    shapes = fixed.compute_output_shape((1, height, width, 3))
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    macs = sum(conv_macs(layer, s[1], s[2]) for layer, s in zip(convs, shapes))
    levels = feature_shapes((height, width))
    for sub in (layer for layer in model.layers if isinstance(layer, keras.Model)):
        per_pixel = sum(conv_macs(layer, 1, 1) for layer in sub.layers if isinstance(layer, keras.layers.Conv2D))
        macs += per_pixel * sum(h * w for h, w in levels)
    return 2 * macs / 1e9


def matmul_gflops(n: int = 4096, repeats: int = 3) -> float:
    """float32 matmul throughput of the Keras backend on this machine (all cores): a practical peak."""
    import keras

    a = keras.ops.convert_to_tensor(np.random.default_rng(0).standard_normal((n, n)).astype(np.float32))
    keras.ops.convert_to_numpy(keras.ops.matmul(a, a))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        keras.ops.convert_to_numpy(keras.ops.matmul(a, a))
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def time_calls(fn, warmup: int, repeats: int) -> dict:
    """Median wall and process CPU seconds of fn() over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {"wall_s": float(np.median(wall)), "cpu_s": float(np.median(cpu)), "wall_all": wall, "cpu_all": cpu}


def bench_model(model, x: np.ndarray, warmup: int, repeats: int) -> dict:
    """Batch 1 and flip batch 2 (the image and its mirror), as the inference script calls the model."""
    single = x[None]
    flip = np.stack([x, x[:, ::-1]])
    out = {"batch1": time_calls(lambda: model.predict_on_batch(single), warmup, repeats),
           "flip_batch2": time_calls(lambda: model.predict_on_batch(flip), warmup, repeats)}
    boxes, scores, labels = model.predict_on_batch(single)
    out["detections"] = int((np.asarray(scores) > -1).sum())
    return out


def fixture_model_and_input(height: int, width: int):
    """The fixture's 7-class inference model and its image img_a_480x640 preprocessed and resized to exactly HxW."""
    import cv2

    from oid_retinanet.data.preprocess import preprocess_image, read_image_bgr
    from oid_retinanet.model.h5 import load_keras_retinanet

    image = preprocess_image(read_image_bgr(FIXTURE / "images" / "img_a_480x640.png"))
    x = cv2.resize(image, (width, height))  # exactly HxW (768x1024 is also what resize_image gives it)
    materialize = _materialize_module()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "inference.h5"
        materialize.materialize(materialize.load_layout(str(FIXTURE / "layout.json.gz")), "inference", str(path))
        return load_keras_retinanet(path), x


def one_backend(height: int, width: int, warmup: int, repeats: int) -> dict:
    """The 7-class model at batch 1 on this process's backend; on torch also with Keras' own conv input
    layout (a copy to NCHW per convolution: the baseline of model/torch_layout.py) in the same run."""
    import keras

    model, x = fixture_model_and_input(height, width)
    out = {"batch1": time_calls(lambda: model.predict_on_batch(x[None]), warmup, repeats)}
    if keras.backend.backend() == "torch":
        from keras.src.backend.torch import nn as torch_nn

        patched = torch_nn._transpose_spatial_inputs
        torch_nn._transpose_spatial_inputs = patched.original
        out["keras_layout_batch1"] = time_calls(lambda: model.predict_on_batch(x[None]), warmup, repeats)
        torch_nn._transpose_spatial_inputs = patched
        out["speedup_cpu_vs_keras_layout"] = out["keras_layout_batch1"]["cpu_s"] / out["batch1"]["cpu_s"]
    return out


def other_backends(height: int, width: int, warmup: int, repeats: int) -> dict:
    """`one_backend` on torch and JAX where installed, each in a subprocess (the backend is fixed at import)."""
    import json
    import subprocess

    import keras

    out = {}
    for backend in ("tensorflow", "torch", "jax"):
        if backend == keras.backend.backend():
            continue
        if importlib.util.find_spec(backend) is None:
            out[backend] = {"skipped": f"{backend} is not installed"}
            continue
        print(f"7-class fixture model at {height}x{width} on {backend} ...", flush=True)
        cmd = [sys.executable, __file__, "--one-backend", "--size", str(height), str(width), "--warmup", str(warmup),
               "--repeats", str(repeats)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, KERAS_BACKEND=backend))
        if done.returncode:
            out[backend] = {"skipped": f"failed: {done.stderr.strip().splitlines()[-1:]}"}
        else:
            out[backend] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def keras_retinanet_baseline(x: np.ndarray, classes: list[int], warmup: int, repeats: int) -> dict:
    """keras-retinanet 1.0.0 timed on x in its own venv (bench/keras_retinanet/baseline.py): per class count its
    times and batch-1 detections; {"skipped": why} when that venv is missing or the run fails."""
    import json
    import subprocess

    if not KERAS_RETINANET_PYTHON.exists():
        return {"skipped": f"{KERAS_RETINANET_PYTHON} not found (make keras-retinanet-venv creates it)"}
    print(f"keras-retinanet 1.0.0 ({KERAS_RETINANET_PYTHON}), {classes} classes ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "x.npy", x)
        cmd = [str(KERAS_RETINANET_PYTHON), str(REPO / "bench" / "keras_retinanet" / "baseline.py"),
               str(Path(tmp) / "x.npy"), tmp, "--classes", *map(str, classes),
               "--warmup", str(warmup), "--repeats", str(repeats)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            return {"skipped": f"failed: {done.stderr.strip().splitlines()[-1:]}"}
        result = json.loads((Path(tmp) / "keras_retinanet_baseline.json").read_text())
        detections = {n: dict(np.load(Path(tmp) / f"detections_{n}.npz")) for n in classes}
    return {**result, "detections": detections}


def compare_detections(ours, theirs: dict, box_tol: float = 0.01, score_tol: float = 1e-5) -> dict:
    """Our inference model's batch-1 (boxes, scores, labels) against keras-retinanet's: how many of its detections
    ours has (same label, box within box_tol px, score within score_tol; near-tied scores may swap ranks, and one
    may cross the 300-box cut), and the largest deviations among those."""
    boxes, scores, labels = (np.asarray(v)[0] for v in ours)
    t_boxes, t_scores, t_labels = (np.asarray(theirs[k])[0] for k in ("boxes", "scores", "labels"))
    t_valid = t_labels > -1
    box_dev = np.abs(t_boxes[:, None] - boxes[None]).max(axis=-1)  # (theirs, ours)
    score_dev = np.abs(t_scores[:, None] - scores[None])
    match = (t_labels[:, None] == labels[None]) & (box_dev <= box_tol) & (score_dev <= score_tol)
    found = match.any(axis=1) & t_valid
    return {"detections": int(t_valid.sum()), "found": int(found.sum()),
            "same_order": bool(np.array_equal(labels, t_labels)),
            "max_abs_dev_scores": float(np.where(match, score_dev, 0).max(initial=0)),
            "max_abs_dev_boxes": float(np.where(match, box_dev, 0).max(initial=0))}


def _agreement(c: dict) -> str:
    return (f"{c['found']} of its {c['detections']} detections found (same label, box within 0.01 px, score within "
            f"1e-5; same order: {c['same_order']}), scores max |dev| {c['max_abs_dev_scores']:.3g}, boxes max |dev| "
            f"{c['max_abs_dev_boxes']:.3g} px")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default=str(REPO / "bench_output"))
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--size", type=int, nargs=2, default=[HEIGHT, WIDTH], metavar=("H", "W"))
    p.add_argument("--one-backend", action="store_true",
                   help="only the 7-class model at batch 1 on KERAS_BACKEND; print the result as JSON")
    args = p.parse_args(argv)
    if not FIXTURE.exists():
        print(f"fixture {FIXTURE} not found: this benchmark needs ../shared/fixtures/keras_retinanet",
              file=sys.stderr)
        return 2

    import json

    import keras

    from oid_retinanet.model.retinanet import retinanet, retinanet_bbox

    height, width = args.size
    if args.one_backend:
        print(json.dumps(one_backend(height, width, args.warmup, args.repeats)))
        return 0
    reference = json.loads((FIXTURE / "timing_resnet50.json").read_text())
    ref_key = f"{height}x{width}"
    ref_cpu = (float(np.median([b["median_cpu_s"] for b in reference[ref_key]["blocks"]]))
               if ref_key in reference else None)
    ref_wall = (float(np.median([b["median_wall_s"] for b in reference[ref_key]["blocks"]]))
                if ref_key in reference else None)

    materialize = _materialize_module()
    layout = materialize.load_layout(str(FIXTURE / "layout.json.gz"))
    result = {"machine": machine_info(), "input": [height, width], "backend": keras.backend.backend(),
              "matmul_gflops": matmul_gflops()}
    model7, x = fixture_model_and_input(height, width)
    live = keras_retinanet_baseline(x, [7, NUM_CLASSES], args.warmup, args.repeats)
    result["keras_retinanet"] = {k: v for k, v in live.items() if k != "detections"}
    print(f"7-class fixture model at {height}x{width} ...", flush=True)
    r7 = bench_model(model7, x, args.warmup, args.repeats)
    r7["gflop_per_image"] = conv_gflop(model7, height, width)
    r7["keras_retinanet_recorded_cpu_s"] = ref_cpu
    if "skipped" not in live:
        r7["keras_retinanet_source"] = "measured in this run"
        r7["keras_retinanet_cpu_s"] = live["7 classes"]["batch1"]["cpu_s"]
        r7["keras_retinanet_wall_s"] = live["7 classes"]["batch1"]["wall_s"]
        r7["vs_keras_retinanet"] = compare_detections(model7.predict_on_batch(x[None]), live["detections"][7])
    else:
        r7["keras_retinanet_source"] = "fixture README"
        r7["keras_retinanet_cpu_s"], r7["keras_retinanet_wall_s"] = ref_cpu, ref_wall
    if r7["keras_retinanet_cpu_s"]:
        r7["speedup_cpu_vs_keras_retinanet"] = r7["keras_retinanet_cpu_s"] / r7["batch1"]["cpu_s"]
    result["resnet50_7_classes"] = r7
    del model7
    result["resnet50_7_classes_other_backends"] = other_backends(height, width, args.warmup, args.repeats)

    model = retinanet(NUM_CLASSES, winograd=0)
    rule = layout["weight_rule"]
    for layer in model.layers:
        inner = layer.layers if isinstance(layer, keras.Model) else [layer]
        for sub in inner:
            for v in sub.weights:
                v.assign(materialize.weight_value(layout["seed"], f"{sub.name}/{v.name}:0", v.shape, rule))
    direct = retinanet_bbox(model)
    gflop = conv_gflop(direct, height, width)
    print(f"{NUM_CLASSES}-class model at {height}x{width}, direct convolutions ...", flush=True)
    r_direct = bench_model(direct, x, args.warmup, args.repeats)
    winograd = retinanet(NUM_CLASSES)
    winograd.set_weights(model.get_weights())
    inference = retinanet_bbox(winograd)
    print(f"{NUM_CLASSES}-class model at {height}x{width}, Winograd convolutions ...", flush=True)
    r443 = bench_model(inference, x, args.warmup, args.repeats)
    for r, name in ((r_direct, "direct"), (r443, "winograd")):
        r["gflop_per_image"] = gflop
        for key in ("batch1", "flip_batch2"):
            n = 1 if key == "batch1" else 2
            r[key]["images_per_s_wall"] = n / r[key]["wall_s"]
            r[key]["images_per_cpu_s"] = n / r[key]["cpu_s"]
            r[key]["achieved_gflops_wall"] = n * gflop / r[key]["wall_s"]
    for key in ("batch1", "flip_batch2"):
        r443[key]["speedup_cpu_vs_direct"] = r_direct[key]["cpu_s"] / r443[key]["cpu_s"]
    _, s_direct, l_direct = (np.asarray(v) for v in direct.predict_on_batch(x[None]))
    _, s_wino, l_wino = (np.asarray(v) for v in inference.predict_on_batch(x[None]))
    r443["same_labels_as_direct"] = bool(np.array_equal(l_direct, l_wino))
    r443["max_abs_dev_scores_vs_direct"] = float(np.abs(s_direct - s_wino).max())
    if "skipped" not in live:
        theirs = live[f"{NUM_CLASSES} classes"]
        r443["keras_retinanet"] = theirs
        for r in (r_direct, r443):
            for key in ("batch1", "flip_batch2"):
                r[key]["speedup_cpu_vs_keras_retinanet"] = theirs[key]["cpu_s"] / r[key]["cpu_s"]
        r443["vs_keras_retinanet"] = compare_detections(inference.predict_on_batch(x[None]),
                                                        live["detections"][NUM_CLASSES])
    result[f"resnet50_{NUM_CLASSES}_classes_direct"] = r_direct
    result[f"resnet50_{NUM_CLASSES}_classes"] = r443

    # The same 443-class weights with convs in bfloat16 (dtype_policy='mixed_bfloat16').
    fast = retinanet(NUM_CLASSES, dtype_policy="mixed_bfloat16")
    fast.set_weights(winograd.get_weights())
    fast_inference = retinanet_bbox(fast)
    print(f"{NUM_CLASSES}-class model at {height}x{width}, mixed_bfloat16 ...", flush=True)
    rbf = bench_model(fast_inference, x, args.warmup, args.repeats)
    exact = [np.asarray(keras.ops.convert_to_numpy(v), np.float32) for v in winograd.predict_on_batch(x[None])]
    approx = [np.asarray(keras.ops.convert_to_numpy(v), np.float32) for v in fast.predict_on_batch(x[None])]
    rbf["max_abs_dev_regression"] = float(np.abs(exact[0] - approx[0]).max())
    rbf["max_abs_dev_scores"] = float(np.abs(exact[1] - approx[1]).max())
    _, s32, l32 = (np.asarray(v) for v in inference.predict_on_batch(x[None]))
    _, s16, l16 = (np.asarray(v) for v in fast_inference.predict_on_batch(x[None]))
    rbf["detections_fp32"] = int((s32 > -1).sum())
    rbf["same_label_at_same_rank"] = int(((l32 == l16) & (l32 > -1)).sum())
    for key in ("batch1", "flip_batch2"):
        n = 1 if key == "batch1" else 2
        rbf[key]["images_per_s_wall"] = n / rbf[key]["wall_s"]
        rbf[key]["images_per_cpu_s"] = n / rbf[key]["cpu_s"]
        rbf[key]["speedup_cpu_vs_fp32"] = r443[key]["cpu_s"] / rbf[key]["cpu_s"]
    result[f"resnet50_{NUM_CLASSES}_classes_bf16"] = rbf

    write_result(args.out_dir, "bench_model", result)
    lines = [f"machine: {result['machine']['cpu']}, {result['machine']['cores']} cores; backend "
             f"{result['backend']}; float32 matmul {result['matmul_gflops']:.0f} GFLOP/s",
             f"ResNet50 7 classes {height}x{width} ({r7['gflop_per_image']:.0f} GFLOP): batch 1 "
             f"{r7['batch1']['cpu_s']:.2f} CPU s ({r7['batch1']['wall_s']:.2f} s wall), flip batch 2 "
             f"{r7['flip_batch2']['cpu_s']:.2f} CPU s ({r7['flip_batch2']['wall_s']:.2f} s wall)"]
    if "skipped" in live:
        lines.append(f"  keras-retinanet 1.0.0 not run: {live['skipped']}")
    if r7.get("speedup_cpu_vs_keras_retinanet"):
        lines.append(f"  keras-retinanet 1.0.0 ({r7['keras_retinanet_source']}, same model and input): "
                     f"{r7['keras_retinanet_cpu_s']:.2f} CPU s ({r7['keras_retinanet_wall_s']:.2f} s wall) -> ours "
                     f"{r7['speedup_cpu_vs_keras_retinanet']:.2f}x its throughput in CPU time")
    if "vs_keras_retinanet" in r7:
        lines.append(f"  vs keras-retinanet: {_agreement(r7['vs_keras_retinanet'])}")
    for backend, r in result["resnet50_7_classes_other_backends"].items():
        if "skipped" in r:
            lines.append(f"  on {backend}: skipped ({r['skipped']})")
            continue
        lines.append(f"  on {backend}: batch 1 {r['batch1']['cpu_s']:.2f} CPU s ({r['batch1']['wall_s']:.2f} s wall)")
        if "keras_layout_batch1" in r:
            lines.append(f"    Keras' own torch conv layout (a copy per conv): {r['keras_layout_batch1']['cpu_s']:.2f} "
                         f"CPU s -> model/torch_layout.py {r['speedup_cpu_vs_keras_layout']:.2f}x")
    for key in ("batch1", "flip_batch2"):
        for r, name in ((r_direct, "direct conv"), (r443, "Winograd")):
            lines.append(f"ResNet50 {NUM_CLASSES} classes {height}x{width} ({gflop:.0f} GFLOP/image), {name}, "
                         f"{key}: {r[key]['images_per_s_wall']:.3f} images/s wall, {r[key]['images_per_cpu_s']:.3f} "
                         f"images per CPU s, {r[key]['achieved_gflops_wall']:.0f} GFLOP/s effective "
                         f"({100 * r[key]['achieved_gflops_wall'] / result['matmul_gflops']:.0f}% of the matmul rate)")
        lines.append(f"  Winograd convolutions: {r443[key]['speedup_cpu_vs_direct']:.2f}x the direct "
                     "convolutions in CPU time")
        if "keras_retinanet" in r443:
            lines.append(f"  keras-retinanet 1.0.0 (measured in this run): {r443['keras_retinanet'][key]['cpu_s']:.2f} "
                         f"CPU s -> ours {r443[key]['speedup_cpu_vs_keras_retinanet']:.2f}x its throughput in CPU "
                         f"time (target 1.3x; our direct convolution "
                         f"{r_direct[key]['speedup_cpu_vs_keras_retinanet']:.2f}x)")
    lines.append(f"  Winograd vs direct: same labels {r443['same_labels_as_direct']}, scores max |dev| "
                 f"{r443['max_abs_dev_scores_vs_direct']:.3g}")
    if "vs_keras_retinanet" in r443:
        lines.append(f"  Winograd vs keras-retinanet: {_agreement(r443['vs_keras_retinanet'])}")
    for key in ("batch1", "flip_batch2"):
        r = rbf[key]
        lines.append(f"  mixed_bfloat16 {key}: {r['images_per_s_wall']:.3f} images/s wall, {r['images_per_cpu_s']:.3f} "
                     f"images per CPU s = {r['speedup_cpu_vs_fp32']:.2f}x float32 in CPU time")
    lines.append(f"  mixed_bfloat16 vs float32: raw regression max |dev| {rbf['max_abs_dev_regression']:.3g}, scores "
                 f"{rbf['max_abs_dev_scores']:.3g}; {rbf['same_label_at_same_rank']} of {rbf['detections_fp32']} "
                 "detections keep their label at their rank")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
