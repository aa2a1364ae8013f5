"""The interface every anomaly-segmentation method implements, and what they share.

A method is an `nn.Module` around a frozen `FeatureExtractor`. The pipeline only
ever calls `fit`, `score`, `save` and `load`; the stages never branch on the method.
Shared here: batching images through the backbone, the frozen features a head
trains on, training steps replayed as CUDA graphs, calibrating the deployable
threshold on normal images, and the on-disk format of a trained model.
"""

from __future__ import annotations

import io
import math
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from uad.artifacts import INFO_FILE, MODEL_FILE, write_json
from uad.backbones import FeatureExtractor, to_input
from uad.config import BackboneConfig, Config, to_dict
from uad.runtime import autocast, memory_budget

EpochLog = Callable[[int, dict[str, float]], None]


@dataclass
class Scores:
    maps: torch.Tensor  # (N, H, W) float32 anomaly maps at input resolution
    image: torch.Tensor  # (N,) image scores = max of each map


@dataclass
class FitInfo:
    epochs: int = 0
    final_loss: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)


def batches(images: np.ndarray, batch_size: int, desc: str | None = None) -> Iterator[np.ndarray]:
    """Consecutive uint8 slices of an image array, with a progress bar when `desc` is given."""
    starts = range(0, len(images), batch_size)
    if desc:
        starts = tqdm(starts, desc=desc, unit="batch", leave=False, mininterval=1.0)
    for s in starts:
        yield images[s: s + batch_size]


class TrainingFeatures:
    """The frozen input of a trainable head for every training image, served by batch index.

    The backbone is frozen and there is no augmentation, so the features are computed
    once and kept on the device when they fit in half of its free memory (the same
    values as the papers' per-step recomputation). Otherwise only the uint8 images stay
    there and each batch is recomputed: DFR's 3456 channels for 391 images at 256 px
    are 22 GB in fp32, more than half a 24 GB card. The cache is in the standard layout:
    DFR's fit took 122 s instead of 101 s on a channels-last cache (H100, bf16).
    """

    def __init__(self, images: np.ndarray, compute: Callable[[np.ndarray | torch.Tensor], torch.Tensor],
                 dtype: torch.dtype, batch_size: int, device: torch.device):
        self.compute, self.dtype, self.batch_size, self.device = compute, dtype, batch_size, device
        self.length = len(images)
        sample = compute(images[:1])
        need = sample.numel() * torch.empty((), dtype=dtype).element_size() * len(images)
        self.cached = need <= memory_budget(device)
        if self.cached:  # filled in place: concatenating batches would need twice the memory at the end
            self.data = torch.empty((len(images), *sample.shape[1:]), dtype=dtype, device=device)
            start = 0
            for batch in batches(images, batch_size, desc="features"):
                self.data[start: start + len(batch)] = compute(batch)
                start += len(batch)
        else:
            self.images = torch.from_numpy(np.array(images)).to(device)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        if self.cached:
            return self.data[index]
        return self.compute(self.images[index]).to(self.dtype)

    def chunks(self, limit: int | None = None) -> Iterator[torch.Tensor]:
        """Consecutive batches of the first `limit` images (all by default)."""
        end = self.length if limit is None else min(limit, self.length)
        for s in range(0, end, self.batch_size):
            yield self[torch.arange(s, min(s + self.batch_size, end), device=self.device)]


class TrainingSteps:
    """Runs one optimisation step (`step(index)`: forward, backward, optimiser step) per batch.

    On CUDA each batch size is captured once as a CUDA graph, after `WARMUP` eager steps,
    and replayed from then on: the same kernels in the same order, without the launch
    overhead of hundreds of small kernels that bounds training at the papers' batch of 4.
    The optimiser must be built with `capturable=TrainingSteps.graphed_on(device)`. Elsewhere
    the step runs eagerly.
    `step` returns detached tensors, overwritten by the next replay: consume them at once.
    """

    WARMUP = 3

    def __init__(self, step: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], optimizer: torch.optim.Optimizer,
                 device: torch.device):
        self.step, self.optimizer = step, optimizer
        self.graphed = self.graphed_on(device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple[torch.Tensor, ...]]] = {}
        self.eager_runs: Counter[int] = Counter()

    @staticmethod
    def graphed_on(device: torch.device) -> bool:
        """Whether steps on `device` are replayed as CUDA graphs (their optimiser must be capturable)."""
        return device.type == "cuda"

    def __call__(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = len(index)
        if n in self.graphs:
            graph, static_index, out = self.graphs[n]
            static_index.copy_(index)
            graph.replay()
            return out
        if not self.graphed:
            self.optimizer.zero_grad(set_to_none=True)
            return self.step(index)
        if self.eager_runs[n] < self.WARMUP:  # warm-up on a side stream, as capture requires
            self.eager_runs[n] += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.optimizer.zero_grad(set_to_none=True)
                out = self.step(index)
            torch.cuda.current_stream().wait_stream(side)
            return out
        static_index = index.clone()
        self.optimizer.zero_grad(set_to_none=True)  # the captured backward then writes fresh gradients
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.step(static_index)
        self.graphs[n] = (graph, static_index, out)
        graph.replay()  # capture records without running: this is the step itself
        return out


class AnomalyMethod(nn.Module, ABC):
    """Fit on normal images; score images into anomaly maps; save and load."""

    name: ClassVar[str]

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        section: BackboneConfig = getattr(cfg, self.name)
        self.section = section
        self.image_size = cfg.image_size
        self.precision = cfg.precision
        self.extractor = FeatureExtractor(section.backbone, cfg.layers(self.name), weights=section.weights,
                                          pretrained=section.pretrained, param=f"{self.name}.layers")
        # Deployable threshold and normal-score statistics, set by `calibrate`.
        self.register_buffer("threshold", torch.tensor(float("nan")))
        self.register_buffer("normal_quantiles", torch.full((len(NORMAL_QUANTILES),), float("nan")))

    @property
    def device(self) -> torch.device:
        return self.threshold.device

    def features(self, images: np.ndarray, keep_dtype: bool = False) -> list[torch.Tensor]:
        """Backbone maps of a uint8 NHWC batch on the model's device: float32, or the autocast dtype."""
        x = to_input(images, self.device)
        with torch.no_grad(), autocast(self.precision, self.device):
            feats = self.extractor(x)
        # in the backbone's channels-last layout, which pooling and 1x1 convolutions prefer
        return feats if keep_dtype else [f.float() for f in feats]

    @abstractmethod
    def fit(self, images: np.ndarray, generator: torch.Generator, log: EpochLog | None = None) -> FitInfo:
        """Learn from normal images (uint8 NHWC)."""

    @abstractmethod
    def anomaly_maps(self, images: np.ndarray) -> torch.Tensor:
        """(B, H, W) anomaly maps at input resolution for a uint8 NHWC batch."""

    @torch.no_grad()
    def score(self, images: np.ndarray, batch_size: int, desc: str | None = None) -> Scores:
        """Anomaly maps and image scores (max of the map) of many images, batched."""
        self.eval()
        maps = torch.cat([self.anomaly_maps(b) for b in batches(images, batch_size, desc)])
        return Scores(maps, maps.flatten(1).amax(1))

    @torch.no_grad()
    def calibrate(self, images: np.ndarray, target_fpr: float, batch_size: int) -> None:
        """Deployable threshold from normal images only: the score exceeded by `target_fpr` of their pixels."""
        pixels = self.score(images, batch_size, desc="calibrate").maps
        levels = upper_quantiles(pixels, [target_fpr, *(1 - q for q in NORMAL_QUANTILES)])
        self.threshold.copy_(levels[0])
        self.normal_quantiles.copy_(levels[1:])

    # ---------------------------------------------------------------- persistence

    def head_state(self) -> dict[str, torch.Tensor]:
        """Everything but the frozen backbone (which is re-resolved and fingerprint-checked on load)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("extractor.")}

    def hyper(self) -> dict[str, Any]:
        """Sizes decided during `fit` that `__init__` needs to rebuild the module before loading."""
        return {}

    def save(self, folder: str | Path, fit: FitInfo, timing: dict[str, float]) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()  # serialised in memory, so a full disk is an OSError of the write below
        torch.save({"method": self.name, "hyper": self.hyper(), "config": to_dict(self.cfg),
                    "weights_fingerprint": self.extractor.weights_fingerprint,
                    "state": {k: v.cpu() for k, v in self.head_state().items()}}, buffer)
        (folder / MODEL_FILE).write_bytes(buffer.getvalue())
        info = {
            "method": self.name,
            "backbone": self.section.backbone,
            "layers": list(self.extractor.layers),
            "weights_source": self.extractor.weights_source,
            "weights_fingerprint": self.extractor.weights_fingerprint,
            "image_size": self.image_size,
            "threshold": float(self.threshold),
            "normal_quantiles": dict(zip(map(str, NORMAL_QUANTILES), self.normal_quantiles.tolist())),
            "hyper": self.hyper(),
            "epochs": fit.epochs,
            "final_loss": fit.final_loss,
            **fit.extra,
            **timing,
        }
        write_json(folder / INFO_FILE, info)

    @classmethod
    def from_saved(cls, cfg: Config, saved: dict[str, Any]) -> AnomalyMethod:
        model = cls(cfg, **saved["hyper"])
        if model.extractor.weights_fingerprint != saved["weights_fingerprint"]:
            raise ValueError(f"backbone weights ({model.extractor.weights_source}) differ from those the "
                             f"{cls.name} model was trained with; rerun train")
        missing, unexpected = model.load_state_dict(saved["state"], strict=False)
        missing = [k for k in missing if not k.startswith("extractor.")]
        if missing or unexpected:
            raise ValueError(f"saved {cls.name} model does not match: missing {missing}, unexpected {unexpected}")
        return model


NORMAL_QUANTILES = (0.5, 0.9, 0.99, 0.995, 0.999)


def upper_quantiles(values: torch.Tensor, fractions: list[float]) -> torch.Tensor:
    """For each fraction f, the largest t with at least ceil(f * n) values strictly above t.

    Exact (one sort), with no size cap unlike `torch.quantile`; `values > t` then
    flags at least the requested fraction, as DFR's threshold rule asks.
    """
    ordered = values.flatten().sort(descending=True).values
    n = ordered.numel()
    index = [min(n - 1, math.ceil(f * n)) for f in fractions]
    return ordered[index]
