"""Stage `train@<category>`: fit the method selected by `model` on the normal training images.

usage: python stages/train.py CATEGORY PREPARED_DIR MODEL_DIR DVCLIVE_DIR METRICS_ROOT
(fit time and memory go to METRICS_ROOT/<model>/<category>.fit.json)
"""

from uad.cli import run_stage
from uad.metrics import fit_path
from uad.training import train_category


def main(cfg, args):
    category, prepared, model_dir, live_dir, metrics_root = args
    train_category(cfg, prepared, model_dir, live_dir, fit_metrics=fit_path(cfg.model, category, metrics_root))


if __name__ == "__main__":
    run_stage(main)
