"""Lets the scripts in this folder run as `python labelProcess/x.py` from anywhere: the repository root goes
on sys.path, so `a00_utils_and_constants` and `oid_retinanet` import as they do for the top-level scripts."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
