import io
import os
import tarfile
import zipfile

import pytest

from uad.artifacts import staged_dir
from uad.data.archive import ArchiveError, safe_extract


def make_tar(path, members, mode="w:xz"):
    """members: (name, bytes | None, dict of TarInfo attributes)."""
    with tarfile.open(path, mode) as tar:
        for name, data, attrs in members:
            info = tarfile.TarInfo(name)
            for k, v in attrs.items():
                setattr(info, k, v)
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def make_zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            if mode is not None:
                info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


def test_good_tar_extracts_only_the_selected_members(tmp_path):
    archive = make_tar(tmp_path / "a.tar.xz", [
        ("bottle/train/good/000.png", b"a", {}), ("cable/train/good/000.png", b"b", {}),
        ("./license.txt", b"c", {}), ("bottle/link", None, {"type": tarfile.SYMTYPE, "linkname": "train"})])
    written = safe_extract(archive, tmp_path / "out", max_bytes=100, keep=lambda rel: rel.parts[0] == "bottle")
    assert written == ["bottle/train/good/000.png"]
    assert not (tmp_path / "out" / "cable").exists() and not (tmp_path / "out" / "license.txt").exists()
    assert os.readlink(tmp_path / "out" / "bottle" / "link") == "train"


@pytest.mark.parametrize("member, message", [
    (("/etc/passwd", b"x", {}), "absolute path"),
    (("a/../../escape.txt", b"x", {}), "contains '..'"),
    (("evil", None, {"type": tarfile.SYMTYPE, "linkname": "../../outside"}), "points outside"),
    (("evil", None, {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}), "points outside"),
    (("hard", None, {"type": tarfile.LNKTYPE, "linkname": "../outside"}), "contains '..'|points outside"),
    (("dev", None, {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}), "device file"),
    (("blk", None, {"type": tarfile.BLKTYPE}), "device file"),
    (("fifo", None, {"type": tarfile.FIFOTYPE}), "device file or FIFO"),
])
def test_unsafe_tar_members_are_refused_and_nothing_is_left(tmp_path, member, message):
    archive = make_tar(tmp_path / "bad.tar.gz", [("ok.txt", b"fine", {}), member], mode="w:gz")
    dest = tmp_path / "data" / "raw"
    with pytest.raises(ArchiveError, match=message):
        with staged_dir(dest) as tmp:
            safe_extract(archive, tmp, max_bytes=10**6)
    assert not dest.exists() and os.listdir(tmp_path / "data") == []
    assert not (tmp_path / "outside").exists() and not (tmp_path / "escape.txt").exists()


@pytest.mark.parametrize("name, message", [("../zip-slip.txt", "contains '..'"), ("/abs.txt", "absolute path")])
def test_unsafe_zip_paths_are_refused(tmp_path, name, message):
    archive = make_zip(tmp_path / "bad.zip", [("ok.txt", b"x", None), (name, b"y", None)])
    with pytest.raises(ArchiveError, match=message):
        safe_extract(archive, tmp_path / "out", max_bytes=100)
    assert not (tmp_path / "zip-slip.txt").exists()


def test_zip_symlink_outside_is_refused(tmp_path):
    archive = make_zip(tmp_path / "bad.zip", [("link", b"../../etc", 0o120777)])
    with pytest.raises(ArchiveError, match="points outside"):
        safe_extract(archive, tmp_path / "out", max_bytes=100)


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_extracted_size_limit(tmp_path, kind):
    members = [(f"f{i}.bin", b"\0" * 4000) for i in range(5)]
    if kind == "tar":
        archive = make_tar(tmp_path / "big.tar.xz", [(n, d, {}) for n, d in members])
    else:
        archive = make_zip(tmp_path / "big.zip", [(n, d, None) for n, d in members])
    dest = tmp_path / "raw"
    with pytest.raises(ArchiveError, match="extracted size exceeds the limit of 10000 bytes"):
        with staged_dir(dest) as tmp:
            safe_extract(archive, tmp, max_bytes=10_000)
    assert not dest.exists()
    assert len(safe_extract(archive, tmp_path / "ok", max_bytes=20_000)) == 5


def test_corrupt_archives_are_named(tmp_path):
    bad = tmp_path / "broken.tar.xz"
    bad.write_bytes(b"\xfd7zXZ\x00garbage" * 10)
    with pytest.raises(ArchiveError, match="broken.tar.xz: not a readable tar archive"):
        safe_extract(bad, tmp_path / "out", max_bytes=100)
    good = make_tar(tmp_path / "t.tar.xz", [("a.bin", os.urandom(50_000), {})])
    truncated = tmp_path / "truncated.tar.xz"
    truncated.write_bytes(good.read_bytes()[:20_000])
    with pytest.raises(ArchiveError, match="truncated.tar.xz: not a readable tar archive"):
        safe_extract(truncated, tmp_path / "out2", max_bytes=10**6)
