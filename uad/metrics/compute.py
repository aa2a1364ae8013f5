"""Anomaly-segmentation metrics, with the semantics of the MVTec AD protocol (docs/methods.md).

Every curve is exact, from one sort of the scores: one point per distinct score
(ties handled as sklearn and torchmetrics do, pinned by tests against both). ROC
and AUROC (trapezoid), the precision-recall curve behind pixel F1, and AUPRO: every
GT-negative pixel moves the FPR by 1/|N|, every pixel of region k moves the mean
per-region overlap by 1/(|R_k| K). Regions are the 8-connected components of each
mask. Scores are used as they are (no sigmoid, no rescaling); torch and NumPy only,
so the evaluate stage starts without torchmetrics' or SciPy's imports.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from uad.metrics import QUALITY

@dataclass(frozen=True)
class Counts:
    """Cumulative true and false positives at every distinct threshold, highest first."""

    thresholds: torch.Tensor  # descending distinct scores
    tps: torch.Tensor  # float64
    fps: torch.Tensor


def counts(scores: torch.Tensor, labels: torch.Tensor) -> Counts:
    """`score >= t` for every distinct score t: positives and negatives flagged (one sort)."""
    s = scores.flatten().double()
    y = labels.flatten().to(s.device).double()
    order = torch.argsort(s, descending=True, stable=True)
    s, y = s[order], y[order]
    last = torch.ones_like(s, dtype=torch.bool)  # the last element of every run of equal scores
    last[:-1] = s[1:] != s[:-1]
    tps = y.cumsum(0)[last]
    fps = (1 - y).cumsum(0)[last]
    return Counts(s[last], tps, fps)


def roc(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fpr, tpr, thresholds) from (0, 0), as sklearn's roc_curve without dropping collinear points."""
    c = counts(scores, labels)
    zero = c.tps.new_zeros(1)
    tps, fps = torch.cat([zero, c.tps]), torch.cat([zero, c.fps])
    positives, negatives = tps[-1], fps[-1]
    if positives == 0 or negatives == 0:
        raise ValueError("AUROC needs both classes among the labels")
    inf = c.thresholds.new_full((1,), float("inf"))
    return fps / negatives, tps / positives, torch.cat([inf, c.thresholds])


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    fpr, tpr, _ = roc(scores, labels)
    return float(torch.trapezoid(tpr, fpr))


def image_auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    return auroc(scores, labels)


def pixel_auroc(maps: torch.Tensor, masks: torch.Tensor) -> float:
    return auroc(maps, masks)


def precision_recall(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(precision, recall) at every distinct threshold in sklearn's order (thresholds increasing, so recall
    decreasing), ending at (1, 0), as sklearn's precision_recall_curve."""
    c = counts(maps, masks)
    positives = c.tps[-1]
    if positives == 0:
        raise ValueError("a precision-recall curve needs positive pixels")
    precision = (c.tps / (c.tps + c.fps)).flip(0)
    recall = (c.tps / positives).flip(0)
    return torch.cat([precision, precision.new_ones(1)]), torch.cat([recall, recall.new_zeros(1)])


def f1_max(maps: torch.Tensor, masks: torch.Tensor) -> float:
    """Best pixel F1 over all thresholds (an optimistic bound: the threshold sees the test labels)."""
    precision, recall = precision_recall(maps, masks)
    return float((2 * precision * recall / (precision + recall + 1e-10)).max())


def f1_at(maps: torch.Tensor, masks: torch.Tensor, threshold: float) -> float:
    """Pixel F1 of the binary prediction `map > threshold` pooled over all images."""
    pred = maps.flatten() > threshold
    gt = masks.flatten().bool()
    tp = (pred & gt).sum().item()
    fp = (pred & ~gt).sum().item()
    fn = (~pred & gt).sum().item()
    return 2 * tp / max(2 * tp + fp + fn, 1)


def label_regions(masks: np.ndarray) -> np.ndarray:
    """Per-image 8-connected components, numbered 1..K across all images (0 = background).

    Numbered as `scipy.ndimage.label` with a 3x3 structure numbers them image by image (in
    raster order of each component's first pixel), which the tests pin. All images at once:
    every pair of 8-neighbouring foreground pixels is an edge, and components are merged by
    hooking each root onto the smallest root it touches, then compressing paths; each round
    at least halves the roots of a component, so the rounds are few.
    """
    fg = np.asarray(masks) > 0
    out = np.zeros(fg.shape, np.int64)
    pixels = np.flatnonzero(fg)  # image-major raster order
    if pixels.size == 0:
        return out
    position = np.full(fg.size, -1, np.int64)
    position[pixels] = np.arange(pixels.size)
    img, y, x = np.unravel_index(pixels, fg.shape)
    starts, ends = [], []
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):  # the neighbours after a pixel; the rest are symmetric
        ok = (y + dy < fg.shape[1]) & (x + dx >= 0) & (x + dx < fg.shape[2])
        neighbour = position[np.ravel_multi_index((img[ok], y[ok] + dy, x[ok] + dx), fg.shape)]
        linked = neighbour >= 0
        starts.append(np.flatnonzero(ok)[linked])
        ends.append(neighbour[linked])
    a, b = np.concatenate(starts), np.concatenate(ends)
    root = np.arange(pixels.size)
    while True:
        ra, rb = root[a], root[b]
        differ = ra != rb
        if not differ.any():
            break
        np.minimum.at(root, np.maximum(ra, rb)[differ], np.minimum(ra, rb)[differ])
        while True:
            jumped = root[root]
            if np.array_equal(jumped, root):
                break
            root = jumped
    # a root is its component's first pixel: numbering roots in order is scipy's numbering per image
    out.ravel()[pixels] = np.unique(root, return_inverse=True)[1] + 1
    return out


@dataclass(frozen=True)
class ProCurve:
    fpr: torch.Tensor  # increasing, from 0 to 1
    pro: torch.Tensor  # mean per-region overlap at the same thresholds


def pro_curve(maps: torch.Tensor, regions: torch.Tensor) -> ProCurve:
    """Exact PRO-vs-FPR curve over every distinct threshold."""
    scores = maps.flatten().float()
    region = regions.flatten().to(scores.device)
    n_regions = int(region.max())
    if n_regions == 0:
        raise ValueError("PRO needs at least one anomalous region in the ground truth")
    sizes = torch.bincount(region, minlength=n_regions + 1).double()
    negatives = sizes[0]
    if negatives == 0:
        raise ValueError("PRO needs at least one normal pixel in the ground truth")
    order = torch.argsort(scores, descending=True)
    scores, region = scores[order], region[order]
    fpr_step = (region == 0).double() / negatives
    pro_step = torch.where(region > 0, 1.0 / (sizes[region] * n_regions), torch.zeros((), dtype=torch.float64,
                                                                                        device=scores.device))
    fpr, pro = fpr_step.cumsum(0), pro_step.cumsum(0)
    # one point per distinct threshold: the last pixel of every run of equal scores
    last = torch.ones_like(scores, dtype=torch.bool)
    last[:-1] = scores[1:] != scores[:-1]
    zero = torch.zeros(1, dtype=torch.float64, device=scores.device)
    return ProCurve(torch.cat([zero, fpr[last]]), torch.cat([zero, pro[last]]))


def aupro(maps: torch.Tensor, regions: torch.Tensor, fpr_limit: float = 0.3) -> float:
    """Area under PRO vs FPR up to `fpr_limit` (interpolated there), divided by `fpr_limit`."""
    curve = pro_curve(maps, regions)
    fpr, pro = curve.fpr, curve.pro
    # fpr is non-decreasing; keep points below the limit and interpolate the one at it
    inside = int(torch.searchsorted(fpr, torch.tensor(fpr_limit, dtype=fpr.dtype, device=fpr.device),
                                    right=False))
    x, y = fpr[:inside], pro[:inside]
    if inside < len(fpr):
        x0, x1, y0, y1 = fpr[inside - 1], fpr[inside], pro[inside - 1], pro[inside]
        y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0) if x1 > x0 else y1
        x = torch.cat([x, x.new_tensor([fpr_limit])])
        y = torch.cat([y, y_lim.reshape(1)])
    return float(torch.trapezoid(y, x) / fpr_limit)


def downsample(points: dict[str, torch.Tensor], n: int) -> list[dict[str, float]]:
    """At most `n` evenly spaced points of a curve (ends kept), as records for `dvc plots`."""
    length = len(next(iter(points.values())))
    idx = torch.linspace(0, length - 1, min(n, length)).round().long().unique()
    return [{k: round(float(v[i]), 6) for k, v in points.items()} for i in idx.tolist()]


def curves(image_scores: torch.Tensor, labels: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor,
           n: int) -> dict[str, list[dict[str, float]]]:
    """Image ROC, pixel ROC and pixel PR curves, thinned to `n` points each."""
    fpr_i, tpr_i, _ = roc(image_scores, labels)
    fpr_p, tpr_p, _ = roc(maps, masks)
    precision, recall = precision_recall(maps, masks)
    return {
        "roc_image": downsample({"fpr": fpr_i, "tpr": tpr_i}, n),
        "roc_pixel": downsample({"fpr": fpr_p, "tpr": tpr_p}, n),
        "pr_pixel": downsample({"recall": recall, "precision": precision}, n),
    }


def flagged_rates(image_scores: torch.Tensor, labels: torch.Tensor, threshold: float) -> tuple[float, float]:
    """(false-alarm rate on good images, detection rate on defective ones) of `score > threshold`."""
    flagged = image_scores.flatten() > threshold
    good = labels.flatten() == 0
    return float(flagged[good].float().mean()), float(flagged[~good].float().mean())


def evaluate(image_scores: torch.Tensor, labels: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor, *,
             pixel_threshold: float, image_threshold: float, fpr_limit: float) -> dict[str, float]:
    """Every per-category metric of `uad.metrics.QUALITY`; the thresholds are the model's calibrated ones."""
    regions = torch.from_numpy(label_regions(masks.cpu().numpy()))
    false_alarms, detections = flagged_rates(image_scores, labels, image_threshold)
    result = {
        "image_auroc": image_auroc(image_scores, labels),
        "pixel_auroc": pixel_auroc(maps, masks),
        "pixel_f1_max": f1_max(maps, masks),
        "pixel_f1": f1_at(maps, masks, pixel_threshold),
        "aupro": aupro(maps, regions, fpr_limit),
        "image_false_alarm_rate": false_alarms,
        "image_detection_rate": detections,
    }
    assert list(result) == [m.key for m in QUALITY]
    return result
