"""The anomalib side-by-side harness's own logic, without anomalib: the variants of our CFA that
attribute the AUROC gap to anomalib's input quirks, and the spread over seeds it reports."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
import torch.nn.functional as F

from uad import methods
from uad.data.prepared import load_split
from uad.methods.base import TrainingFeatures
from uad.methods.cfa import CFA
from uad.runtime import seed_everything

from .conftest import REPO, tiny_config


@pytest.fixture(scope="module")
def harness():
    sys.path.insert(0, str(REPO / "benchmarks"))  # the harness imports its sibling `common`
    path = REPO / "benchmarks" / "anomalib_side_by_side.py"
    spec = importlib.util.spec_from_file_location("anomalib_side_by_side", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_spread_over_seeds(harness):
    got = harness.spread([0.5, 0.7, 0.6])
    assert got["mean"] == pytest.approx(0.6) and got["std"] == pytest.approx(0.1)
    assert (got["min"], got["max"], got["n"]) == (0.5, 0.7, 3)


def test_variant_class_is_swapped_in_and_restored(harness):
    cfg = tiny_config(model="cfa")
    with harness.method_class("cfa_raw_memory"):
        assert type(methods.create(cfg)) is harness.RawMemoryCFA
    with harness.method_class("cfa_batch32"):  # a params-only variant keeps our class
        assert type(methods.create(cfg)) is CFA
    with pytest.raises(RuntimeError), harness.method_class("cfa_anomalib_like"):
        raise RuntimeError("a failed run")
    assert methods.METHODS["cfa"] is CFA


def test_imagenet_normalisation_replaces_the_weights_own(harness):
    cfg = tiny_config(model="cfa")
    own = CFA(cfg).extractor
    assert torch.allclose(own.mean.flatten(), torch.tensor([0.5, 0.5, 0.5]))  # tf_ lite0's (127 / 128)
    for cls, imagenet in ((harness.ImageNetNormCFA, True), (harness.RawMemoryCFA, False),
                          (harness.AnomalibLikeCFA, True)):
        extractor = cls(cfg).extractor
        want = (harness.IMAGENET_MEAN, harness.IMAGENET_STD) if imagenet else (own.mean.flatten(), own.std.flatten())
        torch.testing.assert_close(extractor.mean.flatten(), torch.as_tensor(want[0]))
        torch.testing.assert_close(extractor.std.flatten(), torch.as_tensor(want[1]))


def _mean_descriptor(model: CFA, images) -> torch.Tensor:
    """The official memory bank, written out: the per-location mean descriptor of the images."""
    grid = model.grid
    with torch.no_grad():
        maps = model.pooled_maps(images)
        up = [F.interpolate(m, size=grid, mode="bilinear", align_corners=False) for m in maps[1:]]
        return model.descriptor(torch.cat([maps[0], *up], 1)).mean(0).flatten(1).T


def test_raw_memory_is_the_mean_descriptor_of_unnormalised_images(harness, prepared):
    cfg = tiny_config(model="cfa")
    images = load_split(prepared, "train").images
    seed_everything(0)
    model = harness.RawMemoryCFA(cfg)
    normalised = TrainingFeatures(images, model.patch_features, torch.float32, 4, model.device)
    mean, std = model.extractor.mean.clone(), model.extractor.std.clone()
    model._train_images = images
    model._init_memory(normalised, torch.Generator().manual_seed(0))
    assert torch.equal(model.extractor.mean, mean) and torch.equal(model.extractor.std, std)  # restored

    official = _mean_descriptor(model, images)
    model.extractor.mean.zero_()
    model.extractor.std.fill_(1.0)
    raw = _mean_descriptor(model, images)
    torch.testing.assert_close(model.memory, raw, rtol=1e-5, atol=1e-5)
    assert (model.memory - official).norm() > 0.1 * official.norm()  # a different bank, not a rounding

    seed_everything(0)
    plain = harness.ImageNetNormCFA(cfg)  # raw_memory off: the official bank of its own inputs
    plain._init_memory(TrainingFeatures(images, plain.patch_features, torch.float32, 4, plain.device),
                       torch.Generator().manual_seed(0))
    torch.testing.assert_close(plain.memory, _mean_descriptor(plain, images), rtol=1e-5, atol=1e-5)
