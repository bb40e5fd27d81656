"""Metadata shipped with the package: official class lists and hierarchy, the level label lists.

The three official files below are what the stages read unless the environment names others (the variable beside
each); `a00_utils_and_constants.py` re-exports them, so the package never imports a00.
"""

import os
from pathlib import Path

RESOURCES_DIR = Path(__file__).resolve().parent


def resource_path(name: str) -> str:
    """Absolute path of a shipped resource file (no check that it exists)."""
    return str(RESOURCES_DIR / name)


CLASS_DESCRIPTIONS_CSV = os.environ.get("OID_CLASS_DESCRIPTIONS", resource_path("class-descriptions-boxable.csv"))
HIERARCHY_JSON = os.environ.get("OID_HIERARCHY", resource_path("bbox_labels_600_hierarchy.json"))
CLASS_DESCRIPTIONS_500_CSV = os.environ.get("OID_CLASS_DESCRIPTIONS_500",
                                            resource_path("challenge-2018-class-descriptions-500.csv"))
