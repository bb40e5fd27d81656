"""Benchmark: training on several workers (`--cluster`, JAX) against one, each worker pinned to one core.

The training script itself on the demo data (`bench_train.make_level`; ResNet50 from random weights) at two sizes:
the demo's sides (96/128, 20 steps an epoch) and the real ones (768/1024, 2 steps an epoch). At each: one worker
with a batch of 2 on core 0, and two workers on 127.0.0.1 with the global batch 4 (2 images each) on cores 0 and 1.
Each configuration runs twice, --epochs 1 and --epochs 3: the difference of the two walls is the time of 2 epochs
without the start (imports, tracing, compiling), so images/s = 2 x steps x global batch / that difference.
Scaling efficiency = two workers' images/s / (2 x one worker's).

Where the second worker's time goes: every step all-reduces the gradient of every trainable weight (ResNet50
RetinaNet: ~36 M floats) over gloo on the loopback; the benchmark times that all-reduce alone between two pinned
processes. A step's fixed cost, it weighs on a 0.5 s step at 96/128 and hardly on a ~10 s step at 768/1024.
Needs jax (skipped, saying so, without it) and `taskset`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.bench_train import make_level  # noqa: E402
from bench.common import free_ports, machine_info, write_result  # noqa: E402

SCRIPT = REPO / "retinanet_training_level_1" / "train_oid_level_1_resnet50.py"


def run(level: dict, work: Path, workers: int, epochs: int, steps: int, sides: tuple[int, int]) -> float:
    """Wall seconds of one training run on `workers` workers, worker k pinned to core k."""
    folder = work / f"snapshots_{workers}_{epochs}"
    shutil.rmtree(folder, ignore_errors=True)
    common = ["--no-weights", "--dataset-path", str(level["dataset"]), "--output-path",
              str(Path(level["train"]["annotations_csv"]).parents[1]), "--image-min-side", str(sides[0]),
              "--image-max-side", str(sides[1]), "--epochs", str(epochs), "--steps", str(steps), "--batch-size",
              str(2 * workers), "--workers", "1", "--no-evaluation", "--no-snapshots", "--snapshot-path", str(folder)]
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


SIZES = ((96, 128, 20), (768, 1024, 2))  # min side, max side, steps an epoch
ALL_REDUCE_TIMES = 5


def all_reduce_worker(k: int, port: int, n: int) -> None:
    """One of two processes all-reducing (summing) `n` float32 over gloo, as a training step does its gradient;
    process 0 prints the mean seconds of ALL_REDUCE_TIMES."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=k)
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()), ("batch",))
    part = jax.device_put(jnp.ones((1, n), jnp.float32), jax.local_devices()[0])
    x = jax.make_array_from_single_device_arrays((2, n), NamedSharding(mesh, PartitionSpec("batch")), [part])
    reduce = jax.jit(lambda a: a.sum(0), out_shardings=NamedSharding(mesh, PartitionSpec()))
    reduce(x).block_until_ready()
    t = time.perf_counter()
    for _ in range(ALL_REDUCE_TIMES):
        reduce(x).block_until_ready()
    if k == 0:
        print((time.perf_counter() - t) / ALL_REDUCE_TIMES)


def all_reduce_seconds(n: int) -> float:
    port = free_ports(1)[0]
    env = {**os.environ, "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}
    jobs = [subprocess.Popen(["taskset", "-c", str(k), sys.executable, __file__, "--all-reduce", str(k), str(port),
                              str(n)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for k in (0, 1)]
    outs = [job.communicate() for job in jobs]
    if any(job.returncode for job in jobs):
        raise RuntimeError(f"all-reduce failed: {outs[0][1][-2000:]}")
    return float(outs[0][0].split()[-1])


def trainable_floats() -> int:
    """The number of trainable weights of the benchmark's model (ResNet50 RetinaNet on the demo's 5 classes)."""
    code = ("from oid_retinanet.model.retinanet import retinanet; import numpy as np; "
            "print(sum(int(np.prod(w.shape)) for w in retinanet(5, backbone='resnet50').trainable_weights))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True,
                         env={**os.environ, "KERAS_BACKEND": "jax"})
    return int(out.stdout.split()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out-dir", default="bench_output")
    p.add_argument("--all-reduce", nargs=3, type=int, metavar=("K", "PORT", "N"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.all_reduce:
        all_reduce_worker(*args.all_reduce)
        return 0
    if importlib.util.find_spec("jax") is None or shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        print("bench_multi_worker: needs jax (pip install jax==0.10.2 jaxlib==0.10.2), taskset and 2 cores; skipped")
        return 0
    work = Path(args.out_dir) / "multi_worker"
    level = make_level(work / "data", 60, 8, 128, 96, 0)
    sizes = []
    for min_side, max_side, steps in SIZES:
        rates = {}
        for workers in (1, 2):
            walls = {epochs: run(level, work, workers, epochs, steps, (min_side, max_side)) for epochs in (1, 3)}
            rates[workers] = 2 * steps * 2 * workers / (walls[3] - walls[1])
        sizes.append({"sides": [min_side, max_side], "steps": steps,
                      "images_per_s": {str(k): v for k, v in rates.items()}, "efficiency": rates[2] / (2 * rates[1]),
                      "step_s": {str(k): 2 * k / v for k, v in rates.items()}})
        print(f"{min_side}/{max_side}: 1 worker (1 core) {rates[1]:.3f} images/s; 2 workers (1 core each, global "
              f"batch 4) {rates[2]:.3f} images/s; scaling efficiency {100 * sizes[-1]['efficiency']:.0f}%")
    n = trainable_floats()
    reduce_s = all_reduce_seconds(n)
    print(f"all-reduce of {n:,} float32 over gloo between 2 pinned processes: {reduce_s:.3f} s")
    result = {"backbone": "resnet50", "batch_per_worker": 2, "sizes": sizes,
              "all_reduce": {"floats": n, "seconds": reduce_s}, "machine": machine_info()}
    write_result(args.out_dir, "bench_multi_worker", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
