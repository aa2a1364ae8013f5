"""MVTec layout: find the samples of a category and check the folder is complete.

    <cat>/train/good/*                      defect-free training images
    <cat>/test/good/*                       defect-free test images
    <cat>/test/<defect>/<stem>.<ext>        defective test images
    <cat>/ground_truth/<defect>/<stem>_mask.png

Every problem is reported with the offending path; nothing is decoded here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from uad.errors import UadError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
ORIGIN_FILE = "origin.txt"  # in a copied category: the folder it was copied from (see `CategoryLayout.shown`)


class LayoutError(UadError, ValueError):
    """A dataset folder that does not follow the MVTec layout; the message names the path."""


@dataclass(frozen=True)
class Sample:
    image: Path
    mask: Path | None  # None for good images
    defect: str  # "good" or the defect type

    @property
    def label(self) -> int:
        return int(self.defect != "good")

    @property
    def name(self) -> str:
        """Stable id inside the category, e.g. 'crack/003'."""
        return f"{self.defect}/{self.image.stem}"


@dataclass(frozen=True)
class CategoryLayout:
    root: Path
    train: list[Sample]
    test: list[Sample]
    origin: Path | None = None  # the user's folder this category was copied from, if it was

    @property
    def defects(self) -> list[str]:
        return sorted({s.defect for s in self.test} - {"good"})

    def shown(self, path: Path) -> Path:
        """`path` as the user knows it: inside the original folder when this category is a copy."""
        if self.origin is None:
            return path
        try:
            return self.origin / path.relative_to(self.root)
        except ValueError:
            return path


def _no_loop(path: Path) -> None:
    if path.is_symlink() and not path.exists():
        raise LayoutError(f"{path}: broken symbolic link or link loop")


def _images(folder: Path) -> list[Path]:
    """The image files of one folder, sorted; stems must be unique (masks and names pair by stem)."""
    files, skipped = [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_symlink() and not p.exists():
            raise LayoutError(f"{p}: broken symbolic link or link loop")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            files.append(p)
        else:
            skipped.append(p.name)
    if skipped:
        print(f"warning: {folder}: ignoring {len(skipped)} entries that are not images: {skipped[:5]}",
              file=sys.stderr)
    stems: dict[str, Path] = {}
    for p in files:
        if p.stem in stems:
            raise LayoutError(f"{folder}: two images named {p.stem!r} ({stems[p.stem].name}, {p.name}); an image "
                              f"is known by its name without extension (its mask is <name>_mask.png), so names "
                              f"must differ")
        stems[p.stem] = p
    return files


def _subdirs(folder: Path) -> list[Path]:
    for p in folder.iterdir():
        if p.is_symlink() and not p.exists():
            raise LayoutError(f"{p}: broken symbolic link or link loop")
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan_category(root: str | Path) -> CategoryLayout:
    """List the samples of one category folder, checking structure and mask pairing."""
    root = Path(root)
    _no_loop(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: category folder does not exist")
    good = root / "train" / "good"
    for folder in (root / "train", good, root / "test", root / "ground_truth"):
        _no_loop(folder)
    if not good.is_dir():
        raise LayoutError(f"{good}: missing; training images must be in train/good/")
    train = [Sample(p, None, "good") for p in _images(good)]
    if not train:
        raise LayoutError(f"{good}: no training images (category is empty)")
    test_dir = root / "test"
    if not test_dir.is_dir():
        raise LayoutError(f"{test_dir}: missing; test images must be in test/<good|defect>/")
    test: list[Sample] = []
    for sub in _subdirs(test_dir):
        images = _images(sub)
        if sub.name == "good":
            test += [Sample(p, None, "good") for p in images]
            continue
        for img in images:
            mask = root / "ground_truth" / sub.name / f"{img.stem}_mask.png"
            _no_loop(mask)
            if not mask.is_file():
                raise LayoutError(f"{img}: defective test image has no mask (expected {mask})")
            test.append(Sample(img, mask, sub.name))
    if not test:
        raise LayoutError(f"{test_dir}: no test images")
    if all(s.label == 0 for s in test):
        raise LayoutError(f"{test_dir}: no defective test images; anomaly metrics need at least one")
    if not any(s.label == 0 for s in test):
        raise LayoutError(f"{test_dir / 'good'}: no good test images; image AUROC needs both kinds")
    origin_file = root / ORIGIN_FILE
    origin = Path(origin_file.read_text().strip()) if origin_file.is_file() else None
    return CategoryLayout(root, train, test, origin)
