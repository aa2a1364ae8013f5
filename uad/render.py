"""Demo GIFs: for each test image, input | ground truth | heat map | predicted mask.

The heat map is scaled by the model's normal-score statistics, not per image:
the median score of normal training pixels is dark blue and the deployable
threshold is the middle of the colour scale, so colours mean the same thing in
every frame and every category.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from uad.artifacts import IMAGE_SCORES_FILE, MAPS_FILE, ArtifactError, atomic_path, read_model_info
from uad.data.prepared import load_split

# Anchor colours of a jet-like map, from low to high score.
_ANCHORS = np.array([[0.0, 0.0, 0.5], [0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0],
                     [0.5, 0.0, 0.0]])
_LUT = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)), _ANCHORS[:, c])
                 for c in range(3)], 1)
_GREEN = np.array([40, 220, 60], np.float32)
_RED = np.array([240, 40, 40], np.float32)
_HEADER = 14


def colorize(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> uint8 RGB through the jet-like LUT."""
    idx = np.clip(np.nan_to_num(values) * 255, 0, 255).astype(np.uint8)
    return (_LUT[idx] * 255).astype(np.uint8)


def heat_scale(scores: np.ndarray, normal_median: float, threshold: float) -> np.ndarray:
    """Map scores to [0, 1] so that the normal median is 0 and the threshold is 0.5."""
    span = max(threshold - normal_median, 1e-12)
    return np.clip((scores - normal_median) / (2 * span), 0, 1)


def _tint(image: np.ndarray, mask: np.ndarray, color: np.ndarray) -> np.ndarray:
    out = image.astype(np.float32) * 0.55
    out[mask] = image[mask].astype(np.float32) * 0.35 + color * 0.65
    return out.astype(np.uint8)


def frame(image: np.ndarray, mask: np.ndarray, scores: np.ndarray, *, normal_median: float, threshold: float,
          caption: str) -> np.ndarray:
    """One GIF frame: four panels side by side under a caption bar."""
    heat = colorize(heat_scale(scores, normal_median, threshold))
    overlay = (0.45 * image + 0.55 * heat).astype(np.uint8)
    panels = [image, _tint(image, mask > 0, _GREEN), overlay, _tint(image, scores > threshold, _RED)]
    body = np.concatenate(panels, 1)
    canvas = Image.new("RGB", (body.shape[1], body.shape[0] + _HEADER), (20, 20, 20))
    canvas.paste(Image.fromarray(body), (0, _HEADER))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    width = image.shape[1]
    for i, title in enumerate(("input", "ground truth", "anomaly map", "prediction")):
        draw.text((i * width + 3, 1), title, fill=(230, 230, 230), font=font)
    draw.text((3, _HEADER + 2), caption, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def render_gif(path: str | Path, images: np.ndarray, masks: np.ndarray, maps: np.ndarray, names: list[str],
               image_scores: np.ndarray, *, normal_median: float, threshold: float, frame_ms: int,
               max_frames: int) -> int:
    """Write the animated GIF; returns the number of frames (evenly spread over the test set)."""
    n = len(images)
    picks = np.unique(np.linspace(0, n - 1, min(n, max_frames)).round().astype(int))
    frames = []
    for i in picks:
        verdict = "ANOMALY" if maps[i].max() > threshold else "normal"
        caption = f"{names[i]}  score {image_scores[i]:.3g}  {verdict}"
        frames.append(frame(np.asarray(images[i]), np.asarray(masks[i]), np.asarray(maps[i], np.float32),
                            normal_median=normal_median, threshold=threshold, caption=caption))
    first, *rest = [_palette(f) for f in frames]
    with atomic_path(path) as tmp:
        first.save(tmp, format="GIF", save_all=True, append_images=rest, duration=frame_ms, loop=0)
    return len(frames)


def _palette(rgb: np.ndarray) -> Image.Image:
    """A frame in 256 colours by fast octree quantisation, without dithering.

    Given RGB frames, PIL's GIF writer runs its median-cut quantiser on each (~0.25 s for
    a 1024 x 270 frame, 95 % of a 60-frame render on a CPU core); octree takes ~3 ms.
    """
    return Image.fromarray(rgb).quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)


def render_category(category: str, *, prepared: str | Path, scores_dir: str | Path, model_dir: str | Path,
                    out: str | Path, frame_ms: int, max_frames: int) -> int:
    """The render stage's work: the GIF of one category from its saved scores."""
    info = read_model_info(model_dir)
    test = load_split(prepared, "test")
    try:
        maps = np.load(Path(scores_dir) / MAPS_FILE, mmap_mode="r")
        image_scores = np.load(Path(scores_dir) / IMAGE_SCORES_FILE)
    except (OSError, ValueError, EOFError) as exc:
        raise ArtifactError(f"{scores_dir}: scores missing or damaged ({exc}); rerun the evaluate stage") from None
    if len(maps) != len(test) or len(image_scores) != len(test):
        raise ArtifactError(f"{scores_dir}: {len(maps)} score maps for {len(test)} test images of {category}; "
                            f"rerun evaluate")
    return render_gif(out, test.images, test.masks, maps, test.names, image_scores,
                      normal_median=info["normal_quantiles"]["0.5"], threshold=info["threshold"],
                      frame_ms=frame_ms, max_frames=max_frames)
