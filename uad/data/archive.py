"""Safe extraction of tar (any compression) and zip archives into an empty folder.

What extraction refuses, before anything of the offending member is written:
- links of every kind, symbolic and hard, in tar and zip: MVTec AD and MTD hold none,
  and links are how a crafted archive writes or reads outside its folder (a chain of
  links that each look harmless, then files written through them);
- absolute paths, `..` components, and names with NUL or other control characters;
- device files, FIFOs and members of any other special type;
- more than `max_bytes` in total: every member counts, its data as it streams (so a zip
  whose headers lie about sizes is caught) plus `MEMBER_OVERHEAD` bytes for its header
  (so a million empty members count too).
Only folders and regular files are created, files with O_NOFOLLOW | O_EXCL under
folders this function made; ownership and permission bits from the archive are
ignored. Error messages name the archive and the member, shortened to a bounded
length. Callers extract into a staging folder (`uad.artifacts.staged_dir`), so a
refused archive leaves nothing behind.
"""

from __future__ import annotations

import lzma
import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import IO

from uad.errors import UadError, shorten

MEMBER_OVERHEAD = 512  # bytes counted per member on top of its data: one tar header block


class ArchiveError(UadError, ValueError):
    """An archive that is unsafe or unreadable; the message names the archive and the member."""


def _safe_relpath(archive: Path, name: str) -> PurePosixPath:
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise ArchiveError(f"{archive}: member {shorten(name)} has a control character in its name")
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"{archive}: member {shorten(name)} has an absolute path")
    if ".." in path.parts:
        raise ArchiveError(f"{archive}: member {shorten(name)} contains '..'")
    parts = [p for p in path.parts if p not in ("", ".")]
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


class _Writer:
    """Creates the folders and files of one extraction below `dest`, counting bytes against a limit."""

    def __init__(self, archive: Path, dest: Path, limit: int):
        self.archive, self.dest, self.limit, self.used = archive, dest, limit, 0
        self.written: list[str] = []

    def count(self, n: int, member: str) -> None:
        self.used += n
        if self.limit and self.used > self.limit:
            raise ArchiveError(f"{self.archive}: extracted size exceeds the limit of {self.limit} bytes "
                               f"(at member {shorten(member)}); raise max_extracted_bytes if the archive "
                               f"is trusted")

    def _parent(self, rel: PurePosixPath, member: str) -> Path:
        """The member's folder, created one real (non-link) directory at a time below dest."""
        folder = self.dest
        for part in rel.parts[:-1]:
            folder = folder / part
            try:
                os.mkdir(folder, 0o755)
            except FileExistsError:
                pass
            if folder.is_symlink() or not folder.is_dir():
                raise ArchiveError(f"{self.archive}: member {shorten(member)} lies below {shorten(part)}, "
                                   f"which is not a folder")
        return folder

    def folder(self, rel: PurePosixPath, member: str) -> None:
        if rel != PurePosixPath("."):
            self._parent(rel / "_", member)

    def file(self, rel: PurePosixPath, src: IO[bytes], member: str) -> None:
        if rel == PurePosixPath("."):
            raise ArchiveError(f"{self.archive}: member {shorten(member)} is a file without a name")
        target = self._parent(rel, member) / rel.name
        if target.exists() or target.is_symlink():
            if target.is_symlink() or not target.is_file():
                raise ArchiveError(f"{self.archive}: member {shorten(member)} would replace a folder")
            target.unlink()  # a later copy of the same name wins, as with tar itself
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as out:
            while block := src.read(1 << 20):
                self.count(len(block), member)
                out.write(block)
        self.written.append(rel.as_posix())


def _refuse_special(archive: Path, name: str, kind: str) -> None:
    raise ArchiveError(f"{archive}: member {shorten(name)} is a {kind}; extraction refuses links, devices "
                       f"and other special members (MVTec AD and MTD hold none)")


def _extract_tar(archive: Path, writer: _Writer, keep: Callable[[PurePosixPath], bool]) -> None:
    with tarfile.open(archive, "r|*") as tar:  # streaming: one pass, even over .tar.xz
        for member in tar:
            rel = _safe_relpath(archive, member.name)
            if member.issym():
                _refuse_special(archive, member.name, "symbolic link")
            if member.islnk():
                _refuse_special(archive, member.name, "hard link")
            if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
                _refuse_special(archive, member.name, "device file or FIFO")
            if not (member.isdir() or member.isfile()):
                _refuse_special(archive, member.name, f"member of tar type {member.type!r}")
            writer.count(MEMBER_OVERHEAD, member.name)
            if not keep(rel):
                continue
            if member.isdir():
                writer.folder(rel, member.name)
            else:
                src = tar.extractfile(member)
                assert src is not None
                writer.file(rel, src, member.name)


def _extract_zip(archive: Path, writer: _Writer, keep: Callable[[PurePosixPath], bool]) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            rel = _safe_relpath(archive, info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                _refuse_special(archive, info.filename, "symbolic link")
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                _refuse_special(archive, info.filename, "device file, FIFO or socket")
            writer.count(MEMBER_OVERHEAD, info.filename)
            if not keep(rel):
                continue
            if info.is_dir():
                writer.folder(rel, info.filename)
            else:
                with zf.open(info) as src:
                    writer.file(rel, src, info.filename)


_TAR_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


def archive_format(archive: str | Path) -> str:
    """'zip' or 'tar' from the file's own bytes (not its name); ArchiveError for anything else."""
    archive = Path(archive)
    with open(archive, "rb") as f:
        head = f.read(512)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(_TAR_MAGIC) or head[257:262] == b"ustar":
        return "tar"
    if zipfile.is_zipfile(archive):  # a zip behind a prefix (self-extracting archives)
        return "zip"
    try:
        if tarfile.is_tarfile(archive):  # old tar formats without the ustar magic
            return "tar"
    except (OSError, EOFError, ValueError):
        pass
    raise ArchiveError(f"{archive}: not a zip or tar archive (format not recognised from its first bytes)")


_READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, RuntimeError,
                NotImplementedError, lzma.LZMAError, zlib.error, UnicodeDecodeError)


def safe_extract(archive: str | Path, dest: str | Path, *, max_bytes: int,
                 keep: Callable[[PurePosixPath], bool] = lambda rel: True) -> list[str]:
    """Extract the members `keep` accepts into the empty folder `dest`; returns the files written.

    Every member is checked (and counted against `max_bytes`) whether kept or not.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise ArchiveError(f"{archive}: archive not found")
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ArchiveError(f"{dest}: extraction needs an empty folder")
    kind = archive_format(archive)
    writer = _Writer(archive, dest, max_bytes)
    try:
        (_extract_zip if kind == "zip" else _extract_tar)(archive, writer, keep)
    except ArchiveError:
        raise
    except _READ_ERRORS as exc:
        raise ArchiveError(f"{archive}: not a readable {kind} archive ({shorten(str(exc), 200, quote=False)})") \
            from None
    return writer.written


def check_complete(archive: str | Path) -> None:
    """Read the whole archive without writing anything: ArchiveError if it is not a complete zip or
    tar (a transfer cut short fails here). The structure is the only completeness evidence for a
    download with neither a known size nor a checksum."""
    archive = Path(archive)
    kind = archive_format(archive)
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                bad = zf.testzip()
            if bad is not None:
                raise ArchiveError(f"{archive}: member {shorten(bad)} fails its CRC check; the archive is damaged")
        else:
            with tarfile.open(archive, "r|*") as tar:
                for member in tar:
                    if member.isfile():
                        src = tar.extractfile(member)
                        while src is not None and src.read(1 << 20):
                            pass
    except ArchiveError:
        raise
    except _READ_ERRORS as exc:
        raise ArchiveError(f"{archive}: not a complete {kind} archive ({shorten(str(exc), 200, quote=False)})") \
            from None
