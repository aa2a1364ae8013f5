"""The charts of a run: DVC plot data, their PNG pictures, and an HTML page that draws them offline.

`dvc plots show` draws the top-level `plots:` of dvc.yaml from the files `write_plots` makes,
with the Vega-Lite templates in `.dvc/plots/` (one panel per method and dataset, a line per
category whose legend gives its AUROC, a dash per revision). The report stage also renders the
same filled templates to `reports/<chart>.png` (`write_pngs`) for the README and CI summaries.

DVC's own page loads Vega from a CDN, so offline its charts are blank. `.dvc/config` points
DVC at `.dvc/plots/offline.html` instead (`plots.html_template`), a page with Vega, Vega-Lite
and vega-embed inlined, made by `python -m uad.plots template` (run by scripts/setup.sh).

Only the PNG and page functions import `vl_convert` (and `dvc_render`): stage start-up stays light.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uad import methods
from uad.artifacts import CURVES_FILE, LOSS_FILE, atomic_path, read_json, write_json
from uad.errors import UadError
from uad.metrics import quality_path

if TYPE_CHECKING:
    from uad.config import Config

TEMPLATES_DIR = Path(".dvc/plots")  # DVC's templates folder (relative to the repository root)
PAGE_TEMPLATE = TEMPLATES_DIR / "offline.html"  # `plots.html_template = plots/offline.html` in .dvc/config
VEGA_LITE = "5.21"  # Vega-Lite of the page and the PNGs; the templates' $schema is v5
PNG_SCALE = 1.0  # 1 px per Vega pixel: ~400 px per panel, small enough to commit at every rerun


@dataclass(frozen=True)
class Chart:
    """One chart: its data file plots/<name>.json, template .dvc/plots/<template>.json and words."""

    name: str
    template: str
    x: str
    y: str
    title: str
    x_label: str
    y_label: str
    auroc: str | None = None  # the metric named in each category's legend label

    @property
    def log_x(self) -> bool:
        """Drawn on a log x axis, where points at x <= 0 have no place."""
        return self.template.endswith("_logx")

    def dvc_entry(self) -> dict[str, dict[str, str]]:
        """The item of dvc.yaml's top-level `plots:` that draws this chart (tests compare them)."""
        return {f"plots/{self.name}.json": {"template": self.template, "x": self.x, "y": self.y,
                                            "title": self.title, "x_label": self.x_label, "y_label": self.y_label}}


CHARTS: tuple[Chart, ...] = (
    Chart("roc_image", "curve", "fpr", "tpr", "Image ROC", "False positive rate", "True positive rate",
          "image_auroc"),
    Chart("roc_pixel", "curve_logx", "fpr", "tpr", "Pixel ROC", "False positive rate (log)", "True positive rate",
          "pixel_auroc"),
    Chart("pr_pixel", "curve", "recall", "precision", "Pixel precision-recall", "Recall", "Precision",
          "pixel_auroc"),
    Chart("loss", "loss", "step", "loss", "Training loss per epoch", "Epoch", "Training loss"),
)
BY_NAME = {c.name: c for c in CHARTS}


def run_label(method: str, dataset: str) -> str:
    """The panel header of a run, e.g. 'PatchCore on demo': `dvc plots diff` of two methods gets two panels."""
    return f"{method} on {dataset}"


def legend_label(category: str, auroc: float | None) -> str:
    """e.g. 'weave (AUROC 0.958)': the legend says how good each curve is."""
    return category if auroc is None else f"{category} (AUROC {auroc:.3f})"


def plot_data(cfg: Config, metrics_root: str | Path, scores_root: str | Path,
              models_root: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Every chart's records: each category's curve points (evaluate) and losses (train), tagged.

    Each record carries `category`, `method` ('CFA'), `dataset`, `run` ('CFA on demo', the panel)
    and `label` (the legend: category and its AUROC). Pixel ROC points at FPR 0 are left out: a log
    axis cannot place them, so each curve starts at its first false positive.
    """
    label = methods.spec(cfg.model).label
    run = {"method": label, "dataset": cfg.dataset, "run": run_label(label, cfg.dataset)}
    data: dict[str, list[dict[str, Any]]] = {c.name: [] for c in CHARTS}
    for cat in cfg.categories:
        curves = read_json(Path(scores_root) / cat / CURVES_FILE, f"evaluate@{cat}")
        curves["loss"] = read_json(Path(models_root) / cat / LOSS_FILE, f"train@{cat}")
        quality = read_json(quality_path(cfg.model, cat, metrics_root), f"evaluate@{cat}")
        for chart in CHARTS:
            points = curves[chart.name]
            if chart.log_x:
                points = [p for p in points if p[chart.x] > 0]
            label = legend_label(cat, quality[chart.auroc] if chart.auroc else None)
            data[chart.name] += [{**p, "category": cat, **run, "label": label} for p in points]
    return data


def write_plots(cfg: Config, metrics_root: str | Path, scores_root: str | Path, models_root: str | Path,
                plots_dir: str | Path) -> dict[str, list[dict[str, Any]]]:
    """plots/<chart>.json for dvc.yaml's top-level plots (see `plot_data`); returns the records."""
    data = plot_data(cfg, metrics_root, scores_root, models_root)
    for name, records in data.items():
        write_json(Path(plots_dir) / f"{name}.json", records)
    return data


def chart_spec(chart: Chart, records: list[dict[str, Any]], templates_dir: str | Path = TEMPLATES_DIR) -> dict:
    """The Vega-Lite spec DVC draws for `chart`: its template filled by DVC's own renderer.

    Records without a `rev` (one run, not a `dvc plots diff`) get no revision legend."""
    from dvc_render.vega import VegaRenderer

    renderer = VegaRenderer(records, f"plots/{chart.name}.json", template=chart.template,
                            template_dir=str(templates_dir), x=chart.x, y=chart.y, title=chart.title,
                            x_label=chart.x_label, y_label=chart.y_label)
    spec = json.loads(json.dumps(renderer.get_filled_template()))  # a copy of ours to edit
    if not any("rev" in r for r in records):
        spec.get("spec", spec)["encoding"].pop("strokeDash", None)
    return spec


def empty_spec(chart: Chart, note: str) -> dict:
    """A chart with nothing to draw (a method that trains no network has no loss curve): its title and a
    sentence saying why, so that the PNG exists and tells the reader."""
    return {"$schema": f"https://vega.github.io/schema/vega-lite/v{VEGA_LITE.split('.')[0]}.json",
            "title": chart.title, "width": 420, "height": 120, "data": {"values": [{"note": note}]},
            "mark": {"type": "text", "fontSize": 14}, "encoding": {"text": {"field": "note"}}}


def render_png(spec: dict) -> bytes:
    """PNG of a Vega-Lite spec, drawn in-process by vl-convert with no network access."""
    try:
        import vl_convert
    except ImportError:  # a declared dependency, absent where the environment was assembled by hand
        raise UadError("the report's PNG charts need vl-convert-python, which is not installed "
                       "(pip install vl-convert-python)") from None

    return vl_convert.vegalite_to_png(spec, vl_version=VEGA_LITE, scale=PNG_SCALE, allowed_base_urls=[])


def write_pngs(data: dict[str, list[dict[str, Any]]], out_dir: str | Path,
               templates_dir: str | Path = TEMPLATES_DIR) -> list[Path]:
    """<out_dir>/<chart>.png of each chart in `data`, from the templates DVC uses. The same data give
    the same bytes on a machine (records drawn in their order, vl-convert pinned; text is set in
    the system's sans-serif font, so another machine's fonts may shift it by a pixel)."""
    written = []
    for name, records in data.items():
        chart = BY_NAME[name]
        spec = chart_spec(chart, records, templates_dir) if records else empty_spec(
            chart, "no records: this method trains no network" if name == "loss" else "no records")
        png = render_png(spec)
        path = Path(out_dir) / f"{name}.png"
        with atomic_path(path) as tmp:
            tmp.write_bytes(png)
            tmp.chmod(0o644)  # a picture for everyone (the staging file is private)
        written.append(path)
    return written


PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")  # what dvc_render replaces in the page

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
{refresh_tag}
<title>DVC plots</title>
<!-- Vega __VEGA__, Vega-Lite __VEGA_LITE__ and vega-embed __EMBED__, bundled by vl-convert-python
     __VL_CONVERT__ (python -m uad.plots template): the charts draw with no network. DVC's
     CDN script tags are left out on purpose. -->
<script>
__BUNDLE__
</script>
<script>
// DVC's plot divs call vegaEmbed('#id', spec) from inline scripts while the page is parsed:
// the bundle above made it a global. This wrapper draws SVG, drops the online-only
// "Open in Vega Editor" action, and writes a failing chart's error into its box.
(function () {
  var embed = window.vegaEmbed;
  function offlineEmbed(el, spec, opts) {
    var options = Object.assign({renderer: "svg",
                                 actions: {export: true, source: true, compiled: true, editor: false}}, opts || {});
    return embed(el, spec, options).catch(function (err) {
      var box = typeof el === "string" ? document.querySelector(el) : el;
      var note = document.createElement("pre");
      note.className = "plot-error";
      note.textContent = "This chart could not be drawn: " + err;
      if (box) { box.appendChild(note); }
      console.error(err);
    });
  }
  Object.assign(offlineEmbed, embed);
  window.vegaEmbed = offlineEmbed;
})();
</script>
<style>
  body { font-family: sans-serif; margin: 16px; }
  main { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
  main > div { max-width: 100%; overflow-x: auto; }
  .plot-error { color: #b00020; white-space: pre-wrap; }
  table { border-spacing: 15px; }
</style>
</head>
<body>
<noscript>These charts are drawn by JavaScript; enable it to see them.</noscript>
<main>
{plot_divs}
</main>
</body>
</html>
"""


def page_template() -> str:
    """DVC's HTML page template with Vega, Vega-Lite and vega-embed inlined as one classic script.

    The bundle must not contain what dvc_render replaces or what would end the script early."""
    import vl_convert
    from importlib.metadata import version

    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE)
    bad = [s for s in (*PLACEHOLDERS, "</script", "<!--") if s in bundle]
    if bad:
        raise RuntimeError(f"the vl-convert bundle contains {bad}: it cannot be inlined in DVC's page template")
    fields = {"__VEGA__": vl_convert.get_vega_version(), "__VEGA_LITE__": VEGA_LITE,
              "__EMBED__": vl_convert.get_vega_embed_version(), "__VL_CONVERT__": version("vl-convert-python")}
    page = _PAGE
    for key, value in fields.items():
        page = page.replace(key, value)
    return page.replace("__BUNDLE__", bundle)


def write_template(path: str | Path = PAGE_TEMPLATE) -> bool:
    """Write the offline page template to `path`; False if it already held exactly that."""
    path = Path(path)
    page = page_template()
    if path.is_file() and path.read_text(encoding="utf-8") == page:
        return False
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
        tmp.chmod(0o644)
    return True


def main(argv: list[str] | None = None) -> None:
    """`python -m uad.plots template [PATH]`: write DVC's offline page template (scripts/setup.sh runs it)."""
    ap = argparse.ArgumentParser(prog="python -m uad.plots", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    tpl = sub.add_parser("template", help="write the offline HTML page template that .dvc/config names")
    tpl.add_argument("path", nargs="?", type=Path, default=PAGE_TEMPLATE)
    args = ap.parse_args(argv)
    changed = write_template(args.path)
    print(f"{args.path}: {'written' if changed else 'up to date'} (Vega bundled, draws offline)")


if __name__ == "__main__":
    main(sys.argv[1:])
