"""Stage `evaluate@<category>`: score the test split; write metrics, timings, curves and maps.

usage: python stages/evaluate.py CATEGORY PREPARED_DIR MODEL_DIR SCORES_DIR METRICS_DIR
"""

from uad.cli import run_stage
from uad.evaluation import evaluate_category
from uad.report import metrics_path, perf_path


def main(cfg, args):
    category, prepared, model_dir, scores_dir, metrics_dir = args
    evaluate_category(cfg, category, prepared=prepared, model_dir=model_dir, scores_dir=scores_dir,
                      metrics_path=metrics_path(metrics_dir, category), perf_path=perf_path(metrics_dir, category))


if __name__ == "__main__":
    run_stage(main)
