"""The reproduction report: verdicts from JSON, and a page that renders with its images in Chromium."""

import json
import shutil
import subprocess

import matplotlib.pyplot as plt
import pytest

from lib import profiles, report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _summary(**over):
    s = {"01_training": {"models": {"standard": {"clean_acc": 93.0, "pgd_acc": 1.0},
                                    "robust": {"clean_acc": 84.0, "pgd_acc": 50.0}}},
         "02_attributions": {"gini": {"standard": 0.4, "robust": 0.6}},
         "03_alignment": {"spearman": {"pgd": 0.9, "gradnorm": -0.5}},
         "06_fid": {"fd_name": "FID", "fd": {"real": 5.3, "standard": 150.0, "robust": 120.0}},
         "_timings_s": {"01_training": 12.0}, "_environment": {"device": "cpu"}}
    s.update(over)
    return s


def _by_claim(rows):
    return {r.claim: r for r in rows}


def test_verdicts_against_paper_values_and_directions():
    paper = profiles.load("cifar10")["paper"]
    rows = _by_claim(report.claims(_summary(), paper))
    assert rows["standard clean accuracy (%)"].verdict == "holds"          # 93.0 vs 93.2, ±3
    assert rows["robust PGD accuracy (%)"].verdict == "differs"            # 50.0 vs 64.6, ±5
    assert rows["FID real"].verdict == "holds" and rows["FID robust"].verdict == "differs"  # 120 vs 88.25, ±15 %
    assert rows["alignment rises with robustness (pgd sweep)"].verdict == "holds"
    assert rows["alignment rises with robustness (gradnorm sweep)"].verdict == "differs"
    assert rows["robust gradients align with the boundary normal"].verdict == "not measured"
    assert rows["robust attributions are more concentrated (Gini of abs IG)"].verdict == "holds"


def test_default_profile_has_only_qualitative_rows():
    rows = report.claims(_summary(), profiles.load("default").get("paper"))
    assert all(r.tolerance == "sign" for r in rows)


def _write(tmp_path):
    run_dir, fig_dir = tmp_path / "run", tmp_path / "fig"
    run_dir.mkdir()
    fig_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps(_summary()))
    for name in ("01_a", "02_b"):
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [1, 0])
        fig.savefig(fig_dir / f"{name}.png")
        plt.close(fig)
    return report.write(run_dir, fig_dir, profiles.load("smoke"))


def test_report_files_list_every_figure_and_embed_them(tmp_path):
    md, page = _write(tmp_path)
    text = md.read_text()
    assert "01_a" in text and "02_b" in text and "| 01_training | 12 |" in text
    assert page.read_text().count("data:image/png;base64,") == 2


def test_missing_summary_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="make reproduce"):
        report.write(tmp_path, tmp_path, profiles.load("smoke"))


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it as root)")
def test_report_renders_with_its_images_in_headless_chromium(tmp_path):
    _, page = _write(tmp_path)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-quic", f"--user-data-dir={tmp_path / 'profile'}",
             "--virtual-time-budget=5000"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert 'data-images-loaded="2/2"' in dom.stdout, dom.stderr[-2000:]
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1200,900", page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000
