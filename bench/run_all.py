"""`make bench`: run every bench/bench_*.py, then write BENCHMARKS.md from their JSON results.

Each benchmark measures its own baseline in the same run and prints the ratio; this script only collects.
`bench/run_all.py bench_model bench_train` reruns only those and rewrites the report from all results in
bench_output/; where some benchmark has none there (a fresh clone), BENCHMARKS.md is kept and the rows go to
bench_output/BENCHMARKS.partial.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
from bench.common import describe_machine, machine_info, read_section, replace_section  # noqa: E402

REPO = BENCH.parent
OUT = REPO / "bench_output"


def _levels(r: dict) -> list[str]:
    o, b = r["ours"], r["baseline"]
    return [f"| Stage 1 level files, all levels ({r['input_rows']:,} input rows, {o['rows_written']:,} rows written) "
            f"| {o['seconds']:.1f} s, peak {o['peak_rss_mb']:.0f} MB | pandas read + write as many rows: "
            f"{b['seconds']:.1f} s, peak {b['peak_rss_mb']:.0f} MB | **{r['ratio_ours_over_baseline']:.2f}x** the "
            f"baseline's time (target <= 2x) |"]


def _image_params(r: dict) -> list[str]:
    return [f"| Stage 2 image parameters ({r['n_images']} JPEGs {r['image_size']}) | {r['ours_seconds']:.2f} s "
            f"| full decode + md5 (the original): {r['baseline_seconds']:.2f} s | **{r['speedup']:.1f}x** faster "
            f"(target >= 10x) |"]


def _expand(r: dict) -> list[str]:
    o, p = r["ours"], r["pandas_read_write"]
    return [f"| Stage 5 expansion ({r['images']:,} images x {r['boxes_per_image']} boxes), whole process "
            f"| {o['seconds']:.2f} s, peak {o['peak_rss_mb']:.0f} MB | per-box Python port of the original: "
            f"{r['original_per_box']['seconds_scaled']:.1f} s (scaled from a subset) "
            f"| **{r['speedup_vs_original']:.1f}x** faster (target >= 20x) |",
            f"| Stage 5 expansion vs I/O | {o['seconds']:.2f} s | pandas read input + write output-sized CSV: "
            f"{p['seconds']:.2f} s | **{r['ratio_vs_pandas_read_write']:.2f}x** (target <= 2x) |"]


def _oid_map(r: dict) -> list[str]:
    rows = []
    f = r.get("fixture")
    if f:
        rows.append(f"| OID mAP, fixture scenario (in process) | {f['ours_in_process_s'] * 1000:.1f} ms | official "
                    f"code without imports: {f['official_eval_minus_imports_s']:.2f} s (fixture README's figure) "
                    f"| **{f['speedup_in_process_vs_official_minus_imports']:.0f}x** faster, same mAP "
                    "(target >= 20x) |")
        rows.append(f"| OID mAP, fixture scenario (whole CLI) | {f['ours_cli_wall_s']:.2f} s | official CLI: "
                    f"{f['official_eval_cli_wall_s']:.2f} s (README) | {f['speedup_cli_vs_official_cli']:.1f}x |")
    v = r["validation"]
    sc = v["scenario"]
    rows.append(f"| OID mAP, validation-sized ({sc['images']:,} images, {sc['predictions']:,} predictions) "
                f"| {v['total_s']:.1f} s, peak {v['peak_rss_mb']:.0f} MB | - | target < 60 s |")
    return rows


def _ensemble(r: dict) -> list[str]:
    rows = []
    for kind, baseline in (("avg", "per-box Python port of the original merge"),
                           ("wbf", "ensemble-boxes weighted_boxes_fusion")):
        k = r[kind]
        if "skipped" in k:
            rows.append(f"| Stage 6 ensemble `{kind}` | skipped: {k['skipped']} | | |")
            continue
        rows.append(f"| Stage 6 ensemble `{kind}` ({r['images']:,} images x {r['models']} models) "
                    f"| {k['ours_seconds']:.1f} s ({k['ours_workers']} workers) | {baseline}: "
                    f"{k['baseline_seconds_scaled']:.0f} s (scaled from {r['baseline_images']} images) "
                    f"| **{k['speedup']:.1f}x** faster, {k['speedup_one_worker']:.1f}x on one worker (target >= 20x) |")
    return rows


def _found(c: dict) -> str:
    return (f"{c['found']} of its {c['detections']} detections found (same label, box, score within 1e-5), scores "
            f"max dev {c['max_abs_dev_scores']:.1g}")


def _model(r: dict) -> list[str]:
    h, w = r["input"]
    r7 = r["resnet50_7_classes"]
    source = r7.get("keras_retinanet_source", "fixture README")
    rows = []
    if "skipped" in r.get("keras_retinanet", {}):
        rows.append(f"| Model: keras-retinanet 1.0.0 baseline | not run: {r['keras_retinanet']['skipped']} | | |")
    if r7.get("keras_retinanet_cpu_s"):
        agree = f"; {_found(r7['vs_keras_retinanet'])}" if "vs_keras_retinanet" in r7 else ""
        rows.append(f"| Model, ResNet50 7 classes {h}x{w}, batch 1 ({r['backend']}) "
                    f"| {r7['batch1']['cpu_s']:.2f} CPU s "
                    f"| keras-retinanet 1.0.0 ({source}): {r7['keras_retinanet_cpu_s']:.2f} CPU s "
                    f"| **{r7['speedup_cpu_vs_keras_retinanet']:.2f}x**{agree} |")
    for backend, o in r.get("resnet50_7_classes_other_backends", {}).items():
        if "skipped" in o:
            rows.append(f"| Model, ResNet50 7 classes {h}x{w}, batch 1 ({backend}) | skipped: {o['skipped']} | | |")
        elif "keras_layout_batch1" in o:
            rows.append(f"| Model, ResNet50 7 classes {h}x{w}, batch 1 ({backend}, channels_last views: "
                        f"model/torch_layout.py) | {o['batch1']['cpu_s']:.2f} CPU s | Keras' torch layout (a copy "
                        f"per conv): {o['keras_layout_batch1']['cpu_s']:.2f} CPU s "
                        f"| **{o['speedup_cpu_vs_keras_layout']:.2f}x** |")
        elif r7.get("keras_retinanet_cpu_s"):
            rows.append(f"| Model, ResNet50 7 classes {h}x{w}, batch 1 ({backend}) | {o['batch1']['cpu_s']:.2f} CPU s "
                        f"| keras-retinanet 1.0.0 ({source}): {r7['keras_retinanet_cpu_s']:.2f} CPU s "
                        f"| {r7['keras_retinanet_cpu_s'] / o['batch1']['cpu_s']:.2f}x |")
    m, direct = r.get("resnet50_443_classes"), r.get("resnet50_443_classes_direct")
    if m and direct:
        ours = (f"| Model, ResNet50 443 classes {h}x{w}, float32, Winograd F(4x4, 3x3) convs (default) "
                f"| batch 1: {m['batch1']['cpu_s']:.2f} CPU s ({m['batch1']['images_per_s_wall']:.3f} img/s wall), "
                f"flip batch 2: {m['flip_batch2']['cpu_s'] / 2:.2f} CPU s an image ")
        if "keras_retinanet" in m:
            kr, agree = m["keras_retinanet"], m["vs_keras_retinanet"]
            rows.append(ours + f"| keras-retinanet 1.0.0 (measured in this run): {kr['batch1']['cpu_s']:.2f} CPU s, "
                        f"flip {kr['flip_batch2']['cpu_s'] / 2:.2f} CPU s an image "
                        f"| **{m['batch1']['speedup_cpu_vs_keras_retinanet']:.2f}x** (flip "
                        f"{m['flip_batch2']['speedup_cpu_vs_keras_retinanet']:.2f}x; target >= 1.3x); "
                        f"{_found(agree)} |")
        rows.append(ours + "| our direct convolutions (keras-retinanet's computation): "
                    f"{direct['batch1']['cpu_s']:.2f} CPU s, flip {direct['flip_batch2']['cpu_s'] / 2:.2f} CPU s "
                    "an image "
                    f"| **{m['batch1']['speedup_cpu_vs_direct']:.2f}x** "
                    f"(flip {m['flip_batch2']['speedup_cpu_vs_direct']:.2f}x); same labels: "
                    f"{m['same_labels_as_direct']}, scores max dev {m['max_abs_dev_scores_vs_direct']:.1g} |")
    bf = r.get("resnet50_443_classes_bf16")
    if bf:
        rows.append(f"| Model, ResNet50 443 classes {h}x{w}, mixed bf16 | batch 1: "
                    f"{bf['batch1']['images_per_s_wall']:.3f} img/s, flip batch 2: "
                    f"{bf['flip_batch2']['images_per_s_wall']:.3f} img/s (wall) | float32 | "
                    f"{bf['batch1']['speedup_cpu_vs_fp32']:.2f}x in CPU time |")
    return rows


def _inference(r: dict) -> list[str]:
    h, w = r["input"]
    return [f"| Stage 4 inference ({r['backend']}, ResNet50, {r['classes']} classes, {h}x{w}, flip TTA, "
            f"{r['images']} images) | {r['images_per_s']:.3f} images/s | - | "
            f"{100 * r['outside_model_share']:.1f}% of the time outside the model call |"]


def _ray(r: dict) -> list[str]:
    h, w = r["input"]
    return [f"| Stage 4 on a local Ray cluster ({r['ray_workers']} workers x 1 core; ResNet50, {r['classes']} classes, "
            f"{h}x{w}, flip TTA, {r['images']} images, from a cold start) | {r['ray_wall_s']:.1f} s | plain run on "
            f"{r['cores']} cores: {r['plain_wall_s']:.1f} s | overhead {100 * r['overhead']:+.1f}%; same cache bytes: "
            f"{'yes' if r['same_cache_bytes'] else 'NO'} |"]


def _multi_worker(r: dict) -> list[str]:
    rows = []
    for size in r["sizes"]:
        (h, w), one, two = size["sides"], size["images_per_s"]["1"], size["images_per_s"]["2"]
        rows.append(f"| Training on 2 workers (JAX, 127.0.0.1, 1 core each; {r['backbone']} at {h}/{w}, "
                    f"{r['batch_per_worker']} images a worker a step) | {two:.3f} images/s | 1 worker on 1 core: "
                    f"{one:.3f} images/s | scaling efficiency {100 * size['efficiency']:.0f}% |")
    reduce = r["all_reduce"]
    rows.append(f"| All-reduce of the gradient ({reduce['floats']:,} float32, gloo, 2 pinned processes) | "
                f"{reduce['seconds']:.3f} s a step | | the 2-worker step's fixed cost |")
    return rows


def _serve(r: dict) -> list[str]:
    lat, mem, base = r["latency_ms"], r["server_rss_mb"], r["baseline_in_process"]
    h, w = r["image_size"]
    rows = [f"| Web demo load test ({r['requests']} requests from {r['clients']} clients on loopback, ResNet50 "
            f"{r['classes']} classes, {w}x{h} JPEGs at {r['sides'][0]}/{r['sides'][1]}, flip TTA) "
            f"| p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms, p99 {lat['p99']:.0f} ms, {r['errors']} errors, "
            f"{r['requests_per_s']:.2f} requests/s; server peak {mem['peak_vmhwm']:.0f} MB "
            f"({mem['after_start']:.0f} MB after start) | same model and answer code in process, no HTTP: "
            f"{base['images_per_s']:.2f} images/s | **{r['ratio_served_over_in_process']:.2f}x** its throughput |"]
    slow = r.get("slow_client_phase")
    if slow:
        lat_slow = slow["latency_ms"]
        rows.append(f"| Web demo, the same load with {slow['slow_clients']} slow clients trickling a byte a second "
                    f"| p50 {lat_slow['p50']:.0f} ms, p95 {lat_slow['p95']:.0f} ms, {slow['errors']} errors; the slow "
                    f"clients got {slow['slow_client_answers']} | the first phase: p50 {lat['p50']:.0f} ms | "
                    f"**{slow['p50_ratio_over_first_phase']:.2f}x** its p50 latency |")
    return rows


def _targets(r: dict) -> list[str]:
    h, w = r["input"]
    rows = []
    for row in r["results"].values():
        o, d, layout = row["ours"], row["dense"], row["dense_our_iou"]
        rows.append(f"| Stage 3 anchor targets, {h}x{w} ({r['anchors']:,} anchors), {o['classes']} classes, batch "
                    f"{o['batch']} | {o['images_per_s']:.1f} images/s, {o['bytes_per_image'] / 2**20:.1f} MB an image, "
                    f"peak RSS +{o['peak_rss_mb'] - o['rss_before_mb']:.0f} MB over the imports "
                    f"| keras-retinanet's dense one-hot targets: {d['images_per_s']:.1f} images/s, "
                    f"{d['bytes_per_image'] / 2**20:.0f} MB an image, +{d['peak_rss_mb'] - d['rss_before_mb']:.0f} MB "
                    f"(dense on our IoU: {layout['images_per_s']:.1f} images/s) "
                    f"| **{row['speedup_vs_dense']:.1f}x** faster ({row['speedup_vs_dense_with_copy']:.1f}x with a "
                    f"copy of the arrays), {row['bytes_ratio']:.0f}x fewer bytes; same targets: "
                    f"{r['check']['equal']} |")
    return rows


def _train(r: dict) -> list[str]:
    w, h = r["image_size"]
    kind = "smoke run, " if r.get("quick") else ""
    return [f"| Stage 3 training from scratch ({kind}{r['backend']}, {r['backbone']}, {r['classes']} demo classes, "
            f"{r['train_images']} images {w}x{h}, batch {r['batch_size']}, lr {r['lr']:g}, {r['seconds_limit']:.0f} s) "
            f"| {r['train_images_per_s']:.2f} images/s; validation mAP VOC-style {r['voc_map']:.3f}, OID "
            f"{r['oid_map']:.3f} ({r['validation_images']} images) | the model step alone: "
            f"{r['model_step_images_per_s']:.2f} images/s; the generator alone: {r['generator_images_per_s']:.0f} "
            f"images/s | {100 * r['outside_model_share']:.0f}% of the time outside the model; generator "
            f"**{r['ratio_generator_over_model_step']:.0f}x** the model step |"]


def _kernel_time(r: dict) -> list[str]:
    rows = []
    for case, what in (("training", f"Stage 3 training, the demo's command ({r['epochs']} x {r['steps']} steps, a "
                                    "snapshot each epoch)"),
                       ("stage4", f"Stage 4 with flip TTA ({r['validation_images']} demo images, 120/160)")):
        b, a, ratio = r[case]["before"], r[case]["after"], r[case]["cpu_ratio_before_over_after"]
        rows.append(f"| {what}: CPU time in the kernel | {100 * a['sys_share']:.0f}% of {a['user_s'] + a['sys_s']:.0f} "
                    f"CPU s, {a['minor_faults'] / 1e6:.2f} M page faults (allocator tuned at start) | glibc's "
                    f"defaults (OID_MALLOC=system): {100 * b['sys_share']:.0f}% of {b['user_s'] + b['sys_s']:.0f} CPU "
                    f"s, {b['minor_faults'] / 1e6:.2f} M page faults | CPU time before / after **{ratio:.2f}x**, "
                    f"wall {r[case]['wall_ratio_before_over_after']:.2f}x |")
    return rows


def _gpu(r: dict) -> list[str]:
    if "not_measured" in r:
        return [f"| GPU benchmarks (bench_gpu.py: inference, training, stage 4 on a GPU) | {r['not_measured']} | | |"]
    s, gpu = r["settings"], (r.get("gpu") or {}).get("name", "no GPU")
    where = f"{gpu}, {s['height']}x{s['width']}, {s['classes']} classes" + (", --quick" if r.get("quick") else "")
    reference = {(c["part"], c["dtype"], c.get("batch")): c["images_per_s"] for c in r["cases"]
                 if c["group"] == "torchvision" and c["status"] == "ok"}
    rows = []
    for c in r["cases"]:
        if c["status"] != "ok" or c["group"] == "torchvision" or c.get("variant", "full") != "full":
            continue
        if c["part"] == "stage4":
            rows.append(f"| GPU stage 4 ({where}, {c['group']}, {c['dtype']}, flip TTA, {c['batch_size']} images a "
                        f"call, {c['workers']} reading threads) | {c['images_per_s']:.1f} images/s | - "
                        f"| {100 * c['outside_model_share']:.0f}% of the time outside the model call |")
            continue
        ref = reference.get((c["part"], c["dtype"], c["batch"]))
        rows.append(f"| GPU {c['part']} ({where}, {c['group']}, {c['dtype']}, batch {c['batch']}) "
                    f"| {c['images_per_s']:.1f} images/s | torchvision RetinaNet: "
                    + (f"{ref:.1f} images/s | **{c['images_per_s'] / ref:.2f}x** |" if ref else "- | - |"))
    failed = [c for c in r["cases"] if c["status"] != "ok"]
    if failed:
        rows.append(f"| GPU cases not measured | {len(failed)} of {len(r['cases'])} (errors or time budget: "
                    "bench_output/bench_gpu.md) | | |")
    return rows


ROWS = {"bench_levels": _levels, "bench_image_params": _image_params, "bench_expand": _expand,
        "bench_oid_map": _oid_map, "bench_ensemble": _ensemble,
        "bench_model": _model, "bench_inference": _inference, "bench_ray": _ray, "bench_multi_worker": _multi_worker,
        "bench_serve": _serve,
        "bench_targets": _targets, "bench_train": _train, "bench_train_quick": _train, "bench_gpu": _gpu,
        "bench_kernel_time": _kernel_time}

# bench_gpu.py runs only where torch or jax sees a GPU (bench/gpu/README.md runs it on a lent GPU machine).
GPU_PROBE = """
import importlib.util, sys
if importlib.util.find_spec("torch"):
    import torch
    if torch.cuda.is_available():
        sys.exit(0)
if importlib.util.find_spec("jax"):
    import jax
    try:
        if jax.devices("gpu"):
            sys.exit(0)
    except RuntimeError:
        pass
sys.exit(1)
"""


def gpu_visible() -> bool:
    """Whether torch or jax (whichever is installed) sees a GPU, asked in a separate process."""
    try:
        return subprocess.run([sys.executable, "-c", GPU_PROBE], capture_output=True, timeout=300).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def skip_gpu_bench() -> None:
    """No GPU here: keep a result measured on a GPU machine (bench/gpu/README.md) if bench_output has one, else
    write the 'not measured' row."""
    path = OUT / "bench_gpu.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("gpu") and not old.get("quick"):
            print(f"bench_gpu.py: no GPU here; keeping {path} (measured on {old['gpu'].get('name')})")
            return
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"not_measured": "not measured: no GPU", "machine": machine_info()}, indent=1))
    print("bench_gpu.py: not measured: no GPU")


def _rows(name: str, result: dict) -> list[str]:
    if name in ROWS:
        return ROWS[name](result)
    return [f"| {name} | see bench_output/{name}.json | | |"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("only", nargs="*", metavar="NAME",
                        help="run only these benchmarks (e.g. bench_model); the report is still written from every "
                             "result in bench_output/, the others' from their last run")
    args = parser.parse_args(argv)
    scripts = sorted(BENCH.glob("bench_*.py"))
    unknown = set(args.only) - {p.stem for p in scripts}
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}: expected names of bench/bench_*.py")
    for script in scripts:
        if args.only and script.stem not in args.only:
            continue
        print(f"== {script.name}", flush=True)
        if script.name == "bench_gpu.py" and not gpu_visible():
            skip_gpu_bench()
            continue
        proc = subprocess.run([sys.executable, str(script), "--out-dir", str(OUT)], cwd=REPO)
        if proc.returncode != 0:
            print(f"{script.name} failed (exit {proc.returncode})", file=sys.stderr)
            return 1
    results = {p.stem: json.loads(p.read_text()) for p in sorted(OUT.glob("bench_*.json"))}
    machine = next(iter(results.values()))["machine"] if results else {}
    lines = ["# Benchmarks", "",
             "Written by `make bench` (bench/run_all.py). Each ratio is measured against a baseline run in the same",
             "benchmark run, on the machine below.", "",
             f"Machine: {describe_machine(machine)}; no GPU.", "",
             "| Benchmark | Ours | Baseline | Ratio |", "| --- | --- | --- | --- |"]
    lines += [row for name, r in results.items() for row in _rows(name, r)]
    missing = sorted({p.stem for p in scripts} - set(results) - {"bench_gpu"})
    report = REPO / "BENCHMARKS.md"
    if missing:  # e.g. one benchmark rerun on a fresh clone: the report would lose every other row
        report = OUT / "BENCHMARKS.partial.md"
        print(f"BENCHMARKS.md kept: no results of {', '.join(missing)} in {OUT} (make bench runs them all); "
              f"these results are in {report}", file=sys.stderr)
    # make bench-scale's section (an hour's run) stays: from its result here, else as the report had it
    from bench.full_scale import SECTION, section

    full_scale = OUT / "full_scale.json"
    kept = section(json.loads(full_scale.read_text())) if full_scale.exists() else read_section(report, SECTION)
    report.write_text("\n".join(lines) + "\n")
    if kept:
        replace_section(report, SECTION, kept)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
