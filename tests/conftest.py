"""Shared fixtures: a tiny demo dataset, prepared once per session, and a tiny config."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from uad.config import Config, config_from_dict, merged
from uad.preset import defaults, read_preset
from uad.data.demo import generate_category
from uad.data.prepared import prepare_category

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TINY = dict(image_size=64, n_train=8, n_test_good=4, n_test_defect=8, seed=7)


def committed_params() -> str:
    """params.yaml as git's index holds it: what a fresh clone has (plus staged edits), never what
    `dvc exp run -S ...` or a preset did to the working copy."""
    proc = subprocess.run(["git", "show", ":params.yaml"], cwd=REPO, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else (REPO / "params.yaml").read_text()


TINY_PARAMS = {"image_size": 64, "device": "cpu", "categories": ["weave"],
               "dfr": {"epochs": 2, "lr": 0.001, "pca_images": 4}, "calibrate": {"holdout": 0.25}}


def tiny_config(**overrides) -> Config:
    """A config small enough for CPU unit tests: the lite0 preset (offline weights), 64 px, few epochs."""
    params = merged(merged(defaults(), read_preset("lite0")), TINY_PARAMS)
    return config_from_dict(merged(params, overrides))


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    for category in ("weave", "washer"):
        generate_category(root, category, **TINY)
    return root


@pytest.fixture(scope="session")
def prepared(demo_root, tmp_path_factory) -> Path:
    """data/prepared/weave of the tiny demo at 64 px."""
    dst = tmp_path_factory.mktemp("prepared") / "weave"
    prepare_category(demo_root / "weave", dst, image_size=64)
    return dst
