import shutil

import numpy as np
import pytest
from PIL import Image

from uad.data.layout import LayoutError, scan_category
from uad.data.prepared import DataError, load_index, load_split, prepare_category


def make_category(root, n_train=3, size=(40, 30), defects=("scratch",)):
    """A minimal valid MVTec-layout category with RGB images and 0/255 masks."""
    rng = np.random.default_rng(0)
    w, h = size
    for i in range(n_train):
        _png(root / "train" / "good" / f"{i:03d}.png", rng.integers(0, 255, (h, w, 3), np.uint8))
    _png(root / "test" / "good" / "000.png", rng.integers(0, 255, (h, w, 3), np.uint8))
    for d in defects:
        _png(root / "test" / d / "000.png", rng.integers(0, 255, (h, w, 3), np.uint8))
        mask = np.zeros((h, w), np.uint8)
        mask[5:15, 5:20] = 255
        _png(root / "ground_truth" / d / "000_mask.png", mask)
    return root


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_prepare_writes_model_ready_arrays(tmp_path, demo_root):
    index = prepare_category(demo_root / "washer", tmp_path / "washer", image_size=48, resize="bicubic")
    train, test = load_split(tmp_path / "washer", "train"), load_split(tmp_path / "washer", "test")
    assert train.images.shape == (8, 48, 48, 3) and train.images.dtype == np.uint8
    assert test.images.shape == (12, 48, 48, 3) and test.masks.shape == (12, 48, 48)
    assert set(np.unique(test.masks)) <= {0, 1}
    assert test.labels.sum() == 8 and (test.masks.reshape(12, -1).any(1) == test.labels.astype(bool)).all()
    assert index["defects"] == ["foreign", "notch", "rust", "scratch"]
    assert test.names[0] == "foreign/000" and test.defects[0] == "foreign"


def test_grayscale_and_16bit_images_become_rgb(tmp_path):
    root = make_category(tmp_path / "cat")
    Image.fromarray(np.full((30, 40), 77, np.uint8)).save(root / "train" / "good" / "000.png")
    Image.fromarray(np.arange(1200, dtype=np.uint16).reshape(30, 40) * 50).save(root / "train" / "good" / "001.png")
    prepare_category(root, tmp_path / "out", image_size=32, resize="nearest")
    images = load_split(tmp_path / "out", "train").images
    assert images.shape == (3, 32, 32, 3)
    assert (images[0] == 77).all()
    assert images[1].max() == 255 and (images[1][..., 0] == images[1][..., 2]).all()


def test_masks_binarise_at_128(tmp_path):
    root = make_category(tmp_path / "cat", size=(32, 32))
    mask = np.zeros((32, 32), np.uint8)
    mask[:, :16] = 127
    mask[:, 16:] = 128
    _png(root / "ground_truth" / "scratch" / "000_mask.png", mask)
    prepare_category(root, tmp_path / "out", image_size=32)
    m = load_split(tmp_path / "out", "test").masks[1]
    assert not m[:, :16].any() and m[:, 16:].all()


@pytest.mark.parametrize("breakage, message", [
    (lambda r: shutil.rmtree(r / "train"), "train/good: missing"),
    (lambda r: [p.unlink() for p in (r / "train" / "good").iterdir()], "no training images"),
    (lambda r: shutil.rmtree(r / "test"), "test: missing"),
    (lambda r: (r / "ground_truth" / "scratch" / "000_mask.png").unlink(), "000.png: defective test image has no mask"),
    (lambda r: shutil.rmtree(r / "test" / "scratch"), "no defective test images"),
    (lambda r: shutil.rmtree(r / "test" / "good"), "no good test images"),
])
def test_layout_errors_name_the_path(tmp_path, breakage, message):
    root = make_category(tmp_path / "cat")
    breakage(root)
    with pytest.raises(LayoutError, match=message):
        scan_category(root)
    with pytest.raises(LayoutError):
        prepare_category(root, tmp_path / "out", image_size=32)
    assert not (tmp_path / "out").exists()


def test_missing_category_folder(tmp_path):
    with pytest.raises(LayoutError, match="category folder does not exist"):
        scan_category(tmp_path / "nope")


def test_truncated_image_is_reported_with_its_path(tmp_path):
    root = make_category(tmp_path / "cat")
    bad = root / "train" / "good" / "001.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"001\.png: cannot decode image"):
        prepare_category(root, tmp_path / "out", image_size=32)
    assert not (tmp_path / "out").exists(), "a failed prepare must not leave a cache behind"


def test_corrupt_image_is_reported_with_its_path(tmp_path):
    root = make_category(tmp_path / "cat")
    (root / "test" / "good" / "000.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=r"test/good/000\.png: not a readable image"):
        prepare_category(root, tmp_path / "out", image_size=32)


def test_mask_of_a_different_size(tmp_path):
    root = make_category(tmp_path / "cat")
    _png(root / "ground_truth" / "scratch" / "000_mask.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(DataError, match=r"000_mask\.png: mask is 10x10 but its image 000\.png is 40x30"):
        prepare_category(root, tmp_path / "out", image_size=32)


def test_failed_prepare_keeps_the_previous_cache(tmp_path):
    root = make_category(tmp_path / "cat")
    prepare_category(root, tmp_path / "out", image_size=32)
    (root / "test" / "good" / "000.png").write_bytes(b"broken")
    with pytest.raises(DataError):
        prepare_category(root, tmp_path / "out", image_size=32)
    assert load_index(tmp_path / "out")["image_size"] == 32
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_missing_prepared_data_says_what_to_run(tmp_path):
    with pytest.raises(LayoutError, match="run the prepare stage"):
        load_split(tmp_path, "train")
