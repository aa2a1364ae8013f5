"""Stage `render@<category>`: the demo GIF (input | ground truth | heat map | predicted mask).

usage: python stages/render.py CATEGORY PREPARED_DIR SCORES_DIR MODEL_DIR OUT_GIF
"""

from uad.cli import run_stage
from uad.render import render_category


def main(cfg, args):
    category, prepared, scores_dir, model_dir, out = args
    render_category(category, prepared=prepared, scores_dir=scores_dir, model_dir=model_dir, out=out,
                    frame_ms=cfg.render.frame_ms, max_frames=cfg.render.max_frames)


if __name__ == "__main__":
    run_stage(main, sections="none")
