"""oid_retinanet.cli: the allocator settings every script gets at start, and the backend's start-up lines.

Rule: a step-like pattern (a dozen arrays of 1-30 MB allocated, touched and freed, 20 times) measured in a fresh
process by its minor page faults, with the settings and with glibc's defaults (OID_MALLOC=system). glibc's
defaults return the freed memory to the kernel and fault it in again each time (~85,000 faults on the machine
this was written on); kept in the process, only the first round faults (~6,000). The test asks for 4x fewer.

TensorFlow prints notices and, on a machine without a GPU, a failed CUDA probe when it starts; a script shows
them only with -v. Rule: a script that loads the backend and then stops on bad input prints exactly its one
error line; with -v the same run also shows the backend's lines.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
from conftest import REPO

STEPS = """
import resource, sys
from oid_retinanet.cli import tune_allocator
tuned = tune_allocator()
import numpy as np
sizes = [(1 + (7 * i) % 30) << 18 for i in range(12)]  # float32 arrays of 1-30 MB
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    arrays = [np.ones(n, np.float32) for n in sizes]
    del arrays
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(malloc: str | None) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if k != "OID_MALLOC"}
    if malloc:
        env["OID_MALLOC"] = malloc
    out = subprocess.run([sys.executable, "-c", STEPS], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    tuned, faults = out.stdout.split()
    return tuned == "True", int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's")
def test_freed_memory_is_kept_in_the_process():
    tuned, faults_tuned = _faults(None)
    untuned, faults_default = _faults("system")
    assert tuned and not untuned
    assert faults_tuned * 4 < faults_default, (faults_tuned, faults_default)


TF_START_LINES = ("cuInit", "cudart_stub", "cpu_feature_guard", "oneDNN custom operations", "absl::InitializeLog")


def test_backend_start_up_lines_only_with_verbose(tmp_path):
    """convert_retinanet_model.py loads the backend, then refuses an output that is not .keras."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_BACKEND")}
    command = [sys.executable, "retinanet_training_level_1/convert_retinanet_model.py", str(tmp_path / "in.h5"),
               str(tmp_path / "out.h5")]
    quiet = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert quiet.returncode == 2 and quiet.stderr.splitlines() == [
        f"error: {tmp_path / 'out.h5'}: the output must be a Keras 3 model file ending in .keras"], quiet.stderr
    verbose = subprocess.run(command + ["-v"], cwd=REPO, env=env, capture_output=True, text=True)
    assert verbose.returncode == 2 and "ending in .keras" in verbose.stderr.splitlines()[-1]
    assert any(line in verbose.stderr for line in TF_START_LINES), verbose.stderr
