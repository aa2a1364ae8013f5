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

    @property
    def defects(self) -> list[str]:
        return sorted({s.defect for s in self.test} - {"good"})


def _images(folder: Path) -> list[Path]:
    files, skipped = [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            files.append(p)
        else:
            skipped.append(p.name)
    if skipped:
        print(f"warning: {folder}: ignoring {len(skipped)} entries that are not images: {skipped[:5]}",
              file=sys.stderr)
    return files


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan_category(root: str | Path) -> CategoryLayout:
    """List the samples of one category folder, checking structure and mask pairing."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: category folder does not exist")
    good = root / "train" / "good"
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
            if not mask.is_file():
                raise LayoutError(f"{img}: defective test image has no mask (expected {mask})")
            test.append(Sample(img, mask, sub.name))
    if not test:
        raise LayoutError(f"{test_dir}: no test images")
    if all(s.label == 0 for s in test):
        raise LayoutError(f"{test_dir}: no defective test images; anomaly metrics need at least one")
    if not any(s.label == 0 for s in test):
        raise LayoutError(f"{test_dir / 'good'}: no good test images; image AUROC needs both kinds")
    return CategoryLayout(root, train, test)
