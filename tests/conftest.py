"""Shared test helpers: where the recorded fixtures are, and how to compare CSV outputs."""

from __future__ import annotations

import collections
import gzip
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("OID_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures"


def fixture_path(*parts: str) -> Path:
    """A path under ../shared/fixtures; skip when absent, fail when OID_REQUIRE_FIXTURES=1."""
    path = FIXTURES.joinpath(*parts)
    if not path.exists():
        message = f"fixture {path} not found"
        if os.environ.get("OID_REQUIRE_FIXTURES") == "1":
            pytest.fail(message + " (OID_REQUIRE_FIXTURES=1)")
        pytest.skip(message)
    return path


def read_lines(path: Path) -> list[str]:
    """Lines of a text file, transparently gunzipping `.gz` (and finding `name.gz` for `name`)."""
    if not path.exists() and path.with_name(path.name + ".gz").exists():
        path = path.with_name(path.name + ".gz")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        return f.read().splitlines()


def gunzip_to(src: Path, dst: Path) -> Path:
    """Write the decompressed text of `src` (gzipped or not) to `dst`."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("\n".join(read_lines(src)) + "\n", encoding="utf-8")
    return dst


def assert_same_rows(expected: Path, actual: Path) -> None:
    """Header exact, data rows equal as a multiset (the originals' row order followed set iteration)."""
    exp, out = read_lines(expected), read_lines(actual)
    assert out[0] == exp[0], f"header differs in {actual.name}"
    ce, co = collections.Counter(exp[1:]), collections.Counter(out[1:])
    missing, extra = list((ce - co).elements()), list((co - ce).elements())
    assert not missing and not extra, (
        f"{actual.name}: {len(missing)} expected rows missing (e.g. {missing[:3]}), "
        f"{len(extra)} unexpected rows (e.g. {extra[:3]})")
