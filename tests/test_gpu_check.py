"""`make gpu-check` cannot rot: its quick variant runs end to end on CPU and writes its JSON and table."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def test_gpu_check_quick_on_cpu(tmp_path):
    (tmp_path / "README.md").write_text("# benchmarks\n\n<!-- gpu-check:start -->\nold\n<!-- gpu-check:end -->\ntail\n")
    subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--quick", "--out", str(tmp_path)],
                   check=True, cwd=ROOT, timeout=600)
    (result,) = (tmp_path / "results").glob("gpu-*-quick.json")
    res = json.loads(result.read_text())
    assert {t["profile"] for t in res["training"]} == {"cifar10", "cifar10_fast", "imagenet150"}
    assert all(m["seconds_per_step"] > 0 for t in res["training"] for m in t["modes"].values())
    assert "attributions.ig" in res["agreement"] and "alignment.rho_lin" in res["agreement"]
    assert max(v for v in res["agreement"].values() if v is not None) == 0  # CPU against itself
    assert res["pipeline"]["notebooks"] == ["01_training"]
    assert {(r["mode"], r["n"]) for r in res["joint"]} == {("standard", 2), ("pgd", 2)}
    assert all(r["joint_ms"] > 0 and r["sequential_ms"] > 0 for r in res["joint"])
    readme = (tmp_path / "README.md").read_text()
    assert "\nold\n" not in readme and "| cifar10 | pgd-20 |" in readme and readme.endswith("tail\n")
    assert "| pgd | 2 |" in readme
