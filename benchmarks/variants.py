"""Our methods as the benchmarks name them: `ours/<name>` is a registered method (`uad.methods.names()`)
or a variant of one, which exists only here.

A variant is parameter overrides plus, where the change is not a parameter, a subclass of the
method's model class; both are handed to the library (`train_category(..., method=cls)`), so the
registry and `uad.methods` never change. The CFA variants attribute the accuracy gap between our
CFA and anomalib 2.7.0's Cfa to its settings (batch 32, fixed radius) and its two input quirks:
ImageNet normalisation for every backbone, and a memory bank built from unnormalised images.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from uad import methods
from uad.methods.base import AnomalyMethod, EpochLog, FitInfo
from uad.methods.cfa.model import CFA
from uad.methods.cfa.params import Params as CFAParams
from uad.methods.dfr.model import DFR
from uad.methods.fitting import TrainingFeatures

ANOMALIB_BATCH = 32  # anomalib's default train batch, used by its Engine runs and the variants below
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class AnomalibLikeCFA(CFA):
    """Our CFA with the two input quirks of anomalib 2.7.0's Cfa.

    1. Every backbone gets ImageNet's mean/std (anomalib's Cfa pre-processor); timm's tf_ lite0
       weights expect mean = std = 0.5, which our extractor uses. The mean/std are part of the
       saved model's state, so the loaded model scores with them too.
    2. The memory bank is the per-location mean descriptor of UNnormalised images in [0, 1]:
       anomalib's `Cfa.on_train_start` calls `initialize_centroid(datamodule.train_dataloader())`,
       a loop outside Lightning's batch hooks, so the PreProcessor's Normalize (applied in
       `on_train_batch_start`) never runs there.
    Its other differences, batch 32 and a fixed radius, are parameters (ANOMALIB_SETTINGS).
    """

    imagenet_normalisation = True
    raw_memory = True

    def __init__(self, params: CFAParams, *, image_size: int, precision: str = "fp32", resolve_weights: bool = True,
                 memory_size: int | None = None):
        super().__init__(params, image_size=image_size, precision=precision, resolve_weights=resolve_weights,
                         memory_size=memory_size)
        if self.imagenet_normalisation:
            self.extractor.mean.copy_(torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
            self.extractor.std.copy_(torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self._train_images: np.ndarray | None = None

    def fit(self, images: np.ndarray, generator: torch.Generator, *, batch_size: int = 16,
            log: EpochLog | None = None) -> FitInfo:
        self._train_images = images
        try:
            return super().fit(images, generator, batch_size=batch_size, log=log)
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
    """Only anomalib's memory bank from unnormalised images (our normalisation: the weights' own)."""

    imagenet_normalisation = False


class EagerDFR(DFR):
    """DFR with its training step left uncompiled on the GPU (the pipeline compiles it): the before
    of the fused-step measurement."""

    COMPILE_ON_CUDA = False


@dataclass(frozen=True)
class Variant:
    """What `ours/<name>` runs: registered method `method`, `overrides` merged over the run's params,
    and `model`, the subclass of the method's model class to train (None: the method's own)."""

    name: str
    method: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    model: type[AnomalyMethod] | None = None
    doc: str = ""


ANOMALIB_SETTINGS = {"cfa": {"batch_size": ANOMALIB_BATCH, "learn_radius": False}}
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("cfa_tf32", "cfa", {"precision": "tf32"}, doc="TF32 matmuls"),
    Variant("cfa_fixed_r", "cfa", {"cfa": {"learn_radius": False}}, doc="radius fixed at its initial value (anomalib)"),
    Variant("cfa_batch32", "cfa", {"cfa": {"batch_size": ANOMALIB_BATCH}}, doc="anomalib's batch (8x fewer steps)"),
    Variant("cfa_anomalib_settings", "cfa", ANOMALIB_SETTINGS, doc="anomalib's batch and fixed radius"),
    Variant("cfa_anomalib_like", "cfa", ANOMALIB_SETTINGS, AnomalibLikeCFA,
            "anomalib's settings and both input quirks"),
    Variant("cfa_imagenet_norm", "cfa", ANOMALIB_SETTINGS, ImageNetNormCFA,
            "anomalib's settings and ImageNet normalisation"),
    Variant("cfa_raw_memory", "cfa", ANOMALIB_SETTINGS, RawMemoryCFA,
            "anomalib's settings and the memory bank of unnormalised images"),
    Variant("dfr_eager", "dfr", {}, EagerDFR, "DFR without the compiled training step"),
)}


def names() -> list[str]:
    """Every `ours/<name>`: the registered methods, then the variants."""
    return [*methods.names(), *VARIANTS]


def resolve(name: str) -> Variant:
    """The registered method `name` as a plain Variant, or the variant called `name`."""
    if name in methods.names():
        return Variant(name, name, doc=methods.spec(name).title)
    if name in VARIANTS:
        return VARIANTS[name]
    raise KeyError(f"ours/{name}: no such method or variant; choose one of {names()}")
