"""Stage `report`: aggregate every category into metrics/summary.json and reports/results.md.

usage: python stages/report.py METRICS_DIR SUMMARY_JSON RESULTS_MD
"""

from uad.cli import run_stage
from uad.report import write_report

if __name__ == "__main__":
    run_stage(lambda cfg, args: write_report(cfg, *args))
