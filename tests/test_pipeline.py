"""The stage functions as the pipeline calls them, without DVC."""

import json
import subprocess
import sys

import numpy as np
import pytest

from uad import methods
from uad.evaluation import evaluate_category
from uad.metrics import QUALITY
from uad.render import render_category
from uad.training import train_category

from .conftest import REPO, tiny_config


def run(cfg, prepared, root):
    train_category(cfg, prepared, root / "models", root / "dvclive", fit_metrics=root / "metrics" / "weave.fit.json")
    return evaluate_category(cfg, "weave", prepared=prepared, model_dir=root / "models",
                             scores_dir=root / "scores", metrics_path=root / "metrics" / "weave.json",
                             perf_path=root / "metrics" / "weave.perf.json")


@pytest.mark.parametrize("model", ["cfa", "dfr"])
def test_train_evaluate_render_outputs(prepared, tmp_path, model):
    cfg = tiny_config(model=model, dfr={"epochs": 3}, cfa={"epochs": 2})
    result = run(cfg, prepared, tmp_path)
    assert list(result) == [m.key for m in QUALITY]
    assert all(0 <= v <= 1 for v in result.values())
    perf = json.loads((tmp_path / "metrics" / "weave.perf.json").read_text())
    fit = json.loads((tmp_path / "metrics" / "weave.fit.json").read_text())
    assert perf["score_images_per_s"] > 0 and fit["fit_seconds"] > 0 and perf["device"].startswith("cpu")
    assert "fit_seconds" not in (tmp_path / "models" / "model.json").read_text()  # timings stay out of models
    curves = json.loads((tmp_path / "scores" / "curves.json").read_text())
    assert set(curves) == {"roc_image", "roc_pixel", "pr_pixel"} and all(curves.values())
    maps = np.load(tmp_path / "scores" / "maps.npy")
    assert maps.shape == (12, 64, 64) and maps.dtype == np.float32
    live = json.loads((tmp_path / "dvclive" / "metrics.json").read_text())
    assert live["step"] == cfg.method().epochs - 1 and live["loss"] > 0
    curve = json.loads((tmp_path / "models" / "loss.json").read_text())
    assert [r["step"] for r in curve] == list(range(cfg.method().epochs)) and curve[-1]["loss"] == pytest.approx(
        live["loss"], rel=1e-5)
    frames = render_category("weave", prepared=prepared, scores_dir=tmp_path / "scores",
                             model_dir=tmp_path / "models", out=tmp_path / "w.gif", frame_ms=100, max_frames=5)
    assert frames == 5 and (tmp_path / "w.gif").stat().st_size > 0


@pytest.mark.parametrize("model", ["cfa", "dfr"])
def test_same_params_same_metrics_file(prepared, tmp_path, model):
    cfg = tiny_config(model=model, dfr={"epochs": 2}, cfa={"epochs": 2})
    run(cfg, prepared, tmp_path / "a")
    run(cfg, prepared, tmp_path / "b")
    assert (tmp_path / "a" / "metrics" / "weave.json").read_bytes() == \
        (tmp_path / "b" / "metrics" / "weave.json").read_bytes()


BAD_PARAMS = [
    ("model: knn\n", f"error: params.yaml: model: 'knn' is not valid; choose one of {list(methods.names())}"),
    ("device: tpu\n", "device: 'tpu' is not valid"),
    ("dataset: kitti\n", "dataset: 'kitti' is not valid; choose one of ['demo', 'mvtec_ad', 'mtd', 'folder']"),
]


# download reads no method section (the validate stage before it checks them all)
@pytest.mark.parametrize("stage, params, message", [
    *[("validate", p, m) for p, m in BAD_PARAMS], *[("download", p, m) for p, m in BAD_PARAMS],
    ("validate", "dfr:\n  backbone: alexnet\n", "dfr.backbone: 'alexnet' is not supported; choose one of"),
])
def test_stage_fails_before_any_work_with_the_choices(tmp_path, stage, params, message):
    (tmp_path / "params.yaml").write_text(params)
    proc = subprocess.run([sys.executable, str(REPO / "stages" / f"{stage}.py"), "out"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_demo_rejects_unknown_category(tmp_path):
    (tmp_path / "params.yaml").write_text("categories: [marble]\n")
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "download.py"), "out"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "demo dataset has no category 'marble'" in proc.stderr
    assert not (tmp_path / "out").exists()
