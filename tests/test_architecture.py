"""The layers of the package import only downward (docs/ARCHITECTURE.md): read from every module's import
statements, function-level imports included, so a new import across the rules fails here, naming the file."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "oid_retinanet"
BASE = {"errors", "files", "resources", "cli", "__init__"}  # importable from everywhere
ALLOWED = {
    "errors": set(), "files": {"errors"}, "resources": set(), "cli": {"errors"}, "__init__": set(),
    "oid": BASE, "boxes": BASE, "model": BASE,
    "evaluate": BASE | {"oid"},
    "data": BASE | {"oid", "boxes", "model"},
    "predict": BASE | {"oid", "boxes", "data", "model"},
    "train": BASE | {"oid", "boxes", "data", "model", "evaluate"},
    "stages": BASE | {"oid", "boxes", "data", "model", "predict", "evaluate", "train"},
    "serve": BASE | {"oid", "boxes", "data", "model", "predict"},
    "demo": BASE | {"oid", "predict"},
}
NO_KERAS = {"errors", "files", "resources", "cli", "oid", "boxes", "evaluate", "stages"}


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def _layer(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else path.stem


def test_layers_import_only_downward():
    broken = []
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 50
    for path in files:
        layer = _layer(path)
        assert layer in ALLOWED, f"{path}: a new layer; add it to ALLOWED and docs/ARCHITECTURE.md"
        for name in _imports(path):
            top = name.split(".")[0]
            if top == "a00_utils_and_constants":
                broken.append(f"{path}: imports a00 (scripts pass their constants instead)")
            elif top in ("keras", "tensorflow") and layer in NO_KERAS:
                broken.append(f"{path}: imports {name} in a layer without Keras")
            elif top == "oid_retinanet":
                target = name.split(".")[1]
                if not (PACKAGE / target).exists() and not (PACKAGE / f"{target}.py").exists():
                    target = "__init__"  # a name of the package itself (__version__)
                if target != layer and target not in ALLOWED[layer]:
                    broken.append(f"{path}: {layer} imports {name}")
    assert not broken, "\n".join(broken)


def test_scripts_do_not_import_scripts():
    folders = {"retinanet_training_level_1", "retinanet_training_oid_2019", "labelProcess",
               "retinanet_inference_submission"}
    scripts = list(REPO.glob("*.py")) + [p for d in sorted(folders) for p in (REPO / d).glob("*.py")]
    names = {p.stem for p in scripts} - {"a00_utils_and_constants", "_bootstrap", "__init__"}
    broken = [f"{p.relative_to(REPO)} imports {name}" for p in scripts for name in _imports(p)
              if name.split(".")[0] in names | folders and not name.endswith("._bootstrap")]
    assert len(scripts) > 15 and not broken, "\n".join(broken)
