import pytest

from uad.config import ConfigError, load_config
from uad.preset import apply, main

from .conftest import REPO, committed_params


def test_preset_changes_values_and_keeps_comments(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(committed_params())
    lines = apply(params, [REPO / "presets" / "dfr_paper.yaml"])
    assert "dfr.backbone: 'tf_efficientnet_lite0' -> 'vgg19'" in lines
    cfg = load_config(params)
    assert (cfg.dfr.backbone, cfg.image_size, cfg.dfr.epochs, cfg.dfr.lr) == ("vgg19", 256, 150, 1e-4)
    assert cfg.prepare.resize == "nearest" and len(cfg.layers()) == 12
    text = params.read_text()
    assert "# Parameters of the pipeline" in text and "# paper: vgg19" in text
    untouched = [line for line in committed_params().splitlines() if "url:" in line]
    assert untouched and all(line in text.splitlines() for line in untouched)  # long lines stay unfolded


def test_dry_run_writes_nothing_and_invalid_presets_are_refused(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    original = committed_params()
    params.write_text(original)
    main([str(REPO / "presets" / "dfr_paper.yaml"), "--params", str(params), "--dry-run"])
    assert "would change" in capsys.readouterr().out and params.read_text() == original
    bad = tmp_path / "bad.yaml"
    bad.write_text("dfr:\n  epochs: -1\n")
    with pytest.raises(ConfigError, match="would make params invalid: dfr.epochs"):
        apply(params, [bad])
    assert params.read_text() == original


def test_cfa_paper_preset(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(committed_params())
    apply(params, [REPO / "presets" / "cfa_paper.yaml"])
    cfg = load_config(params)
    assert (cfg.model, cfg.cfa.backbone, cfg.image_size, cfg.cfa.epochs) == ("cfa", "wide_resnet50_2", 256, 30)
    assert cfg.layers() == ("layer1", "layer2", "layer3") and cfg.prepare.resize == "lanczos"


def test_set_assignments_are_parsed_validated_and_keep_comments(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(committed_params())
    lines = apply(params, [], assignments=["model=dfr", "categories=[weave, grain]", "cfa.lr=0.01"])
    cfg = load_config(params)
    assert (cfg.model, cfg.categories, cfg.cfa.lr) == ("dfr", ["weave", "grain"], 0.01)
    assert "model: 'cfa' -> 'dfr'" in lines and "# Parameters of the pipeline" in params.read_text()
    with pytest.raises(ConfigError, match="--set 'model': expected KEY=VALUE"):
        apply(params, [], assignments=["model"])
    with pytest.raises(ConfigError, match="model=svm would make params invalid: model: 'svm' is not valid"):
        apply(params, [], assignments=["model=svm"])
