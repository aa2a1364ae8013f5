"""params.yaml is rendered from the defaults and the presets: one source for every value."""

import dataclasses

import pytest
import yaml

from uad import methods
from uad.config import Config, load_config
from uad.errors import ConfigError
from uad.preset import PRESETS, build, defaults, main, read_preset, render

from .conftest import committed_params


def test_committed_params_are_what_their_recipe_builds(tmp_path):
    """params.yaml restates nothing by hand: it equals the rendering of its first line's presets."""
    (tmp_path / "params.yaml").write_text(committed_params())
    assert main(["--params", str(tmp_path / "params.yaml"), "--check"]) == 0
    assert committed_params().startswith("# built by: python -m uad.preset lite0 demo\n")


def test_check_notices_a_hand_edit(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(committed_params().replace("epochs: 60 ", "epochs: 61 "))
    assert main(["--params", str(params), "--check"]) == 1
    assert "differs from what `python -m uad.preset lite0 demo` builds" in capsys.readouterr().err


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESETS.glob("*.yaml")))
def test_every_preset_is_a_valid_delta(preset):
    """Each value a preset sets differs from the defaults (presets are deltas, never restatements;
    `model` and `dataset` say what a preset is about and may name the default), and the defaults
    plus the preset validate."""
    base, delta = defaults(), read_preset(preset)

    def leaves(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    flat = dict(leaves(base))
    restated = [k for k, v in leaves(delta) if flat.get(k, object()) == v and k not in ("model", "dataset")]
    assert not restated, f"presets/{preset}.yaml restates defaults: {restated}"
    build(["lite0", preset] if preset not in ("lite0", "cfa_paper", "dfr_paper") else [preset])


def test_paper_presets_are_the_method_defaults():
    """The paper presets touch no method hyper-parameter: the schema defaults are the published ones."""
    for name in methods.names():
        paper = f"{name}_paper"
        if (PRESETS / f"{paper}.yaml").exists():
            cfg = load_config_from(build(["mvtec_ad", paper]))
            assert cfg.model == name and cfg.method() == methods.spec(name).params()
            assert cfg.calibrate.holdout == 0 and len(cfg.categories) == 15
    dfr_cfg = load_config_from(build(["dfr_paper"]))
    dfr = dfr_cfg.method("dfr")
    assert (dfr.backbone, dfr.epochs, dfr.lr, len(dfr.resolved_layers())) == ("vgg19", 150, 1e-4, 12)
    assert dfr_cfg.prepare.resize == "nearest"  # the official DFR code's resize; CFA's is Lanczos
    assert load_config_from(build(["cfa_paper"])).prepare.resize == "lanczos"
    cfa = load_config_from(build(["cfa_paper"])).method("cfa")
    assert (cfa.backbone, cfa.feature_export, cfa.resolved_layers()) == ("wide_resnet50_2", "official",
                                                                         ("layer1", "layer2", "layer3"))


def load_config_from(params):
    from uad.config import config_from_dict
    return config_from_dict(params)


def test_rendering_documents_every_value_and_marks_non_defaults(tmp_path):
    params = build(["lite0", "demo"])
    text = render(params, "lite0 demo")
    assert yaml.safe_load(text) == params
    assert "epochs: 60" in text and "[default: 150]" in text
    for f in dataclasses.fields(Config):
        if f.metadata.get("doc"):
            assert f.metadata["doc"] in text


def test_set_changes_single_values_of_the_current_recipe(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(committed_params())
    assert main(["--params", str(params), "--set", "model=dfr", "--set", "categories=[weave, grain]"]) == 0
    cfg = load_config(params)
    assert (cfg.model, cfg.categories, cfg.method("dfr").epochs) == ("dfr", ["weave", "grain"], 60)
    assert params.read_text().startswith("# built by: python -m uad.preset lite0 demo --set model=dfr --set "
                                         "'categories=[weave, grain]'\n")
    assert main(["--params", str(params), "--check"]) == 0
    assert "model: 'cfa' -> 'dfr'" in capsys.readouterr().out


def test_invalid_values_and_unknown_presets_write_nothing(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(committed_params())
    assert main(["--params", str(params), "--set", "dfr.epochs=-1"]) == 1
    assert "would make params invalid: dfr.epochs: -1 must be positive" in capsys.readouterr().err
    assert main(["--params", str(params), "nosuchpreset"]) == 1
    assert "preset 'nosuchpreset': no such file; available:" in capsys.readouterr().err
    assert main(["--params", str(params), "--set", "model"]) == 1
    assert "--set 'model': expected KEY=VALUE" in capsys.readouterr().err
    assert params.read_text() == committed_params()
    assert main(["--params", str(params), "mvtec_ad", "dfr_paper", "--dry-run"]) == 0
    assert "would change" in capsys.readouterr().out and params.read_text() == committed_params()
    with pytest.raises(ConfigError):
        build([], ["model=svm"])
