"""Metadata shipped with the package: official class lists and hierarchy, the level label lists."""

from pathlib import Path

RESOURCES_DIR = Path(__file__).resolve().parent


def resource_path(name: str) -> str:
    """Absolute path of a shipped resource file (no check that it exists)."""
    return str(RESOURCES_DIR / name)
