"""The download stage's work: put the selected dataset in MVTec layout under data/raw/<dataset>/.

One function per dataset kind, chosen from `SOURCES` by the `dataset` parameter.
Each writes into a temporary sibling folder that is renamed into place only when
complete, so a failed or interrupted run never leaves a dataset a later stage
would mistake for a good one.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from uad.artifacts import staged_dir
from uad.config import Config
from uad.data import demo
from uad.data.layout import LayoutError, scan_category


def _demo(cfg: Config, dest: Path) -> None:
    unknown = [c for c in cfg.categories if c not in demo.CATEGORIES]
    if unknown:
        raise ValueError(f"categories: the demo dataset has no category {unknown[0]!r}; "
                         f"available: {sorted(demo.CATEGORIES)}")
    d = cfg.data.demo
    for category in cfg.categories:
        print(f"download: generating demo category {category}", flush=True)
        demo.generate_category(dest, category, image_size=d.image_size, n_train=d.n_train,
                               n_test_good=d.n_test_good, n_test_defect=d.n_test_defect, seed=d.seed)


def _folder(cfg: Config, dest: Path) -> None:
    src = Path(cfg.data.folder.path).expanduser()
    if not src.is_dir():
        raise LayoutError(f"{src}: data.folder.path is not a directory")
    for category in cfg.categories:
        layout = scan_category(src / category)  # validate before copying anything
        print(f"download: copying {category} ({len(layout.train)} train, {len(layout.test)} test) from {src}",
              flush=True)
        for sub in ("train", "test", "ground_truth"):
            if (src / category / sub).is_dir():
                shutil.copytree(src / category / sub, dest / category / sub)


SOURCES: dict[str, Callable[[Config, Path], None]] = {"demo": _demo, "folder": _folder}


def acquire(cfg: Config, dest: str | Path) -> Path:
    """Materialise the categories of `cfg.dataset` at `dest` in MVTec layout (atomically)."""
    dest = Path(dest)
    with staged_dir(dest) as tmp:
        SOURCES[cfg.dataset](cfg, tmp)
    return dest
