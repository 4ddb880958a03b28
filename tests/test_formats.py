"""The whole pipeline (every notebook, through papermill) on generated data in each real on-disk format:
CIFAR-10 pickled batches and ImageNet-150 class folders of JPEGs plus classes.txt."""

import json

import nbformat
import pytest

from conftest import write_profile
from lib import pipeline, synthetic

pytestmark = pytest.mark.slow


def _run(tmp_path, prof):
    path = write_profile(prof, tmp_path / f"{prof['dataset']}_format.yaml")
    run_dir = tmp_path / "run"
    summary = pipeline.run(str(path), device="cpu", run_dir=run_dir, fig_dir=tmp_path / "figures",
                           data_root=tmp_path / "data", log=lambda *a, **k: None)
    assert set(summary) == {p.stem for p in (run_dir / "metrics").glob("*.json")}
    assert len(summary) == len(pipeline.notebooks())
    for key in ("standard", "robust"):
        m = summary["01_training"]["units"][f"{key}@0"]
        assert 0 <= m["pgd_acc"] <= m["clean_acc"] <= 100
    for nb_path in (run_dir / "notebooks").glob("*.ipynb"):
        nb = nbformat.read(nb_path, as_version=4)
        for cell in nb.cells:
            for out in cell.get("outputs", []):
                assert out.get("output_type") != "error", nb_path.name
                text = out.get("text", "") if out.get("output_type") == "stream" else ""
                assert "\r" not in text and text.count("\n") <= 20, f"progress output in {nb_path.name}: {text[:300]}"
    return summary


def test_pipeline_on_cifar10_format_files(tmp_path):
    _, md5 = synthetic.cifar(tmp_path / "data", n=60, learnable=True)
    summary = _run(tmp_path, synthetic.tiny_profile("cifar10", {"checksums": md5}))
    assert json.dumps(summary)


def test_pipeline_on_imagenet150_format_folders(tmp_path):
    synthetic.imagenet(tmp_path / "data", per_class=5, val_per_class=2, size=(20, 24), learnable=True)
    prof = synthetic.tiny_profile("imagenet150", {"image_size": 16, "train_per_class": 4, "val_per_class": 1})
    prof["visualize"]["generation"]["per_class"] = 1
    summary = _run(tmp_path, prof)
    assert json.dumps(summary)
