"""Stage 4 on Ray (`retinanet_inference_example.py --ray`): a local Ray cluster of 2 CPUs over 24 generated images
and one unreadable file with a small model the test makes. The cache files, failures.txt and the CSV must be the
bytes the plain run writes; with one worker killed mid-run the job still completes with those bytes; the options
that cannot go together are refused in one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "retinanet_inference_example.py")

pytestmark = pytest.mark.slow  # starts Ray and three model processes


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the Ray workers are checked on the default backend")
    from oid_retinanet.model.card import ModelCard, save_model
    from oid_retinanet.model.retinanet import retinanet, retinanet_bbox

    root = tmp_path_factory.mktemp("ray")
    keras.utils.set_random_seed(3)
    model = retinanet_bbox(retinanet(3, backbone="mobilenet128_0.25", prior_probability=0.3), max_detections=50)
    card = ModelCard("mobilenet128_0.25", 3, classes=[("/m/014j1m", "Apple"), ("/m/0cyhj_", "Orange"),
                                                     ("/m/09k_b", "Lemon")], min_side=96, max_side=128)
    save_model(model, root / "model.keras", card)
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for k in range(24):
        size = (int(rng.integers(80, 200)), int(rng.integers(80, 200)))
        Image.fromarray(rng.integers(0, 255, size=(*size, 3), dtype=np.uint8)).save(images / f"{k:04x}.jpg")
    (images / "ffff.jpg").write_bytes(b"not a jpeg")
    plain = run_script(root, "plain")
    assert plain.returncode == 0, plain.stderr[-3000:]
    return root


def run_script(root: Path, name: str, *extra: str, wait: bool = True):
    argv = [sys.executable, SCRIPT, "--weights", str(root / "model.keras"), "--images", str(root / "images"),
            "--cache-dir", str(root / f"cache_{name}"), "--output", str(root / f"{name}.csv"), *extra]
    if not wait:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=900)


def same_outputs(root: Path, name: str) -> None:
    plain, other = root / "cache_plain", root / f"cache_{name}"
    files = sorted(p.relative_to(plain) for p in plain.rglob("*") if p.is_file())
    assert sorted(p.relative_to(other) for p in other.rglob("*") if p.is_file()) == files
    assert len([f for f in files if f.suffix == ".npz"]) == 24
    for f in files:
        assert (plain / f).read_bytes() == (other / f).read_bytes(), f
    assert (root / "plain.csv").read_bytes() == (root / f"{name}.csv").read_bytes()
    assert "ffff.jpg" in (plain / "failures.txt").read_text()
    assert len((root / "plain.csv").read_text().splitlines()) == 25  # header and the 24 readable images


def test_ray_writes_the_plain_runs_bytes(env):
    pytest.importorskip("ray", reason="ray is not installed (requirements-cluster.txt)")
    done = run_script(env, "ray", "--ray", "--ray-workers", "2", "--ray-chunk", "5")
    assert done.returncode == 0, done.stderr[-3000:]
    same_outputs(env, "ray")
    # a rerun finds everything cached and writes the same CSV again
    done = run_script(env, "ray", "--ray", "--ray-workers", "2")
    assert done.returncode == 0 and "24 already cached" in done.stderr, done.stderr[-3000:]
    same_outputs(env, "ray")


def test_a_killed_worker_costs_only_its_chunk(env):
    pytest.importorskip("ray", reason="ray is not installed (requirements-cluster.txt)")
    job = run_script(env, "killed", "--ray", "--ray-workers", "2", "--ray-chunk", "2", wait=False)
    cache = env / "cache_killed"
    killed = None
    deadline = time.monotonic() + 600
    while killed is None and job.poll() is None and time.monotonic() < deadline:
        if len(list(cache.glob("**/*.npz"))) >= 2:
            pids = subprocess.run(["pgrep", "-f", "ray::Predictor"], capture_output=True, text=True).stdout.split()
            if pids:
                killed = int(pids[0])
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    out, err = job.communicate(timeout=900)
    assert killed is not None, "no worker was running to kill"
    assert job.returncode == 0, err[-3000:]
    same_outputs(env, "killed")


@pytest.mark.parametrize("extra,message", [
    (["--ray", "--shard", "0/2"], "give --ray or --shard, not both"),
    (["--ray", "--from-cache"], "--from-cache runs no model"),
])
def test_refused_combinations(env, extra, message):
    done = run_script(env, "refused", *extra)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_without_ray_one_line_names_the_install(env, monkeypatch, capsys, tmp_path):
    import importlib.util

    import retinanet_inference_example as script

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    argv = ["--weights", str(env / "model.keras"), "--images", str(env / "images"), "--cache-dir",
            str(tmp_path / "cache"), "--output", str(tmp_path / "out.csv"), "--ray"]
    assert script.main(argv) == 2
    assert "--ray needs the ray package: pip install -r requirements-cluster.txt" in capsys.readouterr().err
    assert not (tmp_path / "out.csv").exists()
