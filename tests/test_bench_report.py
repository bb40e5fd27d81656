"""BENCHMARKS.md's sections: `make bench-scale` replaces its own section and `make bench` keeps it."""

from __future__ import annotations

from bench.common import read_section, replace_section


def test_a_section_is_replaced_kept_or_added(tmp_path):
    report = tmp_path / "BENCHMARKS.md"
    report.write_text("# Benchmarks\n\n| a |\n\n## Full scale\n\nold\n\n## Later\n\nstays\n")
    assert read_section(report, "## Full scale") == ["## Full scale", "", "old"]
    replace_section(report, "## Full scale", ["## Full scale", "", "new", "rows"])
    assert report.read_text() == "# Benchmarks\n\n| a |\n\n## Full scale\n\nnew\nrows\n\n## Later\n\nstays\n"
    replace_section(report, "## Later", ["## Later", "", "changed"])  # the last section: to the end
    assert report.read_text().endswith("## Full scale\n\nnew\nrows\n\n## Later\n\nchanged\n")
    fresh = tmp_path / "fresh.md"
    fresh.write_text("# Benchmarks\n\n| b |\n")
    assert read_section(fresh, "## Full scale") == []
    replace_section(fresh, "## Full scale", read_section(report, "## Full scale"))
    assert fresh.read_text() == "# Benchmarks\n\n| b |\n\n## Full scale\n\nnew\nrows\n"
