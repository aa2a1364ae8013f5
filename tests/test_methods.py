"""What every registered method must do, parametrised over the registry (a new method is covered by
adding its package): its parameters are documented and valid, it fits, scores, calibrates, saves and
loads back exactly, and a saved model needs nothing but its folder."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from uad import methods, weights
from uad.data.prepared import load_split
from uad.methods.base import FORMAT, ModelError, create, load, read_saved
from uad.methods.params import MethodParams
from uad.runtime import seed_everything
from uad.zoo import BACKBONES

from .conftest import tiny_config

METHODS = methods.names()


def quick(name: str, **overrides) -> dict:
    """A method's section for a CPU test: two epochs where it trains at all."""
    fields = {f.name for f in dataclasses.fields(methods.spec(name).params)}
    return {name: {**({"epochs": 2} if "epochs" in fields else {}), **overrides}}


def test_the_registry_lists_the_method_packages():
    assert {"cfa", "dfr"} <= set(METHODS)
    for name in METHODS:
        spec = methods.spec(name)
        assert spec.name == name and issubclass(spec.params, MethodParams)
        assert spec.model_class().name == name


@pytest.mark.parametrize("name", METHODS)
def test_parameters_are_documented_and_the_defaults_are_valid(name):
    params = methods.spec(name).params()
    for f in dataclasses.fields(params):
        assert f.metadata.get("doc"), f"{name}.{f.name} has no description (param(default, doc))"
    params.check(name, 256)  # the defaults are the published settings: valid as they are
    assert params.resolved_layers(), f"{name}: no default layers for its default backbone"
    for backbone in BACKBONES:  # every backbone either has default layers or says to list them
        with_backbone = dataclasses.replace(params, backbone=backbone)
        assert with_backbone.resolved_layers() or with_backbone.DEFAULT_LAYERS.get(BACKBONES[backbone].family) is None


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory):
    """Every method fitted on the tiny demo, calibrated on held-out images and saved."""
    out = {}
    for name in METHODS:
        cfg = tiny_config(model=name, **quick(name))
        train = load_split(prepared, "train")
        generator = seed_everything(cfg.seed)
        model = create(cfg)
        history = []
        info = model.fit(train.images[2:], generator, batch_size=4,
                         log=lambda epoch, logs: history.append(logs))
        model.calibrate(train.images[:2], image_fpr=0.01, pixel_fpr=0.005, batch_size=4, source="test")
        folder = tmp_path_factory.mktemp(name)
        model.save(folder, info, {"fit_seconds": 1.0})
        out[name] = (cfg, model, folder, history)
    return out


@pytest.mark.parametrize("name", METHODS)
def test_fit_score_and_thresholds(trained, prepared, name):
    cfg, model, _, history = trained[name]
    test = load_split(prepared, "test")
    scores = model.score(test.images, 5)
    assert scores.maps.shape == (len(test), cfg.image_size, cfg.image_size) and torch.isfinite(scores.maps).all()
    torch.testing.assert_close(scores.image, scores.maps.flatten(1).amax(1))
    assert torch.isfinite(model.image_threshold) and torch.isfinite(model.pixel_threshold)
    assert model.pixel_threshold >= model.normal_quantiles[0]  # above the normal median
    maps, image = model(torch.from_numpy(np.array(test.images[:3])))  # forward = the scoring path
    torch.testing.assert_close(maps, scores.maps[:3]) and torch.testing.assert_close(image, scores.image[:3])
    if history:
        assert all(np.isfinite(h["loss"]) for h in history)


@pytest.mark.parametrize("name", METHODS)
def test_a_saved_model_loads_from_its_folder_alone(trained, prepared, name, monkeypatch, tmp_path):
    """Loading reads neither params.yaml nor a weights package nor a hub, and scores bit-identically."""
    cfg, model, folder, _ = trained[name]
    test = load_split(prepared, "test")
    expected = model.score(test.images, 4).maps
    monkeypatch.chdir(tmp_path)  # no params.yaml here
    monkeypatch.setattr(weights, "load_weights", lambda *a, **k: pytest.fail("loading resolved backbone weights"))
    again = load(folder)
    assert type(again) is type(model) and again.params == model.params
    torch.testing.assert_close(again.score(test.images, 3).maps, expected, rtol=0, atol=0)
    assert float(again.image_threshold) == float(model.image_threshold)
    assert again.extractor.weights_fingerprint == model.extractor.weights_fingerprint
    saved = read_saved(folder)
    assert saved["format"] == FORMAT and saved["method"] == name
    assert saved["input"]["size"] == cfg.image_size and saved["backbone"]["layers"] == list(model.extractor.layers)


@pytest.mark.parametrize("name", METHODS)
def test_an_older_or_foreign_model_file_is_refused_by_name(trained, name, tmp_path):
    _, _, folder, _ = trained[name]
    saved = read_saved(folder)
    (tmp_path / "model.pt").write_bytes(b"")
    torch.save({**saved, "format": 1}, tmp_path / "model.pt")
    with pytest.raises(ModelError, match="saved in format 1 by an older version"):
        load(tmp_path)
    other = next((m for m in METHODS if m != name), None)
    if other:
        with pytest.raises(ModelError, match=f"holds a {name} model but params select {other}"):
            load(folder, expect=other)


@pytest.mark.parametrize("name", METHODS)
def test_training_is_reproducible(prepared, name):
    cfg = tiny_config(model=name, **quick(name))
    images = load_split(prepared, "train").images[:6]
    maps = []
    for _ in range(2):
        generator = seed_everything(cfg.seed)  # before create: initial weights come from the seed too
        model = create(cfg)
        model.fit(images, generator, batch_size=4)
        maps.append(model.score(images[:2], 2).maps)
    torch.testing.assert_close(maps[0], maps[1], rtol=0, atol=0)


def test_image_threshold_is_the_conformal_quantile_when_the_sample_allows_it():
    from uad.methods.base import image_threshold

    scores = torch.arange(1, 201, dtype=torch.float32)  # 200 held-out normal scores 1..200
    t, rule = image_threshold(scores, 0.01)
    assert t == 199.0 and rule.startswith("conformal: rank 199 of 200")  # ceil(201 * 0.99) = 199
    assert (scores > t).float().mean() <= 0.01
    t, _ = image_threshold(scores, 0.05)
    assert t == 191.0  # ceil(201 * 0.95) = 191


def test_image_threshold_extrapolates_when_too_few_images_were_held_out():
    from uad.methods.base import image_threshold

    rng = np.random.default_rng(0)
    few = torch.from_numpy(np.exp(rng.normal(0.0, 0.2, 12))).float()  # log-normal, 12 images: 1 % unreachable
    t, rule = image_threshold(few, 0.01)
    expected = float(np.exp(np.log(few.numpy()).mean() + 2.3263 * np.log(few.numpy()).std(ddof=1)))
    assert t == pytest.approx(max(expected, float(few.max())), rel=1e-3) and "log-normal" in rule
    assert t >= float(few.max())
    # on fresh draws from the same distribution the false-alarm rate stays near the target
    fresh = np.exp(rng.normal(0.0, 0.2, 100_000))
    assert (fresh > t).mean() < 0.05


def test_upper_quantiles_flag_at_least_the_asked_fraction():
    from uad.methods.base import upper_quantiles

    values = torch.rand(10_000, generator=torch.Generator().manual_seed(0))
    for f, t in zip((0.005, 0.1, 0.5), upper_quantiles(values, [0.005, 0.1, 0.5]).tolist()):
        above = int((values > t).sum())
        assert round(f * 10_000) <= above <= round(f * 10_000) + 1
