"""The train stage's work: fit the selected method on a category's normal images."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from uad import methods
from uad.artifacts import LOSS_FILE, staged_dir, write_json
from uad.config import Config
from uad.data.prepared import load_split
from uad.errors import UadError
from uad.methods.base import EpochLog
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


def train_category(cfg: Config, prepared: str | Path, out: str | Path, live_dir: str | Path | None = None) -> Path:
    """Fit, calibrate the deployable threshold on the same normal images, save to `out`.

    Every epoch's losses are logged with DVCLive to `live_dir/metrics.json` (shown
    by `dvc exp show`) and saved as records in `out/loss.json` (drawn by `report`).
    Both folders are built in staging folders and replace `out` and `live_dir` only
    when everything is written: a killed or failed run leaves the previous ones.
    """
    device = resolve_device(cfg.device)
    configure_precision(cfg.precision, device)
    generator = seed_everything(cfg.seed)
    train = load_split(prepared, "train")
    model = methods.create(cfg).to(device)
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
                fit = model.fit(train.images, generator, log)
        model.calibrate(train.images, cfg.evaluate.target_fpr, cfg.evaluate.batch_size)
        model.save(staged_out, fit, {"fit_seconds": round(fit_time.seconds, 3),
                                     "fit_peak_memory_mb": round(fit_time.peak_memory_mb, 1),
                                     "n_train": len(train), "device": describe_device(device)})
        write_json(staged_out / LOSS_FILE, history)
    return out
