"""The registered analysis decisions are read from analysis.md's one yaml block."""

import pytest

from lib import registry

BLOCK = ("# decisions\nprose\n\n```yaml\nconcentration: {measure: region_mass, method: ig, grid: 8, frac: 0.1,\n"
         "  direction: higher, sweep: pgd}\nsanity: {threshold: 0.5, bound: upper}\n"
         "panel: {measures: [gini], methods: [ig]}\n```\n")


def test_repository_registration_is_complete_and_names_its_commit():
    reg = registry.read()
    assert reg["concentration"]["measure"] == "region_mass" and reg["concentration"]["grid"] == 8
    assert 0 < reg["sanity"]["threshold"] < 1
    assert reg["registered"]["date"] == "2026-12-01" and len(reg["registered"]["commit"]) == 40


def test_read_parses_the_block_and_rejects_malformed_files(tmp_path):
    good = tmp_path / "a.md"
    good.write_text(BLOCK)
    assert registry.read(good)["concentration"]["frac"] == 0.1 and registry.read(good)["registered"] is None
    two = tmp_path / "two.md"
    two.write_text(BLOCK + BLOCK)
    with pytest.raises(ValueError, match="exactly one"):
        registry.read(two)
    lacking = tmp_path / "lacking.md"
    lacking.write_text(BLOCK.replace("grid: 8, ", ""))
    with pytest.raises(ValueError, match="concentration.grid"):
        registry.read(lacking)
    with pytest.raises(FileNotFoundError, match="restore"):
        registry.read(tmp_path / "missing.md")
