"""MVTec-sized synthetic categories: MVTec AD's image counts and sizes, filled with the demo's textures.

Speed depends on how many images there are and how large they are, not on what they show, so
the speed and e2e benchmarks run on these instead of the 5.3 GB archive.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from uad.data import demo

# MVTec AD: (train good, test good, test defective, image side in pixels)
MVTEC = {"bottle": (209, 20, 63, 900), "cable": (224, 58, 92, 1024), "capsule": (219, 23, 109, 1000),
         "carpet": (280, 28, 89, 1024), "grid": (264, 21, 57, 1024), "hazelnut": (391, 40, 70, 1024),
         "leather": (245, 32, 92, 1024), "metal_nut": (220, 22, 93, 700), "pill": (267, 26, 141, 800),
         "screw": (320, 41, 119, 1024), "tile": (230, 33, 84, 840), "toothbrush": (60, 12, 30, 1024),
         "transistor": (213, 60, 40, 1024), "wood": (247, 19, 60, 1024), "zipper": (240, 32, 119, 1024)}
TEXTURES = ("weave", "washer", "grain")
BASE_SIDE = 256  # the demo texture is drawn at this size, then upscaled to the category's side


def _one_image(job: tuple[Path, Path, str, int, int, str | None]) -> None:
    """A demo texture upscaled to the MVTec size, with its defect mask when `defect` is set."""
    path, mask_path, texture, side, seed, defect = job
    spec = demo.CATEGORIES[texture]
    rng = np.random.default_rng(seed)
    img, params = spec.generate(rng, BASE_SIDE)
    mask = spec.add_defect(defect, rng, img, params) if defect else None
    Image.fromarray((img * 255).astype(np.uint8)).resize((side, side), Image.BICUBIC).save(path)
    if mask is not None:
        Image.fromarray(mask.astype(np.uint8) * 255).resize((side, side), Image.NEAREST).save(mask_path)


def generate(root: Path, categories: Sequence[str], scale: float = 1.0) -> float:
    """Write the categories (image counts x `scale`, at least 1 each) in MVTec layout under `root`,
    on all cores; returns the seconds it took."""
    jobs = []
    for ci, cat in enumerate(categories):
        n_train, n_good, n_bad, side = MVTEC[cat]
        texture = TEXTURES[ci % len(TEXTURES)]
        defect = demo.CATEGORIES[texture].defects[0]
        for split, n, kind in (("train", n_train, "good"), ("test", n_good, "good"), ("test", n_bad, defect)):
            for i in range(max(1, round(n * scale))):
                img = root / cat / split / kind / f"{i:03d}.png"
                img.parent.mkdir(parents=True, exist_ok=True)
                mask = root / cat / "ground_truth" / kind / f"{i:03d}_mask.png"
                if kind != "good":
                    mask.parent.mkdir(parents=True, exist_ok=True)
                jobs.append((img, mask, texture, side, zlib.crc32(f"{cat}/{split}/{kind}/{i}".encode()),
                             kind if kind != "good" else None))
    t = time.perf_counter()
    with ProcessPoolExecutor() as pool:
        list(pool.map(_one_image, jobs, chunksize=8))
    return round(time.perf_counter() - t, 2)


def dataset_name(categories: Sequence[str]) -> str:
    """The dataset field of result names: `synth-<category>` for a few, `synth-<n>cat` for many."""
    return f"synth-{'-'.join(categories)}" if len(categories) <= 2 else f"synth-{len(categories)}cat"
