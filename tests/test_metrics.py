import numpy as np
import pytest
import scipy.ndimage
import torch
from sklearn.metrics import precision_recall_curve, roc_auc_score

from uad.metrics import compute as metrics


def test_image_and_pixel_auroc_match_sklearn_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounding creates ties
    assert metrics.image_auroc(torch.tensor(scores), torch.tensor(labels)) == pytest.approx(
        roc_auc_score(labels, scores), abs=1e-6)
    maps = torch.tensor(rng.normal(0, 1, (4, 16, 16)), dtype=torch.float32)
    masks = torch.tensor(rng.random((4, 16, 16)) < 0.1)
    maps[masks] += 1.0
    assert metrics.pixel_auroc(maps, masks) == pytest.approx(
        roc_auc_score(masks.flatten().numpy(), maps.flatten().numpy()), abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_curves_equal_sklearn_and_torchmetrics_point_by_point(seed):
    """The exact curves behind every metric, with ties: sklearn's ROC (all points) and PR curves, and
    torchmetrics' (on scores in [0, 1], where it applies no sigmoid)."""
    from sklearn.metrics import roc_curve
    from torchmetrics.functional.classification import binary_precision_recall_curve, binary_roc

    rng = np.random.default_rng(seed)
    labels = rng.random(2000) < 0.2
    scores = np.round(rng.random(2000) * 0.6 + labels * 0.3, 2)  # many ties, all in [0, 1]
    s, y = torch.tensor(scores), torch.tensor(labels)
    fpr, tpr, thresholds = metrics.roc(s, y)
    ref_fpr, ref_tpr, ref_thr = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr.numpy(), ref_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr.numpy(), ref_tpr, atol=1e-12)
    np.testing.assert_allclose(thresholds.numpy()[1:], ref_thr[1:])
    tm_fpr, tm_tpr, _ = binary_roc(s.float(), y.long())
    np.testing.assert_allclose(fpr.numpy(), tm_fpr.double().numpy(), atol=1e-6)
    np.testing.assert_allclose(tpr.numpy(), tm_tpr.double().numpy(), atol=1e-6)
    precision, recall = metrics.precision_recall(s, y)
    ref_p, ref_r, _ = precision_recall_curve(labels, scores)
    np.testing.assert_allclose(precision.numpy(), ref_p, atol=1e-12)
    np.testing.assert_allclose(recall.numpy(), ref_r, atol=1e-12)
    tm_p, tm_r, _ = binary_precision_recall_curve(s.float(), y.long())
    f1 = lambda p, r: (2 * p * r / (p + r + 1e-10)).max()  # noqa: E731
    assert float(f1(precision, recall)) == pytest.approx(float(f1(tm_p.double(), tm_r.double())), abs=1e-6)


def test_auroc_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        metrics.image_auroc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1]))


def test_large_scores_are_not_squashed():
    # scores are used as they are: a sigmoid (torchmetrics' default outside [0, 1]) would tie 30 and 40
    scores = torch.tensor([30.0, 31.0, 40.0, 41.0])
    labels = torch.tensor([0, 0, 1, 1])
    assert metrics.image_auroc(scores, labels) == 1.0


def test_f1_max_matches_sklearn():
    rng = np.random.default_rng(1)
    gt = rng.random(5000) < 0.05
    s = rng.normal(gt * 1.5, 1.0)
    p, r, _ = precision_recall_curve(gt, s)
    expected = np.max(2 * p * r / (p + r + 1e-10))
    got = metrics.f1_max(torch.tensor(s).view(1, 50, 100), torch.tensor(gt).view(1, 50, 100))
    assert got == pytest.approx(expected, abs=1e-6)


def test_f1_at_a_fixed_threshold():
    maps = torch.tensor([[[0.1, 0.9], [0.8, 0.2]]])
    masks = torch.tensor([[[0, 1], [0, 1]]])
    # predicted {0.9, 0.8}: tp=1, fp=1, fn=1 -> F1 = 2/4
    assert metrics.f1_at(maps, masks, 0.5) == pytest.approx(0.5)
    assert metrics.f1_at(maps, masks, 0.95) == 0.0


def test_regions_are_eight_connected_and_numbered_across_images():
    masks = np.zeros((2, 5, 5), np.uint8)
    masks[0, 0, 0] = masks[0, 1, 1] = 1  # diagonal neighbours: one region
    masks[0, 4, 4] = 1
    masks[1, 2, 2] = 1
    regions = metrics.label_regions(masks)
    assert regions[0, 0, 0] == regions[0, 1, 1] == 1
    assert regions[0, 4, 4] == 2 and regions[1, 2, 2] == 3


@pytest.mark.parametrize("density", [0.05, 0.3, 0.6, 0.9])
def test_regions_equal_scipys_labels_numbered_image_by_image(density):
    """Exactly scipy.ndimage.label's numbering (3x3 structure), offset image by image, on random masks:
    snakes, diagonal chains and regions touching every border included."""
    rng = np.random.default_rng(int(density * 100))
    masks = (rng.random((6, 37, 53)) < density).astype(np.uint8)
    masks[1] = 0  # an empty mask
    masks[2, :, 5] = 1  # a column touching two borders
    masks[3] = np.eye(37, 53, dtype=np.uint8)  # one diagonal chain
    expected, offset = np.zeros(masks.shape, np.int64), 0
    for i, mask in enumerate(masks):
        labels, n = scipy.ndimage.label(mask, structure=np.ones((3, 3)))
        expected[i] = np.where(labels > 0, labels + offset, 0)
        offset += n
    np.testing.assert_array_equal(metrics.label_regions(masks), expected)
    assert not metrics.label_regions(np.zeros((2, 4, 4), np.uint8)).any()


def test_a_long_snake_is_one_region():
    """The worst case for merging by rounds: one 1-pixel-wide path winding through the whole mask."""
    mask = np.zeros((1, 41, 41), np.uint8)
    mask[0, ::2, :] = 1
    mask[0, 1::4, -1] = 1
    mask[0, 3::4, 0] = 1
    regions = metrics.label_regions(mask)
    assert set(np.unique(regions)) == {0, 1}


def reference_aupro(maps: np.ndarray, masks: np.ndarray, limit: float) -> float:
    """Independent PRO: sweep every distinct threshold, overlap per region, trapezoid up to `limit`."""
    regions = []
    for img, mask in zip(maps, masks):
        labels, n = scipy.ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(len(regions), img, labels == k) for k in range(1, n + 1)]
    negatives = ~masks.astype(bool)
    points = [(0.0, 0.0)]
    for t in sorted(np.unique(maps))[::-1]:
        fpr = (maps[negatives] >= t).sum() / negatives.sum()
        pro = np.mean([(img[reg] >= t).mean() for _, img, reg in regions])
        points.append((fpr, pro))
    fpr, pro = np.array(points).T
    keep = fpr <= limit
    x, y = list(fpr[keep]), list(pro[keep])
    nxt = np.argmax(fpr > limit)
    if fpr[nxt] > limit:
        y.append(np.interp(limit, [fpr[nxt - 1], fpr[nxt]], [pro[nxt - 1], pro[nxt]]))
        x.append(limit)
    return np.trapezoid(y, x) / limit


def hand_made_case():
    rng = np.random.default_rng(3)
    masks = np.zeros((3, 24, 24), np.uint8)
    masks[0, 2:6, 2:6] = 1  # small square
    masks[0, 10:22, 8:20] = 1  # large square
    masks[1, 5:9, 15:18] = 1  # a third region in another image; image 2 is good
    maps = rng.normal(0, 1, masks.shape) + masks * rng.uniform(0.5, 2.5, masks.shape)
    return maps.round(2), masks  # rounding creates ties between thresholds


@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_aupro_matches_an_independent_threshold_sweep(limit):
    maps, masks = hand_made_case()
    regions = torch.from_numpy(metrics.label_regions(masks))
    ours = metrics.aupro(torch.tensor(maps), regions, limit)
    assert ours == pytest.approx(reference_aupro(maps, masks, limit), abs=1e-9)


def test_aupro_known_values():
    masks = np.zeros((1, 10, 10), np.uint8)
    masks[0, 0:2, 0:2] = 1  # region A
    masks[0, 8:10, 8:10] = 1  # region B
    regions = torch.from_numpy(metrics.label_regions(masks))
    perfect = torch.tensor(masks, dtype=torch.float32)
    assert metrics.aupro(perfect, regions, 0.3) == pytest.approx(1.0)
    # region A scores above every normal pixel, region B below all of them: PRO = 0.5 up to FPR 1
    half = torch.zeros(1, 10, 10) + 0.5
    half[0, 0:2, 0:2] = 1.0
    half[0, 8:10, 8:10] = 0.0
    assert metrics.aupro(half, regions, 0.3) == pytest.approx(0.5)
    curve = metrics.pro_curve(half, regions)
    assert curve.fpr[-1] == pytest.approx(1.0) and curve.pro[-1] == pytest.approx(1.0)


def test_aupro_needs_regions_and_negatives():
    with pytest.raises(ValueError, match="anomalous region"):
        metrics.aupro(torch.rand(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))


def test_curves_are_thinned_records():
    maps, masks = hand_made_case()
    c = metrics.curves(torch.tensor([0.1, 0.9, 0.4]), torch.tensor([0, 1, 1]), torch.tensor(maps),
                       torch.tensor(masks), 50)
    assert set(c) == {"roc_image", "roc_pixel", "pr_pixel"}
    assert len(c["roc_pixel"]) <= 50 and c["roc_pixel"][0] == {"fpr": 0.0, "tpr": 0.0}
    assert c["roc_pixel"][-1] == {"fpr": 1.0, "tpr": 1.0}
    assert set(c["pr_pixel"][0]) == {"recall", "precision"}
