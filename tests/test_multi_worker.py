"""Training on several workers (`--cluster`, JAX's multi-process runtime): two worker processes on 127.0.0.1 against
one process on the same global batches, a worker killed mid-run, and the relaunch with --resume.

Tolerances: the per-epoch losses within 1e-5 relative (the same global batches: only the order of float sums
differs); every weight within 2e-4 absolute: Adam divides each gradient by its own running size, so a bias whose
gradient is ~0 moves by up to the learning rate (1e-5) a step in either direction on float noise alone."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bench.common import free_ports
from tests.train_helpers import make_tiny_level

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "retinanet_training_level_1" / "train_oid_level_1_resnet50.py")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    __import__("importlib").util.find_spec("jax") is None, reason="jax is not installed (several workers run on JAX)")]


@pytest.fixture(scope="module")
def level(tmp_path_factory):
    return make_tiny_level(tmp_path_factory.mktemp("multi_worker"))


def command(level, snapshots: Path, *extra: str) -> list[str]:
    return [sys.executable, SCRIPT, "--backbone", "mobilenet128_0.25", "--no-weights", "--dataset-path",
            str(level.dataset), "--output-path", str(level.output), "--image-min-side", "64", "--image-max-side", "80",
            "--epochs", "2", "--steps", "3", "--batch-size", "2", "--workers", "1", "--no-evaluation", "--seed", "4",
            "--snapshot-path", str(snapshots), *extra]


def start(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)


def run_workers(level, snapshots: Path, *extra: str, timeout: int = 600) -> list[tuple[int, str]]:
    cluster = ",".join(f"127.0.0.1:{p}" for p in free_ports(2))
    jobs = [start(command(level, snapshots, "--cluster", cluster, "--worker-index", str(k), *extra)) for k in (0, 1)]
    return [(job.wait(timeout), job.communicate()[1]) for job in jobs]


def weights(path: Path) -> list[np.ndarray]:
    import zipfile

    import h5py

    with zipfile.ZipFile(path) as z, z.open("model.weights.h5") as f, h5py.File(f) as h5:
        found = []
        h5.visititems(lambda name, obj: found.append((name, obj[()])) if isinstance(obj, h5py.Dataset) else None)
    return [value for _, value in sorted(found, key=lambda item: item[0])]


def losses(folder: Path) -> np.ndarray:
    with open(folder / "training_log.csv") as f:
        return np.array([float(row["loss"]) for row in csv.DictReader(f)])


def same_model(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert len(wa) == len(wb) > 100
    for x, y in zip(wa, wb):
        np.testing.assert_allclose(x, y, rtol=0, atol=2e-4)


@pytest.fixture(scope="module")
def runs(level, tmp_path_factory):
    """One process and two workers on the same flags (the global batch 2: one image from each worker)."""
    root = tmp_path_factory.mktemp("runs")
    one = subprocess.run(command(level, root / "one"), capture_output=True, text=True, cwd=ROOT, timeout=600,
                         env={**os.environ, "KERAS_BACKEND": "jax"})
    assert one.returncode == 0, one.stderr[-3000:]
    results = run_workers(level, root / "two")
    for code, err in results:
        assert code == 0, err[-3000:]
    return root, results


def test_two_workers_train_the_one_process_model(runs):
    root, results = runs
    np.testing.assert_allclose(losses(root / "two"), losses(root / "one"), rtol=1e-5)
    same_model(root / "one" / "mobilenet128_0.25_oid_level_1_02.keras",
               root / "two" / "mobilenet128_0.25_oid_level_1_02.keras")
    # worker 0 alone wrote: one set of snapshots, one log, one configuration
    assert sorted(p.name for p in (root / "two").iterdir()) == sorted(p.name for p in (root / "one").iterdir())
    assert "worker 0 of 2: data-parallel over 2 devices, global batch 2" in results[0][1]
    assert "worker 1 of 2" in results[1][1]


def test_a_lost_worker_stops_the_other_and_resume_continues(level, runs, tmp_path):
    snapshots = tmp_path / "killed"
    cluster = ",".join(f"127.0.0.1:{p}" for p in free_ports(2))
    extra = ("--cluster", cluster, "--worker-timeout", "20")
    jobs = [start(command(level, snapshots, *extra, "--worker-index", str(k))) for k in (0, 1)]
    deadline = time.monotonic() + 600
    while not (snapshots / "mobilenet128_0.25_oid_level_1_01.keras").exists() and time.monotonic() < deadline:
        assert jobs[0].poll() is None, jobs[0].communicate()[1][-3000:]
        time.sleep(0.2)
    os.kill(jobs[1].pid, signal.SIGKILL)
    killed_at = time.monotonic()
    code, err = jobs[0].wait(120), jobs[0].communicate()[1]
    jobs[1].wait(60)
    if code == 0:
        pytest.skip("worker 0 finished its last step before the kill reached it")
    assert code == 3 and time.monotonic() - killed_at < 60, err[-3000:]
    assert "error: worker 0 of 2: the cluster lost a worker" in err and "relaunch every worker with --resume" in err
    assert "Traceback" not in err
    first = snapshots / "mobilenet128_0.25_oid_level_1_01.keras"
    assert not (snapshots / "mobilenet128_0.25_oid_level_1_02.keras").exists()
    results = run_workers(level, snapshots, "--resume", "--worker-timeout", "20")
    for code, err in results:
        assert code == 0, err[-3000:]
    assert f"resuming from {first}" in results[0][1]
    # the relaunched workers reach the uninterrupted one-process run's model
    root, _ = runs
    same_model(root / "one" / "mobilenet128_0.25_oid_level_1_02.keras",
               snapshots / "mobilenet128_0.25_oid_level_1_02.keras")
    np.testing.assert_allclose(losses(snapshots), losses(root / "one"), rtol=1e-5)


def test_several_workers_need_jax_and_consistent_flags(level, tmp_path):
    done = subprocess.run(command(level, tmp_path / "tf", "--cluster", "127.0.0.1:1,127.0.0.1:2", "--worker-index",
                                  "0"), capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "KERAS_BACKEND": "tensorflow"})
    assert done.returncode == 2 and "--cluster trains on the JAX backend" in done.stderr
    for extra, message in ((["--worker-index", "2"], "give --worker-index 0 to 1"),
                           (["--worker-index", "0", "--batch-size", "3"], "must be a multiple of the 2 workers")):
        done = subprocess.run(command(level, tmp_path / "bad", "--cluster", "127.0.0.1:1,127.0.0.1:2", *extra),
                              capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]


def test_which_errors_mean_a_lost_worker():
    """The messages JAX gave here when the peer was SIGKILLed (a ValueError from the all-gather of the logs, its
    runtime error from an all-reduce) against a user's error inside a step."""
    from oid_retinanet.train.trainer import lost_worker

    gather = ValueError("UNKNOWN: Gloo AllGather failed: [external/gloo/gloo/transport/tcp/pair.cc:547] Connection "
                        "closed by peer [127.0.0.1]:23217")
    runtime = type("XlaRuntimeError", (RuntimeError,), {"__module__": "jaxlib._jax"})("INTERNAL: anything")
    assert lost_worker(gather) and lost_worker(runtime)
    assert not lost_worker(ValueError("could not broadcast input array from shape (3,) into shape (4,)"))
    assert not lost_worker(OSError(2, "No such file or directory"))
