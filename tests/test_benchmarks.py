"""The benchmark harness's own logic on the CPU, without anomalib and without a GPU: params assembly,
result-file names, timing and spread, the method variants (passed to the library, never registered),
and the side-by-side tool's `ours` path end to end on a tiny MTD-like folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import uad.methods
import uad.methods.cfa.model
from benchmarks import anomalib_side_by_side, dfr_step, harness, run, variants
from benchmarks.variants import IMAGENET_MEAN, IMAGENET_STD, AnomalibLikeCFA, ImageNetNormCFA, RawMemoryCFA
from uad.data.prepared import load_split
from uad.methods.base import FitInfo, create, load
from uad.methods.cfa.model import CFA
from uad.methods.dfr.model import FeatCAE
from uad.methods.fitting import TrainingFeatures
from uad.preset import build
from uad.runtime import seed_everything

from .conftest import tiny_config

CPU = torch.device("cpu")
LITE0_OWN = [0.5, 0.5, 0.5]  # tf_ lite0's mean and std (127 / 128)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tensors this small gain nothing from a second thread, and on a busy 2-core machine the threads'
    spin-waiting makes the runs several times slower; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def registry_state() -> tuple:
    """What a benchmark must never change: the registered model classes and the methods packages' names."""
    def own(module: types.ModuleType) -> dict:  # importing a sub-package adds it as an attribute: not a change
        return {k: v for k, v in vars(module).items() if not isinstance(v, types.ModuleType)}

    return (tuple((n, uad.methods.spec(n).model_class()) for n in ("cfa", "dfr")), own(uad.methods),
            own(uad.methods.cfa.model))


# ------------------------------------------------------------------------------------- harness


def test_spread_over_seeds():
    got = harness.spread([0.5, 0.7, 0.6])
    assert got["mean"] == pytest.approx(0.6) and got["std"] == pytest.approx(0.1)
    assert (got["min"], got["max"], got["n"]) == (0.5, 0.7, 3)
    assert harness.spread([0.8])["std"] == 0.0  # one seed: no spread, not an error


@pytest.mark.parametrize("name, tag", [("NVIDIA H200", "h200"), ("NVIDIA H100 80GB HBM3", "h100"),
                                       ("NVIDIA A100-SXM4-80GB", "a100"), ("NVIDIA GeForce RTX 4090", "rtx4090"),
                                       ("Tesla T4", "t4")])
def test_gpu_names_become_short_device_tags(name, tag):
    assert harness.gpu_tag(name) == tag


def test_result_files_are_named_by_configuration():
    name = harness.result_name("anomalib_side_by_side", ["ours/cfa", "ours/cfa_tf32", "anomalib/cfa"], "mtd",
                               "fp32", "h200")
    assert name == "anomalib-side-by-side_ours-cfa+ours-cfa-tf32+anomalib-cfa_mtd_fp32_h200.json"
    assert name.removesuffix(".json").split("_") == ["anomalib-side-by-side", "ours-cfa+ours-cfa-tf32+anomalib-cfa",
                                                     "mtd", "fp32", "h200"]
    assert harness.result_name("speed", ["cfa"], "synth-hazelnut", "bf16+fp32", "h100", tag="cap24gb") == \
        "speed_cfa_synth-hazelnut_bf16+fp32_h100_cap24gb.json"
    path = harness.result_path("run", ["cfa", "dfr"], "mvtec_ad", "tf32", CPU)
    assert path == harness.RESULTS / "run_cfa+dfr_mvtec-ad_tf32_cpu.json"
    many = [f"ours/cfa_variant_{i}" for i in range(12)]
    long = harness.result_name("anomalib_side_by_side", many, "mtd", "fp32", "h200")
    assert long.startswith("anomalib-side-by-side_12methods-") and len(long) < 100
    assert long != harness.result_name("anomalib_side_by_side", many[:-1] + ["ours/dfr"], "mtd", "fp32", "h200")


def test_params_are_presets_then_the_tools_values_then_the_users():
    params = harness.build_params(["lite0", "mtd"], ["cfa.epochs=7", "image_size=128"],
                                  {"device": "cpu", "cfa": {"epochs": 3, "batch_size": 8}})
    expected = build(["lite0", "mtd"])
    assert params["cfa"]["backbone"] == expected["cfa"]["backbone"] == "tf_efficientnet_lite0"
    assert (params["dataset"], params["device"], params["image_size"]) == ("mtd", "cpu", 128)
    assert (params["cfa"]["epochs"], params["cfa"]["batch_size"]) == (7, 8)  # the user's value wins
    assert params["dfr"] == expected["dfr"]
    scaled = harness.scale_epochs(params, 0.1, ["cfa", "dfr"])
    assert (scaled["cfa"]["epochs"], scaled["dfr"]["epochs"]) == (1, expected["dfr"]["epochs"] // 10)
    assert params["cfa"]["epochs"] == 7  # not modified in place
    assert harness.config(scaled, {"model": "dfr"}).method().epochs == expected["dfr"]["epochs"] // 10
    weights = Path("/carried/lite0.pth")
    with_file = harness.with_weights(build(["lite0"]), weights)
    on_lite0 = {n for n in uad.methods.names() if build(["lite0"])[n]["backbone"] == "tf_efficientnet_lite0"}
    assert {"cfa", "dfr"} <= on_lite0
    assert {n for n in uad.methods.names() if with_file[n]["weights"] == str(weights)} == on_lite0
    assert harness.with_weights(build([]), weights)["cfa"]["weights"] == ""  # wide_resnet50_2: not this file


def test_recipe_reads_the_params_header(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("# built by: python -m uad.preset lite0 demo --set model=dfr --set 'categories=[weave]'\n")
    assert harness.recipe(params) == (["lite0", "demo"], ["model=dfr", "categories=[weave]"])


def test_header_says_what_ran_where():
    head = harness.header("speed", "what", CPU, commit="abc1234")
    assert (head["tool"], head["commit"], head["device_tag"], head["torch"]) == ("speed", "abc1234", "cpu",
                                                                                  torch.__version__)
    assert head["command"] and head["date"] and head["packages"]["numpy"] == np.__version__


def test_timed_excludes_the_warm_up_calls():
    calls = []

    def slow() -> None:
        calls.append(time.perf_counter())
        if len(calls) == 1:
            time.sleep(0.2)  # a cold first call must not count
        time.sleep(0.01)

    timing = harness.timed(slow, CPU, repeat=3, warmup=1)
    assert len(calls) == 4
    assert 0.01 <= timing.seconds < 0.1 and timing.peak_memory_mb > 0


# ------------------------------------------------------------------------------------ variants


def test_variants_are_passed_to_the_library_not_registered():
    before = registry_state()
    assert uad.methods.spec("cfa").model_class() is CFA
    cfg = tiny_config(model="cfa")
    imagenet, own = (IMAGENET_MEAN, IMAGENET_STD), (LITE0_OWN, LITE0_OWN)
    normalisation = {ImageNetNormCFA: imagenet, AnomalibLikeCFA: imagenet, RawMemoryCFA: own, CFA: own}
    for name, variant in variants.VARIANTS.items():
        if variant.method != "cfa":
            assert issubclass(variant.model, uad.methods.spec(variant.method).model_class()), name
            assert type(create(tiny_config(model=variant.method), method=variant.model)) is variant.model
            continue
        if variant.model is not None:
            model = create(cfg, method=variant.model)
            assert type(model) is variant.model, name
            torch.testing.assert_close(model.extractor.mean.flatten(), torch.tensor(normalisation[variant.model][0]))
            torch.testing.assert_close(model.extractor.std.flatten(), torch.tensor(normalisation[variant.model][1]))
    model = create(cfg)
    assert type(model) is CFA
    torch.testing.assert_close(model.extractor.mean.flatten(), torch.tensor(LITE0_OWN))
    with pytest.raises(TypeError):
        create(tiny_config(model="dfr"), method=RawMemoryCFA)  # a variant of another method's model
    assert registry_state() == before
    assert variants.resolve("cfa") == variants.Variant("cfa", "cfa", doc=uad.methods.spec("cfa").title)
    assert variants.resolve("cfa_anomalib_like").overrides == {"cfa": {"batch_size": 32, "learn_radius": False}}
    assert variants.resolve("cfa_tf32").overrides == {"precision": "tf32"}
    assert set(uad.methods.names()) <= set(variants.names())
    with pytest.raises(KeyError, match="ours/nonesuch"):
        variants.resolve("nonesuch")


def test_imagenet_normalisation_is_kept_by_the_saved_model(prepared, tmp_path):
    cfg = tiny_config(model="cfa")
    test = load_split(prepared, "test").images
    model = create(cfg, method=ImageNetNormCFA)
    model.memory.normal_(generator=torch.Generator().manual_seed(0))  # any bank: scoring is what is compared
    model.save(tmp_path / "model", FitInfo(), {})
    loaded = load(tmp_path / "model")
    assert type(loaded) is CFA  # a plain CFA, whose state holds the variant's normalisation
    torch.testing.assert_close(loaded.extractor.mean.flatten(), torch.tensor(IMAGENET_MEAN))
    torch.testing.assert_close(loaded.extractor.std.flatten(), torch.tensor(IMAGENET_STD))
    maps = loaded.score(test, 8).maps
    torch.testing.assert_close(maps, model.score(test, 8).maps)
    loaded.extractor.mean.fill_(0.5)
    loaded.extractor.std.fill_(0.5)
    assert not torch.allclose(loaded.score(test, 8).maps, maps)  # the normalisation matters to the scores
    info = json.loads((tmp_path / "model" / "model.json").read_text())
    assert info["input"]["mean"] == pytest.approx(IMAGENET_MEAN)


def _mean_descriptor(model: CFA, images: np.ndarray) -> torch.Tensor:
    """The official memory bank, written out: the per-location mean descriptor of the images."""
    grid = model.grid
    with torch.no_grad():
        maps = model.pooled_maps(images)
        up = [F.interpolate(m, size=grid, mode="bilinear", align_corners=False) for m in maps[1:]]
        return model.descriptor(torch.cat([maps[0], *up], 1)).mean(0).flatten(1).T


def test_raw_memory_is_the_mean_descriptor_of_unnormalised_images(prepared):
    cfg = tiny_config(model="cfa")
    images = load_split(prepared, "train").images
    seed_everything(0)
    model = create(cfg, method=RawMemoryCFA)
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
    plain = create(cfg, method=ImageNetNormCFA)  # raw_memory off: the official bank of its own inputs
    plain._init_memory(TrainingFeatures(images, plain.patch_features, torch.float32, 4, plain.device),
                       torch.Generator().manual_seed(0))
    torch.testing.assert_close(plain.memory, _mean_descriptor(plain, images), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------- side by side


def fake_mtd(root: Path, n_free: int = 10) -> Path:
    """An MTD-shaped folder: MT_Free/Imgs/*.jpg and one defective image with its .png mask per defect type."""
    rng = np.random.default_rng(0)
    for folder, n in (("MT_Free", n_free), *((f, 1) for f in ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray",
                                                                "MT_Uneven"))):
        imgs = root / folder / "Imgs"
        imgs.mkdir(parents=True)
        for i in range(n):
            img = (rng.normal(120, 12, (48, 64)) + 20 * np.sin(np.arange(64) / 3)).clip(0, 255)
            mask = np.zeros((48, 64), np.uint8)
            if folder != "MT_Free":
                mask[16:32, 24:40] = 255
                img[mask > 0] = 250
            Image.fromarray(img.astype(np.uint8)).save(imgs / f"exp{i}.jpg")
            if folder != "MT_Free":
                Image.fromarray(mask).save(imgs / f"exp{i}.png")
    return root


def test_side_by_side_runs_our_methods_over_seeds_through_the_harness(tmp_path):
    before = registry_state()
    out = tmp_path / "side.json"
    got = anomalib_side_by_side.main([
        "--mtd", str(fake_mtd(tmp_path / "mtd")), "--device", "cpu", "--methods", "ours/cfa_imagenet_norm", "ours/dfr",
        "--seeds", "0", "1", "--epochs-scale", "0.01", "--no-warmup", "--set", "image_size=64",
        "--set", "dfr.pca_images=4", "--workdir", str(tmp_path / "work"), "--out", str(out)])
    assert got == out
    report = json.loads(out.read_text())
    assert registry_state() == before and "anomalib" not in sys.modules
    assert (report["tool"], report["device_tag"], report["presets"]) == ("anomalib_side_by_side", "cpu",
                                                                         ["lite0", "mtd"])
    assert list(report["methods"]) == ["ours/cfa_imagenet_norm", "ours/dfr"]
    data = report["data"]
    assert (data["n_train"], data["n_test"], data["n_test_defective"]) == (8, 7, 5)
    assert report["calibrate"]["holdout"] == 0.2
    for name, entry in report["methods"].items():
        assert [r["seed"] for r in entry["per_seed"]] == [0, 1]
        assert entry["over_seeds"]["image_auroc"]["n"] == 2
        assert 0 <= entry["over_seeds"]["pixel_auroc"]["mean"] <= 1
        assert (entry["n_fit"], entry["n_calibration"]) == (7, 1)
        assert entry["score_images_per_s_model_only"] > 0 and entry["fit_s"] > 0
    imagenet, dfr = report["methods"]["ours/cfa_imagenet_norm"], report["methods"]["ours/dfr"]
    assert (imagenet["method"], imagenet["variant_class"], dfr["method"], dfr["variant_class"]) == \
        ("cfa", "ImageNetNormCFA", "dfr", None)
    assert imagenet["params_changed"] == {"cfa": {"batch_size": 32, "learn_radius": False}}
    assert imagenet["input_mean"] == pytest.approx(IMAGENET_MEAN)  # trained, saved, loaded and scored with it
    assert dfr["input_mean"] == pytest.approx(LITE0_OWN)
    assert (imagenet["epochs"], dfr["epochs"]) == (1, 2)  # 30 and 150 epochs x 0.01, at least 1
    assert "ratios" not in report and "accuracy_over_seeds" not in report  # nothing of anomalib's to compare


def test_side_by_side_needs_the_weights_file_only_for_anomalib(tmp_path, capsys):
    with pytest.raises(SystemExit):
        anomalib_side_by_side.parse_args(["--mtd", str(tmp_path), "--methods", "ours/cfa", "anomalib/padim"])
    assert "--weights is required" in capsys.readouterr().err
    args = anomalib_side_by_side.parse_args(["--mtd", str(tmp_path), "--methods", "ours/cfa"])
    assert args.weights is None
    choices = anomalib_side_by_side.method_choices()
    assert {f"ours/{n}" for n in uad.methods.names()} <= set(choices)
    assert {"anomalib/cfa", "anomalib/padim", "anomalib/patchcore", "ours/cfa_raw_memory"} <= set(choices)
    assert [m for m in anomalib_side_by_side.default_methods() if m.startswith("ours/")] == \
        [f"ours/{n}" for n in uad.methods.names()]


def test_each_of_our_runs_is_compared_with_anomalibs_same_method():
    def entry(fit: float, score: float, image: float, **extra: float) -> dict:
        return {"fit_s": fit, "train_wall_s": fit + 1, "score_images_per_s": score,
                "score_images_per_s_model_only": 2 * score,
                "over_seeds": {"image_auroc": {"mean": image}, "pixel_auroc": {"mean": 0.9}}, **extra}

    got = anomalib_side_by_side.compare({
        "ours/cfa_anomalib_like": entry(10, 100, 0.8), "ours/dfr": entry(5, 50, 0.7),
        "anomalib/cfa": entry(40, 50, 0.75, fit_validation_s=20)})
    assert set(got["ratios"]) == {"definition", "ours/cfa_anomalib_like"}  # no anomalib DFR to compare with
    ratio = got["ratios"]["ours/cfa_anomalib_like"]
    assert (ratio["fit_speed"], ratio["fit_speed_excluding_anomalib_validation"], ratio["score_speed"],
            ratio["score_speed_model_only"]) == (4.0, 2.0, 2.0, 4.0)
    assert got["accuracy_over_seeds"]["ours/cfa_anomalib_like"] == {"image_auroc": 0.05, "pixel_auroc": 0.0}


def test_run_repeats_the_stage_functions_and_reports_their_closeness(tmp_path):
    sets = ["categories=[weave]", "image_size=64", "data.demo.image_size=64", "data.demo.n_train=6",
            "data.demo.n_test_good=2", "data.demo.n_test_defect=4", "cfa.epochs=1"]
    out = run.main(["--preset", "lite0", "demo", *(x for s in sets for x in ("--set", s)), "--models", "cfa",
                    "--repeat", "2", "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "run.json")])
    report = json.loads(out.read_text())
    assert report["presets"] == ["lite0", "demo"] and report["params"]["cfa"]["epochs"] == 1
    entry = report["runs"]["cfa"]
    assert len(entry["runs"]) == 2 and set(entry["runs"][0]) == {"weave"}
    assert entry["max_abs_diff_between_repeats"]["image_auroc"] == pytest.approx(0.0, abs=1e-6)  # seeded: the same


def test_stages_without_a_model_start_without_pytorch():
    """Start-up: only train and evaluate need PyTorch; every other stage's imports leave it out, and no
    stage imports a model library (timm pulls in torchvision and torch._dynamo: the backbones are
    `uad.architectures`), SciPy (regions are labelled in NumPy), torchmetrics or matplotlib. A fresh
    interpreter per stage, as DVC starts them; the list comes from the stage scripts. The times
    themselves are `benchmarks.speed`'s (startup_s)."""
    from benchmarks.speed import stage_imports

    imports = stage_imports()
    assert set(imports) == {p.stem for p in (harness.REPO / "stages").glob("*.py")}
    assert {"uad.training", "uad.evaluation"} <= {m for mods in imports.values() for m in mods}
    check = ("import sys, {}; print(sorted(m for m in ('torch', 'timm', 'torchvision', 'scipy', 'torchmetrics', "
             "'matplotlib') if m in sys.modules))")
    loaded = {stage: subprocess.run([sys.executable, "-c", check.format(", ".join(mods))], cwd=harness.REPO,
                                    capture_output=True, text=True, check=True).stdout.strip()
              for stage, mods in imports.items()}
    assert {s for s, mods in loaded.items() if mods != "[]"} == {"train", "evaluate"}, loaded
    assert loaded["train"] == loaded["evaluate"] == "['torch']", loaded


def test_dfr_step_floor_counts_the_autoencoders_convolutions(prepared):
    """The FLOP floor of DFR's training step: forward (2 FLOPs per multiply-add of every 1x1 convolution,
    at the padded widths that run), the weight gradients of all six and the input gradients of all but
    the first (its input, the features, needs none)."""
    from benchmarks.speed import training_step_floor

    cfg = tiny_config(model="dfr", dfr={"latent_dim": 5, "epochs": 1, "batch_size": 3})
    model = create(cfg)
    images = load_split(prepared, "train").images
    model.fit(images, seed_everything(0), batch_size=8)
    got = training_step_floor(model, images, steady_epoch_s=0.5, peak_tflops=2.0)
    b, c, h, w = got["batch_shape"]
    assert (b, c) == (3, model.channels)
    widths = [conv.in_channels for conv in model.cae.modules() if isinstance(conv, torch.nn.Conv2d)] + [c]
    macs = [widths[i] * widths[i + 1] for i in range(6)]
    assert got["flops_per_step"] == 2 * b * h * w * (3 * sum(macs) - macs[0])
    steps = -(-len(images) // 3)
    assert got["steps_per_epoch"] == steps
    assert got["floor_ms"] == pytest.approx(got["flops_per_step"] / 2e12 * 1e3, rel=1e-3)
    assert got["step_over_floor"] == pytest.approx(0.5 / steps / (got["flops_per_step"] / 2e12), rel=1e-2)
    assert all(p.grad is None for p in model.cae.parameters())  # counting leaves no gradients behind


def test_e2e_runs_the_methods_at_once_in_their_own_projects_and_reuses_its_data(tmp_path, monkeypatch):
    """`--methods-at-once`: each method's pipeline in its own project copy, started together, each
    complete (dvc.lock records its train stage), the GPU sampled throughout into a workdir that did not
    exist yet; `--data` keeps the generated categories for the next run."""
    from benchmarks import e2e

    smi = tmp_path / "bin" / "nvidia-smi"  # stands in for the GPU's: one utilisation row every 50 ms
    smi.parent.mkdir()
    smi.write_text("#!/bin/sh\nwhile true; do echo '0, 37, 1200'; sleep 0.05; done\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{smi.parent}{os.pathsep}{os.environ['PATH']}")
    tiny = ["--categories", "toothbrush", "--scale", "0.05", "--epochs-scale", "0.01", "--set", "image_size=64",
            "--data", str(tmp_path / "data"), "--workdir", str(tmp_path / "work")]
    out = e2e.main([*tiny, "--methods", "cfa", "dfr", "--methods-at-once", "--jobs", "1", "--sample-gpu",
                    "--out", str(tmp_path / "both.json")])
    report = json.loads(out.read_text())
    assert report["methods_at_once"] and not report["data_reused"] and report["images"] == 6
    gpu = report["gpu_utilisation"]["0"]
    assert gpu["mean_util_pct"] == 37.0 and gpu["max_memory_mib"] == 1200.0 and gpu["samples"] > 10
    assert set(report["runs"]) == {"cfa", "dfr"}
    for method, run_ in report["runs"].items():
        assert "train@toothbrush" in (tmp_path / "work" / f"project_{method}" / "dvc.lock").read_text()
        assert run_["in_process"]["toothbrush"]["fit_seconds"] > 0
    ended = [r["ended_s"] for r in report["runs"].values()]
    assert max(ended) <= report["total_wall_s"] < sum(ended)  # they overlapped
    stamp = (tmp_path / "data" / "toothbrush" / "train" / "good" / "000.png").stat().st_mtime_ns
    assert e2e.main([*tiny, "--generate-only"]) == (tmp_path / "data").resolve()
    assert (tmp_path / "data" / "toothbrush" / "train" / "good" / "000.png").stat().st_mtime_ns == stamp
    assert not (tmp_path / "work" / "project_cfa").exists()  # a new run starts from a clean workdir
    assert e2e.generate(tmp_path / "data", ["toothbrush"], 0.1)["reused"] is False  # another scale: regenerated


def test_dfr_step_formulations_train_alike(tmp_path):
    """The step benchmark's two formulations (the library's rows, the NCHW convolutions it replaced)
    start from the same weights and follow the same losses; on a CPU the steps run eagerly."""
    out = dfr_step.main(["--images", "2", "--batch", "2", "--grid", "4", "--channels", "24", "--latent", "3",
                         "--steps", "14", "--precision", "fp32", "--device", "cpu", "--out", str(tmp_path / "s.json")])
    report = json.loads(out.read_text())
    conv, rows = report["formulations"]["conv"], report["formulations"]["rows"]
    assert len(rows["losses"]) == 14 and np.all(np.diff(rows["losses"]) < 0)  # one batch, again and again: it learns
    np.testing.assert_allclose(rows["losses"], conv["losses"], rtol=1e-5)
    assert rows["flops_per_step"] == conv["flops_per_step"] > 0 and rows["step_ms"] > 0
    widths = [m.in_channels for m in FeatCAE(24, 3).modules() if isinstance(m, torch.nn.Conv2d)] + [24]
    macs = [widths[i] * widths[i + 1] for i in range(6)]
    assert rows["flops_per_step"] == 2 * (2 * 4 * 4) * (3 * sum(macs) - macs[0])  # batch 2 of 4 x 4 regions
    assert report["tool"] == "dfr_step" and "bf16_matmul_tflops" not in report  # no floor without a GPU


def test_e2e_workdir_it_did_not_make_is_refused_and_left_alone(tmp_path):
    """A `--workdir` holding someone's files is refused with a one-line error naming it, and nothing in
    it is removed; one the benchmark made is emptied (but for the data inside it) and marked again."""
    from benchmarks import e2e

    theirs = tmp_path / "theirs"
    (theirs / "notes").mkdir(parents=True)
    (theirs / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(SystemExit, match=rf"--workdir {theirs}: holds files that benchmarks.e2e did not put there"):
        e2e.claim_workdir(theirs, theirs / "raw")
    assert (theirs / "notes" / "todo.txt").read_text() == "keep me"
    with pytest.raises(SystemExit, match="not a folder"):
        e2e.claim_workdir(theirs / "notes" / "todo.txt", tmp_path / "raw")

    ours = tmp_path / "ours"
    e2e.claim_workdir(ours, ours / "raw")  # new: made and marked
    (ours / "project_cfa").mkdir()
    (ours / "gpu_all.csv").write_text("0, 1, 2\n")
    (ours / "raw").mkdir()
    (ours / "raw" / "generated.json").write_text("{}")
    e2e.claim_workdir(ours, ours / "raw")
    assert sorted(p.name for p in ours.iterdir()) == [e2e.WORKDIR_MARK, "raw"]
    assert (ours / "raw" / "generated.json").exists()


def test_e2e_data_folder_it_did_not_make_is_refused_and_left_alone(tmp_path):
    """`--data` that holds someone's files, a damaged manifest, a file, or the workdir itself: a one-line
    error naming the folder, and nothing in it removed; a complete set is staged and moved in whole."""
    from benchmarks import e2e

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit, match=r"--data .*mine: holds files that benchmarks.e2e did not generate"):
        e2e.generate(mine, ["toothbrush"], 0.05)
    assert (mine / "notes.txt").read_text() == "keep me" and len(list(mine.iterdir())) == 1
    (mine / e2e.MANIFEST).write_text("{not json")
    with pytest.raises(SystemExit, match=r"generated.json is unreadable"):
        e2e.generate(mine, ["toothbrush"], 0.05)
    (mine / e2e.MANIFEST).write_text('["a list"]')
    with pytest.raises(SystemExit, match=r"generated.json was not written by benchmarks.e2e"):
        e2e.generate(mine, ["toothbrush"], 0.05)
    assert (mine / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match=r"--data .*file: not a folder"):
        e2e.generate(tmp_path / "file", ["toothbrush"], 0.05)
    with pytest.raises(SystemExit, match=r"must not be --workdir or hold it"):
        e2e.main(["--data", str(tmp_path), "--workdir", str(tmp_path / "work"), "--generate-only"])
    assert (mine / "notes.txt").exists() and (tmp_path / "file").exists()
    fresh = e2e.generate(tmp_path / "new", ["toothbrush"], 0.05)
    assert not fresh["reused"] and fresh["images"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "mine", "new"]  # no staging folder left
