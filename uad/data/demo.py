"""The built-in demo dataset: procedurally generated, deterministic, license-free.

Three categories of different character, each with several defect types and exact
pixel masks (a mask is exactly the set of pixels the defect altered):

* ``weave``  - a periodic plain-weave fabric (texture, like MVTec carpet);
* ``washer`` - a brushed metal washer on a textured mat (object on background);
* ``grain``  - a stochastic wood-grain texture.

Defects are deliberately low-contrast or structural (a patch woven at another
pitch, a pasted foreign texture) so that a pretrained backbone has to earn its
score: random-weight features separate them clearly worse.
Every image has its own RNG stream derived from (seed, category, split, index),
so generating one category never changes another.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

Array = np.ndarray


def _rng(seed: int, category: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(category.encode()), zlib.crc32(split.encode()), index])


def _grid(size: int) -> tuple[Array, Array]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return y, x


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> Array:
    """Band-limited noise in [-1, 1]: a coarse random grid upsampled bicubically."""
    coarse = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
    img = Image.fromarray(coarse, mode="F").resize((size + 3 * size // cells, size + 3 * size // cells),
                                                   Image.BICUBIC)
    arr = np.asarray(img)[size // cells: size // cells + size, size // cells: size // cells + size]
    return arr / (np.abs(arr).max() + 1e-6)


def _blob(rng: np.random.Generator, size: int, center: Array, radius: float) -> Array:
    """An irregular region: the union of a few random ellipses around `center`."""
    y, x = _grid(size)
    mask = np.zeros((size, size), bool)
    for _ in range(rng.integers(3, 6)):
        cy, cx = center + rng.normal(0, radius * 0.45, 2)
        a, b = radius * rng.uniform(0.35, 0.8, 2)
        t = rng.uniform(0, np.pi)
        dy, dx = y - cy, x - cx
        u = dx * np.cos(t) + dy * np.sin(t)
        v = -dx * np.sin(t) + dy * np.cos(t)
        mask |= (u / a) ** 2 + (v / b) ** 2 <= 1
    return mask


def _curve(rng: np.random.Generator, size: int, center: Array, length: float, width: float) -> Array:
    """A thin quadratic Bezier stroke through `center`; mask of pixels within width/2."""
    y, x = _grid(size)
    angle = rng.uniform(0, np.pi)
    d = np.array([np.sin(angle), np.cos(angle)]) * length / 2
    p0, p2 = center - d, center + d
    p1 = center + rng.normal(0, length * 0.25, 2)
    t = np.linspace(0, 1, max(8, int(length)))[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2  # (n, 2)
    dist2 = (y[..., None] - pts[:, 0]) ** 2 + (x[..., None] - pts[:, 1]) ** 2
    return dist2.min(-1) <= (width / 2) ** 2


def _clip01(img: Array) -> Array:
    return np.clip(img, 0.0, 1.0)


# ----------------------------------------------------------------------------- weave


def _weave_texture(rng: np.random.Generator, size: int, period: float, angle_deg: float, phase: Array,
                   colors: tuple[Array, Array], thread_jitter: tuple[Array, Array]) -> Array:
    y, x = _grid(size)
    a = np.deg2rad(angle_deg)
    u = (x * np.cos(a) + y * np.sin(a)) / period + phase[0]
    v = (-x * np.sin(a) + y * np.cos(a)) / period + phase[1]
    iu, iv = np.floor(u).astype(int), np.floor(v).astype(int)
    fu, fv = u - iu, v - iv
    warp_on_top = (iu + iv) % 2 == 0
    profile_u = np.sin(np.pi * fu) ** 0.5
    profile_v = np.sin(np.pi * fv) ** 0.5
    ju, jv = thread_jitter
    warp = profile_u * (0.75 + 0.25 * np.sin(np.pi * fv)) * (1 + ju[iu % len(ju)])
    weft = profile_v * (0.75 + 0.25 * np.sin(np.pi * fu)) * (1 + jv[iv % len(jv)])
    shade = np.where(warp_on_top, warp, weft)[..., None]
    color = np.where(warp_on_top[..., None], colors[0], colors[1])
    return shade * color


def _weave(rng: np.random.Generator, size: int) -> tuple[Array, dict]:
    scale = size / 160
    p = dict(
        period=rng.uniform(9.0, 10.0) * scale,
        angle=rng.normal(0, 1.5),
        phase=rng.uniform(0, 2, 2),
        colors=(np.array([0.55, 0.45, 0.32]) * rng.uniform(0.95, 1.05),
                np.array([0.62, 0.52, 0.38]) * rng.uniform(0.95, 1.05)),
        jitter=(rng.normal(0, 0.06, 64), rng.normal(0, 0.06, 64)),
    )
    img = _weave_texture(rng, size, p["period"], p["angle"], p["phase"], p["colors"], p["jitter"])
    img = img * (0.9 + 0.1 * _smooth_noise(rng, size, 3)[..., None])
    img = img + rng.normal(0, 0.015, img.shape)
    return _clip01(img), p


def _weave_defect(kind: str, rng: np.random.Generator, img: Array, p: dict) -> Array:
    size = img.shape[0]
    center = rng.uniform(0.25, 0.75, 2) * size
    if kind == "hole":  # missing threads: the dark backing shows through
        mask = _blob(rng, size, center, size * rng.uniform(0.04, 0.07))
        img[mask] = (0.16 + rng.normal(0, 0.02, (mask.sum(), 3))).clip(0, 1)
    elif kind == "cut":  # a frayed thread: a thin lighter stroke
        mask = _curve(rng, size, center, size * rng.uniform(0.25, 0.45), max(1.5, size / 80))
        img[mask] = _clip01(img[mask] * 1.35 + 0.08)
    elif kind == "stain":  # low-contrast colour stain
        mask = _blob(rng, size, center, size * rng.uniform(0.07, 0.11))
        stain = np.array([0.35, 0.38, 0.55])
        img[mask] = 0.6 * img[mask] + 0.4 * stain * img[mask].mean(-1, keepdims=True) / 0.45
    elif kind == "misweave":  # a patch woven at another pitch and angle: structure, same colours
        half = int(size * rng.uniform(0.09, 0.13))
        cy, cx = center.astype(int)
        mask = np.zeros((size, size), bool)
        mask[cy - half: cy + half, cx - half: cx + half] = True
        other = _weave_texture(rng, size, p["period"] * rng.uniform(0.6, 0.7), p["angle"] + rng.uniform(25, 40),
                               rng.uniform(0, 2, 2), p["colors"], p["jitter"])
        img[mask] = other[mask] * (img[mask].mean() / max(other[mask].mean(), 1e-6))
    else:
        raise ValueError(kind)
    return mask


# ----------------------------------------------------------------------------- washer


def _washer(rng: np.random.Generator, size: int) -> tuple[Array, dict]:
    y, x = _grid(size)
    mat = 0.30 + 0.05 * _smooth_noise(rng, size, 24) + 0.03 * _smooth_noise(rng, size, 6)
    img = mat[..., None] * np.array([0.75, 0.95, 0.8])
    cy, cx = size / 2 + rng.normal(0, size * 0.015, 2)
    r_out, r_in = size * rng.uniform(0.355, 0.365), size * rng.uniform(0.15, 0.16)
    dy, dx = y - cy, x - cx
    r = np.hypot(dy, dx)
    theta = np.arctan2(dy, dx) + rng.uniform(0, 2 * np.pi)
    shadow = np.exp(-np.clip(np.hypot(dy - size * 0.02, dx - size * 0.02) - r_out, 0, None) / (size * 0.02))
    img = img * (1 - 0.35 * shadow * (r > r_out))[..., None]
    ring = (r <= r_out) & (r >= r_in)
    # brushed metal: fine radial streaks (high angular frequency) + directional light
    k = rng.integers(0, 1 << 16)
    streaks = np.sin(theta * 90 + 3 * np.sin(theta * 7 + k)) * 0.04 + np.sin(theta * 211 + k) * 0.03
    light = 0.12 * np.cos(np.arctan2(dy, dx) - 0.8) * (r - r_in) / (r_out - r_in)
    bevel = 0.1 * np.exp(-((r - r_out) / (size * 0.02)) ** 2) + 0.08 * np.exp(-((r - r_in) / (size * 0.015)) ** 2)
    metal = 0.58 + streaks + light + bevel + rng.normal(0, 0.01, r.shape)
    metal_rgb = metal[..., None] * np.array([0.92, 0.95, 1.02])
    img = np.where(ring[..., None], metal_rgb, img)
    img = img + rng.normal(0, 0.012, img.shape)
    return _clip01(img), dict(ring=ring, center=np.array([cy, cx]), r_out=r_out, r_in=r_in, mat=mat)


def _washer_defect(kind: str, rng: np.random.Generator, img: Array, p: dict) -> Array:
    size = img.shape[0]
    ring, (cy, cx) = p["ring"], p["center"]
    ang = rng.uniform(0, 2 * np.pi)
    rad = rng.uniform(p["r_in"] + 0.25 * (p["r_out"] - p["r_in"]), p["r_out"] - 0.25 * (p["r_out"] - p["r_in"]))
    on_ring = np.array([cy + rad * np.sin(ang), cx + rad * np.cos(ang)])
    if kind == "scratch":
        mask = _curve(rng, size, on_ring, size * rng.uniform(0.15, 0.25), max(1.5, size / 90)) & ring
        img[mask] = _clip01(img[mask] * 0.72)
    elif kind == "notch":  # a chunk missing from the outer edge: the mat shows through
        edge = np.array([cy + p["r_out"] * np.sin(ang), cx + p["r_out"] * np.cos(ang)])
        mask = _blob(rng, size, edge, size * rng.uniform(0.05, 0.07)) & ring
        img[mask] = (p["mat"][mask][:, None] * np.array([0.75, 0.95, 0.8])).clip(0, 1)
    elif kind == "rust":  # low-contrast orange stain on the metal
        mask = _blob(rng, size, on_ring, size * rng.uniform(0.05, 0.08)) & ring
        img[mask] = 0.62 * img[mask] + 0.38 * np.array([0.72, 0.45, 0.25])
    elif kind == "foreign":  # a pasted piece of fabric on the ring
        half = int(size * rng.uniform(0.05, 0.07))
        c = on_ring.astype(int)
        mask = np.zeros((size, size), bool)
        mask[c[0] - half: c[0] + half, c[1] - half: c[1] + half] = True
        fabric, _ = _weave(rng, size)
        img[mask] = fabric[mask] * (img[mask].mean() / max(fabric[mask].mean(), 1e-6))
    else:
        raise ValueError(kind)
    return mask


# ----------------------------------------------------------------------------- grain


def _grain(rng: np.random.Generator, size: int) -> tuple[Array, dict]:
    y, x = _grid(size)
    warp = 9 * _smooth_noise(rng, size, 3) + 2.5 * _smooth_noise(rng, size, 10)
    period = size / rng.uniform(11, 13)
    rings = np.sin(2 * np.pi * (x + warp * size / 160 + rng.uniform(0, period)) / period)
    fibres = _smooth_noise(rng, size, size // 3) * 0.5 + _smooth_noise(rng, size, size // 6) * 0.5
    tone = 0.55 + 0.1 * rings + 0.05 * fibres + 0.04 * _smooth_noise(rng, size, 2)
    img = tone[..., None] * np.array([1.0, 0.72, 0.48]) * rng.uniform(0.95, 1.05)
    img = img + rng.normal(0, 0.01, img.shape)
    return _clip01(img), dict(period=period)


def _grain_defect(kind: str, rng: np.random.Generator, img: Array, p: dict) -> Array:
    size = img.shape[0]
    center = rng.uniform(0.25, 0.75, 2) * size
    if kind == "crack":  # a dark thin stroke across the grain
        mask = _curve(rng, size, center, size * rng.uniform(0.25, 0.4), max(1.5, size / 90))
        img[mask] = _clip01(img[mask] * 0.55)
    elif kind == "knot":  # a darker blob with concentric structure
        mask = _blob(rng, size, center, size * rng.uniform(0.05, 0.08))
        y, x = _grid(size)
        rings = np.sin(np.hypot(y - center[0], x - center[1]) / (size / 60))[mask]
        img[mask] = _clip01(img[mask] * (0.78 + 0.08 * rings[:, None]))
    elif kind == "stain":  # faint greenish water stain
        mask = _blob(rng, size, center, size * rng.uniform(0.08, 0.12))
        img[mask] = 0.65 * img[mask] + 0.35 * np.array([0.45, 0.5, 0.4])
    else:
        raise ValueError(kind)
    return mask


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class DemoCategory:
    generate: Callable[[np.random.Generator, int], tuple[Array, dict]]
    add_defect: Callable[[str, np.random.Generator, Array, dict], Array]
    defects: tuple[str, ...]


CATEGORIES: dict[str, DemoCategory] = {
    "weave": DemoCategory(_weave, _weave_defect, ("hole", "cut", "stain", "misweave")),
    "washer": DemoCategory(_washer, _washer_defect, ("scratch", "notch", "rust", "foreign")),
    "grain": DemoCategory(_grain, _grain_defect, ("crack", "knot", "stain")),
}


def _save(img: Array, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((img * 255 + 0.5).astype(np.uint8)).save(path)


def generate_category(root: Path, category: str, *, image_size: int, n_train: int, n_test_good: int,
                      n_test_defect: int, seed: int) -> None:
    """Write one demo category in MVTec layout under `root/category`."""
    if category not in CATEGORIES:
        raise ValueError(f"demo dataset has no category {category!r}; available: {sorted(CATEGORIES)}")
    spec = CATEGORIES[category]
    out = Path(root) / category
    for i in range(n_train):
        img, _ = spec.generate(_rng(seed, category, "train", i), image_size)
        _save(img, out / "train" / "good" / f"{i:03d}.png")
    for i in range(n_test_good):
        img, _ = spec.generate(_rng(seed, category, "test_good", i), image_size)
        _save(img, out / "test" / "good" / f"{i:03d}.png")
    counters = dict.fromkeys(spec.defects, 0)
    for i in range(n_test_defect):
        kind = spec.defects[i % len(spec.defects)]
        rng = _rng(seed, category, f"test_{kind}", counters[kind])
        img, params = spec.generate(rng, image_size)
        mask = spec.add_defect(kind, rng, img, params)
        if not mask.any():  # a defect must be visible; redraw deterministically
            raise AssertionError(f"demo generator produced an empty {kind} mask")
        name = f"{counters[kind]:03d}"
        _save(img, out / "test" / kind / f"{name}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(_ensure(out / "ground_truth" / kind / f"{name}_mask.png"))
        counters[kind] += 1


def _ensure(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
