"""Side by side on Magnetic Tile Defects: our methods (and variants) against anomalib 2.7.0's Cfa, Padim, Patchcore.

One process, the same data for everybody (our `acquire` writes MTD in MVTec layout; every
method trains on its train/good and is scored on its test split at 256x256) and the same
offline ImageNet backbone (tf_efficientnet_lite0 from one explicit state-dict file).

- `ours/<name>`, for every registered method and every variant in benchmarks/variants.py:
  the train and evaluate stages' library calls with presets `lite0 mtd` (the methods'
  defaults are the papers' settings). The pipeline keeps `calibrate.holdout` of train/good out
  of the fit for its thresholds; the report records how many images each side fitted on.
  fit_s is the fit alone (timed by the library), plus the model-only scoring speed.
- `anomalib/<name>`: see benchmarks/anomalib_models.py (imported only when asked for).

`--seeds 0 1 2` runs every method once per seed and reports each metric's spread, and the mean
AUROC gap of each of our runs to anomalib's same method; the first seed's run is the full one,
the others record accuracy and fit time. Before any timing, one untimed short run of each of our
methods warms the process up (`--no-warmup` times the first one cold). The result JSON is
rewritten after every method.

GPU (offline; anomalib's wheels carried in .whl/, MTD in .device/mtd, the weights in .device/weights):

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site TQDM_DISABLE=1 python3 -m benchmarks.anomalib_side_by_side --mtd .device/mtd \\
        --weights .device/weights/tf_efficientnet_lite0_blocks0-4.timm.pth --device cuda --seeds 0 1 2 \\
        --methods ours/cfa ours/cfa_anomalib_settings ours/cfa_anomalib_like anomalib/cfa

CPU smoke (tiny subset, about one epoch):

    TQDM_DISABLE=1 .venv/bin/python -m benchmarks.anomalib_side_by_side --mtd ../shared/datasets/mtd \\
        --weights ../shared/weights/tf_efficientnet_lite0_blocks0-4.timm.pth --device cpu \\
        --methods ours/cfa ours/dfr --limit 5 --epochs-scale 0.01 --out /tmp/abench/out.json
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import anomalib_models, harness, variants
from benchmarks.variants import Variant
from uad import methods
from uad.config import Config
from uad.data.mtd import CATEGORY
from uad.data.prepared import load_split
from uad.methods.base import load
from uad.metrics.compute import image_auroc, pixel_auroc
from uad.runtime import configure_precision, resolve_device

TOOL = "anomalib_side_by_side"
PRESETS = ("lite0", "mtd")
SCORE_BATCH = 32  # model-only scoring batch, the same as anomalib's


def method_choices() -> list[str]:
    return [*(f"ours/{n}" for n in variants.names()), *(f"anomalib/{n}" for n in anomalib_models.METHODS)]


def default_methods() -> list[str]:
    """Every registered method of ours and every anomalib method (the variants are asked for by name)."""
    return [*(f"ours/{n}" for n in methods.names()), *(f"anomalib/{n}" for n in anomalib_models.METHODS)]


# ---------------------------------------------------------------------------------- our side


def model_only_throughput(cfg: Config, model_dir: Path, prepared: Path) -> float:
    """Images/s of our trained model on test images already on the device (uint8): the conditions
    of anomalib's model-only figure (no decoding, no host-to-device copy)."""
    device = resolve_device(cfg.device)
    configure_precision(cfg.precision, device)
    model = load(model_dir, precision=cfg.precision, expect=cfg.model).to(device)
    images = torch.from_numpy(np.array(load_split(prepared, "test").images)).to(device)
    timing = harness.timed(lambda: model.score(images, SCORE_BATCH), device)
    return round(len(images) / timing.seconds, 2)


def split_tf32_check(cfg: Config, model_dir: Path, prepared: Path) -> dict[str, Any] | None:
    """For a model that scores fp32 distances by `matmul_3xtf32` on a GPU (`split_tf32`, CFA): scored
    with it and with the plain fp32 matmul, how far the maps move, the AUROCs and the model-only speed.
    None where it does not apply (another method, precision or device)."""
    device = resolve_device(cfg.device)
    if cfg.precision != "fp32" or device.type != "cuda":
        return None
    model = load(model_dir, precision=cfg.precision, expect=cfg.model).to(device)
    if not hasattr(model, "split_tf32"):
        return None
    configure_precision(cfg.precision, device)
    test = load_split(prepared, "test")
    images = torch.from_numpy(np.array(test.images)).to(device)
    labels = torch.from_numpy(test.labels).to(device)
    masks = torch.from_numpy(np.array(test.masks)).to(device)
    out, maps = {}, {}
    for split in (False, True):
        model.split_tf32 = split
        timing = harness.timed(lambda: model.score(images, SCORE_BATCH), device)
        scores = model.score(images, SCORE_BATCH)
        name = "3xtf32" if split else "fp32"
        maps[name] = scores.maps
        out[name] = {"images_per_s": round(len(images) / timing.seconds, 2),
                     "image_auroc": image_auroc(scores.image, labels), "pixel_auroc": pixel_auroc(scores.maps, masks)}
    diff = (maps["3xtf32"] - maps["fp32"]).abs().max() / maps["fp32"].abs().max()
    out["max_map_difference_relative"] = float(diff)
    return out


def run_ours(variant: Variant, params: dict[str, Any], prepared: harness.Prepared, work: Path, seed: int,
             full: bool) -> dict[str, Any]:
    """One run of our method or variant with `seed`; `full` adds the model-only speed (and, for a model
    with split-TF32 scoring in fp32 on a GPU, that check), which further seeds skip."""
    cfg = harness.config(params, {"model": variant.method, "seed": seed}, variant.overrides)
    out = work / "ours" / f"{variant.name}_seed{seed}"
    run = harness.train_and_evaluate(cfg, CATEGORY, prepared.path, out, method=variant.model)
    entry = {"seed": seed, "fit_s": run.perf["fit_seconds"], "image_auroc": run.metrics["image_auroc"],
             "pixel_auroc": run.metrics["pixel_auroc"]}
    if not full:
        return {**entry, "metrics": run.metrics}
    model_dir = out / "model"
    check = split_tf32_check(cfg, model_dir, prepared.path)
    info = run.model_info
    return {
        **entry,
        **({"split_tf32_check": check} if check else {}),
        "score_images_per_s": run.perf["score_images_per_s"],
        "score_images_per_s_model_only": model_only_throughput(cfg, model_dir, prepared.path),
        "method": variant.method,
        "variant_class": variant.model.__name__ if variant.model else None,
        "variant": variant.doc,
        "params_changed": dict(variant.overrides),
        "epochs": info["fit"].get("epochs"),
        "n_fit": info["n_train"],
        "n_calibration": info["n_calibration"],
        "calibration": info["thresholds"]["calibration"],
        "input_mean": info["input"]["mean"],
        "input_std": info["input"]["std"],
        "train_wall_s": run.train_wall_s,
        "evaluate_wall_s": run.evaluate_wall_s,
        "fit_peak_memory_mb": run.perf.get("fit_peak_memory_mb"),
        "score_peak_memory_mb": run.perf.get("score_peak_memory_mb"),
        "metrics": run.metrics,
        "notes": (f"uad {variant.method}: fit_s = train's fit_seconds (the fit only: not decoding the "
                  f"prepared cache, not the threshold calibration); train_wall_s = all of train_category; "
                  f"score_images_per_s = evaluate_category's timed scoring of the decoded uint8 test array "
                  f"(host-to-device copy, normalisation, backbone, head, upsampling and blur included), batch "
                  f"{cfg.evaluate.batch_size}; model-only: batch {SCORE_BATCH}, images already on the device; "
                  f"precision {cfg.precision}"),
    }


def warm_up(base_methods: Sequence[str], params: dict[str, Any], prepared: harness.Prepared, work: Path) -> float:
    """One untimed one-epoch run of each method: the CUDA context, library handles and lazily loaded
    kernels are paid once per process, not by whichever method is timed first."""
    t = time.perf_counter()
    for name in base_methods:
        short = {name: {"epochs": 1}} if harness.has_param(name, "epochs") else {}
        cfg = harness.config(params, {"model": name}, short)
        harness.train_and_evaluate(cfg, CATEGORY, prepared.path, work / "warmup" / name)
    return round(time.perf_counter() - t, 2)


# ----------------------------------------------------------------------------------- summary


def compare(got: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Speed ratios and mean AUROC gaps of each of our runs to anomalib's run of the same method."""
    out: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    gaps: dict[str, Any] = {}
    for name, ours in got.items():
        if not name.startswith("ours/"):
            continue
        theirs = got.get(f"anomalib/{variants.resolve(name[5:]).method}")
        if theirs is None:
            continue
        if "score_images_per_s" in ours and "score_images_per_s" in theirs:
            ratios[name] = {
                "fit_speed": round(theirs["fit_s"] / ours["fit_s"], 3),
                "fit_speed_wall": round(theirs["fit_s"] / ours["train_wall_s"], 3),
                "fit_speed_excluding_anomalib_validation":
                    round((theirs["fit_s"] - theirs["fit_validation_s"]) / ours["fit_s"], 3),
                "score_speed": round(ours["score_images_per_s"] / theirs["score_images_per_s"], 3),
                "score_speed_model_only": round(ours["score_images_per_s_model_only"] / theirs["score_images_per_s"],
                                                3),
            }
        if "over_seeds" in ours and "over_seeds" in theirs:
            gaps[name] = {k: round(ours["over_seeds"][k]["mean"] - theirs["over_seeds"][k]["mean"], 6)
                          for k in ("image_auroc", "pixel_auroc")}
    if ratios:
        out["ratios"] = {"definition": "ours/anomalib of the same method (>1: ours faster): fit = anomalib fit_s / "
                                       "our fit_s; score = our images/s / anomalib model-only images/s", **ratios}
    if gaps:
        out["accuracy_over_seeds"] = {"definition": "mean over seeds, ours minus anomalib's same method "
                                                    "(>= 0: ours not lower)", **gaps}
    return out


# -------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.anomalib_side_by_side",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--mtd", type=Path, required=True, help="original MTD folder (MT_*/Imgs); converted by acquire")
    ap.add_argument("--weights", type=Path, default=None,
                    help="tf_efficientnet_lite0 state dict (timm names) for every method on lite0; required for "
                         "anomalib (ours default to the lite0 preset's weights package)")
    ap.add_argument("--methods", nargs="+", choices=method_choices(), default=default_methods(), metavar="METHOD",
                    help=f"default: {' '.join(default_methods())}; choices: {' '.join(method_choices())}")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="every method runs once per seed; the first seed's run is the full one (timings)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="params for our methods")
    ap.add_argument("--limit", type=int, default=0, help="smoke test: keep at most N images per train/test subfolder")
    ap.add_argument("--epochs-scale", type=float, default=1.0,
                    help="smoke test: scale the epochs of our methods and anomalib's Cfa (min 1)")
    ap.add_argument("--no-warmup", action="store_true", help="time the first method cold (CUDA start-up included)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/abench"))
    ap.add_argument("--out", type=Path, default=None,
                    help="result file (default: benchmarks/results/<tool>_<methods>_mtd_<precision>_<device>.json)")
    ap.add_argument("--tag", default=None, help="last field of the default result name")
    ap.add_argument("--commit", default=None, help="commit id to record (default: git rev-parse --short HEAD)")
    args = ap.parse_args(argv)
    args.mtd = args.mtd.resolve()
    wants_anomalib = any(m.startswith("anomalib/") for m in args.methods)
    if args.weights is not None:
        args.weights = args.weights.resolve()
        if not args.weights.is_file():
            ap.error(f"--weights {args.weights}: no such file")
    elif wants_anomalib:
        ap.error("--weights is required for anomalib methods (the lite0 state-dict file)")
    return args


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the comparison; returns the result file."""
    args = parse_args(argv)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    ours = [variants.resolve(m.split("/", 1)[1]) for m in args.methods if m.startswith("ours/")]
    wants_anomalib = any(m.startswith("anomalib/") for m in args.methods)
    if wants_anomalib and importlib.util.find_spec("anomalib") is None:
        raise SystemExit("anomalib is not installed: install its wheels first (see this module's docstring)")
    tf32 = anomalib_models.tf32_flags()  # torch's process defaults, restored before every anomalib run
    tool_values = {"device": device.type, "data": {"mtd": {"source": str(args.mtd)}}}
    params = harness.build_params(PRESETS, args.set, tool_values)
    params = harness.with_weights(params, args.weights, anomalib_models.ARCH)
    params = harness.scale_epochs(params, args.epochs_scale)
    base = harness.config(params)
    work = args.workdir.resolve()
    for sub in ("ours", "anomalib", "warmup"):
        shutil.rmtree(work / sub, ignore_errors=True)
    data, acquire_s = harness.prepare(base, work, limit=args.limit)
    prepared = data[CATEGORY]
    index = prepared.index
    out = args.out or harness.result_path(TOOL, args.methods, base.dataset, base.precision, device, args.tag)
    report: dict[str, Any] = {
        **harness.header(TOOL, __doc__.splitlines()[0], device, commit=args.commit,
                         packages=("timm", "numpy", *(("anomalib", "lightning") if wants_anomalib else ()))),
        "presets": list(PRESETS),
        "sets": args.set,
        "weights": str(args.weights) if args.weights else "the lite0 preset's weights package",
        "image_size": base.image_size,
        "calibrate": {"holdout": base.calibrate.holdout, "image_fpr": base.calibrate.image_fpr,
                      "pixel_fpr": base.calibrate.pixel_fpr,
                      "note": "ours fit on train/good minus the holdout (n_fit) and calibrate thresholds on the "
                              "holdout; anomalib fits on all of train/good"},
        "data": {"n_train": len(index["train"]), "n_test": len(index["test"]),
                 "n_test_defective": sum(s["label"] for s in index["test"]), "limit": args.limit or None,
                 "kept_per_folder": prepared.kept_per_folder, "acquire_s": acquire_s,
                 "prepare_s": prepared.seconds},
        "epochs_scale": args.epochs_scale,
        "seeds": args.seeds,
        "methods": {},
    }
    if wants_anomalib:
        report["anomalib_changes"] = {**anomalib_models.CHANGES, "cfa_max_epochs": base.method("cfa").epochs}
    if not args.no_warmup and ours:
        report["warmup_s"] = warm_up(sorted({v.method for v in ours}), params, prepared, work)
    for name in args.methods:
        runs = []
        for i, seed in enumerate(args.seeds):
            if name.startswith("ours/"):
                run = run_ours(variants.resolve(name[5:]), params, prepared, work, seed, full=i == 0)
            else:
                run = anomalib_models.run(name[9:], weights=args.weights, raw=work / "raw", category=CATEGORY,
                                          work=work, device=device, cfa_epochs=base.method("cfa").epochs, tf32=tf32,
                                          seed=seed, full=i == 0)
                if [tuple(x) for x in run.pop("test_set")] != prepared.test_set:
                    raise RuntimeError(f"{name}: the test images or labels differ from ours "
                                       f"({run.get('n_test')} vs {len(index['test'])})")
                run["test_set_matches_ours"] = True
            runs.append(run)
            print(f"{name} seed {seed}: " + ", ".join(f"{k} {v}" for k, v in run.items()
                                                     if not isinstance(v, (dict, list, str))), flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        entry = runs[0]
        if len(runs) > 1:
            keys = ("image_auroc", "pixel_auroc", "aupro", "image_false_alarm_rate", "image_detection_rate")
            flat = [{**r.get("metrics", {}), **r} for r in runs]
            entry["per_seed"] = [{k: r[k] for k in ("seed", "fit_s", *keys) if k in r} for r in flat]
            entry["over_seeds"] = {k: harness.spread([r[k] for r in flat]) for k in keys if all(k in r for r in flat)}
        report["methods"][name] = entry
        harness.write_report(out, report)
    report.update(compare(report["methods"]))
    harness.write_report(out, report)
    print(f"wrote {out}", flush=True)
    return out


if __name__ == "__main__":
    main()
