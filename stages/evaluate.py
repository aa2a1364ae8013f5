"""Stage `evaluate@<category>`: score the test split; write metrics, timings, curves and maps.

usage: python stages/evaluate.py CATEGORY PREPARED_DIR MODEL_DIR SCORES_DIR METRICS_ROOT
(metrics go to METRICS_ROOT/<model>/<category>.json and .perf.json)
"""

from uad.cli import run_stage
from uad.evaluation import evaluate_category
from uad.metrics import perf_path, quality_path


def main(cfg, args):
    category, prepared, model_dir, scores_dir, metrics_root = args
    evaluate_category(cfg, category, prepared=prepared, model_dir=model_dir, scores_dir=scores_dir,
                      metrics_path=quality_path(cfg.model, category, metrics_root),
                      perf_path=perf_path(cfg.model, category, metrics_root))


if __name__ == "__main__":
    run_stage(main)
