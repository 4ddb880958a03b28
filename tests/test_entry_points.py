"""Command-line entry points: a user error is one sentence on stderr and a non-zero exit, never a traceback."""

import subprocess
import sys

import pytest

from lib import figures, paths, report, train


def _one_sentence(capsys, prefix):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(prefix) and "Traceback" not in err
    return err


def test_figures_without_saved_data(tmp_path, capsys):
    assert figures.main(["--profile", "smoke", "--run-dir", str(tmp_path / "run"), "--fig-dir", str(tmp_path)]) == 1
    assert "no saved figure data" in _one_sentence(capsys, "figures: ")


def test_report_without_or_with_a_corrupt_summary(tmp_path, capsys):
    args = ["--profile", "smoke", "--run-dir", str(tmp_path), "--fig-dir", str(tmp_path / "f")]
    assert report.main(args) == 1
    assert "summary.json is missing: run the pipeline first" in _one_sentence(capsys, "report: ")
    (tmp_path / "summary.json").write_text('{"01_training": ')
    assert report.main(args) == 1
    assert "summary.json is not valid JSON" in _one_sentence(capsys, "report: ")
    assert (tmp_path / "summary.json").read_text() == '{"01_training": '  # left as it was


def test_unknown_profile_in_every_entry_point(capsys):
    for main, prefix in ((figures.main, "figures: "), (report.main, "report: ")):
        assert main(["--profile", "nope"]) == 1
        assert "known profiles:" in _one_sentence(capsys, prefix)
    assert train.main(["--profile", "nope", "--model", "robust"]) == 1
    assert "known profiles:" in _one_sentence(capsys, "train: ")


def test_train_with_an_unknown_model_or_a_corrupt_checkpoint(tmp_path, capsys):
    assert train.main(["--profile", "smoke", "--model", "nope", "--run-dir", str(tmp_path)]) == 1
    assert "has no model 'nope'" in _one_sentence(capsys, "train: ")
    from lib import checkpoints, profiles

    prof = profiles.load("smoke")
    folder = profiles.model_dir(tmp_path, prof, "standard")
    folder.mkdir(parents=True)
    (folder / checkpoints.META_FILE).write_text("{}")
    (folder / checkpoints.MODEL_FILE).write_bytes(b"not weights")
    assert train.main(["--profile", "smoke", "--model", "standard", "--run-dir", str(tmp_path)]) == 1
    assert "delete the folder and retrain" in _one_sentence(capsys, "train: ")
    assert (folder / checkpoints.MODEL_FILE).read_bytes() == b"not weights"


@pytest.mark.parametrize("module", ["lib.figures", "lib.report", "lib.train"])
def test_python_dash_m_prints_no_traceback(module, tmp_path):
    extra = ["--model", "robust"] if module == "lib.train" else []
    r = subprocess.run([sys.executable, "-m", module, "--profile", "nope", *extra], cwd=paths.ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
