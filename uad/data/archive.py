"""Safe extraction of tar (any compression) and zip archives.

Every member is checked before anything is written: absolute paths, `..`
components, links whose target leaves the destination, and device files or
FIFOs are refused, and the running total of extracted bytes may not exceed
`max_bytes` (counted while streaming, so a zip whose headers lie about sizes is
caught too). Ownership and permission bits from the archive are ignored.
Callers extract into a staging folder (`uad.artifacts.staged_dir`), so a
refused archive leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import IO

from uad.errors import UadError


class ArchiveError(UadError, ValueError):
    """An archive that is unsafe or unreadable; the message names the archive and the member."""


def _safe_relpath(archive: Path, name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"{archive}: member {name!r} has an absolute path")
    if ".." in path.parts:
        raise ArchiveError(f"{archive}: member {name!r} contains '..'")
    parts = [p for p in path.parts if p not in ("", ".")]
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _inside(root: Path, target: Path) -> bool:
    root, target = os.path.normpath(root), os.path.normpath(target)
    return target == root or target.startswith(root + os.sep)


class _Budget:
    def __init__(self, archive: Path, limit: int):
        self.archive, self.limit, self.used = archive, limit, 0

    def add(self, n: int, member: str) -> None:
        self.used += n
        if self.limit and self.used > self.limit:
            raise ArchiveError(f"{self.archive}: extracted size exceeds the limit of {self.limit} bytes "
                               f"(at member {member!r}); raise max_extracted_bytes if the archive is trusted")


def _copy(src: IO[bytes], dest: Path, budget: _Budget, member: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as out:
        while block := src.read(1 << 20):
            budget.add(len(block), member)
            out.write(block)


def _extract_tar(archive: Path, dest: Path, keep: Callable[[PurePosixPath], bool], budget: _Budget) -> list[str]:
    written = []
    try:
        with tarfile.open(archive, "r|*") as tar:  # streaming: one pass, even over .tar.xz
            for member in tar:
                rel = _safe_relpath(archive, member.name)
                if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
                    raise ArchiveError(f"{archive}: member {member.name!r} is a device file or FIFO")
                if not keep(rel):
                    continue
                target = dest / rel
                if member.issym() or member.islnk():
                    base = target.parent if member.issym() else dest
                    link = (base / member.linkname) if not os.path.isabs(member.linkname) else Path(member.linkname)
                    if not _inside(dest, link):
                        raise ArchiveError(f"{archive}: link {member.name!r} -> {member.linkname!r} points "
                                           f"outside the destination")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if member.issym():
                        os.symlink(member.linkname, target)
                    else:
                        shutil.copyfile(link, target)
                elif member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif member.isfile():
                    src = tar.extractfile(member)
                    assert src is not None
                    _copy(src, target, budget, member.name)
                    written.append(rel.as_posix())
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, ArchiveError):
            raise
        raise ArchiveError(f"{archive}: not a readable tar archive ({exc})") from None
    return written


def _extract_zip(archive: Path, dest: Path, keep: Callable[[PurePosixPath], bool], budget: _Budget) -> list[str]:
    written = []
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                rel = _safe_relpath(archive, info.filename)
                mode = info.external_attr >> 16
                if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
                    raise ArchiveError(f"{archive}: member {info.filename!r} is a device file or FIFO")
                if not keep(rel):
                    continue
                target = dest / rel
                if stat.S_ISLNK(mode):
                    linkname = zf.read(info).decode()
                    if not _inside(dest, target.parent / linkname) or os.path.isabs(linkname):
                        raise ArchiveError(f"{archive}: link {info.filename!r} -> {linkname!r} points outside "
                                           f"the destination")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(linkname, target)
                elif info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                else:
                    with zf.open(info) as src:
                        _copy(src, target, budget, info.filename)
                    written.append(rel.as_posix())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as exc:
        raise ArchiveError(f"{archive}: not a readable zip archive ({exc})") from None
    return written


def safe_extract(archive: str | Path, dest: str | Path, *, max_bytes: int,
                 keep: Callable[[PurePosixPath], bool] = lambda rel: True) -> list[str]:
    """Extract the members `keep` accepts into `dest`; returns the files written (relative paths)."""
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise ArchiveError(f"{archive}: archive not found")
    dest.mkdir(parents=True, exist_ok=True)
    budget = _Budget(archive, max_bytes)
    if zipfile.is_zipfile(archive):
        return _extract_zip(archive, dest, keep, budget)
    return _extract_tar(archive, dest, keep, budget)
