"""Side by side on Magnetic Tile Defects: our CFA and DFR against anomalib 2.7.0's Cfa, Padim and Patchcore.

What it measures, in ONE process, for every method on the same data (our `acquire` writes
MTD in MVTec layout; everybody trains on its train/good and is scored on its test split,
inputs 256x256) and the same offline ImageNet backbone weights (tf_efficientnet_lite0,
one explicit state-dict file; nothing is downloaded, timm's hub is never asked):

  ours/cfa, ours/dfr   through the library calls `dvc repro` makes (like benchmarks/run.py:
                       acquire, prepare_category, train_category, evaluate_category) with
                       params.yaml + presets/mtd.yaml; DFR with the paper's schedule
                       (dfr.epochs=150, dfr.lr=1e-4, as benchmarks/mtd_h100.sh).
                       fit_s = fit_seconds of the model info (the fit itself, timed by the
                       library), score_images_per_s from perf.json, plus wall seconds of
                       train_category and evaluate_category.
  anomalib/cfa|padim|patchcore
                       through anomalib's own Engine (Lightning) and MVTecAD datamodule,
                       default pre-processor (resize to 256x256, ImageNet normalisation),
                       batch 32. Cfa: 30 epochs (the official schedule; anomalib 2.7.0's
                       Cfa.trainer_arguments set no max_epochs, so it is passed to Engine),
                       gamma_c=gamma_d=1, other defaults; Padim n_features=100;
                       Patchcore coreset_sampling_ratio=0.1, default num_neighbors.
                       fit_s = wall seconds of Engine.fit (what a user waits for; it includes
                       anomalib's default validation on the test split after every epoch and
                       checkpointing, reported separately as fit_validation_s).
                       score_images_per_s = MODEL ONLY: `model.model` in eval on the device,
                       fed the pre-processed test images already on the device, batch 32,
                       one warm-up pass, synchronised timing.

`--seeds 0 1 2` runs every method once per seed (ours: params `seed`; anomalib:
lightning.seed_everything) and reports each metric's mean, std, min and max over the seeds, and
the mean AUROC gap of every variant of our CFA to anomalib's Cfa (`accuracy_over_seeds`): CFA on
MTD moves by up to 0.15 image AUROC between seeds, so one run decides nothing. The first seed's
run is the full one above; the others record accuracy and fit time only (anomalib's without its
per-epoch validation, which changes no training step).

Our CFA variants that attribute the gap to anomalib's Cfa (all with anomalib's batch 32 and fixed
radius, ANOMALIB_SETTINGS): `cfa_anomalib_settings` (nothing else), `cfa_anomalib_like` (plus its two
input quirks: ImageNet normalisation for every backbone, and the memory bank built from unnormalised
images; see AnomalibLikeCFA), `cfa_imagenet_norm` and `cfa_raw_memory` (one quirk each).

Before any timing, one untimed epoch of each of our methods asked for warms the process up (CUDA context,
library handles, lazily loaded kernels), so no method pays it for the others; `--no-warmup`
times the first one cold.

Accuracy for everybody with OUR metric code (uad.metrics.image_auroc / pixel_auroc); for
anomalib on its per-image pred_score and anomaly_map against the datamodule's gt_label /
gt_mask at 256x256 (same test images; the count is checked against ours).

Command used on the GPU machine (offline; wheels of anomalib and its missing dependencies
carried in .whl/: `python3 ../shared/tools/device_wheels.py .whl anomalib==2.7.0 kornia`, then
imagecodecs removed, which nothing here imports):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \\
        .whl/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH
    TQDM_DISABLE=1 python3 benchmarks/anomalib_side_by_side.py --mtd .device/mtd \\
        --weights .device/weights/tf_efficientnet_lite0_blocks0-4.timm.pth --device cuda \\
        --workdir /tmp/abench --out benchmarks/results/mtd_side_by_side_seeds_h200.json \\
        --methods ours/cfa ours/cfa_anomalib_settings ours/cfa_anomalib_like anomalib/cfa --seeds 0 1 2

(.device/mtd: ../shared/datasets/mtd without MT_Free's all-empty masks, which acquire does not
read; with it, the wheels, the lite0 weights and the repository, the call carries 61 MiB of 64.)

CPU smoke test (tiny subset, ~1 epoch):

    TQDM_DISABLE=1 .venv/bin/python benchmarks/anomalib_side_by_side.py --mtd ../shared/datasets/mtd \\
        --weights ../shared/weights/tf_efficientnet_lite0_blocks0-4.timm.pth --device cpu \\
        --limit 8 --epochs-scale 0.04 --workdir /tmp/abench --out /tmp/abench/out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from uad import methods, metrics  # noqa: E402
from uad.methods.base import TrainingFeatures  # noqa: E402
from uad.methods.cfa import CFA  # noqa: E402
from uad.data.prepared import load_split  # noqa: E402
from uad.runtime import configure_precision, resolve_device  # noqa: E402
from uad.config import config_from_dict, merged  # noqa: E402
from uad.data.prepared import prepare_category  # noqa: E402
from uad.data.sources import acquire  # noqa: E402
from common import git_commit, train_and_evaluate  # noqa: E402
from uad.weights import load_weights, convert_lukemelas  # noqa: E402
from uad.zoo import BACKBONES  # noqa: E402

CATEGORY = "magnetic_tile"
ARCH = "tf_efficientnet_lite0"
CFA_LAYERS = ("blocks.1", "blocks.2", "blocks.3")        # strides 4, 8, 16: ResNet layer1-3 (uad/zoo.py)
PATCHCORE_LAYERS = ("blocks.2", "blocks.3")              # strides 8, 16: PatchCore's default layer2, layer3
BATCH = 32
METHODS = ("ours/cfa", "ours/cfa_tf32", "ours/cfa_fixed_r", "ours/cfa_batch32", "ours/cfa_anomalib_settings",
           "ours/cfa_anomalib_like", "ours/cfa_imagenet_norm", "ours/cfa_raw_memory", "ours/dfr", "anomalib/cfa",
           "anomalib/padim", "anomalib/patchcore")
# our variants beyond the defaults: CFA with TF32 matmuls (`precision: tf32`), with the radius
# fixed at its initial value, as anomalib's Cfa has it, with anomalib's batch of 32 (8x fewer steps),
# with both (anomalib's settings), and with both plus anomalib's two input quirks (AnomalibLikeCFA), or
# one of them
ANOMALIB_SETTINGS = {"cfa": {"batch_size": BATCH, "learn_radius": False}}
VARIANTS = {"cfa_tf32": ("cfa", {"precision": "tf32"}), "cfa_fixed_r": ("cfa", {"cfa": {"learn_radius": False}}),
            "cfa_batch32": ("cfa", {"cfa": {"batch_size": BATCH}}),
            "cfa_anomalib_settings": ("cfa", ANOMALIB_SETTINGS),
            "cfa_anomalib_like": ("cfa", ANOMALIB_SETTINGS), "cfa_imagenet_norm": ("cfa", ANOMALIB_SETTINGS),
            "cfa_raw_memory": ("cfa", ANOMALIB_SETTINGS)}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def progress(name: str, entry: dict) -> None:
    print(json.dumps({"method": name, **entry}), flush=True)


def tf32_flags() -> dict[str, bool]:
    return {"cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32}


def set_tf32(flags: dict[str, bool]) -> None:
    torch.backends.cuda.matmul.allow_tf32 = flags["cuda.matmul.allow_tf32"]
    torch.backends.cudnn.allow_tf32 = flags["cudnn.allow_tf32"]


# ------------------------------------------------------------------------------------------- data

def limit_layout(category_dir: Path, n: int) -> dict[str, int]:
    """Keep the first `n` images (file-name order) of every train/test subfolder, and their masks."""
    kept = {}
    for split in ("train", "test"):
        for sub in sorted(p for p in (category_dir / split).iterdir() if p.is_dir()):
            files = sorted(p for p in sub.iterdir() if p.is_file())
            for f in files[n:]:
                f.unlink()
                mask = category_dir / "ground_truth" / sub.name / f"{f.stem}_mask.png"
                if split == "test" and mask.exists():
                    mask.unlink()
            kept[f"{split}/{sub.name}"] = min(n, len(files))
    return kept


# ---------------------------------------------------------------------------------- our methods

class AnomalibLikeCFA(CFA):
    """Our CFA with the two input quirks of anomalib 2.7.0's Cfa, to attribute the AUROC gap (benchmark only).

    1. Every backbone gets ImageNet's mean/std (anomalib's Cfa pre-processor); timm's tf_ lite0 weights
       expect mean = std = 0.5, which our extractor uses.
    2. The memory bank is the per-location mean descriptor of UNnormalised images in [0, 1]:
       anomalib's `Cfa.on_train_start` calls `initialize_centroid(datamodule.train_dataloader())`, a
       loop outside Lightning's batch hooks, so the PreProcessor's Normalize (applied in
       `on_train_batch_start`) never runs there; the datamodule's augmentations still resize.
    Its remaining differences, batch 32 and a fixed radius, are params (ANOMALIB_SETTINGS).
    The subclasses below keep one quirk each.
    """

    imagenet_normalisation = True
    raw_memory = True

    def __init__(self, cfg, memory_size: int | None = None):
        super().__init__(cfg, memory_size)
        if self.imagenet_normalisation:
            self.extractor.mean.copy_(torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
            self.extractor.std.copy_(torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self._train_images: np.ndarray | None = None

    def fit(self, images, generator, log=None):
        self._train_images = images
        try:
            return super().fit(images, generator, log)
        finally:
            self._train_images = None

    @torch.no_grad()
    def _init_memory(self, feats: TrainingFeatures, generator: torch.Generator) -> None:
        if not self.raw_memory:
            super()._init_memory(feats, generator)
            return
        mean, std = self.extractor.mean.clone(), self.extractor.std.clone()
        self.extractor.mean.zero_()
        self.extractor.std.fill_(1.0)
        try:
            raw = TrainingFeatures(self._train_images, self.patch_features, feats.dtype, feats.batch_size,
                                   self.device)
        finally:
            self.extractor.mean.copy_(mean)
            self.extractor.std.copy_(std)
        super()._init_memory(raw, generator)


class ImageNetNormCFA(AnomalibLikeCFA):
    """Only anomalib's ImageNet normalisation (the memory bank from normalised images, as the official code)."""

    raw_memory = False


class RawMemoryCFA(AnomalibLikeCFA):
    """Only anomalib's memory bank from unnormalised images (our normalisation, the weights' own)."""

    imagenet_normalisation = False


VARIANT_CLASSES = {"cfa_anomalib_like": AnomalibLikeCFA, "cfa_imagenet_norm": ImageNetNormCFA,
                   "cfa_raw_memory": RawMemoryCFA}


@contextlib.contextmanager
def method_class(name: str):
    """The variant's CFA class (VARIANT_CLASSES) in the registry slot of "cfa", else nothing."""
    if name not in VARIANT_CLASSES:
        yield
        return
    original = methods.METHODS["cfa"]
    methods.METHODS["cfa"] = VARIANT_CLASSES[name]
    try:
        yield
    finally:
        methods.METHODS["cfa"] = original


def model_only_throughput(cfg, model_dir: Path, prepared: Path, batch: int = 32) -> float:
    """Images/s of our trained model on test images already on the device (uint8), batch 32: the
    same conditions as anomalib's model-only figure (no decoding, no host-to-device copy)."""
    device = resolve_device(cfg.device)
    configure_precision(cfg.precision, device)
    model = methods.load(model_dir, cfg).to(device)
    images = torch.from_numpy(np.array(load_split(prepared, "test").images)).to(device)
    model.score(images, batch)  # warm-up
    sync(device)
    t = time.perf_counter()
    model.score(images, batch)
    sync(device)
    return round(len(images) / (time.perf_counter() - t), 2)


def split_tf32_check(cfg, model_dir: Path, prepared: Path, batch: int = 32) -> dict:
    """Our fp32 CFA scores the distances by `matmul_3xtf32` on a GPU: the same trained model scored
    with it and with the plain fp32 matmul - how far the maps move, the AUROCs and the model-only speed."""
    device = resolve_device(cfg.device)
    configure_precision(cfg.precision, device)
    model = methods.load(model_dir, cfg).to(device)
    test = load_split(prepared, "test")
    images = torch.from_numpy(np.array(test.images)).to(device)
    labels = torch.from_numpy(test.labels).to(device)
    masks = torch.from_numpy(np.array(test.masks)).to(device)
    out, maps = {}, {}
    for split in (False, True, False, True):  # twice each: the second pass of each is timed
        model.split_tf32 = split
        model.score(images, batch)
        sync(device)
        t = time.perf_counter()
        scores = model.score(images, batch)
        sync(device)
        name = "3xtf32" if split else "fp32"
        maps[name] = scores.maps
        out[name] = {"images_per_s": round(len(images) / (time.perf_counter() - t), 2),
                     "image_auroc": metrics.image_auroc(scores.image, labels),
                     "pixel_auroc": metrics.pixel_auroc(scores.maps, masks)}
    diff = (maps["3xtf32"] - maps["fp32"]).abs().max() / maps["fp32"].abs().max()
    out["max_map_difference_relative"] = float(diff)
    return out


def run_ours(name: str, params: dict, work: Path, seed: int, full: bool) -> dict:
    """One run of our method or variant `name` with `seed`; `full` adds the model-only speed (and, for
    fp32 CFA on a GPU, the 3xTF32 check), which the further seeds of a method skip."""
    model, extra = VARIANTS.get(name, (name, {}))
    cfg = config_from_dict(merged(merged(params, {"model": model, "seed": seed}), extra))
    out = work / "ours" / f"{name}_seed{seed}"
    prepared = work / "prepared" / CATEGORY
    with method_class(name):
        run = train_and_evaluate(cfg, CATEGORY, prepared, out)
        result, perf = run.metrics, run.perf
        entry = {"seed": seed, "fit_s": perf["fit_seconds"], "image_auroc": result["image_auroc"],
                 "pixel_auroc": result["pixel_auroc"]}
        if not full:
            return entry
        check = ({"split_tf32_check": split_tf32_check(cfg, out / "model", prepared)}
                 if model == "cfa" and cfg.precision == "fp32" and torch.cuda.is_available() else {})
        model_only = model_only_throughput(cfg, out / "model", prepared)
    method = cfg.method()
    return {
        **entry,
        **check,
        "score_images_per_s": perf["score_images_per_s"],
        "score_images_per_s_model_only": model_only,
        "params_changed": extra,
        "epochs": method.epochs,
        "train_wall_s": run.train_wall_s,
        "evaluate_wall_s": run.evaluate_wall_s,
        "fit_peak_memory_mb": perf.get("fit_peak_memory_mb"),
        "score_peak_memory_mb": perf.get("score_peak_memory_mb"),
        "metrics": result,
        "notes": (f"uad {model}: fit_s = fit_seconds of the model info (fit only, excludes decoding the "
                  f"prepared cache and the threshold calibration); train_wall_s = whole train_category; "
                  f"score_images_per_s = evaluate_category's timed scoring of the decoded uint8 test array "
                  f"(host-to-device copy, normalisation, backbone, head, upsampling and blur included), "
                  f"batch {cfg.evaluate.batch_size}; precision {cfg.precision}"),
    }


# ------------------------------------------------------------------------------ anomalib backbone

def read_timm_state(weights: Path) -> dict[str, torch.Tensor]:
    state = torch.load(weights, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def lite0(weights: Path, layers: tuple[str, ...]) -> torch.nn.Module:
    """A timm tf_efficientnet_lite0 (pretrained=False: no hub) with the offline weights loaded by our loader.

    `load_weights` (uad/weights.py, the code our methods use) fails unless every weight of the
    stem and of the blocks up to the deepest used one is in the file with the right shape.
    """
    import timm

    model = timm.create_model(ARCH, pretrained=False)
    deepest = max(int(layer.split(".")[1]) for layer in layers)
    prefixes = ("conv_stem.", "bn1.", *(f"blocks.{i}." for i in range(deepest + 1)))
    required = [k for k in model.state_dict() if k.startswith(prefixes)]
    load_weights(model, BACKBONES[ARCH], weights=str(weights), required=required)
    return model.eval()


def assert_loaded(extractor: torch.nn.Module, weights: Path, what: str) -> int:
    """Every parameter and buffer the extractor holds equals the weights file's; loud failure otherwise."""
    state = read_timm_state(weights)
    if "_conv_stem.weight" in state:  # lukemelas naming; convert like uad.weights does
        import timm
        state = convert_lukemelas(state, timm.create_model(ARCH, pretrained=False))
    own = extractor.state_dict()
    if not own:
        raise RuntimeError(f"{what}: the feature extractor has no parameters; cannot check the weights")
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    differ = [k for k in own if k in state and not torch.equal(own[k].cpu(), state[k].to(own[k].dtype))]
    if missing or differ:
        raise RuntimeError(f"{what}: the used layers did not all get the offline weights: "
                           f"{len(missing)} missing (e.g. {missing[:3]}), {len(differ)} different (e.g. {differ[:3]})")
    return len(own)


def anomalib_cfa(weights: Path, gamma_c: int, gamma_d: int):
    """anomalib's Cfa on lite0 blocks.1-3, by two runtime patches (anomalib code is imported, not copied)."""
    from timm.models import create_feature_extractor

    import anomalib.models.image.cfa.torch_model as cfa_torch
    from anomalib.models import Cfa

    def lite0_feature_extractor(backbone: str, return_nodes: list[str]) -> torch.nn.Module:
        # Patch 1. CfaModel.__init__ builds its backbone with the module-level function
        # get_feature_extractor(backbone, get_return_nodes(backbone)), which only knows torchvision
        # models (and would fetch torchvision's ImageNet weights). We return the same kind of module
        # it builds (an FX create_feature_extractor GraphModule, eval mode; timm's wrapper of
        # torchvision's, see timm_fx below) over timm lite0 with the offline weights, its blocks.1-3
        # renamed to the names CfaModel expects
        # (get_return_nodes("resnet18") = layer1-3, used by forward and by get_scale's dry run).
        assert list(return_nodes) == ["layer1", "layer2", "layer3"], return_nodes
        nodes = dict(zip(CFA_LAYERS, return_nodes, strict=True))
        return create_feature_extractor(lite0(weights, CFA_LAYERS), return_nodes=nodes).eval()

    original = cfa_torch.get_feature_extractor
    cfa_torch.get_feature_extractor = lite0_feature_extractor
    try:
        # "resnet18" only passes CfaModel's/Descriptor's backbone-name checks; no torchvision model is
        # built (patch 1), and its descriptor branch is the plain one (avg-pool, no efficientnet_b5 scaling).
        model = Cfa(backbone="resnet18", gamma_c=gamma_c, gamma_d=gamma_d, visualizer=False)
    finally:
        cfa_torch.get_feature_extractor = original
    extractor = model.model.feature_extractor
    dims = [f.shape[1] for f in extractor(torch.zeros(1, 3, 256, 256)).values()]
    # Patch 2. Descriptor sizes its CoordConv2d from a hard-coded table (resnet18: 448 input channels);
    # lite0 blocks.1-3 give 24+40+80 = 144. Replace the layer by anomalib's own CoordConv2d of the right
    # width (fresh init, as the original; out channels = in / gamma_d, as Descriptor does for ResNets).
    channels = sum(dims)
    model.model.descriptor.layer = cfa_torch.CoordConv2d(in_channels=channels, out_channels=channels // gamma_d,
                                                         kernel_size=1)
    n = assert_loaded(extractor, weights, "anomalib Cfa")
    return model, {"feature_dims": dims, "descriptor_in_channels": channels, "checked_weight_tensors": n}


@contextlib.contextmanager
def timm_fx():
    """Patch 3 (Padim, Patchcore). timm's features_only lite0 exposes blocks.0, 1, 2, 4, 6 only (no
    blocks.3), so TimmFeatureExtractor is given the timm model itself: its documented nn.Module path,
    which traces it with torchvision's FX create_feature_extractor (pre_trained plays no part there).
    The tf_ EfficientNets pad stride-2 convolutions "same" at run time (timm's Conv2dSame), which
    torchvision's tracer cannot trace; timm's own create_feature_extractor is the same torchvision
    function with timm's layers registered as leaves. It replaces the name anomalib's module imported,
    while the model is built; the traced graph computes exactly what the timm model computes."""
    import timm.models

    import anomalib.models.components.feature_extractors.timm as anomalib_timm

    original = anomalib_timm.create_feature_extractor
    anomalib_timm.create_feature_extractor = timm.models.create_feature_extractor
    try:
        yield
    finally:
        anomalib_timm.create_feature_extractor = original


def anomalib_padim(weights: Path):
    from anomalib.models import Padim

    with timm_fx():  # patch 3
        model = Padim(backbone=lite0(weights, CFA_LAYERS), layers=list(CFA_LAYERS), pre_trained=False, n_features=100,
                      visualizer=False)
    n = assert_loaded(model.model.feature_extractor.feature_extractor, weights, "anomalib Padim")
    return model, {"feature_dims": list(model.model.feature_extractor.out_dims), "n_features": 100,
                   "checked_weight_tensors": n}


def anomalib_patchcore(weights: Path):
    from anomalib.models import Patchcore

    with timm_fx():  # patch 3, as for Padim
        model = Patchcore(backbone=lite0(weights, PATCHCORE_LAYERS), layers=list(PATCHCORE_LAYERS),
                          pre_trained=False, coreset_sampling_ratio=0.1, visualizer=False)
    n = assert_loaded(model.model.feature_extractor.feature_extractor, weights, "anomalib Patchcore")
    return model, {"feature_dims": list(model.model.feature_extractor.out_dims), "coreset_sampling_ratio": 0.1,
                   "num_neighbors": model.model.num_neighbors, "checked_weight_tensors": n}


def phase_timer(device: torch.device):
    """A Lightning callback summing the wall time of training epochs and of validation runs inside fit."""
    from lightning.pytorch import Callback

    class PhaseTimer(Callback):
        def __init__(self) -> None:
            self.epochs_s = 0.0
            self.validation_s = 0.0
            self.validations = 0
            self.epochs = 0
            self._t = {}

        def _start(self, key: str) -> None:
            sync(device)
            self._t[key] = time.perf_counter()

        def _stop(self, key: str) -> float:
            sync(device)
            return time.perf_counter() - self._t.pop(key)

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._start("epoch")

        def on_train_epoch_end(self, trainer, pl_module) -> None:  # after the epoch's validation
            self.epochs_s += self._stop("epoch")
            self.epochs += 1

        def on_validation_start(self, trainer, pl_module) -> None:
            self._start("val")

        def on_validation_end(self, trainer, pl_module) -> None:
            self.validation_s += self._stop("val")
            self.validations += 1

    return PhaseTimer()


@torch.no_grad()
def score_anomalib(model, datamodule, device: torch.device) -> dict:
    """Model-only throughput and AUROCs (our metric code) of a fitted anomalib model on the test split."""
    datamodule.setup("test")
    transform = model.pre_processor.transform
    images, masks, labels, paths = [], [], [], []
    for batch in datamodule.test_dataloader():
        image, mask = batch.image.to(device), batch.gt_mask.to(device)
        if transform is not None:  # what PreProcessor.on_test_batch_start does inside Lightning
            image, mask = transform(image, mask)
        images.append(image)
        masks.append(torch.as_tensor(mask).bool().reshape(image.shape[0], *image.shape[-2:]))
        labels.append(torch.as_tensor(batch.gt_label).to(device).long().flatten())
        paths.extend(batch.image_path)
    net = model.model.to(device).eval()

    def one_pass() -> list:
        return [net(x) for x in images]

    outputs = one_pass()  # warm-up (cuDNN autotuning, allocations); its outputs give the accuracy
    sync(device)
    t = time.perf_counter()
    one_pass()
    sync(device)
    seconds = time.perf_counter() - t
    n = sum(x.shape[0] for x in images)
    scores = torch.cat([o.pred_score.flatten() for o in outputs])
    maps = torch.cat([o.anomaly_map.reshape(o.anomaly_map.shape[0], -1) for o in outputs])
    gt_masks = torch.cat([m.reshape(m.shape[0], -1) for m in masks])
    gt_labels = torch.cat(labels)
    if maps.shape != gt_masks.shape or scores.shape != gt_labels.shape:
        raise RuntimeError(f"shape mismatch: maps {tuple(maps.shape)} vs masks {tuple(gt_masks.shape)}, "
                           f"scores {tuple(scores.shape)} vs labels {tuple(gt_labels.shape)}")
    return {
        "score_images_per_s": round(n / seconds, 2),
        "image_auroc": round(metrics.image_auroc(scores, gt_labels), 6),
        "pixel_auroc": round(metrics.pixel_auroc(maps, gt_masks), 6),
        "n_test": n,
        "n_test_defective": int(gt_labels.sum()),
        "map_size": list(images[0].shape[-2:]),
        "test_set": sorted((f"{Path(p).parent.name}/{Path(p).stem}", int(y)) for p, y in zip(paths, gt_labels)),
    }


def run_anomalib(name: str, args, work: Path, device: torch.device, cfa_epochs: int, tf32: dict, seed: int,
                 full: bool) -> dict:
    """One anomalib run with `seed`. `full`: Engine defaults, incl. validation on the test split after every
    epoch; otherwise (the further seeds) without validation (`limit_val_batches=0`), which changes no
    training step, only the fit time (recorded with `validation: off`), and with accuracy only."""
    import lightning
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    import anomalib.data.datasets.image.mvtecad as mvtec_dataset

    # MVTecAD lists only .png images (module constant IMG_EXTENSIONS, read when a dataset is built);
    # MTD photos are JPEG (masks are PNG), so .jpg is added. Nothing else about the reading changes.
    mvtec_dataset.IMG_EXTENSIONS = (".png", ".PNG", ".jpg", ".JPG")
    set_tf32(tf32)  # torch's process defaults (our fp32 runs turn cuDNN TF32 off)
    lightning.seed_everything(seed, workers=True, verbose=False)
    if name == "anomalib/cfa":
        model, info = anomalib_cfa(args.weights, gamma_c=1, gamma_d=1)
        extra = {"max_epochs": cfa_epochs}
    elif name == "anomalib/padim":
        model, info = anomalib_padim(args.weights)
        extra = {}
    else:
        model, info = anomalib_patchcore(args.weights)
        extra = {}
    workers = min(8, os.cpu_count() or 1)
    datamodule = MVTecAD(root=work / "raw", category=CATEGORY, train_batch_size=BATCH, eval_batch_size=BATCH,
                         num_workers=workers)
    if not full:
        extra["limit_val_batches"] = 0
    timer = phase_timer(device)
    engine = Engine(default_root_dir=work / "anomalib" / f"seed{seed}",
                    accelerator="gpu" if device.type == "cuda" else "cpu",
                    devices=1, enable_progress_bar=False, callbacks=[timer], **extra)
    sync(device)
    t = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    sync(device)
    fit_s = time.perf_counter() - t
    result = score_anomalib(model, datamodule, device)
    trainer = engine.trainer
    if not full:
        return {"seed": seed, "fit_s": round(fit_s, 3), "validation": "off", "image_auroc": result["image_auroc"],
                "pixel_auroc": result["pixel_auroc"], "test_set": result["test_set"],
                "epochs": trainer.current_epoch if name == "anomalib/cfa" else 1}
    entry = {
        "seed": seed,
        "fit_s": round(fit_s, 3),
        "score_images_per_s": result.pop("score_images_per_s"),
        "image_auroc": result.pop("image_auroc"),
        "pixel_auroc": result.pop("pixel_auroc"),
        "epochs": trainer.current_epoch if name == "anomalib/cfa" else 1,
        "fit_train_epochs_s": round(timer.epochs_s, 3),
        "fit_validation_s": round(timer.validation_s, 3),
        "fit_validation_runs": timer.validations,
        "trainer": {"max_epochs": trainer.max_epochs, "num_sanity_val_steps": trainer.num_sanity_val_steps,
                    "check_val_every_n_epoch": trainer.check_val_every_n_epoch,
                    "callbacks": sorted({type(c).__name__ for c in trainer.callbacks}),
                    "num_workers": workers, "batch_size": BATCH},
        "tf32": tf32_flags(),
        "model_info": info,
        **result,
        "notes": (f"anomalib {name.split('/')[1]} via Engine.fit + MVTecAD; fit_s = Engine.fit wall (data loading, "
                  f"{timer.validations} validation run(s) on the test split, checkpointing included; "
                  f"fit_train_epochs_s includes the validation runs, fit_validation_s is them alone); "
                  f"score_images_per_s = model.model only on pre-processed test images already on the device, "
                  f"batch {BATCH}"),
    }
    del model, engine, datamodule
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return entry


# ---------------------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mtd", type=Path, required=True, help="original MTD folder (MT_*/Imgs); converted by acquire")
    ap.add_argument("--weights", type=Path, required=True, help="tf_efficientnet_lite0 state dict (timm names)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/abench"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--limit", type=int, default=0, help="smoke test: keep at most N images per train/test subfolder")
    ap.add_argument("--epochs-scale", type=float, default=1.0,
                    help="smoke test: scale the epochs of our CFA/DFR and anomalib's Cfa (min 1)")
    ap.add_argument("--no-warmup", action="store_true", help="time the first method cold (CUDA start-up included)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="every method runs once per seed; the first seed's run is the full one (timings), "
                         "the others give accuracy and fit time (anomalib's without validation)")
    ap.add_argument("--commit", default=None, help="commit id to record (default: git rev-parse --short HEAD)")
    args = ap.parse_args()
    args.mtd, args.weights = args.mtd.resolve(), args.weights.resolve()
    if not args.weights.is_file():
        ap.error(f"--weights {args.weights}: no such file")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    # torch's process-wide TF32 defaults, restored before every anomalib run (anomalib leaves them alone)
    tf32 = tf32_flags()

    def scaled(epochs: int) -> int:
        return max(1, round(epochs * args.epochs_scale))

    work = args.workdir.resolve()
    for sub in ("raw", "prepared", "ours", "anomalib"):
        shutil.rmtree(work / sub, ignore_errors=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params = merged(params, yaml.safe_load((REPO / "presets" / "mtd.yaml").read_text()))
    params = merged(params, {
        "device": device.type,
        "data": {"mtd": {"source": str(args.mtd)}},
        "cfa": {"weights": str(args.weights), "epochs": scaled(30)},
        "dfr": {"weights": str(args.weights), "epochs": scaled(150), "lr": 0.0001},
    })
    base = config_from_dict(params)
    t = time.perf_counter()
    raw = acquire(base, work / "raw")
    kept = limit_layout(raw / CATEGORY, args.limit) if args.limit > 0 else None
    index = prepare_category(raw / CATEGORY, work / "prepared" / CATEGORY, image_size=base.image_size,
                             resize=base.prepare.resize, workers=base.prepare.workers)
    data_s = time.perf_counter() - t
    n_test = len(index["test"])
    ours_test = sorted((s["name"], int(s["label"])) for s in index["test"])

    wants_anomalib = any(m.startswith("anomalib/") for m in args.methods)
    if wants_anomalib:
        import anomalib  # noqa: F401  (its version is recorded; fails early when the wheels are missing)
    report = {
        "what": __doc__.splitlines()[0],
        "commit": args.commit or git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu"),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "anomalib": anomalib.__version__ if wants_anomalib else None,
        "timm": __import__("timm").__version__,
        "lightning": __import__("lightning").__version__,
        "weights": str(args.weights),
        "image_size": base.image_size,
        "data": {"n_train": len(index["train"]), "n_test": n_test,
                 "n_test_defective": sum(s["label"] for s in index["test"]), "limit": args.limit or None,
                 "kept_per_folder": kept, "acquire_prepare_s": round(data_s, 2)},
        "epochs_scale": args.epochs_scale,
        "anomalib_changes": {
            "disabled": ["visualizer=False (writes no result images; not part of the method)",
                         "enable_progress_bar=False (console output only)"],
            "kept_defaults": ["pre_processor", "post_processor", "evaluator", "per-epoch validation on the test "
                              "split (val_split_mode=same_as_test)", "ModelCheckpoint", "loggers off (Engine "
                              "default)", "fp32 with torch's default TF32 flags"],
            "patches": ["MVTecAD IMG_EXTENSIONS += .jpg/.JPG (MTD photos are JPEG)",
                        "Cfa: get_feature_extractor -> FX extractor over timm lite0 blocks.1-3 named layer1-3",
                        "Cfa: descriptor.layer -> CoordConv2d(144, 144) (hard-coded resnet18 width was 448)",
                        "Padim/Patchcore: backbone given as the timm lite0 nn.Module (TimmFeatureExtractor's "
                        "nn.Module path), since timm's features_only lite0 has no blocks.3 output; traced with "
                        "timm's create_feature_extractor (Conv2dSame as a leaf) instead of torchvision's"],
            "cfa_max_epochs": scaled(30),
        },
        "methods": {},
    }
    if not args.no_warmup:
        # one untimed epoch of each of our methods first: the CUDA context, cuBLAS/cuDNN handles and
        # lazily loaded kernels are paid once per process, not by whichever method is timed first
        t = time.perf_counter()
        wanted = {VARIANTS.get(m.split("/")[1], (m.split("/")[1],))[0] for m in args.methods if m.startswith("ours/")}
        for model in sorted(wanted):
            cfg = config_from_dict(merged(merged(params, {"model": model}), {model: {"epochs": 1}}))
            train_and_evaluate(cfg, CATEGORY, work / "prepared" / CATEGORY, work / "warmup" / model)
        report["warmup_s"] = round(time.perf_counter() - t, 2)
    report["seeds"] = args.seeds
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.methods:
        runs = []
        for i, seed in enumerate(args.seeds):
            if name.startswith("ours/"):
                run = run_ours(name.split("/")[1], params, work, seed, full=i == 0)
            else:
                run = run_anomalib(name, args, work, device, scaled(30), tf32, seed, full=i == 0)
                if run.pop("test_set") != ours_test:
                    raise RuntimeError(f"{name}: the test images or labels differ from ours "
                                       f"({run.get('n_test')} vs {n_test})")
                run["test_set_matches_ours"] = True
            runs.append(run)
            progress(name, {k: v for k, v in run.items() if not isinstance(v, (dict, list))})
            if device.type == "cuda":
                torch.cuda.empty_cache()
        entry = runs[0]
        if len(runs) > 1:
            entry["per_seed"] = [{k: r[k] for k in ("seed", "fit_s", "image_auroc", "pixel_auroc")} for r in runs]
            entry["over_seeds"] = {k: spread([r[k] for r in runs]) for k in ("image_auroc", "pixel_auroc")}
        report["methods"][name] = entry
        args.out.write_text(json.dumps(report, indent=1))  # what is done so far survives a time-out

    got = report["methods"]
    theirs = got.get("anomalib/cfa")
    if theirs:
        report["ratios"] = {"definition": "speed ratios ours/anomalib (>1: ours faster): fit = anomalib fit_s / "
                                          "our fit_s; score = our images/s / anomalib model-only images/s"}
        for name in (n for n in got if n.startswith("ours/cfa")):
            ours = got[name]
            report["ratios"][name] = {
                "fit_speed": round(theirs["fit_s"] / ours["fit_s"], 3),
                "fit_speed_wall": round(theirs["fit_s"] / ours["train_wall_s"], 3),
                "fit_speed_excluding_anomalib_validation":
                    round((theirs["fit_s"] - theirs["fit_validation_s"]) / ours["fit_s"], 3),
                "score_speed": round(ours["score_images_per_s"] / theirs["score_images_per_s"], 3),
                "score_speed_model_only": round(ours["score_images_per_s_model_only"] / theirs["score_images_per_s"],
                                                3),
            }
        if "over_seeds" in theirs:
            report["accuracy_over_seeds"] = {
                "definition": "mean over seeds, ours minus anomalib's Cfa (>= 0: ours not lower)",
                **{name: {k: round(got[name]["over_seeds"][k]["mean"] - theirs["over_seeds"][k]["mean"], 6)
                          for k in ("image_auroc", "pixel_auroc")}
                   for name in got if name.startswith("ours/cfa") and "over_seeds" in got[name]}}
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}", flush=True)


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation, minimum and maximum of one metric over seeds."""
    return {"mean": round(statistics.fmean(values), 6), "std": round(statistics.stdev(values), 6),
            "min": min(values), "max": max(values), "n": len(values)}


if __name__ == "__main__":
    main()
