"""Stage `report`: every category into metrics/summary.json, reports/results.md and plots/*.json.

usage: python stages/report.py METRICS_DIR SUMMARY_JSON RESULTS_MD SCORES_ROOT MODELS_ROOT PLOTS_DIR
"""

from uad.cli import run_stage
from uad.report import write_plots, write_report


def main(cfg, args):
    metrics_dir, summary, results, scores_root, models_root, plots_dir = args
    write_report(cfg, metrics_dir, summary, results)
    write_plots(cfg.categories, scores_root, models_root, plots_dir)


if __name__ == "__main__":
    run_stage(main)
