"""The project stands on its own: its docs exist, are linked, and nothing points outside the repository."""

import json
import re
import subprocess
from pathlib import Path

import pytest

from lib import pipeline

ROOT = Path(__file__).resolve().parent.parent
SCIENCE = "docs/science.md"
OUTSIDE = ("../shared", "shared/papers", "shared/seeds", "seeds/00", "/work/")  # the builders' checkout, not a user's
LINK = re.compile(r"\]\(([^)\s]+)\)")


def tracked_text_files():
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for rel in out:
        path = ROOT / rel
        if rel.startswith("tests/") or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" not in data[:8192]:  # text only
            yield rel, data.decode("utf-8", errors="replace")


def first_markdown(nb: Path) -> str:
    cells = json.loads(nb.read_text())["cells"]
    return "".join(next(c for c in cells if c["cell_type"] == "markdown")["source"])


def test_no_tracked_file_refers_to_a_path_outside_the_repository():
    bad = [f"{rel}: {s}" for rel, text in tracked_text_files() for s in OUTSIDE if s in text]
    assert not bad, "these files point outside the repository (a user's clone has no such path):\n" + "\n".join(bad)


def test_science_doc_exists_and_covers_the_three_papers():
    text = (ROOT / SCIENCE).read_text()
    for needle in ("Boychev", "Etmann", "Wang", "where robinterp deviates", "ρ̃(x) = min", "FID ="):
        assert needle.lower() in text.lower(), needle


def test_readme_and_every_notebook_link_the_science_doc():
    assert f"]({SCIENCE})" in (ROOT / "README.md").read_text()
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    for nb in notebooks:
        assert f"](../{SCIENCE})" in first_markdown(nb), f"{nb.name}: its first markdown cell must link {SCIENCE}"


@pytest.mark.parametrize("doc", ["README.md", "ARCHITECTURE.md", SCIENCE, "benchmarks/README.md",
                                 *[f"notebooks/{p.name}" for p in sorted((ROOT / "notebooks").glob("*.ipynb"))]])
def test_relative_links_resolve_inside_the_repository(doc):
    path = ROOT / doc
    text = path.read_text()
    if path.suffix == ".ipynb":
        text = "".join("".join(c["source"]) for c in json.loads(text)["cells"] if c["cell_type"] == "markdown")
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an anchor
        resolved = (path.parent / target.split("#")[0]).resolve()
        assert resolved.is_relative_to(ROOT) and resolved.exists(), f"{doc}: broken link {target}"


def test_seed_option_says_what_it_changes(capsys):
    with pytest.raises(SystemExit):
        pipeline.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    seed = text[text.index("--seed SEED", text.index("options")):]
    assert "image draws" in seed and "training uses the profile's seed" in seed
