"""Phase-by-phase speed of the pipeline at the papers' settings, on generated MVTec-sized data.

    python benchmarks/speed.py --categories hazelnut --out speed.json          # on the GPU machine
    python benchmarks/speed.py --categories toothbrush --scale 0.25 --epochs-scale 0.02 --out s.json  # smoke

Backbones use random weights (`pretrained: false`): speed does not depend on the
weights, and the paper backbones' ImageNet weights are not available offline.
Phases: generate (not timed as pipeline work), prepare (decode + resize on all
cores), backbone feature pass (batch 64, 256x256, channels-last, bf16 autocast),
the same inside each method (DFR regional features, CFA pooled patches), fit at
the paper's epochs, scoring (after one warm-up batch), render, peak GPU memory
per phase and the start-up overhead of one stage process. cuDNN autotuning stays off, as in
the pipeline.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import git_commit  # noqa: E402
from uad import methods, zoo  # noqa: E402
from uad.backbones import FeatureExtractor  # noqa: E402
from uad.config import config_from_dict, merged  # noqa: E402
from uad.data import demo  # noqa: E402
from uad.data.prepared import load_split, prepare_category  # noqa: E402
from uad.render import render_gif  # noqa: E402
from uad.runtime import autocast, configure_precision, measure, resolve_device, seed_everything  # noqa: E402

# MVTec AD: (train good, test good, test defective, image side in pixels)
MVTEC = {"bottle": (209, 20, 63, 900), "cable": (224, 58, 92, 1024), "capsule": (219, 23, 109, 1000),
         "carpet": (280, 28, 89, 1024), "grid": (264, 21, 57, 1024), "hazelnut": (391, 40, 70, 1024),
         "leather": (245, 32, 92, 1024), "metal_nut": (220, 22, 93, 700), "pill": (267, 26, 141, 800),
         "screw": (320, 41, 119, 1024), "tile": (230, 33, 84, 840), "toothbrush": (60, 12, 30, 1024),
         "transistor": (213, 60, 40, 1024), "wood": (247, 19, 60, 1024), "zipper": (240, 32, 119, 1024)}
TEXTURES = ("weave", "washer", "grain")
PAPER = {"dfr": {"model": "dfr", "image_size": 256, "prepare": {"resize": "nearest"},
                 "dfr": {"backbone": "vgg19", "pretrained": False, "epochs": 150, "lr": 1e-4}},
         "cfa": {"model": "cfa", "image_size": 256, "prepare": {"resize": "lanczos"},
                 "cfa": {"backbone": "wide_resnet50_2", "pretrained": False, "epochs": 30}}}


def _one_image(job: tuple) -> None:
    """A demo texture at 256 px, upscaled to the MVTec size, with a defect mask when asked."""
    path, mask_path, texture, side, seed, defect = job
    spec = demo.CATEGORIES[texture]
    rng = np.random.default_rng(seed)
    img, params = spec.generate(rng, 256)
    mask = spec.add_defect(defect, rng, img, params) if defect else None
    Image.fromarray((img * 255).astype(np.uint8)).resize((side, side), Image.BICUBIC).save(path)
    if mask is not None:
        Image.fromarray(mask.astype(np.uint8) * 255).resize((side, side), Image.NEAREST).save(mask_path)


def generate(root: Path, categories: list[str], scale: float) -> dict[str, float]:
    """Write MVTec-sized categories (counts x `scale`) in MVTec layout; returns seconds per category."""
    jobs, seconds = [], {}
    for ci, cat in enumerate(categories):
        n_train, n_good, n_bad, side = MVTEC[cat]
        texture = TEXTURES[ci % len(TEXTURES)]
        defect = demo.CATEGORIES[texture].defects[0]
        for split, n, kind in (("train", n_train, "good"), ("test", n_good, "good"), ("test", n_bad, defect)):
            for i in range(max(1, round(n * scale))):
                img = root / cat / split / kind / f"{i:03d}.png"
                img.parent.mkdir(parents=True, exist_ok=True)
                mask = root / cat / "ground_truth" / kind / f"{i:03d}_mask.png"
                if kind != "good":
                    mask.parent.mkdir(parents=True, exist_ok=True)
                jobs.append((img, mask, texture, side, zlib.crc32(f"{cat}/{split}/{kind}/{i}".encode()),
                             kind if kind != "good" else None))
    t = time.perf_counter()
    with ProcessPoolExecutor() as pool:
        list(pool.map(_one_image, jobs, chunksize=8))
    seconds["all"] = round(time.perf_counter() - t, 2)
    return seconds


def timed(fn, device: torch.device, repeat: int = 1) -> tuple[float, float]:
    """(seconds per call, peak memory MB) of fn() after one untimed warm-up call."""
    fn()
    with measure(device) as m:
        for _ in range(repeat):
            fn()
    return m.seconds / repeat, m.peak_memory_mb


def feature_pass(backbone: str, method: str, device: torch.device, batch: int, steps: int = 10) -> dict:
    ext = FeatureExtractor(backbone, zoo.default_layers(backbone, method), pretrained=False).to(device)
    x = torch.rand(batch, 3, 256, 256, device=device).contiguous(memory_format=torch.channels_last)

    def run():
        with torch.no_grad(), autocast("bf16", device):
            ext(x)
    seconds, peak = timed(run, device, steps)
    return {"images_per_s": round(batch / seconds, 1), "peak_memory_mb": round(peak, 1)}


def profile_kernels(fn, top: int = 12) -> dict[str, list[dict]]:
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


STAGE_IMPORTS = {"prepare": "uad.cli, uad.data.prepared", "train": "uad.cli, uad.training",
                 "evaluate": "uad.cli, uad.evaluation, uad.report", "render": "uad.cli, uad.render"}


def startup_seconds() -> dict[str, float]:
    """Per stage: wall time of a fresh interpreter importing what that stage script imports (median of 3)."""
    out = {}
    for stage, modules in STAGE_IMPORTS.items():
        runs = []
        for _ in range(3):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", f"import {modules}"], check=True, cwd=REPO)
            runs.append(time.perf_counter() - t)
        out[stage] = round(statistics.median(runs), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--categories", nargs="+", default=["hazelnut"], choices=sorted(MVTEC))
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of MVTec's image counts")
    ap.add_argument("--epochs-scale", type=float, default=1.0, help="fraction of the paper's epochs (smoke tests)")
    ap.add_argument("--precisions", nargs="+", default=["bf16", "fp32"])
    ap.add_argument("--feature-batch", type=int, default=64)
    ap.add_argument("--methods", nargs="+", default=["cfa", "dfr"])
    ap.add_argument("--memory-gb", type=float, default=0.0,
                    help="cap this process's GPU memory (emulates a smaller card, e.g. 24)")
    ap.add_argument("--profile", action="store_true",
                    help="record the top CUDA kernels and ops of scoring and of a 2-epoch fit")
    ap.add_argument("--skip-backbones", action="store_true", help="skip the backbone-only feature pass")
    ap.add_argument("--skip-startup", action="store_true", help="skip timing the stage processes' start-up")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/uad-speed"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--commit", default=None, help="commit id to record (default: git rev-parse)")
    args = ap.parse_args()
    device = resolve_device("auto")
    if args.memory_gb and device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_gb * 2**30 / total),
                                                   torch.cuda.current_device())
    report: dict = {"commit": args.commit or git_commit(), "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
                    "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                    "weights": "random (speed does not depend on them)", "categories": args.categories,
                    "scale": args.scale, "epochs_scale": args.epochs_scale, "memory_cap_gb": args.memory_gb}
    raw, prepared = args.workdir / "raw", args.workdir / "prepared"
    report["generate_s"] = generate(raw, args.categories, args.scale)
    report["prepare"] = {}
    for cat in args.categories:
        n = sum(1 for _ in (raw / cat).rglob("*.png") if "ground_truth" not in _.parts)
        t = time.perf_counter()
        prepare_category(raw / cat, prepared / cat, image_size=256, resize="bilinear")
        s = time.perf_counter() - t
        report["prepare"][cat] = {"images": n, "seconds": round(s, 2), "images_per_s": round(n / s, 1)}
        print(json.dumps({"prepare": cat, **report["prepare"][cat]}), flush=True)
    if not args.skip_backbones:
        report["feature_pass_bf16"] = {"batch": args.feature_batch, **{
            f"{b}/{m}": feature_pass(b, m, device, args.feature_batch) for b, m in
            (("vgg19", "dfr"), ("wide_resnet50_2", "cfa"), ("tf_efficientnet_lite0", "cfa"), ("resnet18", "cfa"))}}
        print(json.dumps(report["feature_pass_bf16"]), flush=True)
    if not args.skip_startup:
        report["startup_s"] = startup_seconds()
    report["methods"] = {}
    for method in args.methods:
        for precision in args.precisions:
            params = merged(merged({"device": "auto", "categories": args.categories}, PAPER[method]),
                           {"precision": precision, "evaluate": {"batch_size": args.feature_batch}})
            section = params[method]
            section["epochs"] = max(1, round(section["epochs"] * args.epochs_scale))
            cfg = config_from_dict(params)
            configure_precision(precision, device)
            for cat in args.categories:
                train, test = load_split(prepared / cat, "train"), load_split(prepared / cat, "test")
                model = methods.create(cfg).to(device)
                ends: list[float] = []  # when each epoch ended: setup + first epoch vs the steady epochs
                with measure(device) as fit:
                    start = time.perf_counter()
                    info = model.fit(train.images, seed_everything(0), lambda e, _: ends.append(time.perf_counter()))
                bs = args.feature_batch
                model.calibrate(train.images, cfg.evaluate.target_fpr, bs)
                inside = model.regional_features if method == "dfr" else model.patch_features
                batch = test.images[:bs]
                feat_s, _ = timed(lambda: inside(batch), device, 5)
                score_s, score_peak = timed(lambda: model.score(test.images, bs), device)
                scores = model.score(test.images, bs)
                maps = scores.maps.cpu().numpy()
                t = time.perf_counter()
                render_gif(args.workdir / "gif" / f"{cat}.gif", test.images, test.masks, maps, test.names,
                           scores.image.cpu().numpy(), normal_median=float(model.normal_quantiles[0]),
                           threshold=float(model.threshold), frame_ms=600, max_frames=60)
                entry = {"epochs": section["epochs"], "n_train": len(train), "n_test": len(test),
                         "features_cached": info.extra["features_cached"], "final_loss": round(info.final_loss, 6),
                         "fit_s": round(fit.seconds, 2), "fit_peak_memory_mb": round(fit.peak_memory_mb, 1),
                         "fit_until_first_epoch_end_s": round(ends[0] - start, 2),
                         "fit_steady_epoch_s": round(statistics.median(np.diff(ends)), 4) if len(ends) > 1 else None,
                         "feature_pass_in_method_images_per_s": round(len(batch) / feat_s, 1),
                         "score_images_per_s": round(len(test) / score_s, 1),
                         "score_peak_memory_mb": round(score_peak, 1),
                         "render_s": round(time.perf_counter() - t, 2)}
                if args.profile and device.type == "cuda":
                    entry["score_profile"] = profile_kernels(lambda: model.score(test.images, bs))
                    short = config_from_dict(merged(params, {method: {"epochs": 2}}))
                    fresh = methods.create(short).to(device)
                    entry["fit_2_epochs_profile"] = profile_kernels(lambda: fresh.fit(train.images, seed_everything(0)))
                    fresh = None
                report["methods"][f"{method}/{precision}/{cat}"] = entry
                print(json.dumps({"method": method, "precision": precision, "category": cat, **entry}), flush=True)
                model = None  # frees its GPU memory before the next run
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
