"""Using a trained model outside the pipeline: `uad predict`, `uad export`, `uad info`."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from uad import methods
from uad.__main__ import main
from uad.data.prepared import load_split
from uad.export import ExportError, check_export, export, run_exported
from uad.methods.base import load
from uad.training import train_category

from .conftest import REPO, tiny_config


@pytest.fixture(scope="module")
def model_dirs(prepared, tmp_path_factory):
    """Every registered method trained on the tiny demo by the train stage's function."""
    out = {}
    for name in methods.names():
        folder = tmp_path_factory.mktemp(f"model_{name}") / "weave"
        train_category(tiny_config(model=name, **{name: {"epochs": 2}} if name in ("cfa", "dfr") else {}),
                       prepared, folder)
        out[name] = folder
    return out


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_scores_raw_images_like_the_pipeline(model_dirs, demo_root, prepared, tmp_path):
    """Predict applies the model's own preprocessing to the original files: its scores equal those of the
    pipeline's prepared test images, and its verdicts use the calibrated image threshold."""
    folder = model_dirs["cfa"]
    rows = read_rows(_predict(folder, [demo_root / "weave" / "test"], tmp_path / "out"))
    test = load_split(prepared, "test")
    model = load(folder)
    expected = dict(zip(test.names, model.score(test.images, 4).image.tolist()))
    assert len(rows) == len(test) and not any(r["error"] for r in rows)
    threshold = float(model.image_threshold)
    for r in rows:
        name = f"{Path(r['image']).parent.name}/{Path(r['image']).stem}"
        assert float(r["score"]) == pytest.approx(expected[name], rel=1e-4)
        assert r["anomalous"] == str(float(r["score"]) > threshold).lower()
        assert (tmp_path / "out" / r["overlay"]).is_file()


def _predict(folder, inputs, out, *extra) -> Path:
    code = main(["predict", str(folder), *map(str, inputs), "--out", str(out), *extra])
    assert code in (0, 1)
    return out / "predictions.csv"


def test_bad_files_get_their_row_and_the_rest_goes_on(model_dirs, demo_root, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = demo_root / "weave" / "test" / "good" / "000.png"
    (inputs / "a,b\nnew line.png").write_bytes(good.read_bytes())  # a hostile name: quoted, never a path
    (inputs / "broken.png").write_bytes(b"not an image")
    wide = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 300, 3), np.uint8))
    wide.save(inputs / "wide.png")  # any size and shape
    Image.fromarray((np.arange(60 * 60, dtype=np.uint16).reshape(60, 60) * 17)).save(inputs / "deep16.png")
    Image.fromarray(np.full((50, 50), 90, np.uint8), mode="L").save(inputs / "grey.png")
    out = tmp_path / "out"
    code = main(["predict", str(model_dirs["dfr"]), str(inputs), str(tmp_path / "missing.png"), "--out", str(out)])
    assert code == 1  # some failed
    rows = {Path(r["image"]).name: r for r in read_rows(out / "predictions.csv")}
    assert set(rows) == {"a,b\nnew line.png", "broken.png", "wide.png", "deep16.png", "grey.png", "missing.png"}
    assert "not a readable image" in rows["broken.png"]["error"] and rows["broken.png"]["score"] == ""
    assert "not found" in rows["missing.png"]["error"]
    for name in ("a,b\nnew line.png", "wide.png", "deep16.png", "grey.png"):
        assert rows[name]["error"] == "" and float(rows[name]["score"]) > 0
    overlay = Image.open(out / rows["wide.png"]["overlay"])
    assert overlay.width >= 300  # at the image's own shape (plus the legend), not squashed
    written = {p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*") if p.is_file()}
    assert written == {"in", "out"}  # nothing outside the output folder
    assert main(["predict", str(model_dirs["dfr"]), str(inputs / "wide.png"), "--out", str(out)]) == 0


def test_threshold_override_and_no_images(model_dirs, demo_root, tmp_path):
    rows = read_rows(_predict(model_dirs["cfa"], [demo_root / "weave" / "test" / "good"], tmp_path / "a",
                              "--threshold", "0", "--no-images"))
    assert rows and all(r["anomalous"] == "true" and r["overlay"] == "" for r in rows)
    assert not (tmp_path / "a" / "overlays").exists()


def test_predict_on_a_missing_model_is_one_line(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nope"), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "model.pt: no trained model" in err and err.count("\n") == 1


def test_the_console_script_and_python_m_are_the_same_command(model_dirs):
    proc = subprocess.run([sys.executable, "-m", "uad", "info", str(model_dirs["cfa"])], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["method"] == "cfa" and info["input"]["size"] == 64 and "image" in info["thresholds"]
    scripts = (REPO / "pyproject.toml").read_text()
    assert 'uad = "uad.__main__:main"' in scripts


@pytest.mark.parametrize("fmt", ["onnx", "torch"])
@pytest.mark.parametrize("name", methods.names())
def test_export_reproduces_the_model(model_dirs, prepared, tmp_path, name, fmt):
    """The exported graph, run by its own runtime (onnxruntime on the CPU), gives the maps within 1e-4 of
    their range and the same verdicts, at any batch size."""
    model = load(model_dirs[name])
    path = export(model, tmp_path / f"m.{'onnx' if fmt == 'onnx' else 'pt2'}", fmt)
    images = np.array(load_split(prepared, "test").images)
    result = check_export(model, path, images)
    assert result["max_map_error_of_range"] < 1e-4 and result["verdicts_agree"]
    maps, scores = run_exported(path, images[:1])  # another batch size than the export's example
    assert maps.shape == (1, 64, 64) and scores.shape == (1,)


def test_check_export_catches_a_wrong_file(model_dirs, prepared, tmp_path):
    cfa, dfr = load(model_dirs["cfa"]), load(model_dirs["dfr"])
    path = export(dfr, tmp_path / "dfr.onnx")
    with pytest.raises(ExportError, match="the export differs from PyTorch"):
        check_export(cfa, path, np.array(load_split(prepared, "test").images[:3]))


def test_export_command_writes_a_checked_file(model_dirs, tmp_path, capsys):
    assert main(["export", str(model_dirs["dfr"]), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    assert "verdicts agree" in capsys.readouterr().err
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    described = json.loads(meta["uad"])
    assert described["method"] == "dfr" and described["input"]["size"] == 64
    assert described["thresholds"]["image"] == pytest.approx(float(load(model_dirs["dfr"]).image_threshold))
    torch.manual_seed(0)


def test_large_models_keep_their_onnx_weights_beside_the_graph(model_dirs, prepared, tmp_path, monkeypatch):
    """Beyond protobuf's 2 GB (PaDiM at the paper's size), the weights go to FILE.data; the pair checks."""
    import uad.export as export_module

    monkeypatch.setattr(export_module, "EXTERNAL_DATA_BYTES", 0)
    model = load(model_dirs["dfr"])
    path = export(model, tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").stat().st_size > path.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert check_export(model, path, np.array(load_split(prepared, "test").images[:4]))["verdicts_agree"]
