"""The interface every anomaly-segmentation method implements, and the saved-model format.

A method is an `nn.Module` around a frozen `FeatureExtractor`. The pipeline only
ever calls `create`, `fit`, `calibrate`, `score`, `save` and `load` (below); the stages
never branch on the method.

A saved model (`models/<cat>/model.pt`) is self-describing: the method, its
parameters, the input it expects (size, resize, normalisation), the backbone and
its layers, the calibrated thresholds, and every weight, the frozen backbone trunk's
included. Loading reads nothing else: not params.yaml, not a weights package, not a
hub. It is read with `torch.load(weights_only=True)`, which runs no code from the file.
"""

from __future__ import annotations

import io
import math
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from uad.artifacts import INFO_FILE, MODEL_FILE, write_json
from uad.backbones import FeatureExtractor, to_input
from uad.config import Config, build_section, to_dict
from uad.errors import UadError, one_line
from uad.methods import spec
from uad.methods.fitting import batches
from uad.methods.params import MethodParams
from uad.runtime import autocast

FORMAT = 2  # of model.pt; 1 = before models carried their parameters, input and backbone weights
EpochLog = Any  # Callable[[int, dict[str, float]], None]
NORMAL_QUANTILES = (0.5, 0.9, 0.99, 0.995, 0.999)  # of normal pixels' scores, kept for colour scales


class ModelError(UadError, ValueError):
    """A saved model that is missing, damaged, too old or of another kind; the message names the file."""


@dataclass
class Scores:
    maps: torch.Tensor  # (N, H, W) float32 anomaly maps at input resolution
    image: torch.Tensor  # (N,) image scores = max of each map


@dataclass
class FitInfo:
    epochs: int = 0
    final_loss: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InputSpec:
    """What a model expects: uint8 RGB images resized to `size` x `size` with PIL's `resize` filter."""

    size: int
    resize: str = "bilinear"


class AnomalyMethod(nn.Module, ABC):
    """Fit on normal images; score images into anomaly maps; calibrate thresholds; save and load."""

    name: ClassVar[str]

    def __init__(self, params: MethodParams, *, image_size: int, precision: str = "fp32",
                 resolve_weights: bool = True):
        """`resolve_weights`: False when a saved model's own backbone weights will be loaded next."""
        super().__init__()
        self.params = params
        self.image_size = image_size
        self.input = InputSpec(image_size)
        self.precision = precision
        self.extractor = FeatureExtractor(params.backbone, params.resolved_layers(), weights=params.weights,
                                          pretrained=params.pretrained and resolve_weights,
                                          param=f"{self.name}.layers", **self.extractor_options())
        # thresholds from normal images (`calibrate`): an image is anomalous above `image_threshold`,
        # a pixel above `pixel_threshold`
        self.register_buffer("image_threshold", torch.tensor(float("nan")))
        self.register_buffer("pixel_threshold", torch.tensor(float("nan")))
        self.register_buffer("normal_quantiles", torch.full((len(NORMAL_QUANTILES),), float("nan")))
        self.calibration: dict[str, Any] = {}

    def extractor_options(self) -> dict[str, Any]:
        """Extra `FeatureExtractor` arguments of a method (e.g. CFA's official feature export)."""
        return {}

    @property
    def device(self) -> torch.device:
        return self.image_threshold.device

    def features(self, images: np.ndarray | torch.Tensor, keep_dtype: bool = False) -> list[torch.Tensor]:
        """Backbone maps of a uint8 NHWC batch on the model's device: float32, or the autocast dtype."""
        x = to_input(images, self.device)
        with torch.no_grad(), autocast(self.precision, self.device):
            feats = self.extractor(x)
        # in the backbone's channels-last layout, which pooling and 1x1 convolutions prefer
        return feats if keep_dtype else [f.float() for f in feats]

    @abstractmethod
    def fit(self, images: np.ndarray, generator: torch.Generator, *, batch_size: int = 16,
            log: EpochLog | None = None) -> FitInfo:
        """Learn from normal images (uint8 NHWC); `batch_size` batches the feature pass, not training."""

    @abstractmethod
    def anomaly_maps(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, H, W) anomaly maps at input resolution for a uint8 NHWC batch."""

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (N, H, W, 3) at the input size -> (anomaly maps (N, H, W), image scores (N,)): the
        whole scoring path, preprocessing included, as one traceable function."""
        maps = self.anomaly_maps(images)
        return maps, maps.flatten(1).amax(1)

    @torch.no_grad()
    def score(self, images: np.ndarray, batch_size: int, desc: str | None = None) -> Scores:
        """Anomaly maps and image scores (max of the map) of many images, batched."""
        self.eval()
        maps = torch.cat([self.anomaly_maps(b) for b in batches(images, batch_size, desc)])
        return Scores(maps, maps.flatten(1).amax(1))

    @torch.no_grad()
    def calibrate(self, images: np.ndarray, *, image_fpr: float, pixel_fpr: float, batch_size: int,
                  source: str) -> dict[str, Any]:
        """Thresholds from normal images only: the image threshold at a false-alarm rate of `image_fpr`
        per image (`image_threshold`), the pixel threshold exceeded by `pixel_fpr` of their pixels.
        `source` says which images they were (held out, or seen in the fit); returns the record."""
        scores = self.score(images, batch_size, desc="calibrate")
        levels = upper_quantiles(scores.maps, [pixel_fpr, *(1 - q for q in NORMAL_QUANTILES)])
        self.pixel_threshold.copy_(levels[0])
        self.normal_quantiles.copy_(levels[1:])
        threshold, rule = image_threshold(scores.image, image_fpr)
        self.image_threshold.fill_(threshold)
        self.calibration = {"source": source, "images": len(images), "image_fpr": image_fpr,
                            "pixel_fpr": pixel_fpr, "image_rule": rule}
        return self.calibration

    # ---------------------------------------------------------------- persistence

    def hyper(self) -> dict[str, Any]:
        """Sizes decided during `fit` that `__init__` needs to rebuild the module before loading."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Everything about this model that is not a tensor: what a reader (or `uad predict`) needs."""
        return {
            "method": self.name,
            "params": to_dict(self.params),
            "input": {"size": self.input.size, "resize": self.input.resize, "dtype": "uint8", "channels": "RGB",
                      "mean": self.extractor.mean.flatten().tolist(), "std": self.extractor.std.flatten().tolist()},
            "backbone": {"name": self.params.backbone, "layers": list(self.extractor.layers),
                         "weights_source": self.extractor.weights_source,
                         "weights_fingerprint": self.extractor.weights_fingerprint},
            "hyper": self.hyper(),
            "thresholds": {"image": float(self.image_threshold), "pixel": float(self.pixel_threshold),
                           "normal_pixel_quantiles": dict(zip(map(str, NORMAL_QUANTILES),
                                                              self.normal_quantiles.tolist())),
                           "calibration": self.calibration},
        }

    def save(self, folder: str | Path, fit: FitInfo, info: dict[str, Any]) -> None:
        """model.pt (all of it) and model.json (the description, fit record and `info`, for people)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        description = self.describe()
        buffer = io.BytesIO()  # serialised in memory, so a full disk is an OSError of the write below
        torch.save({"format": FORMAT, **description, "state": {k: v.cpu() for k, v in self.state_dict().items()}},
                   buffer)
        (folder / MODEL_FILE).write_bytes(buffer.getvalue())
        write_json(folder / INFO_FILE, {**description, "fit": {"epochs": fit.epochs, "final_loss": fit.final_loss,
                                                               **fit.extra}, **info})

    @classmethod
    def from_saved(cls, saved: dict[str, Any], *, precision: str = "fp32") -> AnomalyMethod:
        params = build_section(spec(cls.name).params, saved["params"], cls.name)
        model = cls(params, image_size=saved["input"]["size"], precision=precision, resolve_weights=False,
                    **saved["hyper"])
        model.load_state_dict(saved["state"], strict=True)
        model.input = InputSpec(saved["input"]["size"], saved["input"]["resize"])
        backbone = saved["backbone"]
        model.extractor.weights_source = backbone["weights_source"]
        if model.extractor.compute_fingerprint() != backbone["weights_fingerprint"]:
            raise ModelError(f"the backbone weights stored in the {cls.name} model do not match their recorded "
                             f"fingerprint; the file is damaged, retrain it")
        model.extractor.weights_fingerprint = backbone["weights_fingerprint"]
        model.calibration = saved["thresholds"].get("calibration", {})
        return model


def create(cfg: Config, method: type[AnomalyMethod] | None = None) -> AnomalyMethod:
    """A new, unfitted model of the method `cfg.model`, built from its section of `cfg`; `method`: a
    subclass of that method's model to build instead (benchmarks pass their variants this way)."""
    cls = spec(cfg.model).model_class()
    if method is not None:
        if not issubclass(method, cls):
            raise TypeError(f"{method.__name__} is not a {cls.__name__} (model: {cfg.model})")
        cls = method
    return cls(cfg.method(), image_size=cfg.image_size, precision=cfg.precision)


def load(folder: str | Path, *, precision: str = "fp32", expect: str | None = None) -> AnomalyMethod:
    """The model saved in `folder`, rebuilt from what it recorded (never from today's params.yaml)."""
    saved = read_saved(folder, expect)
    try:
        return spec(saved["method"]).model_class().from_saved(saved, precision=precision)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        if isinstance(exc, UadError):
            raise
        raise ModelError(f"{Path(folder) / MODEL_FILE}: does not match this version's {saved['method']} model "
                         f"({type(exc).__name__}: {one_line(str(exc), 300)}); retrain it") from None


def read_saved(folder: str | Path, expect: str | None = None) -> dict[str, Any]:
    """The contents of `folder/model.pt`, checked to be a model of this format (and of method `expect`)."""
    path = Path(folder) / MODEL_FILE
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"{path}: no trained model; run the train stage first") from None
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise ModelError(f"{path}: not a readable model ({type(exc).__name__}: {str(exc)[:200]}); "
                         f"rerun the train stage") from None
    if not isinstance(saved, dict) or "state" not in saved or "method" not in saved:
        raise ModelError(f"{path}: not a model saved by this pipeline; rerun the train stage")
    if saved.get("format") != FORMAT:
        raise ModelError(f"{path}: saved in format {saved.get('format', 1)} by an older version of this pipeline "
                         f"(this one reads format {FORMAT}); retrain it (dvc repro, or the train stage)")
    if expect is not None and saved["method"] != expect:
        raise ModelError(f"{path}: holds a {saved['method']} model but params select {expect}; rerun train")
    return saved


def upper_quantiles(values: torch.Tensor, fractions: list[float]) -> torch.Tensor:
    """For each fraction f, the largest t with at least ceil(f * n) values strictly above t.

    Exact (one sort), with no size cap unlike `torch.quantile`; `values > t` then
    flags at least the requested fraction, as DFR's threshold rule asks.
    """
    ordered = values.flatten().sort(descending=True).values
    n = ordered.numel()
    index = [min(n - 1, math.ceil(f * n)) for f in fractions]
    return ordered[index]


def image_threshold(scores: torch.Tensor, fpr: float) -> tuple[float, str]:
    """An image-score threshold at a false-alarm rate of `fpr` for normal images like `scores`.

    With n >= 1/fpr - 1 calibration scores: the conformal quantile, the ceil((n + 1)(1 - fpr))-th
    smallest score, whose false-alarm rate on new exchangeable normal images is at most `fpr`.
    With fewer, that rank does not exist: the threshold is then the larger of the highest score
    (rate at most 1/(n + 1)) and the log-normal fit's (1 - fpr) quantile, which extrapolates
    beyond the sample. Returns the threshold and the rule used.
    """
    s = scores.double().flatten().sort().values.cpu()
    n = len(s)
    rank = math.ceil((n + 1) * (1 - fpr))
    if rank <= n:
        return float(s[rank - 1]), f"conformal: rank {rank} of {n} held-out scores"
    positive = s.clamp_min(1e-30).log()
    z = math.sqrt(2) * float(torch.special.erfinv(torch.tensor(1 - 2 * fpr, dtype=torch.float64)))
    spread = float(positive.std()) if n > 1 else 0.0
    fitted = math.exp(float(positive.mean()) + z * spread)
    if n < 10:
        print(f"warning: image threshold from only {n} normal images; its false-alarm rate is uncertain",
              file=sys.stderr)
    return max(float(s[-1]), fitted), f"max of the {n} held-out scores and their log-normal {1 - fpr:.4g} quantile"
