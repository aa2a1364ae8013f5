"""The train stage's work: fit the selected method on a category's normal images."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from uad.methods import base as methods
from uad.artifacts import LOSS_FILE, staged_dir, write_json
from uad.config import Config
from uad.data.prepared import load_index, load_split
from uad.errors import UadError
from uad.methods.base import AnomalyMethod, EpochLog, InputSpec
from uad.runtime import configure_precision, describe_device, measure, resolve_device, seed_everything


@contextlib.contextmanager
def dvclive_logger(live_dir: str | Path | None) -> Iterator[EpochLog | None]:
    """An epoch logger writing to DVCLive in `live_dir` (None: no logging, dvclive not imported)."""
    if live_dir is None:
        yield None
        return
    from dvclive import Live  # imported here: benchmarks on machines without DVC skip it
    from scmrepo.exceptions import SCMError

    try:
        live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None)
    except SCMError as exc:  # dvclive reads HEAD even when it saves no experiment
        raise UadError(f"DVCLive needs a git repository with at least one commit ({exc}); "
                       f"run `git commit` once, then repeat") from None
    with live:
        def log(epoch: int, values: dict[str, float]) -> None:
            for name, value in values.items():
                live.log_metric(name, value, plot=False)
            live.next_step()
        yield log


def holdout_mask(n: int, fraction: float) -> np.ndarray:
    """Which of n training images (in their sorted order) are held out for calibration: every
    1/fraction-th, spread evenly and the same on every run; floor(n * fraction) of them."""
    i = np.arange(n)
    return np.floor((i + 1) * fraction) > np.floor(i * fraction)


def train_category(cfg: Config, prepared: str | Path, out: str | Path, live_dir: str | Path | None = None,
                   method: type[AnomalyMethod] | None = None, fit_metrics: str | Path | None = None) -> Path:
    """Fit on the training images not held out, calibrate the thresholds, save to `out`.

    `calibrate.holdout` of the images (every 1/holdout-th) are kept out of the fit and give the
    image and pixel thresholds; with no holdout (the paper presets) the thresholds come from the
    training images themselves, which the model has fitted, so they flag more good images than
    the target: this is warned about and recorded with the model.
    Every epoch's losses are logged with DVCLive to `live_dir/metrics.json` (shown by `dvc exp
    show`) and saved as records in `out/loss.json` (drawn by `report`). Both folders are built in
    staging folders and replace `out` and `live_dir` only when everything is written: a killed or
    failed run leaves the previous ones. `method`: a subclass of the selected method to train
    instead (see `uad.methods.base.create`). The fit's time, memory and device go to
    `fit_metrics` (uad.metrics.fit_path), not into the model folder, whose files depend only on
    the params, the data and the seed.
    """
    device = resolve_device(cfg.device)
    configure_precision(cfg.precision, device)
    generator = seed_everything(cfg.seed)
    train = load_split(prepared, "train")
    index = load_index(prepared)
    held = holdout_mask(len(train), cfg.calibrate.holdout)
    if held.all():
        raise UadError(f"calibrate.holdout: {cfg.calibrate.holdout} leaves no image to train on")
    fit_images = train.images[~held] if held.any() else train.images
    if held.any():
        calib_images, source = train.images[held], f"held out of the fit: {int(held.sum())} of {len(train)} images"
    else:
        calib_images, source = train.images, "the training images (no holdout): false alarms run above the target"
        print("warning: calibrate.holdout is 0: the thresholds come from images the model was fitted on, so good "
              "images will be flagged more often than calibrate.image_fpr", file=sys.stderr)
    model = methods.create(cfg, method).to(device)
    model.input = InputSpec(index["image_size"], index["resize"])
    history: list[dict[str, float]] = []
    out = Path(out)
    with contextlib.ExitStack() as stack:
        staged_live = stack.enter_context(staged_dir(Path(live_dir))) if live_dir is not None else None
        staged_out = stack.enter_context(staged_dir(out))
        with dvclive_logger(staged_live) as live_log:
            def log(epoch: int, values: dict[str, float]) -> None:
                if live_log:
                    live_log(epoch, values)
                history.append({"step": epoch, **{k: round(v, 6) for k, v in values.items()}})

            with measure(device) as fit_time:
                fit = model.fit(fit_images, generator, batch_size=cfg.evaluate.batch_size, log=log)
        c = cfg.calibrate
        model.calibrate(calib_images, image_fpr=c.image_fpr, pixel_fpr=c.pixel_fpr,
                        batch_size=cfg.evaluate.batch_size, source=source)
        model.save(staged_out, fit, {"n_train": len(fit_images), "n_calibration": len(calib_images),
                                     "precision": cfg.precision, "seed": cfg.seed})
        write_json(staged_out / LOSS_FILE, history)
    if fit_metrics is not None:
        write_json(fit_metrics, {"fit_seconds": round(fit_time.seconds, 3),
                                 "fit_peak_memory_mb": round(fit_time.peak_memory_mb, 1),
                                 "device": describe_device(device)})
    return out
