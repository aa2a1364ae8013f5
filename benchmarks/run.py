"""Run the pipeline's stage functions (no DVC) for several methods and record metrics and timings.

    python benchmarks/run.py --preset presets/mtd.yaml --set data.mtd.source=../shared/datasets/mtd \\
        --models cfa dfr --repeat 2 --out results.json

Same library calls as `dvc repro` (acquire, prepare, train, evaluate), in a work
folder; used where DVC cannot travel (the GPU machine's 64 MiB carry limit) and
to measure run-to-run reproducibility (`--repeat`: max |difference| per metric).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from uad.config import config_from_dict, dotted, merged  # noqa: E402
from uad.data.prepared import prepare_category  # noqa: E402
from uad.data.sources import acquire  # noqa: E402
from common import git_commit, train_and_evaluate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", action="append", default=[], type=Path)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--models", nargs="+", default=["cfa", "dfr"])
    ap.add_argument("--model-set", action="append", default=[], metavar="MODEL:KEY=VALUE",
                    help="override for one model only, e.g. dfr:dfr.epochs=150")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/uad-bench"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--commit", default=None, help="commit id to record (default: git rev-parse)")
    args = ap.parse_args()

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for preset in args.preset:
        params = merged(params, yaml.safe_load(preset.read_text()))
    params = merged(params, dotted(args.set))
    base = config_from_dict(params)
    work = args.workdir
    t0 = time.perf_counter()
    raw = acquire(base, work / "raw")
    prepare_s = {}
    for cat in base.categories:
        t = time.perf_counter()
        prepare_category(raw / cat, work / "prepared" / cat, image_size=base.image_size,
                         resize=base.prepare.resize, workers=base.prepare.workers)
        prepare_s[cat] = round(time.perf_counter() - t, 2)
    report = {"commit": args.commit or git_commit(), "date": time.strftime("%Y-%m-%d"),
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor(),
              "torch": torch.__version__, "params": params, "acquire_s": round(time.perf_counter() - t0, 2),
              "prepare_s": prepare_s, "runs": {}}
    for model in args.models:
        extra = [s.split(":", 1)[1] for s in args.model_set if s.startswith(model + ":")]
        cfg = config_from_dict(merged(merged(params, {"model": model}), dotted(extra)))
        runs = []
        for rep in range(args.repeat):
            per_cat = {}
            for cat in cfg.categories:
                out = work / model / str(rep) / cat
                run = train_and_evaluate(cfg, cat, work / "prepared" / cat, out)
                per_cat[cat] = {**run.metrics, **run.perf}
                print(json.dumps({"model": model, "repeat": rep, "category": cat, **per_cat[cat]}), flush=True)
            runs.append(per_cat)
        entry = {"method_params": dataclasses.asdict(cfg.method()), "runs": runs}
        if len(runs) > 1:
            keys = ("image_auroc", "pixel_auroc", "pixel_f1_max", "pixel_f1", "aupro")
            entry["max_abs_diff_between_repeats"] = {
                k: max(abs(r[c][k] - runs[0][c][k]) for r in runs[1:] for c in r) for k in keys}
        report["runs"][model] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
