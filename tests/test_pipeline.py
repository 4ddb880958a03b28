"""A run is isolated, checked before it starts, and loses nothing when it fails (issue 17, parts 3-5).

Tests that start notebook kernels use tiny generated notebooks (a second each) and are marked slow."""

import json
import os
import signal
import subprocess
import sys
import time

import nbformat
import pytest

from conftest import ROOT
from lib import paths, pipeline, plotting, preflight, profiles, results, runlock, synthetic

PARAMS = "PROFILE = 'smoke'\nDEVICE = 'cpu'\nRUN_DIR = None\nFIG_DIR = None\nDATA_ROOT = None\nSEED = 0\nOVERRIDES = {}"
QUIET = lambda *a, **k: None  # noqa: E731


def tiny_notebook(path, *cells):
    """A notebook with the pipeline's parameters cell and `cells`; TINY_SLEEP / TINY_FAIL (environment,
    inherited by the kernel) make a test notebook slow or failing without editing it."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(PARAMS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *(nbformat.v4.new_code_cell(c) for c in cells)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def step(name):
    """A cell that sleeps TINY_SLEEP seconds (after writing RUN_DIR/<name>.sleeping, so a test knows the cell is
    running), fails if TINY_FAIL is set, else writes RUN_DIR/<name>.txt."""
    return ("import os, time\nfrom pathlib import Path\n"
            f"_ = float(os.environ.get('TINY_SLEEP', 0)) and Path(RUN_DIR, '{name}.sleeping').touch()\n"
            "time.sleep(float(os.environ.get('TINY_SLEEP', 0)))\n"
            "assert not os.environ.get('TINY_FAIL'), 'deliberate failure'\n"
            f"Path(RUN_DIR, '{name}.txt').write_text('done')")


def figure_cell(number):
    """publish() one bar chart per name in the profile's attributions.grids (so --set changes what is drawn)."""
    return ("from lib import plotting, profiles\n"
            "for g in profiles.load(PROFILE, OVERRIDES)['attributions']['grids']:\n"
            f"    plotting.publish(plotting.accuracy_bars, '{number}_' + g + '_grid', "
            "{'model': ['a'], 'clean_acc': [1.0], 'pgd_acc': [0.5]}, FIG_DIR, RUN_DIR)")


@pytest.fixture
def books(tmp_path, monkeypatch):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    monkeypatch.setattr(pipeline, "NOTEBOOK_DIR", folder)
    return folder


def subprocess_pipeline(folder, args, **env):
    """A real second process running lib.pipeline.main over the tiny notebooks in `folder`."""
    # SIGINT as in a terminal's foreground process, also when this suite runs as a background job (whose shell
    # starts it, and so every child, with SIGINT ignored)
    code = (f"import signal, sys; from pathlib import Path; from lib import pipeline; "
            f"signal.signal(signal.SIGINT, signal.default_int_handler); "
            f"pipeline.NOTEBOOK_DIR = Path({str(folder)!r}); sys.exit(pipeline.main({args!r}))")
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def wait_for(predicate, timeout=120):
    t0 = time.time()
    while not predicate():
        assert time.time() - t0 < timeout, "timed out waiting"
        time.sleep(0.2)


# ---------------------------------------------------------------- 3. isolation

def test_a_run_dir_without_fig_dir_gets_its_own_figures(tmp_path):
    assert paths.run_dirs("smoke", tmp_path / "a") == (tmp_path / "a", tmp_path / "a" / "figures")
    assert paths.run_dirs("smoke", tmp_path / "a", tmp_path / "f")[1] == tmp_path / "f"
    assert paths.run_dirs("smoke") == (paths.RUNS_DIR / "smoke", paths.FIGURES_DIR / "smoke")
    assert paths.run_dirs("smoke", paths.RUNS_DIR / "smoke")[1] == paths.FIGURES_DIR / "smoke"  # named, same folder
    from lib.experiment import Context

    ctx = Context("smoke", "cpu", str(tmp_path / "b"))
    assert ctx.fig_dir == tmp_path / "b" / "figures" != paths.FIGURES_DIR / "smoke"


def test_publish_records_each_figure_and_a_rerun_forgets_its_notebooks_figures(tmp_path):
    data = {"model": ["a", "b"], "clean_acc": [1.0, 2.0], "pgd_acc": [0.5, 1.0]}
    for name in ("01_x", "02_y", "02_z", "02_y"):
        plotting.publish(plotting.accuracy_bars, name, data, tmp_path / "f", tmp_path)
    manifest = results.read_figures(tmp_path)
    assert [e["name"] for e in manifest["02"]] == ["02_z", "02_y"] and manifest["01"][0]["notebook"] == "01"
    assert manifest["01"][0]["path"] == str(tmp_path / "f" / "01_x.png")
    results.forget_figures(tmp_path, "02")
    assert set(results.read_figures(tmp_path)) == {"01"}


def test_lock_refuses_a_second_holder_from_another_process_and_takes_over_after_a_kill(tmp_path):
    code = (f"import time; from lib import runlock\nwith runlock.hold({str(tmp_path)!r}):\n"
            "    print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(runlock.RunDirBusy, match=rf"in use by another pipeline \(pid {holder.pid} on .*"
                                                      r"give this run its own --run-dir"):
            with runlock.hold(tmp_path, QUIET):
                pass
    finally:
        holder.kill()
        holder.wait()
    said = []
    with runlock.hold(tmp_path, lambda *a, **k: said.append(a[0])):
        pass
    assert len(said) == 1 and f"pid {holder.pid}" in said[0] and "ended without releasing it" in said[0]
    with runlock.hold(tmp_path, lambda *a, **k: said.append(a[0])):  # released cleanly: nothing to say
        pass
    assert len(said) == 1


@pytest.mark.slow
def test_rerun_with_fewer_figures_shows_only_this_runs_figures_and_its_overrides(tmp_path, books):
    tiny_notebook(books / "01_draw.ipynb", figure_cell("01"))
    run_dir = tmp_path / "run"
    args = ["--profile", "smoke", "--run-dir", str(run_dir), "--device", "cpu"]
    assert pipeline.main(args) == 0
    grids = profiles.load("smoke")["attributions"]["grids"]
    assert len(grids) > 1 and all((run_dir / "figures" / f"01_{g}_grid.png").is_file() for g in grids)
    assert pipeline.main([*args, "--set", "attributions.grids=[ig]"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [e["name"] for e in summary["_figures"]] == ["01_ig_grid"]
    assert summary["_overrides"] == {"01_draw": {"attributions": {"grids": ["ig"]}}}
    md = (run_dir / "REPORT.md").read_text()
    assert "01_ig_grid" in md and not any(f"01_{g}_grid" in md for g in grids if g != "ig")
    assert '01_draw: overrides {"attributions": {"grids": ["ig"]}}' in md
    assert (run_dir / "REPORT.html").read_text().count("data:image/png;base64,") == 1
    assert (run_dir / "figures" / f"01_{grids[1]}_grid.png").is_file()  # on disk from run 1, but not shown


@pytest.mark.slow
def test_second_pipeline_on_a_busy_run_dir_is_refused_and_a_killed_ones_lock_is_taken_over(tmp_path, books):
    tiny_notebook(books / "01_a.ipynb", step("01_a"))
    tiny_notebook(books / "02_slow.ipynb", step("02_slow"))
    run_dir = tmp_path / "run"
    args = ["--profile", "smoke", "--run-dir", str(run_dir), "--device", "cpu"]
    first = subprocess_pipeline(books, args, TINY_SLEEP="60")
    try:
        wait_for(lambda: (run_dir / "notebooks" / "02_slow.partial.ipynb").is_file())
        good = (run_dir / "notebooks" / "01_a.ipynb").read_bytes()
        second = subprocess_pipeline(books, args)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 1, out + err
        assert err.strip().count("\n") == 0 and "in use by another pipeline (pid" in err, err
        assert (run_dir / "notebooks" / "01_a.ipynb").read_bytes() == good
    finally:
        first.kill()
        first.communicate()
    said = []
    pipeline.run("smoke", device="cpu", run_dir=run_dir, log=lambda *a, **k: said.append(a[0]))
    assert any("ended without releasing it" in s and f"pid {first.pid}" in s for s in said)
    assert (run_dir / "02_slow.txt").read_text() == "done"


# ---------------------------------------------------------------- 4. prerequisites, failures, Ctrl-C

def test_every_missing_prerequisite_is_listed_in_one_message_before_any_work(tmp_path):
    over = {"fid": {"weights": str(tmp_path / "no_inception.pth")},
            "models": {"robust": {"source": "madrylab", "path": str(tmp_path / "no.pt"), "arch": "resnet50_cifar"}}}
    prof = profiles.load("cifar10", over)
    books = [p.stem for p in pipeline.notebooks()]
    problems = preflight.prerequisites(prof, books, tmp_path / "data", tmp_path / "run")
    assert len(problems) == 3, problems
    assert "CIFAR-10 not found" in problems[0] and str(tmp_path / "data") in problems[0]
    assert "notebooks 04 and 06 need the FID Inception weights" in problems[1] and "no_inception.pth" in problems[1]
    assert "model 'robust'" in problems[2] and "no.pt not found" in problems[2]
    assert preflight.prerequisites(prof, ["02_attributions"], tmp_path / "data", None) == problems[:1] + problems[2:]
    with pytest.raises(pipeline.MissingPrerequisites, match="3 prerequisites are missing, so no notebook was started"):
        pipeline.run("cifar10", data_root=tmp_path / "data", run_dir=tmp_path / "run", overrides=over, log=QUIET)
    assert not (tmp_path / "run").exists()


def test_notebooks_after_01_need_its_trained_models(tmp_path):
    prof = profiles.load("smoke")
    problems = preflight.prerequisites(prof, ["02_attributions", "03_alignment_theory"], paths.DATA_DIR, tmp_path)
    assert len(problems) == 1 and "run notebook 01 first" in problems[0] and "standard" in problems[0]
    assert preflight.prerequisites(prof, ["01_training", "02_attributions"], paths.DATA_DIR, tmp_path) == []


def test_imagenet_cache_needs_free_disk(tmp_path, monkeypatch):
    synthetic.imagenet(tmp_path, per_class=2, n_classes=150, size=(8, 8))
    prof = synthetic.tiny_profile("imagenet150", {"image_size": 16, "train_per_class": 1, "val_per_class": 1})
    prof["name"] = "tiny_imagenet"
    assert preflight.prerequisites(prof, ["01_training"], tmp_path, tmp_path / "run") == []
    need = 150 * 4 * 3 * 16 * 16  # train + val + test images, each 3x16x16 bytes, none cached yet

    class Usage:
        free = need - 1

    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda p: Usage)
    problems = preflight.prerequisites(prof, ["01_training"], tmp_path, tmp_path / "run")
    assert len(problems) == 1 and f"needs {need / 1e9:.1f} GB" in problems[0] and "free some space" in problems[0]
    (tmp_path / "imagenet150" / "classes.txt").unlink()
    assert "classes.txt not found" in preflight.prerequisites(prof, ["01_training"], tmp_path)[0]


@pytest.mark.slow
def test_a_failed_notebook_keeps_the_last_good_copy_and_leaves_a_partial_report(tmp_path, books, monkeypatch):
    for name in ("01_a", "02_b", "03_c"):
        tiny_notebook(books / f"{name}.ipynb", step(name))
    run_dir = tmp_path / "run"
    pipeline.run("smoke", device="cpu", run_dir=run_dir, log=QUIET)
    good = (run_dir / "notebooks" / "02_b.ipynb").read_bytes()
    monkeypatch.setenv("TINY_FAIL", "1")
    with pytest.raises(pipeline.NotebookFailed, match=r"01_a.ipynb failed in cell \d.*deliberate failure. Failed "
                                                      r"copy: .*01_a.failed.ipynb; the last good executed copy stays"):
        pipeline.run("smoke", device="cpu", run_dir=run_dir, only=["01", "02"], log=QUIET)
    assert (run_dir / "notebooks" / "02_b.ipynb").read_bytes() == good
    assert (run_dir / "notebooks" / "01_a.ipynb").is_file() and (run_dir / "notebooks" / "01_a.failed.ipynb").is_file()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["_not_run"]["01_a"].startswith("failed: AssertionError: deliberate failure")
    assert summary["_not_run"]["02_b"] == "not run: 01_a stopped the run before it"
    assert set(summary["_timings_s"]) == {"03_c"}  # finished earlier, untouched by this run
    assert "01_a: **not run**: failed" in (run_dir / "REPORT.md").read_text()
    monkeypatch.delenv("TINY_FAIL")
    monkeypatch.setattr(preflight, "prerequisites", lambda *a: [])  # the tiny notebooks need no trained models
    pipeline.run("smoke", device="cpu", run_dir=run_dir, only=["03"], log=QUIET)  # 01 still failed last time
    assert json.loads((run_dir / "summary.json").read_text())["_not_run"]["01_a"].endswith("(its last run)")
    pipeline.run("smoke", device="cpu", run_dir=run_dir, only=["01"], log=QUIET)
    assert "01_a" not in json.loads((run_dir / "summary.json").read_text())["_not_run"]
    assert not (run_dir / "notebooks" / "01_a.failed.ipynb").exists()


@pytest.mark.slow
def test_ctrl_c_prints_one_line_keeps_the_good_copy_and_no_kernel_warning(tmp_path, books):
    tiny_notebook(books / "01_a.ipynb", step("01_a"))
    run_dir = tmp_path / "run"
    args = ["--profile", "smoke", "--run-dir", str(run_dir), "--device", "cpu"]
    done = subprocess_pipeline(books, args)
    out, err = done.communicate(timeout=120)
    assert done.returncode == 0, err
    assert "without encryption" not in out + err, out + err
    assert "cell 1/1: import os, time" in out, out
    good = (run_dir / "notebooks" / "01_a.ipynb").read_bytes()
    proc = subprocess_pipeline(books, args, TINY_SLEEP="60")
    # inside the sleeping cell (it writes the marker just before it sleeps), whatever the kernel's start-up time
    wait_for(lambda: (run_dir / "01_a.sleeping").is_file())
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("pipeline interrupted during 01_a"), err
    assert "rerun the same command to resume" in lines[0] and "Traceback" not in out + err
    assert (run_dir / "notebooks" / "01_a.ipynb").read_bytes() == good
    assert (run_dir / "notebooks" / "01_a.failed.ipynb").is_file()
    assert json.loads((run_dir / "summary.json").read_text())["_not_run"]["01_a"] == "interrupted (Ctrl-C)"


# ---------------------------------------------------------------- 5. files a person can use

@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_respect_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = results.write_json(tmp_path / "x.json", {"a": 1})
        fd, tmp = results.temp_beside(tmp_path / "y.bin")
        os.close(fd)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert os.stat(tmp).st_mode & 0o777 == 0o666 & ~umask
