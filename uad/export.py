"""Export a trained model's whole scoring path as one graph: ONNX, or a torch.export program.

What the exported model expects and returns (both formats):
- input `images`: uint8, shape (N, S, S, 3), RGB, N any batch size >= 1, S the model's input
  size (`model.json`: input.size). Resizing to S x S is the caller's (with the filter in
  input.resize, as `uad predict` does); normalisation, the backbone and the method run inside.
- outputs `maps`: float32 (N, S, S) anomaly maps; `scores`: float32 (N,) image scores (the
  maximum of each map). An image is anomalous when its score exceeds the calibrated image
  threshold, a pixel when its value exceeds the pixel threshold; both are in model.json (and
  in the ONNX file's metadata), so that a deployment needs nothing else. Models with more
  than 1 GiB of weights (PaDiM at the paper's size) keep them in `FILE.data` beside the graph.

The ONNX graph is made by torch's dynamo exporter (opset 18) and checked against PyTorch
with onnxruntime on the CPU (`check_export`); the torch.export program (`.pt2`) loads with
`torch.export.load` and runs in PyTorch without this package's code.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from uad.artifacts import atomic_path
from uad.errors import UadError
from uad.methods.base import AnomalyMethod, load

Format = Literal["onnx", "torch"]
OPSET = 18
EXTERNAL_DATA_BYTES = 1 << 30  # larger models keep their ONNX weights in a file beside the graph


class ExportError(UadError, RuntimeError):
    """An export that failed or does not reproduce the model; the message says which and by how much."""


def _example(model: AnomalyMethod, batch: int = 2) -> torch.Tensor:
    rng = np.random.default_rng(0)
    size = model.input.size
    return torch.from_numpy(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))


def _metadata(model: AnomalyMethod) -> dict[str, str]:
    d = model.describe()
    return {"uad": json.dumps({k: d[k] for k in ("method", "input", "backbone", "thresholds")})}


def export(model: AnomalyMethod, out: str | Path, fmt: Format = "onnx") -> Path:
    """Write `model`'s scoring path to `out` (atomically) in format `fmt`."""
    model = model.cpu().eval()
    example = _example(model)
    batch = torch.export.Dim("batch", min=1, max=65_536)
    out = Path(out)
    if fmt == "onnx":
        with torch.no_grad():
            program = torch.onnx.export(model, (example,), dynamo=True, opset_version=OPSET,
                                        input_names=["images"], output_names=["maps", "scores"],
                                        dynamic_shapes=({0: batch},), verbose=False)
        program.model.metadata_props.update(_metadata(model))
        weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        if weights > EXTERNAL_DATA_BYTES:  # protobuf files stop at 2 GB: the weights go to OUT.data beside
            out.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=f".{out.name}.partial.", dir=out.parent) as tmp:
                program.save(Path(tmp) / out.name, external_data=True)
                for f in sorted(Path(tmp).iterdir(), key=lambda f: f.name != out.name + ".data"):
                    f.replace(out.with_name(f.name))  # the weights first, the graph that names them last
            return out
        with atomic_path(out) as tmp:
            program.save(tmp, external_data=False)
        return out
    with atomic_path(out) as tmp:
        if fmt == "torch":
            with torch.no_grad():
                program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
            torch.export.save(program, tmp, extra_files={"uad.json": _metadata(model)["uad"]})
        else:
            raise ExportError(f"--format: {fmt!r} is not a format; choose onnx or torch")
    return out


class Exported:
    """An exported file loaded once in its own runtime (onnxruntime on the CPU for .onnx,
    torch.export.load for .pt2); calling it gives (maps, scores) of uint8 NHWC images."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.suffix == ".onnx":
            import onnxruntime

            self.session = onnxruntime.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        else:
            self.module = torch.export.load(str(self.path)).module()

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = np.ascontiguousarray(images, dtype=np.uint8)
        if self.path.suffix == ".onnx":
            maps, scores = self.session.run(None, {"images": batch})
            return maps, scores
        with torch.no_grad():
            maps, scores = self.module(torch.from_numpy(batch))
        return maps.numpy(), scores.numpy()


def run_exported(path: str | Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(maps, scores) of uint8 NHWC `images` through an exported file (loaded for this one call)."""
    return Exported(path)(images)


def check_export(model: AnomalyMethod, path: str | Path, images: np.ndarray, tolerance: float = 1e-4) -> dict[str, Any]:
    """Compare an exported file with PyTorch on `images`: the largest map difference relative to the maps'
    range, and whether every image verdict at the calibrated threshold agrees. ExportError if not within
    `tolerance` or a verdict differs."""
    model = model.cpu().eval()
    with torch.no_grad():
        ref_maps, ref_scores = (t.numpy() for t in model(torch.from_numpy(np.ascontiguousarray(images))))
    maps, scores = run_exported(path, images)
    span = float(ref_maps.max() - ref_maps.min()) or 1.0
    error = float(np.abs(maps - ref_maps).max()) / span
    threshold = float(model.image_threshold)
    agree = bool(((scores > threshold) == (ref_scores > threshold)).all())
    result = {"max_map_error_of_range": error, "verdicts_agree": agree, "images": len(images)}
    if error > tolerance or not agree:
        raise ExportError(f"{path}: the export differs from PyTorch (map error {error:.2e} of the range, "
                          f"tolerance {tolerance:g}; verdicts agree: {agree})")
    return result


def export_folder(model_dir: str | Path, out: str | Path, fmt: Format = "onnx",
                  check_images: np.ndarray | None = None) -> dict[str, Any]:
    """The `uad export` command: load, export, and check the file against PyTorch on `check_images`
    (random images at the input size when none are given)."""
    model = load(model_dir)
    path = export(model, out, fmt)
    images = check_images if check_images is not None else _example(model, 3).numpy()
    result = check_export(model, path, images)
    print(f"export: {path} ({fmt}, {path.stat().st_size / 1e6:.1f} MB): maps within {result['max_map_error_of_range']:.1e} "
          f"of their range, verdicts agree on {result['images']} images", file=sys.stderr)
    return {"path": str(path), "format": fmt, **result}
