"""The reproduction report renders lib.claims' rows: files list every figure, the page renders in Chromium."""

import json
import shutil
import subprocess

import matplotlib.pyplot as plt
import pytest
from test_claims import summary_for

from lib import claims, profiles, report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _write(tmp_path):
    run_dir, fig_dir = tmp_path / "run", tmp_path / "fig"
    run_dir.mkdir()
    fig_dir.mkdir()
    prof = profiles.load("smoke")
    summary = summary_for(prof)
    summary["01_training"]["units"] = {"robust@0": {"model": "robust", "best_epoch": 4}}
    summary.update({"_timings_s": {"01_training": 12.0}, "_environment": {"device": "cpu"},
                    "_figures": [{"name": n, "notebook": n[:2], "path": str(fig_dir / f"{n}.png")}
                                 for n in ("01_accuracy", "02_b")],
                    "_overrides": {"01_training": {}, "02_attributions": {"attributions": {"grids": ["ig"]}}},
                    "_not_run": {"06_fid": "failed: RuntimeError: boom"}})
    (run_dir / "summary.json").write_text(json.dumps(summary))
    for name in ("01_accuracy", "02_b", "02_stale"):  # 02_stale: left by an earlier run, not in the manifest
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [1, 0])
        fig.savefig(fig_dir / f"{name}.png")
        plt.close(fig)
    return report.write(run_dir, fig_dir, prof), summary, prof


def test_report_shows_conditions_every_claim_with_n_p_and_figures_under_their_claim(tmp_path):
    (md, page), summary, prof = _write(tmp_path)
    text = md.read_text()
    assert "| 01_training | 12 |" in text and "## Conditions" in text and "robust@0 4" in text
    for row in claims.evaluate(summary, prof) + claims.checks(summary, prof):
        assert row.claim.replace("|", "\\|") in text
        assert row.claim in page.read_text().replace("&#x27;", "'")
        if row.trend and row.verdict != "not measured":
            per = "draws" if row.id.startswith("fd") else "img"  # FD: one value per draw of generated images
            assert f"{row.n['images']} {per} · {row.n['seeds']} seeds · {row.n['models']} models" in text
            assert claims._fmt(row.p_holm, 4) in text
    rob = next(r for r in claims.evaluate(summary, prof) if r.id == "accuracy.robust")
    section = text[text.index("## Figures"):]
    assert section.index(rob.claim) < section.index("01_accuracy") < section.index("Other figures") \
        < section.index("02_b")
    assert "## Implementation checks" in text and "Clean and PGD test accuracy" in text
    assert page.read_text().count("data:image/png;base64,") == 2 and "02_stale" not in text + page.read_text()


def test_report_shows_the_overrides_and_what_did_not_run(tmp_path):
    (md, page), _, _ = _write(tmp_path)
    text = md.read_text()
    assert '- 02_attributions: overrides {"attributions": {"grids": ["ig"]}}' in text
    assert "- 06_fid: **not run**: failed: RuntimeError: boom" in text and "01_training: overrides" not in text
    assert "<b>not run</b>: failed: RuntimeError: boom" in page.read_text()


def test_figures_come_from_the_manifest_found_in_the_figure_folder_or_where_written(tmp_path):
    (tmp_path / "moved").mkdir()
    (tmp_path / "moved" / "01_a.png").write_bytes(b"png")
    (tmp_path / "02_b.png").write_bytes(b"png")
    summary = {"_figures": [{"name": "01_a", "notebook": "01", "path": str(tmp_path / "gone" / "01_a.png")},
                            {"name": "02_b", "notebook": "02", "path": str(tmp_path / "02_b.png")},
                            {"name": "03_c", "notebook": "03", "path": str(tmp_path / "03_c.png")}]}
    assert report.figures(summary, tmp_path / "moved") == [tmp_path / "moved" / "01_a.png", tmp_path / "02_b.png"]
    assert report.figures({}, tmp_path) == []  # no manifest: nothing is embedded, whatever the folder holds


def test_missing_summary_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="make reproduce"):
        report.write(tmp_path, tmp_path, profiles.load("smoke"))


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it as root)")
def test_report_renders_with_its_images_in_headless_chromium(tmp_path):
    (_, page), _, _ = _write(tmp_path)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-quic",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert 'data-images-loaded="2/2"' in dom.stdout, dom.stderr[-2000:]
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1400,900", page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000
