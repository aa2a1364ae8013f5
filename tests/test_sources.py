"""The download stage's dataset sources: MVTec AD archive over HTTP, Magnetic Tile Defects, folders."""

import hashlib
import io
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from uad.data import mtd
from uad.data.download import DownloadError
from uad.data.layout import LayoutError, scan_category
from uad.data.prepared import DataError, load_split, prepare_category
from uad.data.sources import acquire, cache_name

from .conftest import SHARED, tiny_config
from .httpserver import LocalServer, Resource
from .test_layout_prepare import make_category

SHARED_MTD = SHARED / "datasets" / "mtd"


def png_bytes(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def fake_mvtec_tar(path, categories=("bottle", "cable")):
    """A miniature archive laid out like the official one."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:xz") as tar:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add("license.txt", b"CC BY-NC-SA 4.0")
        for cat in categories:
            for split in ("train/good/000.png", "train/good/001.png", "test/good/000.png", "test/crack/000.png"):
                add(f"{cat}/{split}", png_bytes(rng.integers(0, 255, (16, 16, 3), np.uint8)))
            mask = np.zeros((16, 16), np.uint8)
            mask[4:8, 4:8] = 255
            add(f"{cat}/ground_truth/crack/000_mask.png", png_bytes(mask))
    return path


def mvtec_config(tmp_path, url, data, **overrides):
    return tiny_config(dataset="mvtec_ad", categories=["bottle"], data={
        "downloads": str(tmp_path / "downloads"), "http": {"timeout": 5, "retries": 1},
        "mvtec_ad": {"url": url, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), **overrides}})


def test_mvtec_download_verifies_and_extracts_only_selected_categories(tmp_path):
    archive = fake_mvtec_tar(tmp_path / "mvtec.tar.xz")
    data = archive.read_bytes()
    with LocalServer() as server:
        res = server.add("/mvtec_anomaly_detection.tar.xz", Resource(data))
        cfg = mvtec_config(tmp_path, server.url("/mvtec_anomaly_detection.tar.xz"), data)
        raw = acquire(cfg, tmp_path / "raw" / "mvtec_ad")
        assert sorted(p.name for p in raw.iterdir()) == ["bottle"]
        assert len(scan_category(raw / "bottle").test) == 2
        cached = tmp_path / "downloads" / cache_name(cfg.data.mvtec_ad.url, "mvtec_anomaly_detection.tar.xz")
        assert cached.read_bytes() == data and cached.name.startswith("mvtec_anomaly_detection-")
        assert (cached.parent / (cached.name + ".source")).read_text().strip() == cfg.data.mvtec_ad.url
        # a second run (say, after adding a category) reuses the verified archive
        again = mvtec_config(tmp_path, cfg.data.mvtec_ad.url, data)
        acquire(tiny_config(**{"dataset": "mvtec_ad", "categories": ["bottle", "cable"],
                               "data": {"downloads": again.data.downloads,
                                        "mvtec_ad": {"url": again.data.mvtec_ad.url, "size": len(data),
                                                     "sha256": again.data.mvtec_ad.sha256}}}), tmp_path / "raw2")
        assert len(res.requests) == 1
        assert sorted(p.name for p in (tmp_path / "raw2").iterdir()) == ["bottle", "cable"]


def test_mvtec_checksum_mismatch_leaves_no_dataset(tmp_path):
    archive = fake_mvtec_tar(tmp_path / "mvtec.tar.xz")
    data = archive.read_bytes()
    with LocalServer() as server:
        server.add("/m.tar.xz", Resource(data))
        cfg = mvtec_config(tmp_path, server.url("/m.tar.xz"), data, sha256="ab" * 32)
        with pytest.raises(DownloadError, match="SHA-256 mismatch"):
            acquire(cfg, tmp_path / "raw" / "mvtec_ad")
    assert not (tmp_path / "raw" / "mvtec_ad").exists()
    assert not list((tmp_path / "downloads").iterdir())


def test_mvtec_from_a_local_archive_and_unknown_categories(tmp_path):
    archive = fake_mvtec_tar(tmp_path / "mvtec.tar.xz")
    cfg = mvtec_config(tmp_path, str(archive), archive.read_bytes())
    assert (acquire(cfg, tmp_path / "raw") / "bottle").is_dir()
    assert archive.exists()
    bad = tiny_config(dataset="mvtec_ad", categories=["bottel"])
    with pytest.raises(ValueError, match="MVTec AD has no category 'bottel'"):
        acquire(bad, tmp_path / "raw3")


def fake_mtd(root, n_free=12, defects=("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven")):
    rng = np.random.default_rng(1)
    for i in range(n_free):
        d = root / "MT_Free" / "Imgs"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (30 + i, 40), np.uint8)).save(d / f"exp{i}_num_{i:04d}.jpg")
        Image.fromarray(np.zeros((30 + i, 40), np.uint8)).save(d / f"exp{i}_num_{i:04d}.png")
    for j, name in enumerate(defects):
        d = root / name / "Imgs"
        d.mkdir(parents=True, exist_ok=True)
        for k in range(2):
            Image.fromarray(rng.integers(0, 255, (32, 50), np.uint8)).save(d / f"d{j}_{k}.jpg")
            mask = np.zeros((32, 50), np.uint8)
            mask[5:10, 5:10] = 200
            mask[20, 20] = 100  # grey edge pixel below 128: background
            Image.fromarray(mask).save(d / f"d{j}_{k}.png")
    return root


def test_mtd_conversion_split_and_masks(tmp_path):
    counts = mtd.convert(fake_mtd(tmp_path / "src"), tmp_path / "out")
    assert counts == {"train": 9, "test_good": 3, "blowhole": 2, "break": 2, "crack": 2, "fray": 2, "uneven": 2}
    layout = scan_category(tmp_path / "out" / "magnetic_tile")
    test_good = sorted(s.image.name for s in layout.test if s.label == 0)
    # sorted names: exp0, exp1, exp10, exp11, exp2, exp3, ... -> indices 0, 5, 10 are exp0, exp3, exp8
    assert test_good == ["exp0_num_0000.jpg", "exp3_num_0003.jpg", "exp8_num_0008.jpg"]
    mask = np.asarray(Image.open(tmp_path / "out" / "magnetic_tile" / "ground_truth" / "crack" / "d2_0_mask.png"))
    assert set(np.unique(mask)) == {0, 255} and mask[20, 20] == 0 and mask[5:10, 5:10].all()


def test_mtd_missing_mask_is_named(tmp_path):
    src = fake_mtd(tmp_path / "src")
    (src / "MT_Fray" / "Imgs" / "d3_1.png").unlink()
    with pytest.raises(LayoutError, match=r"d3_1\.jpg: defective image has no mask"):
        mtd.convert(src, tmp_path / "out")
    with pytest.raises(LayoutError, match="no MT_Free"):
        mtd.convert(tmp_path / "out", tmp_path / "out2")


def test_mtd_zip_over_http_like_the_github_archive(tmp_path):
    src = fake_mtd(tmp_path / "src")
    archive = tmp_path / "master.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, f"Magnetic-tile-defect-datasets.-master/{p.relative_to(src)}")
    with LocalServer() as server:
        server.add("/master.zip", Resource(archive.read_bytes()))
        cfg = tiny_config(dataset="mtd", categories=["magnetic_tile"], data={
            "downloads": str(tmp_path / "dl"), "mtd": {"source": server.url("/master.zip")}})
        raw = acquire(cfg, tmp_path / "raw" / "mtd")
    assert len(scan_category(raw / "magnetic_tile").train) == 9
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["mtd"]  # no temporary folders left


def test_mtd_needs_its_one_category(tmp_path):
    with pytest.raises(ValueError, match=r"set categories: \[magnetic_tile\]"):
        acquire(tiny_config(dataset="mtd", categories=["weave"]), tmp_path / "raw")


@pytest.mark.skipif(not SHARED_MTD.is_dir(), reason="../shared/datasets/mtd not present")
def test_offline_mtd_from_the_shared_copy(tmp_path):
    cfg = tiny_config(dataset="mtd", categories=["magnetic_tile"], data={"mtd": {"source": str(SHARED_MTD)}})
    raw = acquire(cfg, tmp_path / "raw")
    layout = scan_category(raw / "magnetic_tile")
    assert len(layout.train) == 761 and sum(s.label == 0 for s in layout.test) == 191
    per_defect = {d: sum(s.defect == d for s in layout.test) for d in layout.defects}
    assert per_defect == {"blowhole": 115, "break": 85, "crack": 57, "fray": 32, "uneven": 103}
    # grayscale photos of many sizes become square RGB arrays
    prepare_category(raw / "magnetic_tile", tmp_path / "prep", image_size=32)
    test = load_split(tmp_path / "prep", "test")
    assert test.images.shape == (583, 32, 32, 3) and test.labels.sum() == 392


def test_folder_dataset_copies_validated_categories(tmp_path):
    make_category(tmp_path / "src" / "part_a")
    cfg = tiny_config(dataset="folder", categories=["part_a"], data={"folder": {"path": str(tmp_path / "src")}})
    raw = acquire(cfg, tmp_path / "raw")
    assert len(scan_category(raw / "part_a").train) == 3
    with pytest.raises(LayoutError, match="category folder does not exist"):
        acquire(tiny_config(dataset="folder", categories=["part_b"],
                            data={"folder": {"path": str(tmp_path / "src")}}), tmp_path / "raw2")
    assert not (tmp_path / "raw2").exists()


def mtd_zip_bytes(src, prefix="Magnetic-tile-defect-datasets.-master") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, f"{prefix}/{p.relative_to(src)}")
    return buf.getvalue()


def mtd_config(tmp_path, url):
    return tiny_config(dataset="mtd", categories=["magnetic_tile"], data={
        "downloads": str(tmp_path / "dl"), "http": {"retries": 1, "timeout": 5}, "mtd": {"source": url}})


def test_the_download_cache_is_keyed_by_the_source(tmp_path):
    """Another URL is another download, never the archive of the old one."""
    first = fake_mtd(tmp_path / "first", n_free=10)
    second = fake_mtd(tmp_path / "second", n_free=15)
    with LocalServer() as server:
        res_a = server.add("/a.zip", Resource(mtd_zip_bytes(first)))
        res_b = server.add("/b.zip", Resource(mtd_zip_bytes(second)))
        raw_a = acquire(mtd_config(tmp_path, server.url("/a.zip")), tmp_path / "raw_a")
        raw_b = acquire(mtd_config(tmp_path, server.url("/b.zip")), tmp_path / "raw_b")
        acquire(mtd_config(tmp_path, server.url("/a.zip")), tmp_path / "raw_a2")
    assert len(scan_category(raw_a / "magnetic_tile").train) == 8
    assert len(scan_category(raw_b / "magnetic_tile").train) == 12
    assert len(res_a.requests) == 1 and len(res_b.requests) == 1  # the third run reused a's archive
    assert len(list((tmp_path / "dl").glob("magnetic_tile_defects-*.zip"))) == 2


def test_a_cut_archive_without_content_length_never_reaches_the_cache(tmp_path):
    data = mtd_zip_bytes(fake_mtd(tmp_path / "src"))
    with LocalServer() as server:
        server.add("/m.zip", Resource(data, no_length=True, cut_every=len(data) // 2, ignore_range=True))
        with pytest.raises(DownloadError, match="without a length and the file is incomplete"):
            acquire(mtd_config(tmp_path, server.url("/m.zip")), tmp_path / "raw")
        assert not list((tmp_path / "dl").glob("*.zip"))
        server.add("/m.zip", Resource(data, no_length=True))  # the network recovers: the next run works
        raw = acquire(mtd_config(tmp_path, server.url("/m.zip")), tmp_path / "raw")
    assert len(scan_category(raw / "magnetic_tile").train) == 9


def test_errors_inside_a_downloaded_archive_name_the_archive(tmp_path):
    src = fake_mtd(tmp_path / "src")
    (src / "MT_Crack" / "Imgs" / "d2_1.png").unlink()
    with LocalServer() as server:
        server.add("/m.zip", Resource(mtd_zip_bytes(src)))
        cfg = mtd_config(tmp_path, server.url("/m.zip"))
        with pytest.raises(LayoutError) as info:
            acquire(cfg, tmp_path / "raw")
    cached = tmp_path / "dl" / cache_name(cfg.data.mtd.source, "magnetic_tile_defects.zip")
    assert str(info.value).startswith(f"{cached}: member Magnetic-tile-defect-datasets.-master/MT_Crack/Imgs/d2_1.jpg")
    assert "tmp" not in str(info.value).replace(str(tmp_path), "")


def test_a_category_missing_from_the_mvtec_archive_names_the_archive(tmp_path):
    archive = fake_mvtec_tar(tmp_path / "mvtec.tar.xz", categories=("bottle",))
    cfg = tiny_config(dataset="mvtec_ad", categories=["cable"], data={"mvtec_ad": {
        "url": str(archive), "size": 0, "sha256": ""}})
    with pytest.raises(LayoutError, match=f"^{archive}: has no folder cable/"):
        acquire(cfg, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_folder_dataset_errors_name_the_users_files(tmp_path):
    make_category(tmp_path / "src" / "part_a")
    bad = tmp_path / "src" / "part_a" / "train" / "good" / "001.png"
    bad.write_bytes(bad.read_bytes()[:40])
    cfg = tiny_config(dataset="folder", categories=["part_a"], data={"folder": {"path": str(tmp_path / "src")}})
    raw = acquire(cfg, tmp_path / "raw")
    with pytest.raises(DataError, match=f"^{bad}: (cannot decode|not a readable) image"):
        prepare_category(raw / "part_a", tmp_path / "prep", image_size=32)
