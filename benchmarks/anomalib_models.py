"""anomalib 2.7.0's Cfa, Padim and Patchcore on the offline tf_efficientnet_lite0 weights, run through
anomalib's own Engine (Lightning) and MVTecAD datamodule; imported only when an anomalib method is asked for.

Default pre-processor (resize to 256x256, ImageNet normalisation), train batch 32. Cfa: the
cfa epochs of our params (30, the official schedule; anomalib 2.7.0's Cfa.trainer_arguments set
no max_epochs, so it is passed to Engine), gamma_c = gamma_d = 1; Padim n_features = 100;
Patchcore coreset_sampling_ratio = 0.1, default num_neighbors. Feature layers: our method's
default layers for lite0 where we have the method (the same features on both sides), else
the equivalent of anomalib's defaults. Three runtime patches put lite0 in; every one is
listed in the report (`CHANGES`), and every used weight is checked against the file.

fit_s = wall seconds of Engine.fit (what a user waits for; with anomalib's default validation
on the test split after every epoch and checkpointing, reported separately). Scoring speed
is MODEL ONLY: `model.model` in eval on the device, fed the pre-processed test images already
on the device, one warm-up pass, synchronised timing. Accuracy with our metric code on
anomalib's pred_score and anomaly_map against the datamodule's gt_label / gt_mask.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import sync
from benchmarks.variants import ANOMALIB_BATCH
from uad import methods
from uad.metrics.compute import image_auroc, pixel_auroc
from uad.weights import convert_lukemelas, load_weights
from uad.zoo import BACKBONES

METHODS = ("cfa", "padim", "patchcore")
ARCH = "tf_efficientnet_lite0"
# anomalib's default layers, as lite0 blocks of the same strides: ResNet layer1-3 (4, 8, 16), layer2-3 (8, 16)
ANOMALIB_LAYERS = {"cfa": ("blocks.1", "blocks.2", "blocks.3"), "padim": ("blocks.1", "blocks.2", "blocks.3"),
                   "patchcore": ("blocks.2", "blocks.3")}
CHANGES = {
    "disabled": ["visualizer=False (writes no result images; not part of the method)",
                 "enable_progress_bar=False (console output only)"],
    "kept_defaults": ["pre_processor", "post_processor", "evaluator", "per-epoch validation on the test split "
                      "(val_split_mode=same_as_test)", "ModelCheckpoint", "loggers off (Engine default)",
                      "fp32 with torch's default TF32 flags"],
    "patches": ["MVTecAD IMG_EXTENSIONS += .jpg/.JPG (MTD photos are JPEG)",
                "Cfa: get_feature_extractor -> FX extractor over timm lite0 blocks named layer1-3",
                "Cfa: descriptor.layer -> CoordConv2d(C, C) for lite0's width C (the hard-coded resnet18 width "
                "is 448)",
                "Padim/Patchcore: backbone given as the timm lite0 nn.Module (TimmFeatureExtractor's nn.Module "
                "path), since timm's features_only lite0 has no blocks.3 output; traced with timm's "
                "create_feature_extractor (Conv2dSame as a leaf) instead of torchvision's"],
}


def layers(name: str) -> tuple[str, ...]:
    """Our method's default lite0 layers when `name` is registered, else anomalib's default's equivalent."""
    if name in methods.names():
        found = methods.spec(name).params(backbone=ARCH).resolved_layers()
        if found:
            return found
    return ANOMALIB_LAYERS[name]


def tf32_flags() -> dict[str, bool]:
    return {"cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32}


def set_tf32(flags: dict[str, bool]) -> None:
    torch.backends.cuda.matmul.allow_tf32 = flags["cuda.matmul.allow_tf32"]
    torch.backends.cudnn.allow_tf32 = flags["cudnn.allow_tf32"]


# ------------------------------------------------------------------------------------ backbone


def read_timm_state(weights: Path) -> dict[str, torch.Tensor]:
    state = torch.load(weights, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def lite0(weights: Path, used: tuple[str, ...]) -> torch.nn.Module:
    """A timm tf_efficientnet_lite0 (pretrained=False: no hub) with the offline weights loaded by our
    loader, which fails unless every weight of the stem and the blocks up to the deepest used one is there."""
    import timm

    model = timm.create_model(ARCH, pretrained=False)
    deepest = max(int(layer.split(".")[1]) for layer in used)
    prefixes = ("conv_stem.", "bn1.", *(f"blocks.{i}." for i in range(deepest + 1)))
    required = [k for k in model.state_dict() if k.startswith(prefixes)]
    load_weights(model, BACKBONES[ARCH], weights=str(weights), required=required)
    return model.eval()


def assert_loaded(extractor: torch.nn.Module, weights: Path, what: str) -> int:
    """Every parameter and buffer the extractor holds equals the weights file's; loud failure otherwise."""
    state = read_timm_state(weights)
    if "_conv_stem.weight" in state:  # lukemelas naming; converted as uad.weights does
        import timm

        state = convert_lukemelas(state, timm.create_model(ARCH, pretrained=False))
    own = extractor.state_dict()
    if not own:
        raise RuntimeError(f"{what}: the feature extractor has no parameters; cannot check the weights")
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    differ = [k for k in own if k in state and not torch.equal(own[k].cpu(), state[k].to(own[k].dtype))]
    if missing or differ:
        raise RuntimeError(f"{what}: the used layers did not all get the offline weights: {len(missing)} missing "
                           f"(e.g. {missing[:3]}), {len(differ)} different (e.g. {differ[:3]})")
    return len(own)


def build_cfa(weights: Path) -> tuple[Any, dict[str, Any]]:
    """anomalib's Cfa on lite0, by two runtime patches (anomalib's code is imported, not copied)."""
    from timm.models import create_feature_extractor

    import anomalib.models.image.cfa.torch_model as cfa_torch
    from anomalib.models import Cfa

    used = layers("cfa")

    def lite0_feature_extractor(backbone: str, return_nodes: list[str]) -> torch.nn.Module:
        # Patch 1. CfaModel.__init__ builds its backbone with the module-level function
        # get_feature_extractor(backbone, get_return_nodes(backbone)), which only knows torchvision
        # models (and would fetch torchvision's ImageNet weights). It gets the same kind of module
        # (an FX GraphModule, eval mode) over timm lite0 with the offline weights, the used blocks
        # renamed to the names CfaModel expects (get_return_nodes("resnet18") = layer1-3).
        assert list(return_nodes) == ["layer1", "layer2", "layer3"], return_nodes
        nodes = dict(zip(used, return_nodes, strict=True))
        return create_feature_extractor(lite0(weights, used), return_nodes=nodes).eval()

    original = cfa_torch.get_feature_extractor
    cfa_torch.get_feature_extractor = lite0_feature_extractor
    try:
        # "resnet18" only passes CfaModel's/Descriptor's backbone-name checks (patch 1 builds no
        # torchvision model); its descriptor branch is the plain one (avg-pool, no efficientnet scaling)
        model = Cfa(backbone="resnet18", gamma_c=1, gamma_d=1, visualizer=False)
    finally:
        cfa_torch.get_feature_extractor = original
    extractor = model.model.feature_extractor
    dims = [f.shape[1] for f in extractor(torch.zeros(1, 3, 256, 256)).values()]
    # Patch 2. Descriptor sizes its CoordConv2d from a hard-coded table (resnet18: 448 input channels);
    # lite0's blocks give sum(dims). anomalib's own CoordConv2d of that width replaces it (fresh init,
    # as the original; out channels = in / gamma_d, as Descriptor does for ResNets).
    channels = sum(dims)
    model.model.descriptor.layer = cfa_torch.CoordConv2d(in_channels=channels, out_channels=channels, kernel_size=1)
    n = assert_loaded(extractor, weights, "anomalib Cfa")
    return model, {"layers": list(used), "feature_dims": dims, "descriptor_in_channels": channels,
                   "gamma_c": 1, "gamma_d": 1, "checked_weight_tensors": n}


@contextlib.contextmanager
def timm_fx() -> Iterator[None]:
    """Patch 3 (Padim, Patchcore). timm's features_only lite0 exposes blocks.0, 1, 2, 4, 6 only (no
    blocks.3), so TimmFeatureExtractor is given the timm model itself: its documented nn.Module path,
    which traces it with torchvision's FX create_feature_extractor. The tf_ EfficientNets pad stride-2
    convolutions "same" at run time (timm's Conv2dSame), which torchvision's tracer cannot trace;
    timm's create_feature_extractor is the same function with timm's layers registered as leaves."""
    import timm.models

    import anomalib.models.components.feature_extractors.timm as anomalib_timm

    original = anomalib_timm.create_feature_extractor
    anomalib_timm.create_feature_extractor = timm.models.create_feature_extractor
    try:
        yield
    finally:
        anomalib_timm.create_feature_extractor = original


def build_padim(weights: Path) -> tuple[Any, dict[str, Any]]:
    from anomalib.models import Padim

    used = layers("padim")
    with timm_fx():
        model = Padim(backbone=lite0(weights, used), layers=list(used), pre_trained=False, n_features=100,
                      visualizer=False)
    n = assert_loaded(model.model.feature_extractor.feature_extractor, weights, "anomalib Padim")
    return model, {"layers": list(used), "feature_dims": list(model.model.feature_extractor.out_dims),
                   "n_features": 100, "checked_weight_tensors": n}


def build_patchcore(weights: Path) -> tuple[Any, dict[str, Any]]:
    from anomalib.models import Patchcore

    used = layers("patchcore")
    with timm_fx():
        model = Patchcore(backbone=lite0(weights, used), layers=list(used), pre_trained=False,
                          coreset_sampling_ratio=0.1, visualizer=False)
    n = assert_loaded(model.model.feature_extractor.feature_extractor, weights, "anomalib Patchcore")
    return model, {"layers": list(used), "feature_dims": list(model.model.feature_extractor.out_dims),
                   "coreset_sampling_ratio": 0.1, "num_neighbors": model.model.num_neighbors,
                   "checked_weight_tensors": n}


BUILDERS = {"cfa": build_cfa, "padim": build_padim, "patchcore": build_patchcore}


# ------------------------------------------------------------------------------------- running


def phase_timer(device: torch.device) -> Any:
    """A Lightning callback summing the wall time of training epochs and of validation runs inside fit."""
    from lightning.pytorch import Callback

    class PhaseTimer(Callback):
        def __init__(self) -> None:
            self.epochs_s = 0.0
            self.validation_s = 0.0
            self.validations = 0
            self._t: dict[str, float] = {}

        def _start(self, key: str) -> None:
            sync(device)
            self._t[key] = time.perf_counter()

        def _stop(self, key: str) -> float:
            sync(device)
            return time.perf_counter() - self._t.pop(key)

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self._start("epoch")

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:  # after the epoch's validation
            self.epochs_s += self._stop("epoch")

        def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
            self._start("val")

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            self.validation_s += self._stop("val")
            self.validations += 1

    return PhaseTimer()


@torch.no_grad()
def score(model: Any, datamodule: Any, device: torch.device) -> dict[str, Any]:
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
    outputs = [net(x) for x in images]  # warm-up (autotuning, allocations); its outputs give the accuracy
    sync(device)
    t = time.perf_counter()
    for x in images:
        net(x)
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
        "image_auroc": round(image_auroc(scores, gt_labels), 6),
        "pixel_auroc": round(pixel_auroc(maps, gt_masks), 6),
        "n_test": n,
        "n_test_defective": int(gt_labels.sum()),
        "map_size": list(images[0].shape[-2:]),
        "test_set": sorted((f"{Path(p).parent.name}/{Path(p).stem}", int(y)) for p, y in zip(paths, gt_labels)),
    }


def run(name: str, *, weights: Path, raw: Path, category: str, work: Path, device: torch.device, cfa_epochs: int,
        tf32: dict[str, bool], seed: int, full: bool) -> dict[str, Any]:
    """One anomalib run of method `name` ("cfa", "padim", "patchcore") with `seed` on `raw/category`.

    `full`: Engine defaults, with validation on the test split after every epoch; otherwise (further
    seeds) without validation (`limit_val_batches=0`), which changes no training step, only the fit
    time (recorded with `validation: off`), and with accuracy only.
    """
    import lightning
    import anomalib.data.datasets.image.mvtecad as mvtec_dataset
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine

    # MVTecAD lists only .png images (module constant IMG_EXTENSIONS, read when a dataset is built);
    # MTD photos are JPEG (masks are PNG), so .jpg is added. Nothing else about the reading changes.
    mvtec_dataset.IMG_EXTENSIONS = (".png", ".PNG", ".jpg", ".JPG")
    set_tf32(tf32)  # torch's process defaults (our fp32 runs turn cuDNN TF32 off)
    lightning.seed_everything(seed, workers=True, verbose=False)
    model, info = BUILDERS[name](weights)
    extra: dict[str, Any] = {"max_epochs": cfa_epochs} if name == "cfa" else {}
    if not full:
        extra["limit_val_batches"] = 0
    workers = min(8, os.cpu_count() or 1)
    datamodule = MVTecAD(root=raw, category=category, train_batch_size=ANOMALIB_BATCH,
                         eval_batch_size=ANOMALIB_BATCH, num_workers=workers)
    timer = phase_timer(device)
    engine = Engine(default_root_dir=work / "anomalib" / f"{name}_seed{seed}",
                    accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, enable_progress_bar=False,
                    callbacks=[timer], **extra)
    sync(device)
    t = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    sync(device)
    fit_s = time.perf_counter() - t
    result = score(model, datamodule, device)
    trainer = engine.trainer
    epochs = trainer.current_epoch if name == "cfa" else 1
    if not full:
        return {"seed": seed, "fit_s": round(fit_s, 3), "validation": "off", "image_auroc": result["image_auroc"],
                "pixel_auroc": result["pixel_auroc"], "test_set": result["test_set"], "epochs": epochs}
    entry = {
        "seed": seed,
        "fit_s": round(fit_s, 3),
        "score_images_per_s": result.pop("score_images_per_s"),
        "image_auroc": result.pop("image_auroc"),
        "pixel_auroc": result.pop("pixel_auroc"),
        "epochs": epochs,
        "fit_train_epochs_s": round(timer.epochs_s, 3),
        "fit_validation_s": round(timer.validation_s, 3),
        "fit_validation_runs": timer.validations,
        "trainer": {"max_epochs": trainer.max_epochs, "num_sanity_val_steps": trainer.num_sanity_val_steps,
                    "check_val_every_n_epoch": trainer.check_val_every_n_epoch,
                    "callbacks": sorted({type(c).__name__ for c in trainer.callbacks}),
                    "num_workers": workers, "batch_size": ANOMALIB_BATCH},
        "tf32": tf32_flags(),
        "model_info": info,
        **result,
        "notes": (f"anomalib {name} via Engine.fit + MVTecAD; fit_s = Engine.fit wall (data loading, "
                  f"{timer.validations} validation run(s) on the test split, checkpointing included; "
                  f"fit_train_epochs_s includes the validation runs, fit_validation_s is them alone); "
                  f"score_images_per_s = model.model only on pre-processed test images already on the device, "
                  f"batch {ANOMALIB_BATCH}"),
    }
    del model, engine, datamodule
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return entry
