"""What the benchmark scripts share: the commit they measured and one category through train + evaluate."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from uad.config import Config  # noqa: E402
from uad.evaluation import evaluate_category  # noqa: E402
from uad.training import train_category  # noqa: E402


def git_commit() -> str:
    """Short id of the checked-out commit, or "unknown" where there is no git (the GPU machine's copy)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip() or "unknown"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@dataclass
class CategoryRun:
    metrics: dict
    perf: dict  # evaluate's perf.json: fit seconds and memory, scoring images/s and memory
    train_wall_s: float
    evaluate_wall_s: float


def train_and_evaluate(cfg: Config, category: str, prepared: Path, out: Path) -> CategoryRun:
    """The library calls of `dvc repro`'s train and evaluate stages for one category, into `out`."""
    t = time.perf_counter()
    train_category(cfg, prepared, out / "model")
    train_wall = time.perf_counter() - t
    t = time.perf_counter()
    metrics = evaluate_category(cfg, category, prepared=prepared, model_dir=out / "model",
                                scores_dir=out / "scores", metrics_path=out / "metrics.json",
                                perf_path=out / "perf.json")
    evaluate_wall = time.perf_counter() - t
    return CategoryRun(metrics, json.loads((out / "perf.json").read_text()), round(train_wall, 3),
                       round(evaluate_wall, 3))
