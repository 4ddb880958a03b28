"""Shared fixtures: a tiny trained model and one smoke run of the whole pipeline."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lib import profiles, train

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_FIXTURES = {"smoke_run"}  # fixtures that execute notebooks: their users are slow by definition


def pytest_collection_modifyitems(items):
    """`make test-fast` (-m "not slow") must run no notebook: mark every test that needs one."""
    for item in items:
        if NOTEBOOK_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def tiny_profile(**train_overrides) -> dict:
    """The smoke profile with a shorter schedule; tests write it to YAML when a subprocess needs it."""
    prof = copy.deepcopy(profiles.load("smoke"))
    prof["train"].update(train_overrides)
    return prof


def write_profile(prof: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(prof))
    return path


@pytest.fixture(scope="session")
def digits_models(tmp_path_factory):
    """A standard and a PGD-trained small_cnn on digits (seconds on CPU)."""
    run_dir = tmp_path_factory.mktemp("digits_models")
    prof = tiny_profile()
    return {k: train.get_model(prof, k, run_dir, device="cpu", progress=False) for k in ("standard", "robust")}


@pytest.fixture(scope="session")
def digits_batch():
    from lib import data

    ds = data.load("digits", "test")
    x, y = ds.batch(torch.arange(64))
    return x, y


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """Run every numbered notebook at `smoke` once; returns the run folder (summary.json inside)."""
    from lib import pipeline

    base = tmp_path_factory.mktemp("smoke_pipeline")
    run_dir, fig_dir = base / "run", base / "figures"
    pipeline.run("smoke", device="cpu", run_dir=run_dir, fig_dir=fig_dir,
                 log=lambda *a, **k: print(*a, file=sys.stderr))
    return run_dir
