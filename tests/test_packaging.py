"""The repository's promises: one dependency source, stripped notebooks, tracked lib/, literal parameters."""

import ast
import json
import subprocess

import pytest
import tomllib
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PARAMETERS = {"PROFILE", "DEVICE", "RUN_DIR", "FIG_DIR", "DATA_ROOT", "SEED", "OVERRIDES"}


def test_environment_yml_agrees_with_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    pythons = [d for d in deps if isinstance(d, str) and d.startswith("python")]
    assert len(pythons) == 1
    version = pythons[0].split("=", 1)[1]
    assert Version(version + ".0") in SpecifierSet(PYPROJECT["project"]["requires-python"])
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert pip == ["-e .[dev]"]  # pyproject is the single source of dependencies
    assert "pip" in deps and all(isinstance(d, dict) or d.split("=")[0] in ("python", "pip") for d in deps)


def test_dependencies_cover_the_design_card_and_admit_local_torch():
    deps = {d.split(">")[0].split("<")[0].split("=")[0].strip(): d for d in PYPROJECT["project"]["dependencies"]}
    for pkg in ("torch", "torchvision", "jupyterlab", "papermill", "captum", "shap", "seaborn", "pytorch-fid",
                "ipykernel", "ipywidgets", "tqdm", "safetensors"):
        assert pkg in deps, pkg
    assert Version("2.14.1") in SpecifierSet(deps["torch"][len("torch"):])
    assert Version("0.29.1") in SpecifierSet(deps["torchvision"][len("torchvision"):])
    assert any(d.startswith("pytest") for d in PYPROJECT["project"]["optional-dependencies"]["dev"])


def test_lib_is_tracked_and_outputs_are_ignored():
    def ignored(path):
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0

    if subprocess.run(["git", "rev-parse"], cwd=ROOT, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    assert not ignored("lib/models.py")
    assert ignored("runs/default/summary.json") and ignored("data/FashionMNIST/raw/x") and ignored(".venv/bin/python")


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stripped_and_has_a_literal_parameters_cell(nb):
    cells = json.loads(nb.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "commit without outputs"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    tree = ast.parse("".join(tagged[0]["source"]))
    names = set()
    for stmt in tree.body:  # literals only: papermill does not recompute derived values
        assert isinstance(stmt, ast.Assign), ast.unparse(stmt)
        ast.literal_eval(stmt.value)  # raises on anything but a literal (OVERRIDES is a dict literal)
        names |= {t.id for t in stmt.targets}
    assert names == PARAMETERS


def test_notebooks_are_numbered_without_gaps():
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert numbers == list(range(1, len(numbers) + 1))


def test_readme_shows_the_two_commands_and_ci_calls_the_test_one():
    readme = (ROOT / "README.md").read_text()
    assert "make reproduce" in readme and "make test" in readme
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == "make test"
