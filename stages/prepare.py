"""Stage `prepare@<category>`: validate one category, decode and resize it into a compact cache.

usage: python stages/prepare.py RAW_CATEGORY_DIR PREPARED_DIR
"""

from uad.cli import run_stage
from uad.data.prepared import prepare_category

if __name__ == "__main__":
    run_stage(lambda cfg, args: prepare_category(args[0], args[1], image_size=cfg.image_size,
                                                 resize=cfg.prepare.resize, workers=cfg.prepare.workers),
              sections="none")
