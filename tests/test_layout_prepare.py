import shutil

import numpy as np
import pytest
from PIL import Image

from uad.data.layout import LayoutError, scan_category
from uad.data.prepared import DataError, load_index, load_split, prepare_category, read_mask
from uad.resources import RoomError


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


def test_grayscale_and_16bit_images_become_rgb(tmp_path, capfd):
    root = make_category(tmp_path / "cat")
    Image.fromarray(np.full((30, 40), 77, np.uint8)).save(root / "train" / "good" / "000.png")
    Image.fromarray(np.arange(1200, dtype=np.uint16).reshape(30, 40) * 50).save(root / "train" / "good" / "001.png")
    prepare_category(root, tmp_path / "out", image_size=32, resize="nearest")
    images = load_split(tmp_path / "out", "train").images
    assert images.shape == (3, 32, 32, 3)
    assert (images[0] == 77).all()
    # 16-bit values map by 255/65535, the same for every image: 59950 -> 233, not stretched to 255
    assert images[1].max() == 233 and (images[1][..., 0] == images[1][..., 2]).all()
    assert "mixes 8-bit and 16-bit images" in capfd.readouterr().err


def test_16bit_brightness_is_kept_not_stretched_per_image(tmp_path):
    # two 16-bit images that differ only in brightness stay different (per-image min-max made them equal)
    root = make_category(tmp_path / "cat", n_train=2)
    ramp = np.tile(np.arange(40, dtype=np.uint16), (30, 1))
    Image.fromarray(ramp * 100).save(root / "train" / "good" / "000.png")
    Image.fromarray(ramp * 100 + 20000).save(root / "train" / "good" / "001.png")
    prepare_category(root, tmp_path / "out", image_size=32, resize="nearest")
    a, b = load_split(tmp_path / "out", "train").images[:2].astype(int)
    assert (b - a).mean() == pytest.approx(20000 * 255 / 65535, abs=1)


def _mask_image(kind: str, h=30, w=40) -> Image.Image:
    m = np.zeros((h, w), np.uint8)
    m[5:15, 5:20] = 1
    if kind == "01":
        return Image.fromarray(m)
    if kind == "red":
        rgb = np.zeros((h, w, 3), np.uint8)
        rgb[..., 0] = m * 255
        return Image.fromarray(rgb)
    if kind == "rgb_grey":
        return Image.fromarray(np.repeat(m[..., None] * 255, 3, 2))
    if kind == "bilevel":
        return Image.fromarray(m.astype(bool))
    if kind == "16bit":
        return Image.fromarray(m.astype(np.uint16) * 65535)
    if kind == "palette":
        im = Image.fromarray(m, mode="L").convert("P")
        im.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
        return im
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["01", "red", "rgb_grey", "bilevel", "16bit", "palette"])
def test_masks_in_common_encodings_are_read_as_their_defect(tmp_path, kind):
    root = make_category(tmp_path / "cat")
    _mask_image(kind).save(root / "ground_truth" / "scratch" / "000_mask.png")
    assert read_mask(root / "ground_truth" / "scratch" / "000_mask.png").sum() == 10 * 15
    prepare_category(root, tmp_path / "out", image_size=40, resize="nearest")
    masks = load_split(tmp_path / "out", "test").masks
    assert masks[1].sum() > 0 and masks[0].sum() == 0


@pytest.mark.parametrize("values, found", [((0, 2, 3), "grey mask with values 0, 2, 3"),
                                           ((0, 100), "grey mask with values 0, 100")])
def test_masks_that_cannot_be_read_are_refused_with_the_values_found(tmp_path, values, found):
    root = make_category(tmp_path / "cat")
    m = np.zeros((30, 40), np.uint8)
    for i, v in enumerate(values):
        m[i * 5: i * 5 + 5, :] = v
    _png(root / "ground_truth" / "scratch" / "000_mask.png", m)
    with pytest.raises(DataError, match=f"000_mask.png: {found}: not a 0/255 or 0/1 mask"):
        prepare_category(root, tmp_path / "out", image_size=32)
    assert not (tmp_path / "out").exists()


def test_a_category_whose_masks_hold_no_defect_fails(tmp_path):
    root = make_category(tmp_path / "cat", defects=("scratch", "dent"))
    for d in ("scratch", "dent"):
        _png(root / "ground_truth" / d / "000_mask.png", np.zeros((30, 40), np.uint8))
    with pytest.raises(DataError, match="ground_truth: no mask holds a defect pixel"):
        prepare_category(root, tmp_path / "out", image_size=32)


def test_two_images_with_one_stem_are_refused(tmp_path):
    root = make_category(tmp_path / "cat")
    _png(root / "test" / "scratch" / "000.jpg", np.zeros((30, 40, 3), np.uint8))
    with pytest.raises(LayoutError, match=r"test/scratch: two images named '000' \(000.jpg, 000.png\)"):
        scan_category(root)


def test_flat_training_images_are_refused(tmp_path):
    root = make_category(tmp_path / "cat")
    for p in (root / "train" / "good").iterdir():
        _png(p, np.full((30, 40, 3), 128, np.uint8))
    with pytest.raises(DataError, match="train/good: every training image is one flat colour"):
        prepare_category(root, tmp_path / "out", image_size=32)


def test_identical_training_images_warn(tmp_path, capfd):
    root = make_category(tmp_path / "cat")
    img = np.random.default_rng(3).integers(0, 255, (30, 40, 3), np.uint8)
    for p in (root / "train" / "good").iterdir():
        _png(p, img)
    prepare_category(root, tmp_path / "out", image_size=32)
    assert "all 3 training images are identical" in capfd.readouterr().err


def test_decompression_bomb_is_named(tmp_path, monkeypatch):
    root = make_category(tmp_path / "cat")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)  # 40x30 = 1200 pixels > 2 x 200: a "bomb"
    with pytest.raises(DataError, match=r"train/good/000\.png: image too large to decode safely"):
        prepare_category(root, tmp_path / "out", image_size=32)


def test_float_images_are_refused(tmp_path):
    root = make_category(tmp_path / "cat")
    Image.fromarray(np.zeros((30, 40), np.float32)).save(root / "train" / "good" / "000.tif")
    (root / "train" / "good" / "000.png").unlink()
    with pytest.raises(DataError, match=r"000\.tif: 32-bit floating-point image"):
        prepare_category(root, tmp_path / "out", image_size=32)


def test_link_loops_are_named(tmp_path):
    root = make_category(tmp_path / "cat")
    (root / "train" / "good" / "loop.png").symlink_to("loop.png")
    with pytest.raises(LayoutError, match="loop.png: broken symbolic link or link loop"):
        scan_category(root)
    (root / "train" / "good" / "loop.png").unlink()
    (root / "test" / "bent").symlink_to(root / "test" / "bent")
    with pytest.raises(LayoutError, match="bent: broken symbolic link or link loop"):
        scan_category(root)


def test_prepare_refuses_what_does_not_fit_before_allocating(tmp_path):
    root = make_category(tmp_path / "cat")
    with pytest.raises(RoomError, match=r"prepare: 5 images at 100000x100000 need 170\.00 GB of memory, .* lower image_size"):
        prepare_category(root, tmp_path / "out", image_size=100_000)


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
