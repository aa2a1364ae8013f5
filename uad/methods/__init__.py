"""The method registry: every sub-package of `uad.methods` is a method, found by listing the package.

A method package `uad/methods/<name>/` holds
- `__init__.py`: `SPEC`, a `MethodSpec` (name, title, paper, parameters, model class);
- `params.py`: `Params`, the method's parameter schema with the published defaults and checks
  (torch-free, so that reading params.yaml stays cheap);
- `model.py`: the `AnomalyMethod` subclass.
Adding a method is adding its package and a params.yaml section: the valid `model`
values, the tests parametrised over methods and the benchmarks' defaults come from here.
Listing and parsing import no torch; models are created and loaded by `uad.methods.base`
(`create`, `load`), and a stage imports only the package of the method it runs (so DVC
reruns it for that method's code alone).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import TYPE_CHECKING

from uad.errors import ConfigError
from uad.methods.params import MethodParams

if TYPE_CHECKING:
    from uad.methods.base import AnomalyMethod


@dataclass(frozen=True)
class MethodSpec:
    name: str  # the `model` value and the params.yaml section
    label: str  # how reports and charts name it ("PatchCore")
    title: str
    paper: str
    params: type[MethodParams]
    model: str  # "module:Class" inside the method's package

    def model_class(self) -> type[AnomalyMethod]:
        module, _, cls = self.model.partition(":")
        return getattr(importlib.import_module(f"{__name__}.{self.name}.{module}"), cls)


def names() -> tuple[str, ...]:
    """The registered methods: the sub-packages of uad/methods, sorted."""
    return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if m.ispkg))


def spec(name: str) -> MethodSpec:
    """The method called `name`; ConfigError listing the valid names for any other."""
    if name not in names():
        raise ConfigError(f"model: {name!r} is not valid; choose one of {list(names())}")
    found = importlib.import_module(f"{__name__}.{name}").SPEC
    assert isinstance(found, MethodSpec) and found.name == name, f"uad/methods/{name}: SPEC must name {name!r}"
    return found


__all__ = ["MethodSpec", "MethodParams", "names", "spec"]
