"""Method registry: the stages pick a method by name and use only the `AnomalyMethod` interface."""

from __future__ import annotations

from pathlib import Path

import torch

from uad.config import Config
from uad.artifacts import MODEL_FILE
from uad.methods.base import AnomalyMethod, FitInfo, Scores
from uad.methods.cfa import CFA
from uad.methods.dfr import DFR

METHODS: dict[str, type[AnomalyMethod]] = {cls.name: cls for cls in (CFA, DFR)}


def create(cfg: Config) -> AnomalyMethod:
    """A new, unfitted model of the method `cfg.model`."""
    return METHODS[cfg.model](cfg)


def load(folder: str | Path, cfg: Config) -> AnomalyMethod:
    """A model saved by `AnomalyMethod.save`; the backbone must resolve to the same weights."""
    path = Path(folder) / MODEL_FILE
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no trained model; run the train stage first") from None
    if saved["method"] != cfg.model:
        raise ValueError(f"{path}: holds a {saved['method']} model but params select {cfg.model}; "
                         f"rerun train")
    return METHODS[saved["method"]].from_saved(cfg, saved)


__all__ = ["METHODS", "AnomalyMethod", "FitInfo", "Scores", "create", "load"]
