"""Method registry: the stages pick a method by name and use only the `AnomalyMethod` interface."""

from __future__ import annotations

from pathlib import Path

import torch

from uad.config import Config
from uad.errors import UadError
from uad.artifacts import MODEL_FILE
from uad.methods.base import AnomalyMethod, FitInfo, Scores
from uad.methods.cfa import CFA
from uad.methods.dfr import DFR

METHODS: dict[str, type[AnomalyMethod]] = {cls.name: cls for cls in (CFA, DFR)}


def create(cfg: Config) -> AnomalyMethod:
    """A new, unfitted model of the method `cfg.model`."""
    return METHODS[cfg.model](cfg)


class ModelError(UadError, ValueError):
    """A saved model that is missing, damaged or of another kind; the message names the file."""


def load(folder: str | Path, cfg: Config) -> AnomalyMethod:
    """A model saved by `AnomalyMethod.save`; the backbone must resolve to the same weights."""
    path = Path(folder) / MODEL_FILE
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"{path}: no trained model; run the train stage first") from None
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise ModelError(f"{path}: not a readable model ({type(exc).__name__}: {str(exc)[:200]}); "
                         f"rerun the train stage") from None
    if not isinstance(saved, dict) or saved.get("method") not in METHODS or "state" not in saved:
        raise ModelError(f"{path}: not a model saved by this pipeline; rerun the train stage")
    if saved["method"] != cfg.model:
        raise ModelError(f"{path}: holds a {saved['method']} model but params select {cfg.model}; "
                         f"rerun train")
    try:
        return METHODS[saved["method"]].from_saved(cfg, saved)
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ModelError(f"{path}: {str(exc)[:300]}") from None


__all__ = ["METHODS", "AnomalyMethod", "FitInfo", "ModelError", "Scores", "create", "load"]
