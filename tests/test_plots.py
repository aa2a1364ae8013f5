"""The charts: plot data that name method, dataset and AUROC, a log-axis pixel ROC, a loss panel per
method, PNGs of the same specs, and a DVC page template that draws with no network."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from uad.artifacts import ArtifactError
from uad.metrics import quality_path
from uad.plots import (BY_NAME, CHARTS, PAGE_TEMPLATE, PLACEHOLDERS, TEMPLATES_DIR, chart_spec, main, page_template,
                       plot_data, render_png, write_plots, write_pngs, write_template)

from .conftest import REPO, tiny_config

CATEGORIES = ["weave", "washer"]
AUROC = {"cfa": {"weave": (0.9, 0.95), "washer": (0.8, 0.85)}, "dfr": {"weave": (0.7, 0.75), "washer": (0.6, 0.65)}}
CHROMIUM = Path("/usr/bin/chromium")


def make_run(root: Path, model: str, loss_scale: float) -> None:
    """What evaluate and train leave for `model`: metrics, curves (with FPR 0 points) and losses."""
    for cat in CATEGORIES:
        image_auroc, pixel_auroc = AUROC[model][cat]
        quality_path(model, cat, root / "metrics").parent.mkdir(parents=True, exist_ok=True)
        quality_path(model, cat, root / "metrics").write_text(json.dumps(
            {"image_auroc": image_auroc, "pixel_auroc": pixel_auroc, "aupro": 0.5}))
        fprs = [0.0, 0.0, 1e-4, 1e-3, 0.01, 0.1, 0.5, 1.0]
        roc = [{"fpr": f, "tpr": round(min(1.0, 0.2 + f ** 0.3), 6)} for f in fprs]
        pr = [{"recall": r / 10, "precision": round(1 - r / 12, 6)} for r in range(10, -1, -1)]
        (root / "data" / "scores" / cat).mkdir(parents=True, exist_ok=True)
        (root / "data" / "scores" / cat / "curves.json").write_text(json.dumps(
            {"roc_image": roc, "roc_pixel": roc, "pr_pixel": pr}))
        extra = {"loss_attract": 1.0, "loss_repel": 0.0, "radius": 0.1} if model == "cfa" else {}
        losses = [{"step": s, "loss": loss_scale / (s + 1), **extra} for s in range(4)]
        (root / "models" / cat).mkdir(parents=True, exist_ok=True)
        (root / "models" / cat / "loss.json").write_text(json.dumps(losses))


def run_data(root: Path, model: str, loss_scale: float) -> dict[str, list[dict]]:
    make_run(root, model, loss_scale)
    return plot_data(tiny_config(model=model, categories=CATEGORIES), root / "metrics", root / "data" / "scores",
                     root / "models")


def test_plot_data_name_method_dataset_and_auroc(tmp_path):
    data = run_data(tmp_path, "cfa", 1e4)
    assert set(data) == {c.name for c in CHARTS}
    for name, records in data.items():
        assert {r["category"] for r in records} == set(CATEGORIES)
        assert all(r["method"] == "CFA" and r["dataset"] == "demo" and r["run"] == "CFA on demo" for r in records)
    labels = {name: {r["category"]: r["label"] for r in records} for name, records in data.items()}
    assert labels["roc_image"] == {"weave": "weave (AUROC 0.900)", "washer": "washer (AUROC 0.800)"}
    assert labels["roc_pixel"] == labels["pr_pixel"] == {"weave": "weave (AUROC 0.950)",
                                                         "washer": "washer (AUROC 0.850)"}
    assert labels["loss"] == {"weave": "weave", "washer": "washer"}
    assert {"loss_attract", "radius"} <= set(data["loss"][0])  # the method's own loss terms stay in the tooltip


def test_pixel_roc_has_no_point_a_log_axis_cannot_place(tmp_path):
    data = run_data(tmp_path, "cfa", 1e4)
    assert data["roc_pixel"] and all(p["fpr"] > 0 for p in data["roc_pixel"])
    assert len(data["roc_pixel"]) == 2 * 6  # only the two FPR-0 points of each curve went
    assert any(p["fpr"] == 0 for p in data["roc_image"])  # a linear axis keeps them
    assert [c.name for c in CHARTS if c.log_x] == ["roc_pixel"]
    spec = chart_spec(BY_NAME["roc_pixel"], data["roc_pixel"])
    assert spec["spec"]["encoding"]["x"]["scale"]["type"] == "log"
    assert spec["spec"]["encoding"]["x"]["title"] == "False positive rate (log)"


def test_write_plots_writes_each_chart_and_names_a_missing_input(tmp_path):
    make_run(tmp_path, "cfa", 1e4)
    cfg = tiny_config(categories=CATEGORIES)
    data = write_plots(cfg, tmp_path / "metrics", tmp_path / "data" / "scores", tmp_path / "models", tmp_path / "plots")
    for chart in CHARTS:
        assert json.loads((tmp_path / "plots" / f"{chart.name}.json").read_text()) == data[chart.name]
    (tmp_path / "metrics" / "cfa" / "washer.json").unlink()
    with pytest.raises(ArtifactError, match=r"washer\.json: missing; run the evaluate@washer stage"):
        write_plots(cfg, tmp_path / "metrics", tmp_path / "data" / "scores", tmp_path / "models", tmp_path / "p2")


def diff_records(tmp_path: Path) -> list[dict]:
    """The loss records of a CFA and a DFR revision, tagged with `rev` as `dvc plots diff` does."""
    cfa = run_data(tmp_path / "cfa", "cfa", 1e4)["loss"]
    dfr = run_data(tmp_path / "dfr", "dfr", 1.0)["loss"]
    return [{**r, "rev": "main"} for r in cfa] + [{**r, "rev": "exp-dfr"} for r in dfr]


def test_loss_of_two_methods_gets_a_panel_and_a_y_axis_each(tmp_path):
    import vl_convert

    spec = chart_spec(BY_NAME["loss"], diff_records(tmp_path))
    assert spec["facet"]["column"]["field"] == "run" and spec["resolve"]["scale"]["y"] == "independent"
    svg = vl_convert.vegalite_to_svg(spec, allowed_base_urls=[])
    assert ">CFA on demo<" in svg and ">DFR on demo<" in svg
    assert svg.count(">Training loss<") == 2  # a shared y axis would be drawn once, DFR flat at the bottom
    assert ">Epoch<" in svg and ">Training loss per epoch<" in svg and ">exp-dfr<" in svg


def test_dvc_yaml_draws_the_charts_and_the_report_stage_declares_them():
    doc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert doc["plots"] == [c.dvc_entry() for c in CHARTS]
    report = doc["stages"]["report"]
    outs = {next(iter(o)): o[next(iter(o))] for o in report["outs"] if isinstance(o, dict)}
    for chart in CHARTS:
        assert outs[f"plots/{chart.name}.json"] == {"cache": False}
        assert outs[f"reports/{chart.name}.png"] == {"cache": False}  # committed for the README
        assert f"{TEMPLATES_DIR.as_posix()}/{chart.template}.json" in report["deps"]
    config = (REPO / ".dvc" / "config").read_text()
    assert re.search(r"^\[plots\]\n(?:#.*\n|\s+\w+ = .*\n)*?\s+html_template = plots/offline\.html$", config, re.M)
    assert (REPO / ".dvc" / "plots" / "offline.html").relative_to(REPO) == PAGE_TEMPLATE


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_pngs_are_written_readable_and_the_same_for_the_same_data(tmp_path):
    data = run_data(tmp_path, "cfa", 1e4)
    written = write_pngs(data, tmp_path / "reports", REPO / TEMPLATES_DIR)
    assert [p.name for p in written] == [f"{c.name}.png" for c in CHARTS]
    first = {p.name: p.read_bytes() for p in written}
    for name, png in first.items():
        width, height = png_size(png)
        assert 400 <= width <= 1600 and 250 <= height <= 1000, (name, width, height)
        assert 5_000 < len(png) < 400_000
    write_pngs(data, tmp_path / "reports", REPO / TEMPLATES_DIR)
    assert {p.name: p.read_bytes() for p in written} == first


@pytest.fixture(scope="session")
def page() -> str:
    return page_template()


def test_a_missing_vl_convert_is_a_one_line_error(monkeypatch):
    import builtins

    from uad.errors import UadError

    real_import = builtins.__import__

    def no_vl_convert(name, *args, **kwargs):
        if name == "vl_convert":
            raise ModuleNotFoundError("No module named 'vl_convert'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_vl_convert)
    with pytest.raises(UadError, match=r"need vl-convert-python, which is not installed \(pip install"):
        render_png({"mark": "point"})


def test_page_template_bundles_vega_and_loads_nothing(page, tmp_path):
    from dvc_render import render_html
    from dvc_render.vega import VegaRenderer

    assert page.count("{plot_divs}") == 1 and "{refresh_tag}" in page and "{scripts}" not in page
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I)  # every script is inline
    assert "window.vegaEmbed=" in page and "window.vegaLite=" in page and len(page) > 300_000
    scripts = re.findall(r"<script>(.*?)</script>", page, re.S)
    assert len(scripts) == 2 and "window.vegaEmbed = offlineEmbed" in scripts[1]
    assert page.index("window.vegaEmbed=") < page.index("{plot_divs}")  # defined before DVC's divs call it

    template = tmp_path / "offline.html"
    assert main(["template", str(template)]) is None and template.read_text(encoding="utf-8") == page
    assert not write_template(template)  # setup.sh reruns leave it alone
    renderer = VegaRenderer([{"fpr": 0.1, "tpr": 0.5, "label": "weave"}], "plots/roc_image.json",
                            template="curve", template_dir=str(REPO / TEMPLATES_DIR), x="fpr", y="tpr")
    out = render_html([renderer], tmp_path / "html" / "index.html", html_template=template)
    html = Path(out).read_text(encoding="utf-8")
    assert "vegaEmbed('#plots_roc_image_json', spec);" in html and "cdn.jsdelivr" not in html
    assert not re.search(r"<script[^>]*\bsrc\s*=", html, re.I)
    assert all(p not in html for p in PLACEHOLDERS)


def dvc(repo: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def chromium_dom(html: Path, profile: Path) -> str:
    """The page's DOM once its scripts ran, from headless Chromium with every network request refused."""
    proc = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}",
         "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>", "--host-resolver-rules=MAP * ~NOTFOUND",
         "--virtual-time-budget=15000", "--dump-dom", html.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def chart_boxes(dom: str) -> dict[str, str]:
    """Each chart's part of the DOM, from its div to the next chart's."""
    starts = sorted((dom.index(f'id="plots_{c.name}_json"'), c.name) for c in CHARTS)
    ends = [s for s, _ in starts[1:]] + [dom.index("</main>")]
    return {name: dom[start:end] for (start, name), end in zip(starts, ends)}


def check_drawn(dom: str, runs: list[str]) -> dict[str, str]:
    boxes = chart_boxes(dom)
    assert 'class="plot-error"' not in dom, "a chart failed to draw"
    for chart in CHARTS:
        box = boxes[chart.name]
        assert 'class="marks"' in box, f"{chart.name}: no chart drawn"
        for text in (chart.title, chart.x_label, chart.y_label, *runs):
            assert f">{text}<" in box, f"{chart.name}: no {text!r}"
        assert 'class="mark-line' in box and "<path" in box
        if chart.auroc:
            assert re.search(r">weave \(AUROC 0\.\d{3}\)<", box), f"{chart.name}: no AUROC in the legend"
    return boxes


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)")
def test_dvc_plots_show_and_diff_draw_every_chart_offline(page, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for cmd in (["init", "-q"], ["config", "user.name", "t"], ["config", "user.email", "t@t"]):
        subprocess.run(["git", *cmd], cwd=repo, check=True)
    dvc(repo, "init", "-q")
    (repo / TEMPLATES_DIR).mkdir(exist_ok=True)
    for chart in CHARTS:
        shutil.copy(REPO / TEMPLATES_DIR / f"{chart.template}.json", repo / TEMPLATES_DIR / f"{chart.template}.json")
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")  # the project's plots.html_template
    (repo / PAGE_TEMPLATE).write_text(page, encoding="utf-8")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]}))
    for model, scale in (("cfa", 1e4), ("dfr", 1.0)):
        make_run(repo, model, scale)
        write_plots(tiny_config(model=model, categories=CATEGORIES), repo / "metrics", repo / "data" / "scores",
                    repo / "models", repo / "plots")
        if model == "cfa":
            subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
            subprocess.run(["git", "commit", "-qm", "cfa"], cwd=repo, check=True)
            dvc(repo, "plots", "show", "-o", "show")
    dvc(repo, "plots", "diff", "HEAD", "-o", "diff")

    for out in ("show", "diff"):
        html = (repo / out / "index.html").read_text(encoding="utf-8")
        assert not re.search(r"<script[^>]*\bsrc\s*=", html, re.I) and "cdn.jsdelivr" not in html
    check_drawn(chromium_dom(repo / "show" / "index.html", tmp_path / "profile1"), ["CFA on demo"])
    loss = check_drawn(chromium_dom(repo / "diff" / "index.html", tmp_path / "profile2"),
                       ["CFA on demo", "DFR on demo"])["loss"]
    assert loss.count(">Training loss<") == 2  # each method on its own y axis
