"""The registered analysis decisions: the fenced ```yaml block of `analysis.md` at the repository root.

    registry.read()["concentration"]  # {"measure": "region_mass", "method": "ig", "grid": 8, "frac": 0.1, ...}

The file states why each decision was made and the commit that registered it; the code reads only the block.
Imports nothing from lib but `paths`.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from lib.paths import ROOT

ANALYSIS = ROOT / "analysis.md"
REQUIRED = {"concentration": ("measure", "method", "grid", "frac", "direction", "sweep"),
            "sanity": ("threshold", "bound"), "panel": ("measures", "methods")}
_BLOCK = re.compile(r"^```ya?ml[ \t]*\n(.*?)^```", re.S | re.M)
_STAMP = re.compile(r"registered at commit ([0-9a-f]{7,40}) on (\d{4}-\d{2}-\d{2})", re.I)


def read(path: str | Path = ANALYSIS) -> dict:
    """The one ```yaml block of `path` as a dict, checked for the keys the code reads (REQUIRED), plus
    "registered": {"commit", "date"} from the file's "registered at commit X on YYYY-MM-DD" line (None if absent)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: it registers the analysis decisions; restore it from git.")
    blocks = _BLOCK.findall(path.read_text())
    if len(blocks) != 1:
        raise ValueError(f"{path} must hold exactly one ```yaml block (found {len(blocks)}).")
    reg = yaml.safe_load(blocks[0])
    if not isinstance(reg, dict):
        raise ValueError(f"the ```yaml block of {path} must be a mapping.")
    for section, keys in REQUIRED.items():
        missing = [k for k in keys if k not in (reg.get(section) or {})]
        if missing:
            raise ValueError(f"the ```yaml block of {path} lacks {section}.{', '.join(missing)}.")
    if reg["concentration"]["direction"] not in ("higher", "lower"):
        raise ValueError(f"{path}: concentration.direction must be higher or lower.")
    stamp = _STAMP.search(path.read_text())
    reg["registered"] = {"commit": stamp.group(1), "date": stamp.group(2)} if stamp else None
    return reg


def decision(name: str, path: str | Path = ANALYSIS) -> dict:
    """One registered decision, e.g. decision('concentration') (what lib/claims.py decides by)."""
    decisions = read(path)
    if name not in decisions:
        raise ValueError(f"{path} registers no decision {name!r}; it has {', '.join(decisions) or 'none'}")
    return decisions[name]
