"""Safe extraction: crafted tar and zip archives write nothing outside their folder."""

import io
import os
import tarfile
import time
import zipfile

import pytest

from uad.artifacts import staged_dir
from uad.data.archive import MEMBER_OVERHEAD, ArchiveError, archive_format, check_complete, safe_extract


def make_tar(path, members, mode="w:xz"):
    """members: (name, bytes | None, dict of TarInfo attributes)."""
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tar:
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


def make_zip(path, members, compression=zipfile.ZIP_STORED):
    """members: (name, bytes, unix mode or None)."""
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            info.compress_type = compression
            if mode is not None:
                info.create_system = 3
                info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


SYMLINK = 0o120777


def tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_good_tar_extracts_only_the_selected_members(tmp_path):
    archive = make_tar(tmp_path / "a.tar.xz", [
        ("bottle/train/good/000.png", b"a", {}), ("cable/train/good/000.png", b"b", {}),
        ("./license.txt", b"c", {}), ("bottle/test", None, {"type": tarfile.DIRTYPE})])
    written = safe_extract(archive, tmp_path / "out", max_bytes=10_000, keep=lambda rel: rel.parts[0] == "bottle")
    assert written == ["bottle/train/good/000.png"]
    assert tree(tmp_path / "out") == ["bottle", "bottle/test", "bottle/train", "bottle/train/good",
                                      "bottle/train/good/000.png"]
    assert (tmp_path / "out" / "bottle" / "train" / "good" / "000.png").read_bytes() == b"a"


def test_good_zip_extracts_with_folders(tmp_path):
    archive = make_zip(tmp_path / "a.zip", [("top/", b"", None), ("top/a/b.txt", b"hello", 0o100644)],
                       zipfile.ZIP_DEFLATED)
    assert safe_extract(archive, tmp_path / "out", max_bytes=10_000) == ["top/a/b.txt"]
    assert (tmp_path / "out" / "top" / "a" / "b.txt").read_bytes() == b"hello"


def chain_members(payload_path: str):
    """The link chain of the reported escape: s -> ., s/u1 -> .., u1/u2 -> .., u1/u2/u3 -> .., then a
    file written through u1/u2/u3/ lands three folders above the extraction folder."""
    return [("s", "."), ("s/u1", ".."), ("u1/u2", ".."), ("u1/u2/u3", "..")], f"u1/u2/u3/{payload_path}"


def _victim_repo(tmp_path):
    """A repository with a stage script, and an empty extraction folder three levels below it."""
    repo = tmp_path / "repo"
    (repo / "stages").mkdir(parents=True)
    (repo / "stages" / "prepare.py").write_text("print('the real stage')\n")
    dest = repo / "data" / "raw" / "mtd"
    dest.parent.mkdir(parents=True)
    return repo, dest


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_chained_symlink_escape_is_refused_and_writes_nothing(tmp_path, kind):
    repo, dest = _victim_repo(tmp_path)
    links, payload = chain_members("stages/prepare.py")
    if kind == "tar":
        archive = make_tar(tmp_path / "evil.tar.gz", [
            *[(name, None, {"type": tarfile.SYMTYPE, "linkname": target}) for name, target in links],
            (payload, b"import os  # attacker's code\n", {}), ("u1/u2/u3/pwned.txt", b"x", {})], mode="w:gz")
    else:
        archive = make_zip(tmp_path / "evil.zip", [
            *[(name, target.encode(), SYMLINK) for name, target in links],
            (payload, b"import os  # attacker's code\n", 0o100644), ("u1/u2/u3/pwned.txt", b"x", 0o100644)])
    before = tree(tmp_path)
    with pytest.raises(ArchiveError, match="'s' is a symbolic link; extraction refuses links"):
        with staged_dir(dest) as tmp:
            safe_extract(archive, tmp, max_bytes=10**6)
    assert (repo / "stages" / "prepare.py").read_text() == "print('the real stage')\n"
    assert tree(tmp_path) == before, "nothing may be written anywhere, inside or outside"


def test_tar_hard_links_are_refused_even_inside(tmp_path):
    archive = make_tar(tmp_path / "h.tar", [("a.bin", b"x" * 1000, {}),
                                            ("b.bin", None, {"type": tarfile.LNKTYPE, "linkname": "a.bin"})],
                       mode="w")
    with pytest.raises(ArchiveError, match="'b.bin' is a hard link"):
        safe_extract(archive, tmp_path / "out", max_bytes=10**6)


def test_hard_links_through_a_chain_cannot_copy_outside_files_in(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    archive = make_tar(tmp_path / "h.tar", [("s", None, {"type": tarfile.SYMTYPE, "linkname": "."}),
                                            ("copy", None, {"type": tarfile.LNKTYPE, "linkname": "s/../secret.txt"})],
                       mode="w")
    with pytest.raises(ArchiveError, match="link"):
        safe_extract(archive, tmp_path / "out", max_bytes=10**6)
    assert not (tmp_path / "out" / "copy").exists()


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_a_link_that_stays_inside_is_refused_too(tmp_path, kind):
    if kind == "tar":
        archive = make_tar(tmp_path / "in.tar", [("bottle/a.png", b"a", {}),
                                                 ("bottle/b.png", None, {"type": tarfile.SYMTYPE,
                                                                         "linkname": "a.png"})], mode="w")
    else:
        archive = make_zip(tmp_path / "in.zip", [("bottle/a.png", b"a", None), ("bottle/b.png", b"a.png", SYMLINK)])
    with pytest.raises(ArchiveError, match="'bottle/b.png' is a symbolic link"):
        safe_extract(archive, tmp_path / "out", max_bytes=10**6)


def test_links_are_refused_even_in_members_that_are_not_kept(tmp_path):
    archive = make_tar(tmp_path / "a.tar", [("cable/x", None, {"type": tarfile.SYMTYPE, "linkname": "/etc"})],
                       mode="w")
    with pytest.raises(ArchiveError, match="symbolic link"):
        safe_extract(archive, tmp_path / "out", max_bytes=10**6, keep=lambda rel: rel.parts[0] == "bottle")


def test_a_zip_symlink_with_a_huge_or_nul_target_is_refused_unread(tmp_path):
    huge = make_zip(tmp_path / "huge.zip", [("link", b"a" * 20_000_000, SYMLINK)], zipfile.ZIP_DEFLATED)
    assert huge.stat().st_size < 200_000
    start = time.perf_counter()
    with pytest.raises(ArchiveError) as info:
        safe_extract(huge, tmp_path / "out", max_bytes=10**6)
    assert time.perf_counter() - start < 2 and len(str(info.value)) < 400
    nul = make_zip(tmp_path / "nul.zip", [("link", b"a\0b", SYMLINK)])
    with pytest.raises(ArchiveError, match="symbolic link"):
        safe_extract(nul, tmp_path / "out2", max_bytes=10**6)


@pytest.mark.parametrize("member, message", [
    (("/etc/passwd", b"x", {}), "absolute path"),
    (("a/../../escape.txt", b"x", {}), "contains '..'"),
    (("evil", None, {"type": tarfile.SYMTYPE, "linkname": "../../outside"}), "symbolic link"),
    (("dev", None, {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}), "device file"),
    (("blk", None, {"type": tarfile.BLKTYPE}), "device file"),
    (("fifo", None, {"type": tarfile.FIFOTYPE}), "device file or FIFO"),
    (("bad\x07name", b"x", {}), "control character"),
])
def test_unsafe_tar_members_are_refused_and_nothing_is_left(tmp_path, member, message):
    archive = make_tar(tmp_path / "bad.tar.gz", [("ok.txt", b"fine", {}), member], mode="w:gz")
    dest = tmp_path / "data" / "raw"
    with pytest.raises(ArchiveError, match=message):
        with staged_dir(dest) as tmp:
            safe_extract(archive, tmp, max_bytes=10**6)
    assert not dest.exists() and os.listdir(tmp_path / "data") == []
    assert not (tmp_path / "outside").exists() and not (tmp_path / "escape.txt").exists()


@pytest.mark.parametrize("name, message", [("../zip-slip.txt", "contains '..'"), ("/abs.txt", "absolute path"),
                                           ("C:/win.txt", "absolute path")])
def test_unsafe_zip_paths_are_refused(tmp_path, name, message):
    archive = make_zip(tmp_path / "bad.zip", [("ok.txt", b"x", None), (name, b"y", None)])
    with pytest.raises(ArchiveError, match=message):
        safe_extract(archive, tmp_path / "out", max_bytes=100_000)
    assert not (tmp_path / "zip-slip.txt").exists()


def test_a_file_where_a_folder_is_needed_is_an_error_not_a_traceback(tmp_path):
    archive = make_tar(tmp_path / "a.tar", [("a", b"file", {}), ("a/b.txt", b"x", {})], mode="w")
    with pytest.raises(ArchiveError, match="lies below 'a', which is not a folder"):
        safe_extract(archive, tmp_path / "out", max_bytes=10**6)


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
    assert len(safe_extract(archive, tmp_path / "ok", max_bytes=20_000 + 5 * MEMBER_OVERHEAD)) == 5


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_every_member_counts_even_empty_and_unkept_ones(tmp_path, kind):
    names = [f"d{i}/" if kind == "zip" else f"e{i}.txt" for i in range(400)]
    if kind == "tar":
        archive = make_tar(tmp_path / "many.tar", [(n, b"", {}) for n in names], mode="w")
    else:
        archive = make_zip(tmp_path / "many.zip", [(n, b"", None) for n in names])
    with pytest.raises(ArchiveError, match="exceeds the limit of 100000 bytes"):
        safe_extract(archive, tmp_path / "out", max_bytes=100_000, keep=lambda rel: False)


def test_a_zip_that_lies_about_sizes_is_caught_while_streaming(tmp_path):
    archive = make_zip(tmp_path / "bomb.zip", [("zeros.bin", b"\0" * 5_000_000, None)], zipfile.ZIP_DEFLATED)
    assert archive.stat().st_size < 50_000
    with pytest.raises(ArchiveError, match="exceeds the limit of 1000000 bytes"):
        safe_extract(archive, tmp_path / "out", max_bytes=1_000_000)


def test_error_messages_stay_short_whatever_the_member_name(tmp_path):
    long = "x" * 50_000 + "/" + "../" * 10 + "f"
    archive = make_tar(tmp_path / "long.tar", [(long, b"x", {})], mode="w")
    with pytest.raises(ArchiveError) as info:
        safe_extract(archive, tmp_path / "out", max_bytes=10**6)
    assert "contains '..'" in str(info.value) and len(str(info.value)) < 400


def test_formats_are_told_apart_by_content(tmp_path):
    rnd = tmp_path / "random.tar.xz"
    rnd.write_bytes(os.urandom(4096))
    with pytest.raises(ArchiveError, match="random.tar.xz: not a zip or tar archive"):
        safe_extract(rnd, tmp_path / "out", max_bytes=100)
    zipped = make_zip(tmp_path / "named-like-a.tar.gz", [("a.txt", b"x", None)])
    assert archive_format(zipped) == "zip"
    assert safe_extract(zipped, tmp_path / "out2", max_bytes=10_000) == ["a.txt"]
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(make_zip(tmp_path / "d.zip", [("a.bin", os.urandom(5000), None)]).read_bytes()[:3000])
    with pytest.raises(ArchiveError, match="damaged.zip: not a readable zip archive"):
        safe_extract(damaged, tmp_path / "out3", max_bytes=10**6)


def test_corrupt_tar_archives_are_named(tmp_path):
    bad = tmp_path / "broken.tar.xz"
    bad.write_bytes(b"\xfd7zXZ\x00garbage" * 10)
    with pytest.raises(ArchiveError, match="broken.tar.xz: not a readable tar archive"):
        safe_extract(bad, tmp_path / "out", max_bytes=100)
    good = make_tar(tmp_path / "t.tar.xz", [("a.bin", os.urandom(50_000), {})])
    truncated = tmp_path / "truncated.tar.xz"
    truncated.write_bytes(good.read_bytes()[:20_000])
    with pytest.raises(ArchiveError, match="truncated.tar.xz: not a readable tar archive"):
        safe_extract(truncated, tmp_path / "out2", max_bytes=10**6)


def test_extraction_needs_an_empty_folder(tmp_path):
    archive = make_tar(tmp_path / "a.tar", [("a.txt", b"x", {})], mode="w")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with pytest.raises(ArchiveError, match="extraction needs an empty folder"):
        safe_extract(archive, tmp_path / "out", max_bytes=10**6)


@pytest.mark.parametrize("suffix, mode", [(".zip", None), (".tar.gz", "w:gz"), (".tar.xz", "w:xz")])
def test_check_complete_tells_a_whole_archive_from_a_cut_one(tmp_path, suffix, mode):
    payload = os.urandom(200_000)
    if mode is None:
        whole = make_zip(tmp_path / f"whole{suffix}", [("a.bin", payload, None), ("b.bin", payload, None)])
    else:
        whole = make_tar(tmp_path / f"whole{suffix}", [("a.bin", payload, {}), ("b.bin", payload, {})], mode=mode)
    check_complete(whole)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    with pytest.raises(ArchiveError, match=f"cut{suffix.replace('.', '[.]')}: not a (complete|readable)"):
        check_complete(cut)
