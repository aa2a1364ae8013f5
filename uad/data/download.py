"""Resumable, verified HTTP downloads.

The file appears at its final path only once its completeness is verified:
by its size or SHA-256 when they are known, otherwise by `complete`, a check
of the file's own structure (for archives: `uad.data.archive.check_complete`).
Until then it is `<name>.part`. An interrupted or stalled transfer resumes
with an HTTP Range request, also one that ended without a Content-Length and
left an incomplete archive; a server that ignores Range restarts cleanly from
zero. A file that fails its checks is deleted, so it is never reused.
"""

from __future__ import annotations

import hashlib
import http.client
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from uad.errors import UadError, shorten

TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}
CHUNK = 1 << 20


class DownloadError(UadError, RuntimeError):
    """A download that failed or did not verify; the message names the URL and the reason."""


class _Retry(Exception):
    """A transient failure: resume from what is on disk."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK * 8):
            h.update(block)
    return h.hexdigest()


def check_file(path: Path, size: int = 0, sha256: str = "") -> None:
    """Raise DownloadError if `path` has another size or SHA-256 than expected (empty = not checked)."""
    actual = path.stat().st_size
    if size and actual != size:
        raise DownloadError(f"{path}: {actual} bytes, expected {size}")
    if sha256:
        digest = sha256_file(path)
        if digest != sha256.lower():
            raise DownloadError(f"{path}: SHA-256 mismatch (expected {sha256}, got {digest})")


def _verify(path: Path, url: str, size: int, sha256: str) -> None:
    """Check a downloaded file; a bad one is deleted so that it is never reused."""
    try:
        check_file(path, size, sha256)
    except DownloadError as exc:
        path.unlink()
        raise DownloadError(f"{url}: {exc}; the file was deleted") from None


def _structure_ok(path: Path, complete: Callable[[Path], None] | None) -> str | None:
    """None when `complete` accepts the file, else its reason."""
    if complete is None:
        return None
    try:
        complete(path)
    except UadError as exc:
        return str(exc)
    return None


def _fetch_once(url: str, part: Path, size: int, timeout: float, progress: bool) -> bool:
    """One request from where `part` ends; True if the server says the file is complete."""
    offset = part.stat().st_size if part.exists() else 0
    if size and offset > size:  # cannot be a prefix of the right file
        part.unlink()
        offset = 0
    if size and offset == size:
        return True
    headers = {"User-Agent": "uad-downloader/1"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # "range not satisfiable": complete only if the server says so
            total = (exc.headers.get("Content-Range") or "").rpartition("/")[2]
            if total.isdigit() and int(total) == offset:
                return True
            part.unlink()
            raise _Retry(f"server cannot resume at byte {offset} (total {total or 'unknown'}); restarting") from None
        if exc.code in TRANSIENT_HTTP:
            raise _Retry(f"HTTP {exc.code} {exc.reason}") from None
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        raise _Retry(f"{type(exc).__name__}: {exc}") from None
    with response:
        if offset and response.status != 206:  # server ignored Range: start over
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        if size and total is not None and total != size:
            raise DownloadError(f"{url}: server reports {total} bytes, expected {size}")
        received = 0
        with open(part, "ab" if offset else "wb") as out, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=part.name[:-5],
                disable=not progress, file=sys.stderr, mininterval=1.0) as bar:
            while True:
                try:
                    block = response.read1(CHUNK)  # whatever has arrived: a stall loses nothing
                except (TimeoutError, ConnectionError, OSError, http.client.HTTPException) as exc:
                    raise _Retry(f"connection lost after {offset + received} bytes ({exc})") from None
                if not block:
                    break
                out.write(block)
                received += len(block)
                bar.update(len(block))
        if length is not None and received != int(length):
            raise _Retry(f"connection closed after {offset + received} of {total} bytes")
        return length is not None


def download(url: str, dest: str | Path, *, size: int = 0, sha256: str = "",
             complete: Callable[[Path], None] | None = None, timeout: float = 60.0, retries: int = 5,
             retry_wait: float = 2.0, progress: bool = True) -> Path:
    """Download `url` to `dest` (resuming `dest.part`), verify it, then rename it into place.

    Verified means: the expected `size` and `sha256` where given, and `complete(path)` (which
    raises a UadError for an incomplete or damaged file) where given; at least one of the three
    is required, since a transfer that ends without a Content-Length proves nothing. An existing
    `dest` is verified the same way and reused without touching the network, or replaced.
    """
    if not (size or sha256 or complete):
        raise ValueError("download needs a size, a SHA-256 or a completeness check")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        try:
            _verify(dest, str(dest), size, sha256)
            reason = _structure_ok(dest, complete)
            if reason is None:
                return dest
            dest.unlink()
            print(f"download: cached {dest} is unusable ({reason}); it was deleted, downloading again",
                  file=sys.stderr)
        except DownloadError as exc:
            print(f"download: {exc}; downloading again", file=sys.stderr)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            announced = _fetch_once(url, part, size, timeout, progress)
            if not (size or sha256):  # the structure is the only evidence of completeness
                reason = _structure_ok(part, complete)
                if reason is not None and announced:  # the server says this is all: it is damaged
                    part.unlink()
                    raise DownloadError(f"{url}: the server sent the whole file but it is not usable "
                                        f"({reason}); the file was deleted")
                if reason is not None:
                    raise _Retry(f"the transfer ended after {part.stat().st_size} bytes without a length "
                                 f"and the file is incomplete ({reason})")
            break
        except _Retry as exc:
            if attempt == retries:
                kept = (f"The partial file {part} is kept and the next run resumes it"
                        if part.exists() and part.stat().st_size else "Nothing was kept")
                raise DownloadError(f"{url}: failed after {retries + 1} attempts; last error: "
                                    f"{shorten(str(exc), 400, quote=False)}. {kept}") from None
            print(f"download: {exc}; resuming (attempt {attempt + 2} of {retries + 1})", file=sys.stderr)
            time.sleep(retry_wait * (attempt + 1))
    _verify(part, url, size, sha256)
    part.rename(dest)
    return dest
