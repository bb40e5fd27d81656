#!/usr/bin/env bash
# Run HERE (a machine with PyPI), before asking for the GPU machine: downloads into .whl/ (repo root, ignored
# through .git/info/exclude) the Python 3.12 manylinux wheels that bench/gpu/run_on_device.sh installs there.
# The GPU machine's image has torch, torchvision, jax, numpy, h5py, rich, absl-py, ml-dtypes, packaging and
# typing-extensions, but no keras: we bring keras and the two of its requirements the image lacks (namex,
# optree), at the versions requirements.txt and the project's .venv use. Then every requirement of every wheel
# is checked against the image's package list (/work/.library/device/KINDS.md, read 2026-11-17).
set -euo pipefail
cd "$(dirname "$0")/../.."

WHEELS=(keras==3.15.1 namex==0.1.0 optree==0.20.0)
# The image's packages that the wheels above require (names as pip normalises them).
DEVICE_HAS="absl-py numpy rich h5py ml-dtypes packaging typing-extensions"
MAX_BYTES=$((20 * 1024 * 1024))
PY=${PYTHON:-python3}

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"

rm -rf .whl
mkdir -p .whl
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"

DEVICE_HAS="$DEVICE_HAS" MAX_BYTES="$MAX_BYTES" "$PY" - <<'EOF'
import os
import re
import sys
import zipfile
from pathlib import Path


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


wheels = sorted(Path(".whl").glob("*.whl"))
provided = {norm(w.name.split("-")[0]) for w in wheels}
have = set(os.environ["DEVICE_HAS"].split()) | provided
missing = []
for w in wheels:
    with zipfile.ZipFile(w) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        for line in z.read(meta).decode().splitlines():
            if line.startswith("Requires-Dist:") and "extra ==" not in line:
                req = norm(re.split(r"[\s;<>=!~\[(]", line.split(":", 1)[1].strip(), maxsplit=1)[0])
                if req not in have:
                    missing.append(f"{w.name} needs {req}")
total = sum(w.stat().st_size for w in wheels)
for w in wheels:
    print(f"{w.stat().st_size / 2**20:8.2f} MB  {w.name}")
print(f"{total / 2**20:8.2f} MB  in .whl/ ({len(wheels)} wheels)")
if missing:
    sys.exit("requirements neither on the GPU machine nor in .whl/: " + "; ".join(missing))
if total > int(os.environ["MAX_BYTES"]):
    sys.exit(f".whl/ holds {total} bytes, over the {os.environ['MAX_BYTES']} planned")
EOF
if git status --porcelain --ignored=no | grep -q '\.whl/'; then
    echo "error: .whl/ is not ignored by git" >&2
    exit 1
fi
echo "ready: carry [\".whl\"] in the run call (bench/gpu/README.md)"
