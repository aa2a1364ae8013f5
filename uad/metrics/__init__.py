"""The metrics a run reports: names, labels, directions and where they are written (no heavy imports).

The one list of metric names: `evaluate` writes them, `report` tabulates them, the CI gate
compares them, `uad.seeds` aggregates them. Their computation is in `uad.metrics.compute`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Metric:
    key: str  # key in metrics/<model>/<category>.json
    label: str  # row title in reports
    higher_is_better: bool = True
    gated: bool = True  # compared against the committed baseline in CI


QUALITY: tuple[Metric, ...] = (
    Metric("image_auroc", "Image AUROC"),
    Metric("pixel_auroc", "Pixel AUROC"),
    Metric("pixel_f1_max", "Pixel F1 (max over thresholds)"),
    Metric("pixel_f1", "Pixel F1 at the calibrated pixel threshold"),
    Metric("aupro", "AUPRO (FPR <= {limit})"),
    Metric("image_false_alarm_rate", "Good images flagged at the image threshold", higher_is_better=False),
    Metric("image_detection_rate", "Defective images flagged at the image threshold"),
)
FIT: tuple[Metric, ...] = (  # written by train, in <category>.fit.json
    Metric("fit_seconds", "Fit seconds", higher_is_better=False, gated=False),
    Metric("fit_peak_memory_mb", "Fit peak memory (MB)", higher_is_better=False, gated=False),
)
SCORING: tuple[Metric, ...] = (  # written by evaluate, in <category>.perf.json
    Metric("score_images_per_s", "Scoring images/s", gated=False),
    Metric("score_peak_memory_mb", "Scoring peak memory (MB)", higher_is_better=False, gated=False),
)
PERF = FIT + SCORING
BY_KEY = {m.key: m for m in QUALITY + PERF}

METRICS_ROOT = Path("metrics")
SUMMARY = METRICS_ROOT / "summary.json"  # {model: {metric: mean over categories}}


def quality_path(model: str, category: str, root: str | Path = METRICS_ROOT) -> Path:
    """metrics/<model>/<category>.json: the quality metrics of one category (DVC metrics, git-tracked)."""
    return Path(root) / model / f"{category}.json"


def perf_path(model: str, category: str, root: str | Path = METRICS_ROOT) -> Path:
    """metrics/<model>/<category>.perf.json: scoring speed and memory (reported, never gated)."""
    return Path(root) / model / f"{category}.perf.json"


def fit_path(model: str, category: str, root: str | Path = METRICS_ROOT) -> Path:
    """metrics/<model>/<category>.fit.json: fit time, memory and device (kept out of the model folder,
    so that a model's files, and dvc.lock, do not change with the machine's speed)."""
    return Path(root) / model / f"{category}.fit.json"


_KINDS = ((".perf.json", "perf"), (".fit.json", "fit"), (".json", "quality"))


def parse_path(path: str | Path) -> tuple[str, str, str] | None:
    """(model, category, "quality" | "perf" | "fit") of a path made by the functions above, else None."""
    path = Path(path)
    if len(path.parts) < 2:
        return None
    for suffix, kind in _KINDS:
        if path.name.endswith(suffix):
            return path.parent.name, path.name[: -len(suffix)], kind
    return None
