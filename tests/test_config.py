from pathlib import Path

import pytest
import yaml

from uad.config import config_from_dict, load_config
from uad.errors import ConfigError
from uad.zoo import BACKBONES

from .conftest import committed_params


def error(params) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(params)
    return str(info.value)


def test_committed_params_load_and_validate(tmp_path):
    (tmp_path / "params.yaml").write_text(committed_params())
    cfg = load_config(tmp_path / "params.yaml")
    assert cfg.dataset == "demo" and set(cfg.methods) >= {"cfa", "dfr"}
    assert cfg.method().resolved_layers() == ("blocks.1", "blocks.2", "blocks.3")


def test_a_stage_reads_only_the_sections_it_uses():
    data = {"model": "cfa", "dfr": {"epochs": "not checked here"}}
    assert set(config_from_dict(data, "model").methods) == {"cfa"}
    assert config_from_dict(data, "none").methods == {}
    with pytest.raises(ConfigError, match="dfr.epochs: expected an integer"):
        config_from_dict(data, "all")
    with pytest.raises(ConfigError, match="model: 'svm' is not valid"):
        config_from_dict({"model": "svm"}, "none")


@pytest.mark.parametrize("params, expected", [
    ({"model": "knn"}, "model: 'knn' is not valid; choose one of ['cfa', 'dfr'"),
    ({"dataset": "imagenet"}, "dataset: 'imagenet' is not valid; choose one of"),
    ({"device": "gpu"}, "device: 'gpu' is not valid; choose one of ['auto', 'cpu', 'cuda', 'cuda:N']"),
    ({"precision": "fp8"}, "precision: 'fp8' is not valid"),
    ({"prepare": {"resize": "cubic"}}, "prepare.resize: 'cubic' is not valid"),
])
def test_unknown_choice_lists_valid_values(params, expected):
    assert expected in error(params)


def test_unknown_backbone_lists_supported_ones():
    msg = error({"dfr": {"backbone": "resnet9000"}})
    assert "dfr.backbone: 'resnet9000' is not supported" in msg
    for name in BACKBONES:
        assert name in msg


@pytest.mark.parametrize("params, expected", [
    ({"dfr": {"epochs": 0}}, "dfr.epochs: 0 must be positive"),
    ({"cfa": {"k": 0}}, "cfa.k: 0 must be positive"),
    ({"cfa": {"j": -1}}, "cfa.j: -1 must be >= 0"),
    ({"cfa": {"alpha": -0.1}}, "cfa.alpha: -0.1 must be >= 0"),
    ({"cfa": {"learn_radius": 1}}, "cfa.learn_radius: expected true or false"),
    ({"cfa": {"backbone": "vgg19", "feature_export": "timm"}}, "cfa.layers: no default layers of vgg19 for cfa"),
    ({"cfa": {"backbone": "tf_efficientnet_lite0"}}, "cfa.feature_export: 'official' is the official code's"),
    ({"cfa": {"epochs": 10**9}}, "cfa.epochs: 1000000000 is more than the supported 100000"),
    ({"calibrate": {"holdout": 1.0}}, "calibrate.holdout: 1.0 must be in [0, 1)"),
    ({"calibrate": {"image_fpr": 0}}, "calibrate.image_fpr: 0.0 must be in (0, 1)"),
    ({"dfr": {"lr": "fast"}}, "dfr.lr: expected a number, got 'fast'"),
    ({"dfr": {"epochs": 1.5}}, "dfr.epochs: expected an integer"),
    ({"dfr": {"pretrained": "yes"}}, "dfr.pretrained: expected true or false"),
    ({"dfr": {"latent_dim": -3}}, "dfr.latent_dim: -3 must be 'auto' or a positive integer"),
    ({"dfr": {"latent_dim": "big"}}, "dfr.latent_dim"),
    ({"dfr": {"stride": 8, "kernel": 4}}, "dfr.stride: 8 must not exceed dfr.kernel"),
    ({"dfr": {"pca_variance": 1.5}}, "dfr.pca_variance"),
    ({"dfr": {"weights": "/nonexistent/w.pth"}}, "dfr.weights: file '/nonexistent/w.pth' does not exist"),
    ({"dfr": {"layers": []}}, "dfr.layers: the list is empty"),
    ({"image_size": 100}, "image_size: 100 must be a multiple of 8"),
    ({"image_size": 100_000}, "image_size: 100000 must be a multiple of 8 from 32 to 4096"),
    ({"seed": -1}, "seed: -1 must be in 0..2^63-1"),
    ({"seed": 2**63}, "seed: 9223372036854775808 must be in 0..2^63-1"),
    ({"image_size": 32, "dfr": {"kernel": 32, "stride": 32}}, "dfr.kernel, dfr.stride: 32 and 32 leave a 1x1 grid"),
    ({"data": {"demo": {"image_size": 10**6}}}, "data.demo.image_size: 1000000 must be from 32 to 4096"),
    ({"data": {"demo": {"n_train": 10**9}}}, "the demo generator makes at most 100000"),
    ({"categories": []}, "categories: the list is empty"),
    ({"categories": ["a", "a"]}, "duplicate"),
    ({"categories": ["../etc"]}, "not a valid category name"),
    ({"evaluate": {"target_fpr": 0.1}}, "unknown parameter evaluate.target_fpr"),
    ({"dataset": "folder"}, "data.folder.path"),
    ({"colour": 1}, "unknown parameter colour"),
    ({"dfr": {"learning_rate": 1}}, "unknown parameter dfr.learning_rate"),
    ({"data": {"demo": {"n_train": 0}}}, "data.demo.n_train: 0 must be positive"),
])
def test_bad_values_name_the_parameter(params, expected):
    assert expected in error(params)


def test_yaml_scientific_notation_string_is_a_number():
    # YAML 1.1 (PyYAML) reads `1e-4` as a string; it must still be a float
    assert config_from_dict({"dfr": {"lr": "1e-4"}}).method("dfr").lr == pytest.approx(1e-4)


def test_explicit_layers_override_defaults():
    cfg = config_from_dict({"dfr": {"backbone": "vgg19", "layers": ["features.1", "features.3"]}})
    assert cfg.method("dfr").resolved_layers() == ("features.1", "features.3")
    assert len(config_from_dict({}).method("dfr").resolved_layers()) == 12  # the paper's VGG19 ReLUs
    assert config_from_dict({}).method("cfa").resolved_layers() == ("layer1", "layer2", "layer3")


def test_load_config_names_the_file(tmp_path: Path):
    bad = tmp_path / "params.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=f"{bad}: not valid YAML"):
        load_config(bad)
    bad.write_text("model: svm\n")
    with pytest.raises(ConfigError, match=f"{bad}: model: 'svm' is not valid"):
        load_config(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.yaml")


def test_merged_leaves_its_inputs_alone():
    """Benchmarks derive many runs from one base: a variant's overrides must not leak into the next."""
    from uad.config import merged
    base = {"model": "cfa", "cfa": {"epochs": 30, "lr": 1e-3}}
    overlay = {"cfa": {"epochs": 1}, "precision": "tf32"}
    out = merged(base, overlay)
    assert out == {"model": "cfa", "cfa": {"epochs": 1, "lr": 1e-3}, "precision": "tf32"}
    assert base == {"model": "cfa", "cfa": {"epochs": 30, "lr": 1e-3}} and overlay["cfa"] == {"epochs": 1}
    out["cfa"]["lr"] = 0.5
    assert base["cfa"]["lr"] == 1e-3
