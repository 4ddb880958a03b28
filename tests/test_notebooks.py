"""Every numbered notebook runs end to end at `smoke` through the papermill pipeline."""

import json
import shutil
import subprocess
import sys

import nbformat
import pytest

from conftest import ROOT
from lib import pipeline, profiles

pytestmark = pytest.mark.slow


def test_pipeline_runs_every_notebook_and_merges_metrics(smoke_run):
    summary = json.loads((smoke_run / "summary.json").read_text())
    stems = {p.stem for p in pipeline.notebooks()}
    executed = {p.stem for p in (smoke_run / "notebooks").glob("*.ipynb")}
    assert executed == stems
    metric_stems = {p.stem for p in (smoke_run / "metrics").glob("*.json")}
    assert len(metric_stems) == len(stems) and set(summary) >= metric_stems
    assert set(summary["_timings_s"]) == stems
    units = summary["01_training"]["units"]
    assert set(units) == set(profiles.units(profiles.load("smoke")))  # every seed of every model
    for m in units.values():
        assert 0 <= m["pgd_acc"] <= m["clean_acc"] <= 100
    for m in summary.values():
        assert json.dumps(m)  # plain JSON


def test_smoke_robust_model_is_more_robust(smoke_run):
    units = json.loads((smoke_run / "summary.json").read_text())["01_training"]["units"]
    mean = {k: sum(r["pgd_acc"] for r in units.values() if r["model"] == k) / 2 for k in ("standard", "robust")}
    assert mean["robust"] > mean["standard"] + 5  # over the smoke profile's 2 training seeds


def test_every_notebook_saved_figures_and_their_data(smoke_run):
    figs = smoke_run.parent / "figures"
    for nb in pipeline.notebooks():
        prefix = nb.name[:2]
        pngs = list(figs.glob(f"{prefix}_*.png"))
        assert pngs, f"{nb.stem} saved no figure"
        assert all(p.with_suffix(".pdf").is_file() for p in pngs)
        assert all((smoke_run / "artefacts" / f"{p.stem}.npz").is_file() for p in pngs), "figure without data"
    summary = json.loads((smoke_run / "summary.json").read_text())
    assert sorted(e["name"] for e in summary["_figures"]) == sorted(p.stem for p in figs.glob("*.png"))
    assert summary["_not_run"] == {} and set(summary["_overrides"]) == {p.stem for p in pipeline.notebooks()}
    assert not list((smoke_run / "notebooks").glob("*.partial.ipynb"))


def test_figures_redraw_from_artefacts_alone(smoke_run, tmp_path):
    from lib import figures

    paths = figures.redraw(smoke_run, tmp_path)
    assert {p.name for p in paths} == {p.name for p in (smoke_run.parent / "figures").glob("*.png")}


def test_executed_notebooks_have_no_errors(smoke_run):
    for path in (smoke_run / "notebooks").glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if o.get("output_type") == "error"]
        assert not errors, path.name


def _tiny_notebook(path, source):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("PROFILE = 'smoke'\nRUN_DIR = None\nOVERRIDES = {}")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(source)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_failure_names_notebook_and_cell_and_keeps_earlier_work(tmp_path, monkeypatch):
    books = tmp_path / "notebooks"
    books.mkdir()
    _tiny_notebook(books / "01_ok.ipynb", "from pathlib import Path\nPath(RUN_DIR, 'ok.txt').write_text('done')")
    _tiny_notebook(books / "02_bad.ipynb", "raise RuntimeError('deliberate failure')")
    _tiny_notebook(books / "03_never.ipynb", "from pathlib import Path\nPath(RUN_DIR, 'never.txt').write_text('x')")
    monkeypatch.setattr(pipeline, "NOTEBOOK_DIR", books)
    run_dir = tmp_path / "run"
    with pytest.raises(pipeline.NotebookFailed, match=r"02_bad.ipynb failed in cell \d.*deliberate failure"):
        pipeline.run("smoke", run_dir=run_dir, fig_dir=tmp_path / "f", log=lambda *a, **k: None)
    assert (run_dir / "ok.txt").read_text() == "done" and (run_dir / "notebooks" / "01_ok.ipynb").is_file()
    assert not (run_dir / "never.txt").exists()
    assert json.loads((run_dir / "timings.json").read_text()).keys() == {"01_ok"}


def test_cli_rejects_unknown_profile_before_any_work(tmp_path):
    out = subprocess.run([sys.executable, "-m", "lib.pipeline", "--profile", "nope", "--run-dir", str(tmp_path / "r")],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1 and "known profiles:" in out.stderr and "smoke" in out.stderr
    assert not (tmp_path / "r").exists()


def test_papermill_command_line_override_changes_one_knob(smoke_run, tmp_path):
    """The README's knob: `papermill ... -p OVERRIDES '{...}'` reaches the notebook's profile."""
    run_dir = tmp_path / "run"
    shutil.copytree(smoke_run / "models", run_dir / "models")  # trained by the smoke run; reused, not retrained
    out = tmp_path / "03.ipynb"
    cmd = [sys.executable, "-m", "papermill", str(ROOT / "notebooks" / "03_alignment_theory.ipynb"), str(out),
           "-k", "python3", "-p", "PROFILE", "smoke", "-p", "DEVICE", "cpu", "-p", "RUN_DIR", str(run_dir),
           "-p", "FIG_DIR", str(tmp_path / "figures"), "-p", "OVERRIDES", '{"alignment": {"n_images": 12}}']
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics" / "03_alignment_theory.json").read_text())["metrics"]
    default_n = json.loads((smoke_run / "metrics" / "03_alignment_theory.json").read_text())["metrics"]["n_images"]
    assert metrics["n_images"] == 12 != default_n


@pytest.mark.slow
def test_pipeline_set_reaches_every_notebook_and_rejects_unknown_keys(tmp_path, monkeypatch):
    books = tmp_path / "notebooks"
    books.mkdir()
    for name in ("01_a", "02_b"):
        _tiny_notebook(books / f"{name}.ipynb", "import json\nfrom pathlib import Path\n"
                       f"Path(RUN_DIR, '{name}.json').write_text(json.dumps(OVERRIDES))")
    monkeypatch.setattr(pipeline, "NOTEBOOK_DIR", books)
    run_dir = tmp_path / "run"
    args = ["--profile", "smoke", "--run-dir", str(run_dir), "--fig-dir", str(tmp_path / "f"), "--device", "cpu"]
    assert pipeline.main([*args, "--set", "attributions.ig.steps=3", "--set", "seed=2"]) == 0
    for name in ("01_a", "02_b"):
        assert json.loads((run_dir / f"{name}.json").read_text()) == {"attributions": {"ig": {"steps": 3}}, "seed": 2}
    assert pipeline.main([*args, "--run-dir", str(tmp_path / "r2"), "--set", "attributions.ig.stepz=3"]) == 1
    assert not (tmp_path / "r2").exists()  # refused before any work
