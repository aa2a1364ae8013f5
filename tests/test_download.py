import hashlib
import io
import os
import zipfile

import pytest

from uad.data.archive import check_complete
from uad.data.download import DownloadError, download

from .httpserver import LocalServer, Resource

DATA = os.urandom(3 * 1024 * 1024 + 123)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def server():
    with LocalServer() as srv:
        yield srv


def fetch(url, dest, **kw):
    kw.setdefault("retry_wait", 0.01)
    kw.setdefault("progress", False)
    return download(url, dest, **kw)


def test_full_download_verifies_and_leaves_no_partial_file(server, tmp_path):
    res = server.add("/a.bin", Resource(DATA))
    out = fetch(server.url("/a.bin"), tmp_path / "a.bin", size=len(DATA), sha256=SHA)
    assert out.read_bytes() == DATA and not (tmp_path / "a.bin.part").exists()
    assert res.requests == [None]
    # a verified file is reused without touching the network
    fetch(server.url("/a.bin"), tmp_path / "a.bin", size=len(DATA), sha256=SHA)
    assert len(res.requests) == 1


def test_resumes_after_a_cut_connection(server, tmp_path):
    res = server.add("/a.bin", Resource(DATA, cut_first=1_000_000))
    out = fetch(server.url("/a.bin"), tmp_path / "a.bin", sha256=SHA)
    assert out.read_bytes() == DATA
    assert res.requests[0] is None and res.requests[1] == "bytes=1000000-"


def test_resumes_a_partial_file_left_by_an_earlier_run(server, tmp_path):
    (tmp_path / "a.bin.part").write_bytes(DATA[:2_000_000])
    res = server.add("/a.bin", Resource(DATA))
    assert fetch(server.url("/a.bin"), tmp_path / "a.bin", sha256=SHA).read_bytes() == DATA
    assert res.requests == ["bytes=2000000-"]


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    (tmp_path / "a.bin.part").write_bytes(b"x" * 1000)
    server.add("/a.bin", Resource(DATA, ignore_range=True))
    assert fetch(server.url("/a.bin"), tmp_path / "a.bin", sha256=SHA).read_bytes() == DATA


def test_checksum_mismatch_is_an_error_and_deletes_the_file(server, tmp_path):
    server.add("/a.bin", Resource(DATA))
    with pytest.raises(DownloadError, match="SHA-256 mismatch"):
        fetch(server.url("/a.bin"), tmp_path / "a.bin", sha256="0" * 64)
    assert not (tmp_path / "a.bin").exists() and not (tmp_path / "a.bin.part").exists()


def test_wrong_size_reported_by_the_server(server, tmp_path):
    server.add("/a.bin", Resource(DATA))
    with pytest.raises(DownloadError, match=f"server reports {len(DATA)} bytes, expected 5"):
        fetch(server.url("/a.bin"), tmp_path / "a.bin", size=5)
    assert not (tmp_path / "a.bin").exists()


def test_a_truncated_transfer_is_never_taken_for_complete(server, tmp_path):
    # every response breaks off after 100 kB: retries run out, nothing is renamed into place,
    # and the partial file stays for the next run to resume
    res = server.add("/a.bin", Resource(DATA, cut_every=100_000))
    with pytest.raises(DownloadError, match="failed after 3 attempts.*next run resumes it"):
        fetch(server.url("/a.bin"), tmp_path / "a.bin", retries=2, timeout=2, sha256=SHA)
    assert not (tmp_path / "a.bin").exists()
    assert (tmp_path / "a.bin.part").read_bytes() == DATA[:300_000]
    assert res.requests == [None, "bytes=100000-", "bytes=200000-"]


def test_a_server_that_claims_more_than_it_has_is_not_trusted(server, tmp_path):
    # announces 10 bytes more than it sends; after the break the server says the file is complete
    server.add("/a.bin", Resource(DATA, claimed_length=len(DATA) + 10))
    assert fetch(server.url("/a.bin"), tmp_path / "a.bin", sha256=SHA).read_bytes() == DATA


@pytest.mark.parametrize("status", [403, 404])
def test_http_client_errors_fail_at_once(server, tmp_path, status):
    res = server.add("/a.bin", Resource(DATA, status=status))
    with pytest.raises(DownloadError, match=f"HTTP {status}"):
        fetch(server.url("/a.bin"), tmp_path / "a.bin", sha256=SHA)
    assert len(res.requests) == 1 and not (tmp_path / "a.bin").exists()


def test_server_errors_are_retried_then_reported(server, tmp_path):
    res = server.add("/a.bin", Resource(DATA, status=503))
    with pytest.raises(DownloadError, match="failed after 3 attempts; last error: HTTP 503.*Nothing was kept"):
        fetch(server.url("/a.bin"), tmp_path / "a.bin", retries=2, sha256=SHA)
    assert not (tmp_path / "a.bin.part").exists()
    assert len(res.requests) == 3


def test_a_stalled_server_times_out_and_the_download_resumes(server, tmp_path):
    res = server.add("/a.bin", Resource(DATA, stall_first=500_000))
    out = fetch(server.url("/a.bin"), tmp_path / "a.bin", sha256=SHA, timeout=0.5)
    assert out.read_bytes() == DATA
    assert res.requests[1] == "bytes=500000-"


def test_unreachable_host_is_reported_with_the_url(tmp_path):
    with pytest.raises(DownloadError, match="127.0.0.1:9/x.bin: failed after 2 attempts.*Nothing was kept"):
        fetch("http://127.0.0.1:9/x.bin", tmp_path / "x.bin", retries=1, timeout=1, sha256=SHA)


def test_a_download_needs_some_evidence_of_completeness(tmp_path):
    with pytest.raises(ValueError, match="needs a size, a SHA-256 or a completeness check"):
        fetch("http://127.0.0.1:9/x.bin", tmp_path / "x.bin")


def zip_bytes(n_files=4, size=300_000) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(n_files):
            zf.writestr(f"d/{i}.bin", os.urandom(size))
    return buf.getvalue()


ZIP = zip_bytes()


def test_a_transfer_cut_without_content_length_is_resumed_not_promoted(server, tmp_path):
    # GitHub's archives come without a Content-Length: the end of the connection is all the client
    # sees. The archive's structure tells the cut file from the whole one, and the rest is resumed.
    res = server.add("/m.zip", Resource(ZIP, no_length=True, cut_first=500_000))
    out = fetch(server.url("/m.zip"), tmp_path / "m.zip", complete=check_complete)
    assert out.read_bytes() == ZIP
    assert res.requests == [None, "bytes=500000-"]


def test_a_cut_transfer_from_a_server_without_range_is_never_cached(server, tmp_path):
    res = server.add("/m.zip", Resource(ZIP, no_length=True, cut_every=500_000, ignore_range=True))
    with pytest.raises(DownloadError, match="failed after 3 attempts.*without a length and the file is incomplete"):
        fetch(server.url("/m.zip"), tmp_path / "m.zip", complete=check_complete, retries=2)
    assert not (tmp_path / "m.zip").exists() and len(res.requests) == 3
    # the next run, against a server that now delivers, gets the whole file
    server.add("/m.zip", Resource(ZIP, no_length=True))
    assert fetch(server.url("/m.zip"), tmp_path / "m.zip", complete=check_complete).read_bytes() == ZIP


def test_a_whole_transfer_that_is_not_an_archive_is_deleted(server, tmp_path):
    server.add("/m.zip", Resource(b"<html>rate limited</html>" * 100))
    with pytest.raises(DownloadError, match="the server sent the whole file but it is not usable.*not a zip or tar"):
        fetch(server.url("/m.zip"), tmp_path / "m.zip", complete=check_complete)
    assert not (tmp_path / "m.zip").exists() and not (tmp_path / "m.zip.part").exists()


def test_a_damaged_cached_file_is_replaced(server, tmp_path):
    res = server.add("/m.zip", Resource(ZIP))
    (tmp_path / "m.zip").write_bytes(ZIP[:400_000])  # what an older, careless run might have left
    assert fetch(server.url("/m.zip"), tmp_path / "m.zip", complete=check_complete).read_bytes() == ZIP
    assert len(res.requests) == 1
