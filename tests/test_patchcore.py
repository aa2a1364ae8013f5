"""PatchCore's own pieces against straightforward references; what every method must do is in
test_methods.py (and test_predict_export.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from uad.data.prepared import load_split
from uad.errors import ConfigError
from uad.export import check_export, export
from uad.methods.base import create, load
from uad.methods.patchcore.model import embedding_matrix, locally_aware, reweighted_score
from uad.metrics.compute import image_auroc, pixel_auroc
from uad.ops.coreset import greedy_coreset, random_projection
from uad.ops.knn import nearest
from uad.runtime import seed_everything

from .conftest import tiny_config


def reference_coreset(points: torch.Tensor, size: int, start: int) -> list[int]:
    """Greedy k-centre the slow way: every step, every point's distance to every chosen point."""
    chosen = [start]
    while len(chosen) < size:
        to_chosen = torch.stack([torch.linalg.vector_norm(points - points[c], dim=1) for c in chosen], 1)
        chosen.append(int(to_chosen.min(1).values.argmax()))
    return chosen


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_coreset_equals_the_slow_greedy_k_centre(dtype):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(300, 64, generator=g, dtype=torch.float64)
    points = (features @ random_projection(64, 16, g).double()).to(dtype)  # the same projection for both
    got = greedy_coreset(points, 40, start=7)
    assert got.tolist() == reference_coreset(points.double(), 40, 7)
    assert len(set(got.tolist())) == 40  # no point chosen twice


def test_coreset_covers_better_than_random_subsets():
    g = torch.Generator().manual_seed(1)
    points = torch.cat([torch.randn(500, 2, generator=g), torch.randn(5, 2, generator=g) + 12])  # a rare cluster
    chosen = greedy_coreset(points, 30, start=0)
    radius = torch.cdist(points, points[chosen]).min(1).values.max()
    best_random = min(torch.cdist(points, points[torch.randperm(505, generator=g)[:30]]).min(1).values.max()
                      for _ in range(20))
    assert radius < 0.7 * best_random and (chosen >= 500).any()  # and the rare cluster is represented


def test_coreset_arguments_are_checked():
    with pytest.raises(ValueError, match="size must be in 1..5"):
        greedy_coreset(torch.zeros(5, 2), 6, 0)
    with pytest.raises(ValueError, match="start 5 is not one of the 5 points"):
        greedy_coreset(torch.zeros(5, 2), 2, 5)


def test_the_random_projection_keeps_distances():
    """Johnson-Lindenstrauss: 60 points in 1024 dims projected to 128 keep their pairwise distances."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(60, 1024, generator=g, dtype=torch.float64) * torch.rand(1, 1024, generator=g, dtype=torch.float64)
    projected = x @ random_projection(1024, 128, g).double()
    i, j = torch.triu_indices(60, 60, 1)
    ratio = torch.cdist(projected, projected)[i, j] / torch.cdist(x, x)[i, j]
    assert 0.7 < float(ratio.min()) and float(ratio.max()) < 1.3
    assert float(ratio.square().mean()) == pytest.approx(1.0, abs=0.05)
    again = random_projection(1024, 128, torch.Generator().manual_seed(2))
    assert not torch.equal(again, random_projection(1024, 128, g))  # drawn from the generator


def reference_features(maps: list[torch.Tensor], pretrain: int, embed: int) -> torch.Tensor:
    """avg_pool 3x3 of every map, bilinear resize to the first map's grid, per patch: every layer
    adaptively pooled to `pretrain`, the layers concatenated and pooled to `embed`."""
    h, w = maps[0].shape[-2:]
    layers = []
    for m in maps:
        m = F.avg_pool2d(m, 3, stride=1, padding=1)
        m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
        rows = m.permute(0, 2, 3, 1).reshape(-1, 1, m.shape[1])  # one row per patch
        layers.append(F.adaptive_avg_pool1d(rows, pretrain)[:, 0])
    return F.adaptive_avg_pool1d(torch.cat(layers, 1)[:, None], embed)[:, 0]


def random_maps(channels: tuple[int, int]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn(2, channels[0], 8, 8, generator=g, dtype=torch.float64),
            torch.randn(2, channels[1], 4, 4, generator=g, dtype=torch.float64)]


def test_locally_aware_features_equal_pooling_interpolation_and_adaptive_pooling():
    """More channels than embed_dims (like WRN50's 1536 -> 1024): the features themselves."""
    maps = random_maps((40, 72))
    got = locally_aware(maps, 3, embedding_matrix([40, 72], 48, 64).double())
    assert got.shape == (2, 64, 64)
    torch.testing.assert_close(got.reshape(-1, 64), reference_features(maps, 48, 64), rtol=1e-6, atol=1e-6)


def test_narrow_layers_keep_the_features_distances_in_fewer_numbers():
    """Fewer channels than embed_dims (like lite0's 120 -> 1024): the features are kept in an
    orthonormal basis of the subspace they span, so every inner product (and distance) is the
    reference's, in 24 numbers instead of 96."""
    maps = random_maps((8, 16))
    got = locally_aware(maps, 3, embedding_matrix([8, 16], 64, 96).double()).reshape(-1, 24)
    expected = reference_features(maps, 64, 96)
    torch.testing.assert_close(got @ got.T, expected @ expected.T, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.cdist(got, got), torch.cdist(expected, expected), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [1, 3])
def test_nearest_scores_equal_cdist(n):
    g = torch.Generator().manual_seed(4)
    memory = torch.randn(300, 32, generator=g) * 3 + 10  # far from the origin: the expansion cancels
    patches = torch.cat([torch.randn(500, 32, generator=g) * 3 + 10, memory[:20]])  # 20 exact matches
    reference = torch.cdist(patches.double(), memory.double()).topk(n, dim=1, largest=False)
    for max_bytes in (2**28, 4096):  # one block, and blocks of a few rows
        values, index = nearest(patches, memory, n, max_bytes=max_bytes)
        assert torch.equal(index, reference.indices)
        torch.testing.assert_close(values.sqrt().double(), reference.values, rtol=1e-5, atol=1e-5)
        assert (values[500:, 0] == 0).all()  # a training patch is at distance 0, not a rounding error away
    with pytest.raises(ValueError, match="asked for the 301 nearest of only 300"):
        nearest(patches, memory, 301)


def test_reweighting_is_the_papers_equation_7():
    memory = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    patches = torch.tensor([[[0.1, 0.0], [0.0, -1.0]],    # image 0: the second patch is the farthest
                            [[5.0, 5.5], [1.0, 0.0]]])    # image 1: the first one
    distances = torch.tensor([[0.1, 1.0], [0.5, 0.0]])   # to the nearest items, whose indices are
    index = torch.tensor([[0, 0], [3, 1]])
    got = reweighted_score(patches, distances, index, memory, neighbors=3)
    # image 0: m_test* = (0, -1), m* = (0, 0), s* = 1; N_3(m*) = (0, 0), (1, 0), (0, 2)
    s0 = (1 - math.exp(1) / (math.exp(1) + math.exp(math.sqrt(2)) + math.exp(3))) * 1
    # image 1: m_test* = (5, 5.5), m* = (5, 5), s* = 0.5; N_3(m*) = (5, 5), (0, 2), (1, 0)
    s1 = (1 - math.exp(0.5) / (math.exp(0.5) + math.exp(math.sqrt(25 + 12.25)) + math.exp(math.sqrt(16 + 30.25))))
    s1 *= 0.5
    torch.testing.assert_close(got, torch.tensor([s0, s1]))


def fitted(prepared, **section):
    cfg = tiny_config(model="patchcore", patchcore=section)
    train = load_split(prepared, "train")
    model = create(cfg)
    info = model.fit(train.images, seed_everything(cfg.seed), batch_size=3)
    return model, info, train


def test_memory_bank_is_a_coreset_of_the_training_patches(prepared):
    model, info, train = fitted(prepared)
    everything = model.embed(train.images).reshape(-1, model.memory.shape[1])
    assert info.extra["training_patches"] == len(everything) == len(train) * 8 * 8  # 64 px at stride 8
    assert len(model.memory) == int(len(everything) * 0.1) == info.extra["memory_size"]
    assert model.memory.shape[1] == 120 == info.extra["feature_dims"]  # lite0 blocks.2 + blocks.3: 40 + 80
    exact = torch.cdist(model.memory, everything, compute_mode="donot_use_mm_for_euclid_dist")
    assert exact.min(1).values.max() < 1e-4  # every item is a training patch
    whole, _, _ = fitted(prepared, coreset_ratio=1.0)
    torch.testing.assert_close(whole.memory, everything)


def test_patchcore_flags_defects(prepared):
    model, _, _ = fitted(prepared)
    test = load_split(prepared, "test")
    scores = model.score(test.images, 5)
    masks = torch.from_numpy(np.array(test.masks) > 0)
    assert pixel_auroc(scores.maps, masks) >= 0.85
    maps = scores.maps.numpy()
    inside = np.array([m[k > 0].mean() for m, k in zip(maps, test.masks) if k.any()])
    outside = np.array([m[k == 0].mean() for m, k in zip(maps, test.masks) if k.any()])
    assert np.mean(inside > outside) >= 0.75


def test_the_reweighted_image_score_is_scored_saved_and_exported_alike(prepared, tmp_path):
    model, info, train = fitted(prepared, image_score="reweighted", num_neighbors=4)
    test = load_split(prepared, "test")
    scores = model.score(test.images, 5)
    plain = fitted(prepared)[0].score(test.images, 5)
    torch.testing.assert_close(scores.maps, plain.maps)  # the maps do not depend on the image score
    assert not torch.allclose(scores.image, scores.maps.flatten(1).amax(1))  # the image score does
    maps, image = model(torch.from_numpy(np.array(test.images[:3])))
    torch.testing.assert_close(image, scores.image[:3])
    model.calibrate(train.images[:2], image_fpr=0.01, pixel_fpr=0.005, batch_size=4, source="test")
    model.save(tmp_path, info, {})
    again = load(tmp_path)
    torch.testing.assert_close(again.score(test.images, 4).image, scores.image, rtol=0, atol=0)
    path = export(again, tmp_path / "m.onnx", "onnx")
    assert check_export(again, path, np.array(test.images[:4]))["verdicts_agree"]


def test_too_many_neighbours_for_the_memory_bank_are_refused(prepared):
    with pytest.raises(ConfigError, match=r"patchcore\.num_neighbors: 9 .* the memory bank holds 5"):
        fitted(prepared, image_score="reweighted", coreset_ratio=0.01)


@pytest.mark.parametrize("values, message", [
    ({"patch_size": 4}, "patchcore.patch_size: 4 must be odd"),
    ({"patch_size": 0}, "patchcore.patch_size: 0 must be positive"),
    ({"patch_size": 17}, "patchcore.patch_size: 17 is more than the supported 15"),
    ({"coreset_ratio": 0.0}, "patchcore.coreset_ratio: 0.0 must be positive"),
    ({"coreset_ratio": 1.5}, "patchcore.coreset_ratio: 1.5 is more than the supported 1"),
    ({"coreset_ratio": float("nan")}, "patchcore.coreset_ratio: nan must be a finite number"),
    ({"projection_dims": 0}, "patchcore.projection_dims: 0 must be positive"),
    ({"embed_dims": 100_000}, "patchcore.embed_dims: 100000 is more than the supported 16384"),
    ({"pretrain_dims": -1}, "patchcore.pretrain_dims: -1 must be positive"),
    ({"num_neighbors": 2000}, "patchcore.num_neighbors: 2000 is more than the supported 1024"),
    ({"blur_sigma": -1.0}, "patchcore.blur_sigma: -1.0 must be >= 0"),
    ({"image_score": "mean"}, "patchcore.image_score: 'mean' is not valid"),
])
def test_parameters_are_validated_by_name(values, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        tiny_config(model="patchcore", patchcore=values)
