"""Demo GIFs: for each test image, input | ground truth | heat map | predicted mask, with its verdict.

The heat map is scaled by the model's normal-score statistics, not per image: the
median score of normal pixels is dark blue and the calibrated pixel threshold is the
middle of the colour scale (marked on the colour bar under every frame), so colours
mean the same thing in every frame and every category. The verdict (ANOMALY or
normal) is the image score against the calibrated image threshold.
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


MIN_PANEL = 192  # smaller inputs are enlarged (nearest) so that panels and text stay readable
_FONT_SIZE = 13
_TITLE_H, _CAPTION_H, _BAR_H = 18, 20, 30


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default(size=_FONT_SIZE)


def _enlarge(panel: np.ndarray, side: int) -> np.ndarray:
    factor = max(1, -(-side // panel.shape[0]))
    return panel.repeat(factor, 0).repeat(factor, 1) if factor > 1 else panel


def heat_overlay(image: np.ndarray, scores: np.ndarray, normal_median: float, threshold: float) -> np.ndarray:
    """The image under the heat map of its scores, on the fixed colour scale."""
    heat = colorize(heat_scale(scores, normal_median, threshold))
    return (0.45 * image + 0.55 * heat).astype(np.uint8)


def _colour_bar(draw: ImageDraw.ImageDraw, canvas: Image.Image, top: int, normal_median: float,
                threshold: float) -> None:
    """The pixel colour scale across the frame: normal median at the left, the pixel threshold in the
    middle (marked), twice as far at the right."""
    width = canvas.width
    left, right = 8, width - 8
    gradient = colorize(np.linspace(0, 1, right - left))[None].repeat(8, 0)
    canvas.paste(Image.fromarray(gradient), (left, top + 2))
    mid = (left + right) // 2
    draw.line([(mid, top), (mid, top + 12)], fill=(255, 255, 255), width=2)
    font = _font()
    top_value = normal_median + 2 * (threshold - normal_median)
    start, label, end = f"{normal_median:.3g} (normal median)", f"pixel threshold {threshold:.3g}", f">= {top_value:.3g}"
    if draw.textlength(start, font=font) + draw.textlength(label, font=font) / 2 > mid - left - 8:
        start, label = f"{normal_median:.3g}", f"threshold {threshold:.3g}"  # a narrow frame: short labels
    draw.text((left, top + 12), start, fill=(200, 200, 200), font=font)
    draw.text((mid - draw.textlength(label, font=font) / 2, top + 12), label, fill=(255, 255, 255), font=font)
    draw.text((right - draw.textlength(end, font=font), top + 12), end, fill=(200, 200, 200), font=font)


def compose(panels: list[np.ndarray], titles: list[str], caption: str, anomalous: bool, *, normal_median: float,
            threshold: float) -> np.ndarray:
    """Panels side by side under their titles, a caption with the verdict in colour, and the colour bar."""
    side = max(MIN_PANEL, panels[0].shape[0])
    panels = [_enlarge(p, side) for p in panels]
    body = np.concatenate(panels, 1)
    width = body.shape[1]
    canvas = Image.new("RGB", (width, _TITLE_H + body.shape[0] + _CAPTION_H + _BAR_H), (20, 20, 20))
    canvas.paste(Image.fromarray(body), (0, _TITLE_H))
    draw = ImageDraw.Draw(canvas)
    font = _font()
    step = panels[0].shape[1]
    for i, title in enumerate(titles):
        draw.text((i * step + 4, 2), title, fill=(230, 230, 230), font=font)
    y = _TITLE_H + body.shape[0] + 3
    verdict = "ANOMALY" if anomalous else "normal"
    draw.text((4, y), caption, fill=(255, 255, 255), font=font)
    draw.text((width - draw.textlength(verdict, font=font) - 6, y), verdict,
              fill=tuple(int(c) for c in (_RED if anomalous else _GREEN)), font=font)
    _colour_bar(draw, canvas, _TITLE_H + body.shape[0] + _CAPTION_H, normal_median, threshold)
    return np.asarray(canvas)


def frame(image: np.ndarray, mask: np.ndarray, scores: np.ndarray, *, normal_median: float, threshold: float,
          image_score: float, image_threshold: float, name: str) -> np.ndarray:
    """One GIF frame: input | ground truth | anomaly map | prediction, the image's verdict at the image
    threshold, and the colour bar with the pixel threshold."""
    panels = [image, _tint(image, mask > 0, _GREEN), heat_overlay(image, scores, normal_median, threshold),
              _tint(image, scores > threshold, _RED)]
    caption = f"{name}   image score {image_score:.3g} (threshold {image_threshold:.3g})"
    return compose(panels, ["input", "ground truth", "anomaly map", "pixels above threshold"], caption,
                   image_score > image_threshold, normal_median=normal_median, threshold=threshold)


def render_gif(path: str | Path, images: np.ndarray, masks: np.ndarray, maps: np.ndarray, names: list[str],
               image_scores: np.ndarray, *, normal_median: float, threshold: float, image_threshold: float,
               frame_ms: int, max_frames: int) -> int:
    """Write the animated GIF; returns the number of frames (evenly spread over the test set)."""
    n = len(images)
    picks = np.unique(np.linspace(0, n - 1, min(n, max_frames)).round().astype(int))
    frames = []
    for i in picks:
        frames.append(frame(np.asarray(images[i]), np.asarray(masks[i]), np.asarray(maps[i], np.float32),
                            normal_median=normal_median, threshold=threshold, image_score=float(image_scores[i]),
                            image_threshold=image_threshold, name=names[i]))
    first, *rest = [_palette(f) for f in frames]
    with atomic_path(path) as tmp:
        first.save(tmp, format="GIF", save_all=True, append_images=rest, duration=frame_ms, loop=0)
    return len(frames)


def _palette(rgb: np.ndarray) -> Image.Image:
    """A frame in 256 colours by fast octree quantisation, without dithering.

    Given RGB frames, PIL's GIF writer runs its median-cut quantiser on each, which costs far
    more than drawing the frame; octree quantisation is about a hundred times faster.
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
    thresholds = info["thresholds"]
    return render_gif(out, test.images, test.masks, maps, test.names, image_scores,
                      normal_median=thresholds["normal_pixel_quantiles"]["0.5"], threshold=thresholds["pixel"],
                      image_threshold=thresholds["image"], frame_ms=frame_ms, max_frames=max_frames)
