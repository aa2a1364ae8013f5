"""The download stage's work: put the selected dataset in MVTec layout under data/raw/<dataset>/.

One function per dataset kind, chosen from `SOURCES` by the `dataset` parameter.
Each writes into a temporary sibling folder that is renamed into place only when
complete, so a failed or interrupted run never leaves a dataset a later stage
would mistake for a good one.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from uad.artifacts import staged_dir
from uad.config import Config, ConfigError
from uad.data import demo, mtd
from uad.data.archive import ArchiveError, safe_extract
from uad.data.download import check_file, download
from uad.data.layout import LayoutError, scan_category

MVTEC_CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill",
                    "screw", "tile", "toothbrush", "transistor", "wood", "zipper")


def _demo(cfg: Config, dest: Path) -> None:
    unknown = [c for c in cfg.categories if c not in demo.CATEGORIES]
    if unknown:
        raise ConfigError(f"categories: the demo dataset has no category {unknown[0]!r}; "
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


def _is_url(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https")


def _fetch(cfg: Config, source: str, name: str, *, size: int = 0, sha256: str = "") -> Path:
    """A local archive as is, or a URL downloaded (resumably, verified) into the downloads cache."""
    if not _is_url(source):
        path = Path(source).expanduser()
        if not path.is_file():
            raise ArchiveError(f"{path}: local archive not found")
        print(f"download: using local archive {path}", flush=True)
        check_file(path, size, sha256)  # a local copy must be the official file; it is never deleted
        return path
    http = cfg.data.http
    print(f"download: {source}", flush=True)
    return download(source, Path(cfg.data.downloads) / name, size=size, sha256=sha256, timeout=http.timeout,
                    retries=http.retries)


def _mvtec_ad(cfg: Config, dest: Path) -> None:
    unknown = [c for c in cfg.categories if c not in MVTEC_CATEGORIES]
    if unknown:
        raise ConfigError(f"categories: MVTec AD has no category {unknown[0]!r}; available: {list(MVTEC_CATEGORIES)}")
    m = cfg.data.mvtec_ad
    archive = _fetch(cfg, m.url, "mvtec_anomaly_detection.tar.xz", size=m.size, sha256=m.sha256)
    wanted = set(cfg.categories)
    print(f"download: extracting {sorted(wanted)} from {archive}", flush=True)
    safe_extract(archive, dest, max_bytes=m.max_extracted_bytes,
                 keep=lambda rel: bool(rel.parts) and rel.parts[0] in wanted)
    for category in cfg.categories:
        scan_category(dest / category)


def _mtd(cfg: Config, dest: Path) -> None:
    if list(cfg.categories) != [mtd.CATEGORY]:
        raise ConfigError(f"categories: Magnetic Tile Defects has one category; set categories: [{mtd.CATEGORY}]")
    source = cfg.data.mtd.source
    local = Path(source).expanduser()
    if not _is_url(source) and local.is_dir():
        counts = mtd.convert(local, dest)
    else:
        archive = _fetch(cfg, source, "magnetic_tile_defects.zip", sha256=cfg.data.mtd.sha256)
        with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
            safe_extract(archive, tmp, max_bytes=cfg.data.mtd.max_extracted_bytes)
            counts = mtd.convert(tmp, dest)
    print(f"download: magnetic_tile in MVTec layout: {counts}", flush=True)
    scan_category(dest / mtd.CATEGORY)


SOURCES: dict[str, Callable[[Config, Path], None]] = {"demo": _demo, "mvtec_ad": _mvtec_ad, "mtd": _mtd,
                                                      "folder": _folder}


def acquire(cfg: Config, dest: str | Path) -> Path:
    """Materialise the categories of `cfg.dataset` at `dest` in MVTec layout (atomically)."""
    dest = Path(dest)
    with staged_dir(dest) as tmp:
        SOURCES[cfg.dataset](cfg, tmp)
    return dest
