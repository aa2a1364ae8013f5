import hashlib

import numpy as np
import pytest
from PIL import Image

from uad.data import demo
from uad.data.layout import scan_category

from .conftest import TINY


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_layout_counts_and_masks(demo_root):
    for category in ("weave", "washer"):
        layout = scan_category(demo_root / category)
        assert len(layout.train) == TINY["n_train"]
        assert sum(s.label == 0 for s in layout.test) == TINY["n_test_good"]
        assert sum(s.label == 1 for s in layout.test) == TINY["n_test_defect"]
        assert layout.defects == sorted(demo.CATEGORIES[category].defects)
        for s in layout.test:
            if s.mask is not None:
                mask = np.asarray(Image.open(s.mask))
                assert set(np.unique(mask)) <= {0, 255} and mask.any()


def test_generation_is_deterministic_and_per_image(tmp_path, demo_root):
    demo.generate_category(tmp_path / "a", "weave", **TINY)
    assert _digest(tmp_path / "a" / "weave") == _digest(demo_root / "weave")
    # more images must not change the existing ones: each image has its own RNG stream
    demo.generate_category(tmp_path / "b", "weave", **{**TINY, "n_train": TINY["n_train"] + 3})
    for p in (demo_root / "weave" / "train" / "good").iterdir():
        assert p.read_bytes() == (tmp_path / "b" / "weave" / "train" / "good" / p.name).read_bytes()
    demo.generate_category(tmp_path / "c", "weave", **{**TINY, "seed": TINY["seed"] + 1})
    assert _digest(tmp_path / "c" / "weave") != _digest(demo_root / "weave")


@pytest.mark.parametrize("category", sorted(demo.CATEGORIES))
def test_masks_are_exactly_the_altered_pixels(category):
    spec = demo.CATEGORIES[category]
    for kind in spec.defects:
        for index in range(3):
            rng = demo._rng(1, category, f"test_{kind}", index)
            image, params = spec.generate(rng, 96)
            clean = image.copy()
            mask = spec.add_defect(kind, rng, image, params)
            changed = (image != clean).any(-1)
            assert mask.any(), kind
            assert not (changed & ~mask).any(), f"{kind}: pixels outside the mask were altered"
            assert changed[mask].mean() > 0.9, f"{kind}: most mask pixels must actually change"


def test_unknown_category_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="available"):
        demo.generate_category(tmp_path, "marble", **TINY)
