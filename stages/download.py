"""Stage `download`: the dataset chosen by `dataset`, in MVTec layout.

usage: python stages/download.py OUT_DIR
"""

from uad.cli import run_stage
from uad.data.sources import acquire

if __name__ == "__main__":
    run_stage(lambda cfg, args: acquire(cfg, args[0]), sections="none")
