import json

import pytest

from uad.report import metrics_path, perf_path, write_report

from .conftest import tiny_config


def test_report_tables_and_means(tmp_path):
    cfg = tiny_config(categories=["a", "b"])
    values = {"a": 0.9, "b": 0.7}
    for cat, v in values.items():
        metrics_path(tmp_path, cat).write_text(json.dumps({
            "image_auroc": v, "pixel_auroc": v, "pixel_f1_max": v, "pixel_f1": v / 2, "aupro": v}))
        perf_path(tmp_path, cat).write_text(json.dumps({
            "fit_seconds": 10 * v, "fit_peak_memory_mb": 100, "score_images_per_s": 50,
            "score_peak_memory_mb": 120, "device": "cpu (2 threads)"}))
    summary = write_report(cfg, tmp_path, tmp_path / "summary.json", tmp_path / "results.md")
    assert summary["mean"]["image_auroc"] == pytest.approx(0.8)
    assert summary["mean"]["pixel_f1"] == pytest.approx(0.4)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    md = (tmp_path / "results.md").read_text()
    assert "| Metric | a | b | Avg |" in md
    assert "| Image AUROC | 0.900 | 0.700 | **0.800** |" in md
    assert "| AUPRO (FPR <= 0.3) |" in md and "cpu (2 threads)" in md


def test_report_names_the_missing_category(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"weave\.json: missing; run the evaluate@weave stage"):
        write_report(tiny_config(), tmp_path, tmp_path / "s.json", tmp_path / "r.md")
