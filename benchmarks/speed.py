"""Phase-by-phase speed of the methods at the papers' settings, on MVTec-sized synthetic categories.

Phases: generate (not pipeline work), prepare (decode + resize on all cores), the backbone alone
(channels-last batches), the feature pass inside each method (what its fit caches),
fit at the paper's epochs (time to the first epoch's end, steady epoch time), scoring (after a
warm-up), peak memory of each, render (`uad.render.render_category`) and the start-up of one
stage process. Each method runs with its paper preset (or its defaults, which are the published
settings) and random backbone weights: speed does not depend on the weights. `--profile` adds
the top CUDA kernels and ops of scoring and of a 2-epoch fit; `--memory-gb` caps this process's
GPU memory (a smaller card); cuDNN autotuning stays as in the pipeline.

GPU:

    python3 -m benchmarks.speed --categories hazelnut --precisions bf16 fp32
    python3 -m benchmarks.speed --categories hazelnut --precisions bf16 --profile --tag profile
    python3 -m benchmarks.speed --categories hazelnut --precisions fp32 --memory-gb 24 --skip-backbones --tag cap24gb

CPU smoke:

    .venv/bin/python -m benchmarks.speed --device cpu --categories toothbrush --scale 0.05 --epochs-scale 0.01 \\
        --image-size 128 --feature-batch 4 --precisions fp32 --skip-startup --out /tmp/uad-speed/speed.json
"""

from __future__ import annotations

import argparse
import ast
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import harness, synthetic
from uad import methods
from uad.artifacts import IMAGE_SCORES_FILE, MAPS_FILE
from uad.backbones import FeatureExtractor
from uad.data.prepared import load_split, prepare_category
from uad.methods.base import AnomalyMethod, create
from uad.render import render_category
from uad.runtime import autocast, configure_precision, measure, resolve_device, seed_everything

TOOL = "speed"
# the feature pass a method's fit caches, by method; other methods are timed on their backbone maps
IN_METHOD_FEATURES = {"cfa": "patch_features", "dfr": "regional_features"}
SPEC_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4}  # dense bf16 tensor-core peak of the SXM cards' data sheets


def stage_imports() -> dict[str, list[str]]:
    """Per stage script in stages/: the uad modules it imports (read from its source, so never stale)."""
    out = {}
    for script in sorted((harness.REPO / "stages").glob("*.py")):
        modules = []
        for node in ast.parse(script.read_text()).body:
            if isinstance(node, ast.ImportFrom):
                modules.append(node.module or "")
            elif isinstance(node, ast.Import):
                modules.extend(alias.name for alias in node.names)
        out[script.stem] = [m for m in modules if m.split(".")[0] == "uad"]
    return out


def backbone_pass(backbone: str, layers: Sequence[str], precision: str, device: torch.device,
                  batch: int, size: int, steps: int = 10) -> dict[str, float]:
    """Images/s and peak memory of the frozen backbone alone on random channels-last batches."""
    ext = FeatureExtractor(backbone, layers, pretrained=False).to(device)
    x = torch.rand(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)

    def run() -> None:
        with torch.no_grad(), autocast(precision, device):
            ext(x)
    timing = harness.timed(run, device, steps)
    return {"images_per_s": round(batch / timing.seconds, 1), "peak_memory_mb": round(timing.peak_memory_mb, 1)}


def profile_kernels(fn: Callable[[], Any], top: int = 12) -> dict[str, list[dict[str, Any]]]:
    """The CUDA kernels, and the aten ops launching them, that take most of the device time of fn()."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.self_device_time_total > 0]
    total = sum(e.self_device_time_total for e in events if not e.key.startswith("aten::")) or 1.0
    out = {}
    for kind, rows in (("kernels", [e for e in events if not e.key.startswith("aten::")]),
                       ("ops", [e for e in events if e.key.startswith("aten::")])):
        rows.sort(key=lambda e: e.self_device_time_total, reverse=True)
        out[kind] = [{"name": e.key[:90], "calls": e.count, "ms": round(e.self_device_time_total / 1e3, 2),
                      "share": round(e.self_device_time_total / total, 3)} for e in rows[:top]]
    return out


def startup_seconds() -> dict[str, float]:
    """Per stage, and for `torch` alone: wall time of a fresh interpreter importing what that stage script
    imports (median of 3), and each stage's ratio to `torch` (`<stage>/torch`)."""
    times = {}
    for stage, modules in {"torch": ["torch"], **stage_imports()}.items():
        runs = []
        for _ in range(3):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", f"import {', '.join(modules)}"], check=True, cwd=harness.REPO)
            runs.append(time.perf_counter() - t)
        times[stage] = round(statistics.median(runs), 2)
    return {**times, **{f"{k}/torch": round(v / times["torch"], 2) for k, v in times.items() if k != "torch"}}


def method_params(method: str, precision: str, args: argparse.Namespace) -> dict[str, Any]:
    """The method at its paper settings with random weights, scaled epochs and the benchmark's batch."""
    params = harness.build_params(harness.paper_presets(method), args.set, {
        "model": method, "device": args.device, "categories": args.categories, "precision": precision,
        "image_size": args.image_size,
        "evaluate": {"batch_size": args.feature_batch}, method: {"pretrained": False}})
    return harness.scale_epochs(params, args.epochs_scale, [method])


def matmul_bf16_tflops(device: torch.device, n: int = 8192, repeat: int = 20) -> float:
    """Dense bf16 matmul throughput this device reaches (n x n x n): the achievable peak the floor uses."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    t = harness.timed(lambda: a @ b, device, repeat, warmup=3)
    return 2 * n**3 / t.seconds / 1e12


def cae_step_flops(cae: torch.nn.Module, rows: int, precision: str, device: torch.device) -> int:
    """FLOPs of one DFR training step on `rows` regional vectors: the autoencoder's forward and backward
    as torch's FlopCounterMode counts them (its 1x1 convolutions run as matmuls, at the padded widths).
    Elementwise work (batch norm, ReLU, casts, loss, Adam) is what the floor leaves out. Counting runs
    one step in train mode and leaves no gradients behind."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(rows, cae.widths[0], device=device)  # one row per region, as the fit trains
    was_training = cae.training
    cae.train()
    with FlopCounterMode(display=False) as counter:
        with autocast(precision, device):
            recon = cae.rows(x)
        F.mse_loss(recon.float(), x).backward()
    cae.train(was_training)
    cae.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def dfr_step_flops(model: AnomalyMethod, images: np.ndarray) -> tuple[int, tuple[int, ...]]:
    """`cae_step_flops` of one of the model's training batches, and the batch's shape (N, C, G, G)."""
    grid = model.regional_features(images[:1]).shape[-2:]
    shape = (model.params.batch_size, model.channels, *grid)
    return cae_step_flops(model.cae, shape[0] * grid[0] * grid[1], model.precision, model.device), tuple(shape)


def training_step_floor(model: AnomalyMethod, images: np.ndarray, steady_epoch_s: float,
                        peak_tflops: float) -> dict[str, Any]:
    """A steady training step against its FLOP floor (the step's FLOPs at `peak_tflops`)."""
    flops, shape = dfr_step_flops(model, images)
    steps = -(-len(images) // model.params.batch_size)
    step_s = steady_epoch_s / steps
    floor_s = flops / (peak_tflops * 1e12)
    return {"batch_shape": list(shape), "flops_per_step": flops, "steps_per_epoch": steps,
            "step_ms": round(step_s * 1e3, 4), "peak_tflops": round(peak_tflops, 1),
            "floor_ms": round(floor_s * 1e3, 4), "achieved_tflops": round(flops / step_s / 1e12, 1),
            "step_over_floor": round(step_s / floor_s, 2)}


def in_method_features(model: AnomalyMethod) -> tuple[str, Callable[[np.ndarray], Any]]:
    name = IN_METHOD_FEATURES.get(model.name, "features")
    return name, getattr(model, name)


def measure_method(params: dict[str, Any], category: str, prepared: Path, work: Path, device: torch.device,
                   profile: bool, peak_tflops: float | None = None) -> dict[str, Any]:
    """Every phase of one method on one category: fit, in-method features, scoring, render; for DFR with
    `peak_tflops` (bf16), its steady training step against the step's FLOP floor."""
    cfg = harness.config(params)
    train, test = load_split(prepared, "train"), load_split(prepared, "test")
    bs = cfg.evaluate.batch_size
    model = create(cfg).to(device)
    ends: list[float] = []  # when each epoch ended: setup + first epoch vs the steady epochs
    with measure(device) as fit:
        start = time.perf_counter()
        info = model.fit(train.images, seed_everything(cfg.seed), batch_size=bs,
                         log=lambda _epoch, _values: ends.append(time.perf_counter()))
    model.calibrate(train.images, image_fpr=cfg.calibrate.image_fpr, pixel_fpr=cfg.calibrate.pixel_fpr,
                    batch_size=bs, source="the training images (speed benchmark)")
    feature_name, features = in_method_features(model)
    batch = test.images[:bs]
    feat = harness.timed(lambda: features(batch), device, 5)
    score = harness.timed(lambda: model.score(test.images, bs), device)
    scores = model.score(test.images, bs)
    run = work / "runs" / f"{cfg.model}_{cfg.precision}_{category}"
    model.save(run / "model", info, {})
    (run / "scores").mkdir(parents=True, exist_ok=True)
    np.save(run / "scores" / MAPS_FILE, scores.maps.cpu().numpy().astype(np.float32))
    np.save(run / "scores" / IMAGE_SCORES_FILE, scores.image.cpu().numpy().astype(np.float32))
    t = time.perf_counter()
    frames = render_category(category, prepared=prepared, scores_dir=run / "scores", model_dir=run / "model",
                             out=run / f"{category}.gif", frame_ms=cfg.render.frame_ms,
                             max_frames=cfg.render.max_frames)
    render_s = time.perf_counter() - t
    entry: dict[str, Any] = {
        "epochs": info.epochs, "n_train": len(train), "n_test": len(test),
        "features_cached": info.extra.get("features_cached"), "final_loss": round(info.final_loss, 6),
        "fit_s": round(fit.seconds, 2), "fit_peak_memory_mb": round(fit.peak_memory_mb, 1),
        "fit_until_first_epoch_end_s": round(ends[0] - start, 2) if ends else None,
        "fit_steady_epoch_s": round(statistics.median(np.diff(ends)), 4) if len(ends) > 1 else None,
        "feature_pass_in_method": feature_name,
        "feature_pass_in_method_images_per_s": round(len(batch) / feat.seconds, 1),
        "score_images_per_s": round(len(test) / score.seconds, 1),
        "score_peak_memory_mb": round(score.peak_memory_mb, 1),
        "render_s": round(render_s, 2), "render_frames": frames,
    }
    if model.name == "dfr" and peak_tflops and entry["fit_steady_epoch_s"]:
        entry["training_step"] = training_step_floor(model, train.images, entry["fit_steady_epoch_s"], peak_tflops)
    if profile and device.type == "cuda":
        entry["score_profile"] = profile_kernels(lambda: model.score(test.images, bs))
        if harness.has_param(cfg.model, "epochs"):
            fresh = create(harness.config(params, {cfg.model: {"epochs": 2}})).to(device)
            entry["fit_2_epochs_profile"] = profile_kernels(lambda: fresh.fit(train.images, seed_everything(0),
                                                                              batch_size=bs))
    return entry


def main(argv: Sequence[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.splitlines()[0])
    ap.add_argument("--categories", nargs="+", default=["hazelnut"], choices=sorted(synthetic.MVTEC))
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of MVTec's image counts")
    ap.add_argument("--epochs-scale", type=float, default=1.0, help="fraction of the papers' epochs (smoke tests)")
    ap.add_argument("--methods", nargs="+", default=list(methods.names()), choices=methods.names())
    ap.add_argument("--precisions", nargs="+", default=["bf16", "fp32"], choices=("fp32", "tf32", "bf16"))
    ap.add_argument("--image-size", type=int, default=256, help="the papers' 256; smaller for smoke tests")
    ap.add_argument("--feature-batch", type=int, default=64, help="batch of feature passes and scoring")
    ap.add_argument("--backbones", nargs="*", default=["tf_efficientnet_lite0", "resnet18"],
                    help="backbones timed alone besides each method's own (with that method's layers)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra params for every run")
    ap.add_argument("--memory-gb", type=float, default=0.0,
                    help="cap this process's GPU memory (emulates a smaller card, e.g. 24)")
    ap.add_argument("--profile", action="store_true",
                    help="record the top CUDA kernels and ops of scoring and of a 2-epoch fit")
    ap.add_argument("--skip-backbones", action="store_true", help="skip the backbone-only feature pass")
    ap.add_argument("--skip-startup", action="store_true", help="skip timing the stage processes' start-up")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/uad-speed"))
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/speed_<methods>_...")
    ap.add_argument("--tag", default=None, help="last field of the default result name")
    ap.add_argument("--commit", default=None, help="commit id to record (default: git rev-parse)")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    if args.memory_gb and device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_gb * 2**30 / total), device)
    dataset = synthetic.dataset_name(args.categories)
    out = args.out or harness.result_path(TOOL, args.methods, dataset, "+".join(args.precisions), device, args.tag)
    report: dict[str, Any] = {
        **harness.header(TOOL, __doc__.splitlines()[0], device, commit=args.commit),
        "weights": "random (speed does not depend on them)", "categories": args.categories, "scale": args.scale,
        "epochs_scale": args.epochs_scale, "memory_cap_gb": args.memory_gb, "sets": args.set}
    raw, prepared = args.workdir / "raw", args.workdir / "prepared"
    report["generate_s"] = synthetic.generate(raw, args.categories, args.scale)
    report["prepare"] = {}
    for cat in args.categories:
        n = sum(1 for p in (raw / cat).rglob("*.png") if "ground_truth" not in p.parts)
        t = time.perf_counter()
        prepare_category(raw / cat, prepared / cat, image_size=args.image_size, resize="bilinear")
        s = time.perf_counter() - t
        report["prepare"][cat] = {"images": n, "seconds": round(s, 2), "images_per_s": round(n / s, 1)}
    if not args.skip_backbones:
        report["backbone_pass"] = {"batch": args.feature_batch}
        for precision in args.precisions:
            configure_precision(precision, device)
            passes = {}
            for method in args.methods:
                own = harness.config(method_params(method, precision, args)).method(method).backbone
                for backbone in dict.fromkeys([own, *args.backbones]):
                    layers = methods.spec(method).params(backbone=backbone).resolved_layers()
                    if layers:
                        passes[f"{backbone}/{method}"] = backbone_pass(backbone, layers, precision, device,
                                                                       args.feature_batch, args.image_size)
            report["backbone_pass"][precision] = passes
        harness.write_report(out, report)
    if not args.skip_startup:
        report["startup_s"] = startup_seconds()
    peak = None
    if "bf16" in args.precisions and "dfr" in args.methods:  # the floor of DFR's training step needs it
        gpu = device.type == "cuda"
        peak = matmul_bf16_tflops(device, n=8192 if gpu else 512, repeat=20 if gpu else 2)
        name = torch.cuda.get_device_name(device) if gpu else ""
        report["bf16_peak"] = {"matmul_tflops": round(peak, 1),
                               "spec_tflops": next((v for k, v in SPEC_BF16_TFLOPS.items() if k in name), None)}
    report["methods"] = {}
    for method in args.methods:
        for precision in args.precisions:
            params = method_params(method, precision, args)
            configure_precision(precision, device)
            for cat in args.categories:
                entry = measure_method(params, cat, prepared / cat, args.workdir, device, args.profile,
                                       peak if precision == "bf16" else None)
                entry["params"] = params[method]
                report["methods"][f"{method}/{precision}/{cat}"] = entry
                print(f"{method} {precision} {cat}: fit {entry['fit_s']} s, scoring {entry['score_images_per_s']} "
                      f"images/s, render {entry['render_s']} s", flush=True)
                harness.write_report(out, report)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    print(f"wrote {out}", flush=True)
    return out


if __name__ == "__main__":
    main()
