"""What every benchmark tool shares, so that the tools differ only in what they measure.

- params: `uad.preset.build` (defaults + presets), the tool's own values, the user's `--set`
  values, validated by `uad.config.config_from_dict`: a benchmark runs exactly the settings a
  user gets from the same presets;
- the report header: device, torch/CUDA, git commit, date and the command line;
- synchronised timing (a CUDA kernel is done when it is timed);
- data: a category acquired and prepared as the pipeline's stages do, optionally cut to a
  smoke-test subset;
- one category through the train and evaluate stages' library calls, with an optional method
  variant (a subclass passed to the library, never written into the registry);
- result files named by configuration:
  `benchmarks/results/<tool>_<methods>_<dataset>_<precision>_<device>[_<tag>].json`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from uad import methods
from uad.artifacts import read_model_info, write_json
from uad.config import Config, config_from_dict, dotted, merged
from uad.data.prepared import prepare_category
from uad.data.sources import acquire
from uad.evaluation import evaluate_category
from uad.methods.base import AnomalyMethod
from uad import preset
from uad.preset import build
from uad.runtime import measure
from uad.training import train_category

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


# ------------------------------------------------------------------------------------ params


def recipe(params_file: Path = REPO / "params.yaml") -> tuple[list[str], list[str]]:
    """The presets and `--set` values params.yaml was built from (its header): the committed pipeline."""
    return preset.recipe(params_file.read_text())


def build_params(presets: Sequence[str], sets: Sequence[str] = (), overrides: Mapping[str, Any] | None = None
                 ) -> dict[str, Any]:
    """Defaults + `presets` (in order) + the tool's `overrides` + the user's `sets` ("a.b=1"), validated.

    The user's values come last so that a command line can change anything a tool sets.
    """
    params = merged(build(list(presets)), dict(overrides or {}))
    params = merged(params, dotted(list(sets)))
    config_from_dict(params)
    return params


def config(params: Mapping[str, Any], *overlays: Mapping[str, Any]) -> Config:
    """The validated Config of `params` with `overlays` merged over it in order."""
    data = dict(params)
    for overlay in overlays:
        data = merged(data, overlay)
    return config_from_dict(data)


def has_param(method: str, name: str) -> bool:
    """Whether the method's parameter schema has `name` (e.g. `epochs`: not every method trains)."""
    return any(f.name == name for f in dataclasses.fields(methods.spec(method).params))


def scale_epochs(params: Mapping[str, Any], scale: float, names: Sequence[str] | None = None) -> dict[str, Any]:
    """`params` with every trained method's epochs times `scale`, at least 1 (smoke tests)."""
    out = merged(params, {})
    if scale == 1.0:
        return out
    for name in names or methods.names():
        if has_param(name, "epochs"):
            section = out.setdefault(name, {})
            default = methods.spec(name).params().epochs
            section["epochs"] = max(1, round(section.get("epochs", default) * scale))
    return out


def with_weights(params: Mapping[str, Any], weights: Path | None, backbone: str = "tf_efficientnet_lite0"
                 ) -> dict[str, Any]:
    """`params` with the state-dict file `weights` for every method on `backbone` (offline GPU machines
    carry one explicit file instead of the weights package)."""
    if weights is None:
        return merged(params, {})
    return merged(params, {name: {"weights": str(weights)} for name in methods.names()
                           if params.get(name, {}).get("backbone") == backbone})


def paper_presets(method: str) -> list[str]:
    """The method's paper preset (`presets/<method>_paper.yaml`) when there is one; the defaults are
    the published settings either way."""
    return [f"{method}_paper"] if (REPO / "presets" / f"{method}_paper.yaml").is_file() else []


# ------------------------------------------------------------------------------- report header


def git_commit() -> str:
    """Short id of the checked-out commit, or "unknown" where there is no git (the GPU machine's copy)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip() or "unknown"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def git_dirty() -> bool | None:
    """Whether tracked files differ from the commit (the measured code is then not the commit's)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return bool(out.strip())


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def gpu_tag(name: str) -> str:
    """Short GPU name for file names: "NVIDIA H100 80GB HBM3" -> h100, "NVIDIA GeForce RTX 4090" -> rtx4090."""
    words = [w for w in re.split(r"[\s_-]+", name) if w and w.lower() not in ("nvidia", "geforce", "tesla", "quadro")]
    if not words:
        return "gpu"
    tag = words[0]
    if not any(c.isdigit() for c in tag) and len(words) > 1:
        tag += words[1]
    return slug(tag)


def device_tag(device: torch.device) -> str:
    return gpu_tag(torch.cuda.get_device_name(device)) if device.type == "cuda" else "cpu"


def package_versions(names: Sequence[str]) -> dict[str, str | None]:
    """Installed versions, read from package metadata (nothing is imported); None if absent."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def header(tool: str, what: str, device: torch.device, *, commit: str | None = None,
           packages: Sequence[str] = ("timm", "numpy")) -> dict[str, Any]:
    """What every result file starts with: which code, on which machine, run how."""
    return {
        "tool": tool,
        "what": what,
        "command": shlex.join(getattr(sys, "orig_argv", sys.argv)),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "commit": commit or git_commit(),
        "uncommitted_changes": git_dirty(),
        "device": device_name(device),
        "device_tag": device_tag(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "packages": package_versions(packages),
    }


# -------------------------------------------------------------------------------- result files


def slug(text: str) -> str:
    """One file-name field: lower case, `/` and `_` and anything unusual as `-` (`_` separates fields)."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9.+-]", "-", text.lower())).strip("-") or "none"


def result_name(tool: str, method_names: Sequence[str], dataset: str, precision: str, device: str,
                tag: str | None = None) -> str:
    """`<tool>_<methods>_<dataset>_<precision>_<device>[_<tag>].json`, each field a `slug`; methods
    joined by `+` (a long list becomes its count and a hash of it)."""
    joined = "+".join(slug(m) for m in method_names)
    if len(joined) > 96:
        digest = hashlib.sha1("+".join(method_names).encode()).hexdigest()[:8]
        joined = f"{len(method_names)}methods-{digest}"
    fields = [slug(tool), joined, slug(dataset), slug(precision), slug(device), *([slug(tag)] if tag else [])]
    return "_".join(fields) + ".json"


def result_path(tool: str, method_names: Sequence[str], dataset: str, precision: str, device: torch.device,
                tag: str | None = None, root: Path = RESULTS) -> Path:
    return root / result_name(tool, method_names, dataset, precision, device_tag(device), tag)


def write_report(path: Path, report: Mapping[str, Any]) -> None:
    """Written whole (atomically), after every finished piece: what is done survives a time-out."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, report)


# ------------------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that wall time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    seconds: float  # per call
    peak_memory_mb: float


def timed(fn: Callable[[], Any], device: torch.device, repeat: int = 1, warmup: int = 1) -> Timing:
    """Seconds per call and peak memory of `fn()`, after `warmup` untimed calls (lazy kernel loading,
    allocations, autotuning belong to start-up, not to the throughput)."""
    for _ in range(warmup):
        fn()
    with measure(device) as m:
        for _ in range(repeat):
            fn()
    return Timing(m.seconds / repeat, m.peak_memory_mb)


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation, minimum and maximum of one metric over seeds or repeats."""
    return {"mean": round(statistics.fmean(values), 6),
            "std": round(statistics.stdev(values), 6) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


# --------------------------------------------------------------------------------------- data


def limit_layout(category_dir: Path, n: int) -> dict[str, int]:
    """Keep the first `n` images (file-name order) of every train/test subfolder, and their masks."""
    kept = {}
    for split in ("train", "test"):
        for sub in sorted(p for p in (category_dir / split).iterdir() if p.is_dir()):
            files = sorted(p for p in sub.iterdir() if p.is_file())
            for f in files[n:]:
                f.unlink()
                (category_dir / "ground_truth" / sub.name / f"{f.stem}_mask.png").unlink(missing_ok=True)
            kept[f"{split}/{sub.name}"] = min(n, len(files))
    return kept


@dataclass
class Prepared:
    path: Path  # the prepared cache (data/prepared/<category> in the pipeline)
    index: dict[str, Any]
    seconds: float  # decode + resize
    kept_per_folder: dict[str, int] | None  # with a limit: images kept per subfolder

    @property
    def test_set(self) -> list[tuple[str, int]]:
        """(name, label) of every test image, sorted: what another tool's test split must equal."""
        return sorted((s["name"], int(s["label"])) for s in self.index["test"])


def prepare(cfg: Config, work: Path, limit: int = 0) -> tuple[dict[str, Prepared], float]:
    """The download and prepare stages' library calls for every category, into `work`; `limit` > 0
    keeps that many images per train/test subfolder (smoke tests). Returns them and acquire's seconds."""
    for sub in ("raw", "prepared"):
        shutil.rmtree(work / sub, ignore_errors=True)
    t = time.perf_counter()
    raw = acquire(cfg, work / "raw")
    acquire_s = time.perf_counter() - t
    out = {}
    for cat in cfg.categories:
        kept = limit_layout(raw / cat, limit) if limit > 0 else None
        t = time.perf_counter()
        index = prepare_category(raw / cat, work / "prepared" / cat, image_size=cfg.image_size,
                                 resize=cfg.prepare.resize, workers=cfg.prepare.workers)
        out[cat] = Prepared(work / "prepared" / cat, index, round(time.perf_counter() - t, 2), kept)
    return out, round(acquire_s, 2)


# ------------------------------------------------------------------------------ one category


@dataclass
class CategoryRun:
    metrics: dict[str, float]
    perf: dict[str, Any]  # train's fit seconds and memory and evaluate's scoring images/s and memory
    model_info: dict[str, Any]  # the saved model.json: fit record, calibration, n_train / n_calibration
    train_wall_s: float
    evaluate_wall_s: float


def train_and_evaluate(cfg: Config, category: str, prepared: Path, out: Path,
                       method: type[AnomalyMethod] | None = None) -> CategoryRun:
    """The train and evaluate stages' library calls for one category, into `out`; `method`: a subclass
    of the selected method's model to train instead (a benchmark variant)."""
    t = time.perf_counter()
    train_category(cfg, prepared, out / "model", method=method, fit_metrics=out / "fit.json")
    train_wall = time.perf_counter() - t
    t = time.perf_counter()
    result = evaluate_category(cfg, category, prepared=prepared, model_dir=out / "model", scores_dir=out / "scores",
                               metrics_path=out / "metrics.json", perf_path=out / "perf.json")
    evaluate_wall = time.perf_counter() - t
    perf = {**json.loads((out / "fit.json").read_text()), **json.loads((out / "perf.json").read_text())}
    return CategoryRun(result, perf, read_model_info(out / "model"), round(train_wall, 3), round(evaluate_wall, 3))
