"""The download stage's work: put the selected dataset in MVTec layout under data/raw/<dataset>/.

One function per dataset kind, chosen from `SOURCES` by the `dataset` parameter.
Each writes into a temporary sibling folder that is renamed into place only when
complete, so a failed or interrupted run never leaves a dataset a later stage
would mistake for a good one.

Downloads are cached in `data.downloads` under a name that carries the source:
`<name>-<first 12 hex digits of the SHA-256 of the URL>.<ext>`, with the URL
beside it in `<file>.source`. Another URL is another file; a cached file is
verified (size and SHA-256 where known, else the archive's structure) before
every use and replaced when it fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

from uad.artifacts import staged_dir
from uad.config import Config, ConfigError
from uad.data import demo, mtd
from uad.data.archive import ArchiveError, check_complete, safe_extract
from uad.data.download import check_file, download
from uad.data.layout import ORIGIN_FILE, LayoutError, scan_category
from uad.errors import UadError

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
    src = Path(cfg.data.folder.path).expanduser().absolute()
    if not src.is_dir():
        raise LayoutError(f"{src}: data.folder.path is not a directory")
    layouts = {category: scan_category(src / category) for category in cfg.categories}  # all before any copy
    for category, layout in layouts.items():
        print(f"download: copying {category} ({len(layout.train)} train, {len(layout.test)} test) from {src}",
              flush=True)
        files = [s.image for s in layout.train + layout.test] + [s.mask for s in layout.test if s.mask]
        for path in files:  # the listed files only, their contents (links are followed, never copied)
            target = dest / category / path.relative_to(layout.root)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copyfile(path, target)
            except OSError as exc:
                raise LayoutError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        mark_origin(dest / category, layout.root)


def _is_url(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https")


def mark_origin(category_dir: Path, origin: Path) -> None:
    """Record where a copied category came from, so that later errors name the user's files."""
    (category_dir / ORIGIN_FILE).write_text(f"{origin}\n")


def cache_name(source: str, name: str) -> str:
    """The downloads-cache file name of `source`: `name` with a digest of the URL before its extension."""
    stem, dot, ext = name.partition(".")
    return f"{stem}-{hashlib.sha256(source.encode()).hexdigest()[:12]}{dot}{ext}"


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
    cached = Path(cfg.data.downloads) / cache_name(source, name)
    print(f"download: {source} (cached as {cached})", flush=True)
    # without a size or checksum the archive's own structure is the evidence of a complete file
    path = download(source, cached, size=size, sha256=sha256, complete=None if (size or sha256) else check_complete,
                    timeout=http.timeout, retries=http.retries)
    path.with_name(path.name + ".source").write_text(f"{source}\n")
    return path


@contextlib.contextmanager
def _named_after(archive: Path, folder: Path, source: str) -> Iterator[None]:
    """Errors about files in `folder` (a temporary extraction of `archive`) name the archive's members;
    errors about a cached download say how to get a fresh copy."""
    try:
        yield
    except UadError as exc:
        message = str(exc).replace(f"{folder}/", f"{archive}: member ").replace(str(folder), str(archive))
        if _is_url(source) and isinstance(exc, ArchiveError):
            message += f" (the cached download of {source}; delete {archive} to fetch it again)"
        raise type(exc)(message) from None


def _mvtec_ad(cfg: Config, dest: Path) -> None:
    unknown = [c for c in cfg.categories if c not in MVTEC_CATEGORIES]
    if unknown:
        raise ConfigError(f"categories: MVTec AD has no category {unknown[0]!r}; available: {list(MVTEC_CATEGORIES)}")
    m = cfg.data.mvtec_ad
    archive = _fetch(cfg, m.url, "mvtec_anomaly_detection.tar.xz", size=m.size, sha256=m.sha256)
    wanted = set(cfg.categories)
    print(f"download: extracting {sorted(wanted)} from {archive}", flush=True)
    with _named_after(archive, dest, m.url):
        safe_extract(archive, dest, max_bytes=m.max_extracted_bytes,
                     keep=lambda rel: bool(rel.parts) and rel.parts[0] in wanted)
        for category in cfg.categories:
            if not (dest / category).is_dir():
                raise LayoutError(f"{archive}: has no folder {category}/ (is it the MVTec AD archive?)")
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
        with tempfile.TemporaryDirectory(dir=dest) as tmp, _named_after(archive, Path(tmp), source):
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
