"""Stage `report`: every category into metrics/summary.json, reports/results.md, plots/*.json and,
beside the Markdown report, the charts as PNG files (reports/<chart>.png, drawn offline).

usage: python stages/report.py METRICS_ROOT SUMMARY_JSON RESULTS_MD SCORES_ROOT MODELS_ROOT PLOTS_DIR
"""

from pathlib import Path

from uad.cli import run_stage
from uad.plots import write_plots, write_pngs
from uad.report import write_report


def main(cfg, args):
    metrics_root, summary, results, scores_root, models_root, plots_dir = args
    write_report(cfg, metrics_root, summary, results)
    data = write_plots(cfg, metrics_root, scores_root, models_root, plots_dir)
    write_pngs(data, Path(results).parent)


if __name__ == "__main__":
    run_stage(main)
