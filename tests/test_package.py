"""The package stands alone: installed with pip outside a checkout, every module imports without the repository's
`a00_utils_and_constants.py`, its shipped metadata is found, and the web demo's entry point and the model resolver
run from another folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from tests.conftest import REPO

PROBE = r"""
import importlib, pkgutil, sys
import oid_retinanet
assert "/site/" in oid_retinanet.__file__, oid_retinanet.__file__
skipped = {"oid_retinanet.serve.__main__", "oid_retinanet.demo.__main__"}  # entry points: run below, not imported
for info in pkgutil.walk_packages(oid_retinanet.__path__, "oid_retinanet."):
    if info.name not in skipped and not info.name.endswith("torch_layout"):
        importlib.import_module(info.name)
assert "a00_utils_and_constants" not in sys.modules
from oid_retinanet.model.card import ModelCard, save_model
from oid_retinanet.model.retinanet import retinanet
from oid_retinanet.predict.resolve import _classes, resolve_model
save_model(retinanet(2, backbone="mobilenet128_0.25"), "m.keras",
           ModelCard("mobilenet128_0.25", 2, classes=[("/m/014j1m", "Apple"), ("/m/09k_b", "Lemon")]))
resolved = resolve_model("m.keras")
assert resolved.labels.names == ("Apple", "Lemon") and resolved.sides == (800, 1333), resolved.describe()
assert len(_classes(ModelCard("resnet50", 500), None, None, True)) == 500  # the released list, from package data
print("ok")
"""


def test_installed_package_runs_outside_a_checkout(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "oid_retinanet", source / "oid_retinanet",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                              str(source)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(site), TF_CPP_MIN_LOG_LEVEL="3", PYTHONSAFEPATH="1")
    run = subprocess.run([sys.executable, "-c", PROBE], cwd=work, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]
    serve = subprocess.run([sys.executable, "-m", "oid_retinanet.serve", "--help"], cwd=work, env=env,
                           capture_output=True, text=True, timeout=300)
    assert serve.returncode == 0 and "--weights" in serve.stdout, serve.stderr[-3000:]
    missing = subprocess.run([sys.executable, "-m", "oid_retinanet.serve"], cwd=work, env=env, capture_output=True,
                             text=True, timeout=300)
    assert missing.returncode == 2 and "make demo" in missing.stderr, missing.stderr[-3000:]
