"""The pre-registered analysis decisions: the fenced ```yaml block of analysis.md at the repository root.

    registry.decision("concentration") -> {"measure": ..., "method": ..., "grid": ..., "direction": ...}

analysis.md states each decision with its date, the commit that registered it and the reason; lib/claims.py reads
the decision from here, so a change of measure is a visible commit of analysis.md, never an edit of code.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from lib.paths import ROOT

ANALYSIS = ROOT / "analysis.md"


def read(path: str | Path = ANALYSIS) -> dict:
    """Every decision of the registry file: the first ```yaml fenced block, parsed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: it holds the pre-registered analysis decisions; restore it "
                                f"from git (git checkout -- {path.name}).")
    block = re.search(r"```yaml\n(.*?)```", path.read_text(), re.S)
    if not block:
        raise ValueError(f"{path} has no ```yaml block of decisions")
    return yaml.safe_load(block.group(1)) or {}


def decision(name: str, path: str | Path = ANALYSIS) -> dict:
    """One registered decision, e.g. decision('concentration')."""
    decisions = read(path)
    if name not in decisions:
        raise ValueError(f"{path} registers no decision {name!r}; it has {', '.join(decisions) or 'none'}")
    return decisions[name]
