import json

import pytest

from uad.artifacts import ArtifactError
from uad.metrics import FIT, QUALITY, SCORING, fit_path, perf_path, quality_path
from uad.report import write_report

from .conftest import tiny_config


def test_report_tables_and_means_keyed_by_method(tmp_path):
    cfg = tiny_config(categories=["a", "b"])
    values = {"a": 0.9, "b": 0.7}
    for cat, v in values.items():
        quality_path("cfa", cat, tmp_path).parent.mkdir(parents=True, exist_ok=True)
        quality_path("cfa", cat, tmp_path).write_text(json.dumps({m.key: v for m in QUALITY} | {"pixel_f1": v / 2}))
        perf_path("cfa", cat, tmp_path).write_text(json.dumps({m.key: 10 * v for m in SCORING}
                                                              | {"device": "cpu (2 threads)"}))
        fit_path("cfa", cat, tmp_path).write_text(json.dumps({m.key: 10 * v for m in FIT}))
    summary = write_report(cfg, tmp_path, tmp_path / "summary.json", tmp_path / "results.md")
    assert list(summary) == ["cfa"]  # a method switch shows two methods in `dvc metrics diff`, not a change
    assert summary["cfa"]["image_auroc"] == pytest.approx(0.8) and summary["cfa"]["pixel_f1"] == pytest.approx(0.4)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    md = (tmp_path / "results.md").read_text()
    assert "| Metric | a | b | Avg |" in md
    assert "| Image AUROC | 0.900 | 0.700 | **0.800** |" in md
    assert "| AUPRO (FPR <= 0.3) |" in md and "cpu (2 threads)" in md
    assert "| Good images flagged at the image threshold |" in md
    assert "every 4th training image held out of the fit" in md


def test_report_names_the_missing_category(tmp_path):
    with pytest.raises(ArtifactError, match=r"weave\.json: missing; run the evaluate@weave stage"):
        write_report(tiny_config(), tmp_path, tmp_path / "s.json", tmp_path / "r.md")
