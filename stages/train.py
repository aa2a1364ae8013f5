"""Stage `train@<category>`: fit the method selected by `model` on the normal training images.

usage: python stages/train.py PREPARED_DIR MODEL_DIR DVCLIVE_DIR
"""

from uad.cli import run_stage
from uad.training import train_category

if __name__ == "__main__":
    run_stage(lambda cfg, args: train_category(cfg, *args))
