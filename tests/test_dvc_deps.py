"""dvc.yaml declares, for every stage, the code it runs: changing any of it reruns the stage.

A stage runs its script, everything the script imports from `uad` (transitively, function-level
imports included) and, when it reads a method's section, that method's package (imported by name
through the registry), with that package's own imports. Every such file must be covered by a
declared dependency; every declared code file must be one the stage runs.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from uad import methods

from .conftest import REPO

CODE = ("uad/", "stages/")


def module_file(name: str) -> Path | None:
    base = REPO / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_chain(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def imports_of(path: Path) -> set[Path]:
    """The uad modules a file imports anywhere in it (and the packages on the way to them)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # imports for type checkers only never run
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            node.body = []
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    found = set()
    for name in names:
        if name.split(".")[0] != "uad":
            continue
        for part in _package_chain(name):
            file = module_file(part)
            if file is not None:
                found.add(file)
    return found


def closure(files: set[Path]) -> set[Path]:
    seen, todo = set(), list(files)
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        todo += imports_of(f) - seen
    return seen


def stage_sections(script: Path) -> str:
    """The method sections the stage reads: the `sections=` argument of its run_stage call."""
    match = re.search(r"sections=\"(\w+)\"", script.read_text())
    return match.group(1) if match else "model"


def required(script: Path, model: str) -> set[Path]:
    """The files a stage runs: the registry imports a method's package and params by name when the
    stage reads its section, and its model module when the stage creates or loads models."""
    sections = stage_sections(script)
    wanted = {"all": methods.names(), "model": (model,), "none": ()}[sections]
    packages = [REPO / "uad" / "methods" / name for name in wanted]
    files = closure({script} | {p / "__init__.py" for p in packages} | {p / "params.py" for p in packages})
    if REPO / "uad" / "methods" / "base.py" in files:  # create() and load() import the model module
        files = closure(files | {p / "model.py" for p in packages})
    return files


def rendered_stages(model: str) -> dict[str, dict]:
    """dvc.yaml's stages with ${model} and ${item} filled in (one category: the code deps are the same)."""
    text = (REPO / "dvc.yaml").read_text().replace("${model}", model)
    doc = yaml.safe_load(text)
    out = {}
    for name, stage in doc["stages"].items():
        body = stage.get("do", stage)
        out[name] = body
    return out


def code_deps(stage: dict) -> list[str]:
    return [d for d in stage.get("deps", []) if isinstance(d, str) and d.startswith(CODE)]


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(REPO).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


def test_every_stage_declares_the_code_it_runs_and_nothing_else():
    """Per method, everything a stage runs is declared; every declared file is run by the stage for
    some method, and every declared folder holds code it runs (shared kernels in uad/ops are one
    folder: a kernel change reruns every method's stages that import any kernel)."""
    for name in rendered_stages(methods.names()[0]):
        union: set[Path] = set()
        for model in methods.names():
            stage = rendered_stages(model)[name]
            script = REPO / stage["cmd"].split()[1]
            deps = code_deps(stage)
            need = required(script, model)
            union |= need
            missing = sorted(p.relative_to(REPO).as_posix() for p in need if not covered(p, deps))
            assert not missing, f"stage {name} (model {model}) runs code it does not declare: {missing}"
            stale = [d for d in deps if d.endswith(".py") and d not in {p.relative_to(REPO).as_posix() for p in need}]
            assert not stale, f"stage {name} (model {model}) declares code it does not run: {stale}"
        deps = [d.replace(methods.names()[-1], "${model}") for d in code_deps(stage)]
        folders = [d for d in code_deps(rendered_stages(methods.names()[0])[name]) if not d.endswith(".py")]
        empty = [d for d in folders if "${model}" not in d and not any(covered(p, [d]) for p in union)]
        assert not empty, f"stage {name} declares folders it runs nothing from: {empty}"


def test_stages_that_read_no_method_import_no_method_code():
    """Switching `model` must not rerun download, prepare or render: they import no method package."""
    for name in ("download", "prepare", "render"):
        script = REPO / "stages" / f"{name}.py"
        assert stage_sections(script) == "none"
        assert not [p for p in required(script, "cfa") if "methods" in p.parts and p.parent.name in methods.names()]


def test_metric_paths_in_dvc_yaml_are_the_libraries():
    from uad.metrics import perf_path, quality_path

    stage = rendered_stages("cfa")["evaluate"]
    declared = [next(iter(m)) for m in stage["metrics"]]
    assert declared == [quality_path("cfa", "${item}").as_posix(), perf_path("cfa", "${item}").as_posix()]
