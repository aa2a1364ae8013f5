"""The train stage's work: fit the selected method on a category's normal images."""

from __future__ import annotations

from pathlib import Path

from uad import methods
from uad.config import Config
from uad.data.prepared import load_split
from uad.methods.base import EpochLog
from uad.runtime import configure_precision, describe_device, measure, resolve_device, seed_everything


def train_category(cfg: Config, prepared: str | Path, out: str | Path, log: EpochLog | None = None) -> Path:
    """Fit, calibrate the deployable threshold on the same normal images, save to `out`."""
    device = resolve_device(cfg.device)
    configure_precision(cfg.precision, device)
    generator = seed_everything(cfg.seed)
    train = load_split(prepared, "train")
    model = methods.create(cfg).to(device)
    with measure(device) as fit_time:
        fit = model.fit(train.images, generator, log)
    model.calibrate(train.images, cfg.evaluate.target_fpr, cfg.evaluate.batch_size)
    model.save(out, fit, {"fit_seconds": round(fit_time.seconds, 3),
                          "fit_peak_memory_mb": round(fit_time.peak_memory_mb, 1),
                          "n_train": len(train), "device": describe_device(device)})
    return Path(out)
