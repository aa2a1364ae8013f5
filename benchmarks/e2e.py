"""End-to-end `dvc repro` wall time on an MVTec-sized workload, both methods at the papers' settings.

    python benchmarks/e2e.py --out e2e.json                          # on the GPU machine
    python benchmarks/e2e.py --categories toothbrush --scale 0.1 --epochs-scale 0.02 --out e.json  # smoke

Generates the 15 categories with MVTec AD's image counts and sizes (see speed.py,
~5,400 PNGs up to 1024x1024), copies the project into a fresh git repository,
points it at them (`dataset: folder`) and, per method, applies the paper preset
and runs `dvc repro`: download (copy), prepare (decode + resize), train,
evaluate, render and report, each a separate process as DVC runs them. Every
line DVC prints is time-stamped, so the JSON has each stage's wall time; the
stage processes' own timings (fit, scoring) come from the metrics they write.
Backbones use random weights: speed does not depend on them. With bytecode caches on,
the stages' imports run once first (as `pip install` would have compiled them).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from common import git_commit  # noqa: E402
from speed import MVTEC, generate  # noqa: E402

PROJECT_FILES = ("dvc.yaml", "params.yaml", "stages", "uad", "presets", ".dvc/config", ".dvc/plots", ".gitignore")
STAGE_LINE = re.compile(r"^Running stage '([^']+)'")


def make_project(dest: Path) -> None:
    """A fresh git repository holding the pipeline (DVCLive needs a commit to attach experiments to)."""
    for name in PROJECT_FILES:
        src, dst = REPO / name, dest / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "pipeline"], cwd=dest, check=True)


STAGE_MODULES = "uad.cli, uad.data.prepared, uad.training, uad.evaluation, uad.report, uad.render, dvc.cli, dvclive"


def warm_caches() -> float:
    """Import what the stages import once, untimed as pipeline work, so that the bytecode caches
    exist as after a normal `pip install` (which compiles them); returns its seconds."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {STAGE_MODULES}"], check=True, cwd=REPO)
    return round(time.perf_counter() - t, 2)


def repro(project: Path, env: dict[str, str]) -> dict:
    """Run `dvc repro`, time-stamping its output; returns total and per-stage wall seconds."""
    start = time.perf_counter()
    stages: dict[str, float] = {}
    current, since = None, start
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=project, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    for line in proc.stdout:
        now = time.perf_counter()
        match = STAGE_LINE.match(line)
        if match:
            if current:
                stages[current] = round(now - since, 2)
            current, since = match.group(1), now
            print(f"[{now - start:7.1f}s] {line.rstrip()}", flush=True)
        elif "Error" in line or "error" in line:
            print(line.rstrip(), flush=True)
    code = proc.wait()
    end = time.perf_counter()
    if current:
        stages[current] = round(end - since, 2)
    if code:
        raise SystemExit(f"dvc repro failed with exit code {code}")
    by_kind: dict[str, float] = {}
    for name, seconds in stages.items():
        kind = name.split("@")[0]
        by_kind[kind] = round(by_kind.get(kind, 0.0) + seconds, 2)
    return {"wall_s": round(end - start, 2), "stages": len(stages), "by_stage_kind_s": by_kind,
            "per_stage_s": stages}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--categories", nargs="+", default=sorted(MVTEC), choices=sorted(MVTEC))
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of MVTec's image counts")
    ap.add_argument("--epochs-scale", type=float, default=1.0, help="fraction of the papers' epochs (smoke)")
    ap.add_argument("--methods", nargs="+", default=["cfa", "dfr"])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra params for every run")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/uad-e2e"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--commit", default=None, help="commit id to record (default: git rev-parse)")
    args = ap.parse_args()
    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    raw, project = args.workdir / "raw", args.workdir / "project"
    report: dict = {"commit": args.commit or git_commit(), "date": time.strftime("%Y-%m-%d"), "categories": args.categories,
                    "scale": args.scale, "epochs_scale": args.epochs_scale,
                    "weights": "random (speed does not depend on them)",
                    # every stage is a fresh interpreter: without bytecode caches each one compiles
                    # torch, timm and torchmetrics from source (the GPU image sets PYTHONDONTWRITEBYTECODE=1)
                    "bytecode_caches": not sys.flags.dont_write_bytecode,
                    "pycache_prefix": os.environ.get("PYTHONPYCACHEPREFIX")}
    if not sys.flags.dont_write_bytecode:
        report["warm_caches_s"] = warm_caches()
    report["generate_s"] = generate(raw, args.categories, args.scale)["all"]
    report["images"] = sum(1 for p in raw.rglob("*.png") if "ground_truth" not in p.parts)
    print(json.dumps({"generated": report["images"], "seconds": report["generate_s"]}), flush=True)
    make_project(project)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(project), os.environ.get("PYTHONPATH", "")]),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),  # stages run `python`
           "TQDM_DISABLE": "1"}
    report["runs"] = {}
    for method in args.methods:
        paper = yaml.safe_load((project / "presets" / f"{method}_paper.yaml").read_text())
        epochs = max(1, round(paper[method]["epochs"] * args.epochs_scale))  # scaled for smoke runs
        sets = ["dataset=folder", f"data.folder.path={raw}", f"categories=[{', '.join(args.categories)}]",
                f"{method}.pretrained=false", f"{method}.epochs={epochs}", *args.set]
        subprocess.run([sys.executable, "-m", "uad.preset", f"presets/{method}_paper.yaml",
                        *[a for s in sets for a in ("--set", s)]], cwd=project, env=env, check=True)
        run = repro(project, env)
        perf = {}
        for cat in args.categories:
            perf[cat] = json.loads((project / "metrics" / method / f"{cat}.perf.json").read_text())
        run["epochs"] = epochs
        run["in_process"] = perf
        report["runs"][method] = run
        print(json.dumps({"method": method, "wall_s": run["wall_s"], "by_stage_kind_s": run["by_stage_kind_s"]}),
              flush=True)
    report["total_wall_s"] = round(sum(r["wall_s"] for r in report["runs"].values()), 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}: both methods {report['total_wall_s']} s")


if __name__ == "__main__":
    main()
