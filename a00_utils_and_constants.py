"""Paths of the pipeline: the one file a user edits.

Every path can also be set by the environment variable named beside it, so the same checkout can point at
several Open Images downloads. Importing this module creates nothing and reads nothing; the scripts create
the output folders they write to. Paths end with '/' as in the original, so `PATH + name` keeps working.
"""

import os

# Official metadata shipped with the package (see oid_retinanet/resources/PROVENANCE.md); each can be replaced by
# the environment: OID_CLASS_DESCRIPTIONS, OID_HIERARCHY, OID_CLASS_DESCRIPTIONS_500.
from oid_retinanet.resources import CLASS_DESCRIPTIONS_500_CSV, CLASS_DESCRIPTIONS_CSV, HIERARCHY_JSON  # noqa: F401


def _path(env_name: str, default: str) -> str:
    value = os.environ.get(env_name, default)
    return value if value.endswith(("/", os.sep)) else value + "/"


ROOT_PATH = os.path.dirname(os.path.realpath(__file__)) + "/"

# Change this to the location of Open Images: annotation CSVs (the 2018 layout has them under
# annotations/), image folders train/, validation/, test/.
DATASET_PATH = _path("OID_DATASET_PATH", ROOT_PATH + "input/")
# Metadata of the original (class lists, hierarchy) and other small inputs.
INPUT_PATH = _path("OID_INPUT_PATH", ROOT_PATH + "input/")
# Level files, image parameters, predictions caches.
OUTPUT_PATH = _path("OID_OUTPUT_PATH", ROOT_PATH + "output/")
MODELS_PATH = _path("OID_MODELS_PATH", ROOT_PATH + "models/")
SUBM_PATH = _path("OID_SUBM_PATH", ROOT_PATH + "subm/")
# The 2019 tools (labelProcess/) read their class list and hierarchy from here.
LABEL_PATH = _path("OID_LABEL_PATH", ROOT_PATH + "label/")

# The 2019 challenge files could not be obtained for the package: bring your own.
CLASS_DESCRIPTIONS_2019_CSV = LABEL_PATH + "challenge-2019-classes-description-500.csv"
HIERARCHY_2019_JSON = LABEL_PATH + "challenge-2019-label500-hierarchy.json"


def __getattr__(name: str):
    """The original's level label lists, read from the shipped data when first used (importing this file reads
    nothing): LEVEL_1_LABELS ... LEVEL_5_LABELS, LEVEL_1_LABELS_LOW_SAMPLES, ALL_LABELS (display names)."""
    from oid_retinanet.oid.levels import original_label_lists

    lists = original_label_lists()
    if name in lists:
        return lists[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
