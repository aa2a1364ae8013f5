"""Deployment latency: batch-1 latency (p50 / p99) and batched throughput of every method's whole scoring
path (uint8 image in, anomaly map and image score out), in PyTorch and in onnxruntime.

Each method is trained on one demo category through the train stage's function (one epoch where it
trains: latency does not depend on how long a model trained), then timed as `uad predict` and an
ONNX deployment run it: PyTorch on `--device`, and the `uad export` ONNX file in onnxruntime on the
CPU. Inputs are random uint8 images at the model's input size, already decoded and resized (decoding
is the caller's, as in any deployment).

GPU machine (onnxruntime runs on its CPU cores):

    python3 -m benchmarks.latency --device cuda --weights .device/weights/tf_efficientnet_lite0_blocks0-4.timm.pth

CPU (this 2-core machine):

    .venv/bin/python -m benchmarks.latency --device cpu --runs 30 --batch 8
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from benchmarks import harness
from uad import methods
from uad.export import Exported, check_export, export
from uad.methods.base import load
from uad.runtime import resolve_device

TOOL = "latency"


def percentiles(fn: Callable[[], object], device: torch.device, runs: int, warmup: int = 5) -> dict[str, float]:
    """Milliseconds per call of `fn` (synchronised): p50, p99, mean over `runs` calls after `warmup`."""
    for _ in range(warmup):
        fn()
    harness.sync(device)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        harness.sync(device)
        times.append((time.perf_counter() - start) * 1000)
    t = np.array(times)
    return {"p50_ms": round(float(np.percentile(t, 50)), 3), "p99_ms": round(float(np.percentile(t, 99)), 3),
            "mean_ms": round(float(t.mean()), 3), "runs": runs}


def throughput(fn: Callable[[], object], device: torch.device, batch: int, repeat: int) -> float:
    """Images per second of `fn`, which scores one batch of `batch` images."""
    timing = harness.timed(fn, device, repeat=repeat, warmup=2)
    return round(batch / timing.seconds, 1)


def measure_method(model_dir: Path, device: torch.device, runs: int, batch: int, work: Path) -> dict:
    model = load(model_dir).to(device).eval()
    size = model.input.size
    rng = np.random.default_rng(0)
    one = torch.from_numpy(rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)).to(device)
    many = torch.from_numpy(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)).to(device)
    with torch.no_grad():
        torch_one = percentiles(lambda: model(one), device, runs)
        torch_many = throughput(lambda: model(many), device, batch, repeat=max(3, runs // 10))
    onnx_path = export(model.cpu(), work / f"{model.name}.onnx", "onnx")
    check = check_export(model, onnx_path, many.cpu().numpy()[:4])
    cpu = torch.device("cpu")
    one_np, many_np = one.cpu().numpy(), many.cpu().numpy()
    session = Exported(onnx_path)  # loaded once, as a deployment does
    ort_one = percentiles(lambda: session(one_np), cpu, runs)
    ort_many = throughput(lambda: session(many_np), cpu, batch, repeat=max(3, runs // 10))
    return {"input_size": size, "torch": {"device": harness.device_name(device), "batch1": torch_one,
                                          f"batch{batch}_images_per_s": torch_many},
            "onnxruntime_cpu": {"batch1": ort_one, f"batch{batch}_images_per_s": ort_many},
            "onnx_check": check, "onnx_mb": round(onnx_path.stat().st_size / 1e6, 2)}


def main(argv: Sequence[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=list(methods.names()), choices=methods.names())
    ap.add_argument("--preset", nargs="+", default=["lite0", "demo"])
    ap.add_argument("--set", action="append", default=["image_size=256", "categories=[weave]"], metavar="KEY=VALUE")
    ap.add_argument("--weights", type=Path, default=None, help="tf_efficientnet_lite0 state dict (offline weights)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--runs", type=int, default=200, help="batch-1 calls timed per runtime")
    ap.add_argument("--batch", type=int, default=32, help="batch of the throughput measurement")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/uad-latency"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--commit", default=None)
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    params = harness.with_weights(harness.build_params(args.preset, args.set), args.weights)
    params = harness.scale_epochs(params, 0.0)
    base = harness.config(params)
    prepared, _ = harness.prepare(base, args.workdir / "data")
    category = base.categories[0]
    report = {**harness.header(TOOL, __doc__.splitlines()[0], device, commit=args.commit,
                               packages=("timm", "numpy", "onnx", "onnxruntime")),
              "presets": args.preset, "sets": args.set, "torch_threads": torch.get_num_threads(), "methods": {}}
    out = args.out or harness.result_path(TOOL, args.methods, base.dataset, base.precision, device)
    for name in args.methods:
        cfg = harness.config(params, {"model": name})
        run = harness.train_and_evaluate(cfg, category, prepared[category].path, args.workdir / name)
        report["methods"][name] = {**measure_method(args.workdir / name / "model", device, args.runs, args.batch,
                                                    args.workdir / name), "image_auroc": run.metrics["image_auroc"]}
        harness.write_report(out, report)
        print(name, report["methods"][name], flush=True)
    return out


if __name__ == "__main__":
    print(f"wrote {main()}")
