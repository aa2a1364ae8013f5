"""The evaluate stage's work: score the test split, compute metrics, curves and timings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from uad.methods import base as methods
from uad.artifacts import CURVES_FILE, IMAGE_SCORES_FILE, MAPS_FILE, staged_dir, write_json
from uad.config import Config
from uad.data.prepared import load_split
from uad.metrics import compute
from uad.runtime import configure_precision, describe_device, measure, resolve_device, seed_everything


def evaluate_category(cfg: Config, category: str, *, prepared: str | Path, model_dir: str | Path,
                      scores_dir: str | Path, metrics_path: str | Path, perf_path: str | Path) -> dict[str, float]:
    """Score `category`'s test split with the trained model; write maps, curves, metrics and timings."""
    device = resolve_device(cfg.device)
    configure_precision(cfg.precision, device)
    seed_everything(cfg.seed)
    model = methods.load(model_dir, precision=cfg.precision, expect=cfg.model).to(device)
    test = load_split(prepared, "test")
    # untimed batches of both sizes the timed pass uses first: CUDA context, lazily loaded
    # kernels, cuDNN autotuning and allocations belong to start-up, not to the throughput
    batch = cfg.evaluate.batch_size
    model.score(test.images[:batch], batch)
    if len(test) % batch:
        model.score(test.images[: len(test) % batch], batch)
    with measure(device) as timing:
        scores = model.score(test.images, batch, desc=f"score {category}")
    labels = torch.from_numpy(test.labels).to(scores.maps.device)
    masks = torch.from_numpy(np.array(test.masks)).to(scores.maps.device)
    result = compute.evaluate(scores.image, labels, scores.maps, masks, pixel_threshold=float(model.pixel_threshold),
                              image_threshold=float(model.image_threshold), fpr_limit=cfg.evaluate.aupro_fpr_limit)
    result = {k: round(v, 6) for k, v in result.items()}
    # the scores first, the metrics last: each appears whole (staged), and metrics never without their maps
    with staged_dir(Path(scores_dir)) as staged:
        write_json(staged / CURVES_FILE,
                   compute.curves(scores.image, labels, scores.maps, masks, cfg.evaluate.curve_points))
        np.save(staged / MAPS_FILE, scores.maps.cpu().numpy().astype(np.float32))
        np.save(staged / IMAGE_SCORES_FILE, scores.image.cpu().numpy().astype(np.float32))
    write_json(perf_path, {
        "score_images_per_s": round(len(test) / timing.seconds, 2),
        "score_peak_memory_mb": round(timing.peak_memory_mb, 1),
        "device": describe_device(device),
    })
    write_json(metrics_path, result)
    return result
