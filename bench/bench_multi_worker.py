"""Benchmark: training on several workers (`--cluster`, JAX) against one, each worker pinned to one core.

The training script itself on the demo data (`bench_train.make_level`; ResNet50 from random weights at 96/128, the
demo's sides): one worker with a batch of 2 on core 0, and two workers on 127.0.0.1 with the global batch 4 (2 an
image each worker) on cores 0 and 1. Each configuration runs twice, --epochs 1 and --epochs 3 (--steps each): the
difference of the two walls is the time of 2 epochs without the start (imports, tracing, compiling), so
images/s = 2 x steps x global batch / that difference. Scaling efficiency = two workers' images/s / (2 x one
worker's). Needs jax (skipped, saying so, without it) and `taskset`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.bench_train import make_level  # noqa: E402
from bench.common import machine_info, write_result  # noqa: E402

SCRIPT = REPO / "retinanet_training_level_1" / "train_oid_level_1_resnet50.py"


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run(level: dict, work: Path, workers: int, epochs: int, steps: int) -> float:
    """Wall seconds of one training run on `workers` workers, worker k pinned to core k."""
    folder = work / f"snapshots_{workers}_{epochs}"
    shutil.rmtree(folder, ignore_errors=True)
    common = ["--no-weights", "--dataset-path", str(level["dataset"]), "--output-path",
              str(Path(level["train"]["annotations_csv"]).parents[1]), "--image-min-side", "96", "--image-max-side",
              "128", "--epochs", str(epochs), "--steps", str(steps), "--batch-size", str(2 * workers), "--workers",
              "1", "--no-evaluation", "--no-snapshots", "--snapshot-path", str(folder)]
    cluster = ",".join(f"127.0.0.1:{p}" for p in free_ports(workers))
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}
    t = time.perf_counter()
    jobs = []
    for k in range(workers):
        extra = ["--cluster", cluster, "--worker-index", str(k)] if workers > 1 else []
        jobs.append(subprocess.Popen(["taskset", "-c", str(k), sys.executable, str(SCRIPT), *common, *extra],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env))
    for job in jobs:
        err = job.communicate()[1]
        if job.returncode != 0:
            raise RuntimeError(f"training failed ({workers} workers): {err[-2000:]}")
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=20, help="steps an epoch (default: %(default)s)")
    p.add_argument("--out-dir", default="bench_output")
    args = p.parse_args(argv)
    if importlib.util.find_spec("jax") is None or shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        print("bench_multi_worker: needs jax (pip install jax==0.10.2 jaxlib==0.10.2), taskset and 2 cores; skipped")
        return 0
    work = Path(args.out_dir) / "multi_worker"
    level = make_level(work / "data", 60, 8, 128, 96, 0)
    rates = {}
    for workers in (1, 2):
        walls = {epochs: run(level, work, workers, epochs, args.steps) for epochs in (1, 3)}
        rates[workers] = 2 * args.steps * 2 * workers / (walls[3] - walls[1])
    result = {"steps": args.steps, "batch_per_worker": 2, "sides": [96, 128], "backbone": "resnet50",
              "images_per_s": {str(k): v for k, v in rates.items()}, "efficiency": rates[2] / (2 * rates[1]),
              "machine": machine_info()}
    write_result(args.out_dir, "bench_multi_worker", result)
    print(f"training on 1 worker (1 core): {rates[1]:.2f} images/s; on 2 workers (1 core each, global batch 4): "
          f"{rates[2]:.2f} images/s; scaling efficiency {100 * result['efficiency']:.0f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
