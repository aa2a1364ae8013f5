"""The pipeline's stage functions (no DVC) for several methods: metrics, timings and run-to-run closeness.

The library calls `dvc repro` makes (acquire, prepare, train, evaluate) in a work folder, with
the params of `--preset`s (default: the recipe in params.yaml's header, i.e. the committed
demo) and `--set` values; used where DVC cannot travel (the GPU machine's carry limit) and to
measure reproducibility (`--repeat`: max |difference| of each metric between repeats).

GPU, the demo and Magnetic Tile Defects (W: the offline lite0 weights file, carried in .device/):

    W=.device/weights/tf_efficientnet_lite0_blocks0-4.timm.pth
    python3 -m benchmarks.run --weights $W --repeat 2
    python3 -m benchmarks.run --preset lite0 mtd --set data.mtd.source=.device/mtd --weights $W --repeat 2
    for e in 1 3 10; do python3 -m benchmarks.run --preset lite0 mtd --set data.mtd.source=.device/mtd \\
        --weights $W --models cfa --model-set cfa:cfa.epochs=$e --tag e$e; done

CPU smoke:

    .venv/bin/python -m benchmarks.run --set categories=[weave] --set image_size=64 \\
        --set cfa.epochs=1 --set dfr.epochs=1 --limit 4 --out /tmp/uad-bench/run.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import harness
from uad import methods
from uad.config import dotted
from uad.metrics import QUALITY
from uad.runtime import resolve_device

TOOL = "run"


def main(argv: Sequence[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    ap.add_argument("--preset", nargs="+", default=None,
                    help="presets in order (default: the recipe in params.yaml's header)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--weights", type=Path, default=None,
                    help="tf_efficientnet_lite0 state-dict file for every method on lite0 (default: as params say)")
    ap.add_argument("--models", nargs="+", default=list(methods.names()), choices=methods.names())
    ap.add_argument("--model-set", action="append", default=[], metavar="MODEL:KEY=VALUE",
                    help="a value for one model only, e.g. cfa:cfa.epochs=3")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--limit", type=int, default=0, help="smoke test: keep at most N images per train/test subfolder")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/uad-bench"))
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/run_<models>_<dataset>_...")
    ap.add_argument("--tag", default=None, help="last field of the default result name")
    ap.add_argument("--commit", default=None, help="commit id to record (default: git rev-parse)")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    presets, sets = (args.preset, []) if args.preset is not None else harness.recipe()
    params = harness.with_weights(harness.build_params(presets, [*sets, *args.set]), args.weights)
    base = harness.config(params)
    device = resolve_device(base.device)
    data, acquire_s = harness.prepare(base, args.workdir, limit=args.limit)
    out = args.out or harness.result_path(TOOL, args.models, base.dataset, base.precision, device, args.tag)
    report: dict[str, Any] = {**harness.header(TOOL, __doc__.splitlines()[0], device, commit=args.commit),
                              "presets": presets, "sets": [*sets, *args.set], "params": params,
                              "acquire_s": acquire_s, "prepare_s": {c: d.seconds for c, d in data.items()},
                              "limit": args.limit or None, "runs": {}}
    for model in args.models:
        extra = [s.split(":", 1)[1] for s in args.model_set if s.startswith(model + ":")]
        cfg = harness.config(params, {"model": model}, dotted(extra))
        runs = []
        for rep in range(args.repeat):
            per_cat = {}
            for cat, prepared in data.items():
                run = harness.train_and_evaluate(cfg, cat, prepared.path, args.workdir / model / str(rep) / cat)
                per_cat[cat] = {**run.metrics, **run.perf, "train_wall_s": run.train_wall_s,
                                "evaluate_wall_s": run.evaluate_wall_s}
                print(json.dumps({"model": model, "repeat": rep, "category": cat, **per_cat[cat]}), flush=True)
            runs.append(per_cat)
        entry: dict[str, Any] = {"model_set": extra, "method_params": dataclasses.asdict(cfg.method()), "runs": runs}
        if len(runs) > 1:
            entry["max_abs_diff_between_repeats"] = {
                m.key: max(abs(r[c][m.key] - runs[0][c][m.key]) for r in runs[1:] for c in r) for m in QUALITY}
        report["runs"][model] = entry
        harness.write_report(out, report)
    report["wall_s"] = round(time.perf_counter() - start, 2)
    harness.write_report(out, report)
    print(f"wrote {out}", flush=True)
    return out

if __name__ == "__main__":
    main()
