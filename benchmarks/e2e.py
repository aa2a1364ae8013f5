"""End-to-end `dvc repro` wall time on MVTec-sized synthetic categories, each method at its paper settings.

Generates the categories (all 15 by default: MVTec AD's image counts and sizes, see
benchmarks/synthetic.py), copies the pipeline into a fresh git repository, and per method
writes its params.yaml (paper preset, `dataset: folder` pointing at the generated data, random
backbone weights: speed does not depend on them) and runs `dvc repro`: every stage a separate
process, as DVC runs them. Every stage's start is time-stamped from DVC's output, so the report
has each stage's wall time and start offset (for comparing sequential and concurrent runs); the
stages' own fit and scoring timings come from the perf metrics they write. With bytecode caches
on, the stages' imports run once first (as `pip install` would have compiled them).

`--jobs N` runs each method through `python -m uad.parallel --jobs N --gpus ...` instead (the
categories' stages concurrently, through DVC), recording its per-stage timings; `--sample-gpu`
records the GPUs' utilisation every half second (nvidia-smi) during each run. `--methods-at-once`
runs the methods' pipelines at the same time, each in its own copy of the project (one
params.yaml names one model), so that one method's CPU-bound stages overlap the other's GPU work.
`--data DIR` keeps the generated categories in DIR and reuses them when DIR already holds the
same categories and scale (`--generate-only` makes them and stops).

GPU:

    python3 -m benchmarks.e2e --methods dfr --set precision=bf16
    python3 -m benchmarks.e2e --methods cfa --set precision=bf16
    python3 -m benchmarks.e2e --methods dfr cfa --set precision=bf16 --jobs 3 --gpus 0 --sample-gpu
    python3 -m benchmarks.e2e --methods cfa dfr --set precision=bf16 --jobs 4 --gpus 0 --methods-at-once

CPU smoke:

    .venv/bin/python -m benchmarks.e2e --categories toothbrush --scale 0.05 --epochs-scale 0.01 \\
        --set image_size=64 --out /tmp/uad-e2e/e2e.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks import harness, synthetic
from uad import methods
from uad.artifacts import staged_dir, write_json
from uad.metrics import fit_path, perf_path
from uad.preset import render
from uad.runtime import resolve_device

TOOL = "e2e"
PROJECT_FILES = ("dvc.yaml", "stages", "uad", "presets", ".dvc/config", ".dvc/plots", ".gitignore")
STAGE_LINE = re.compile(r"^Running stage '([^']+)'")
STAGE_MODULES = "uad.cli, uad.data.prepared, uad.training, uad.evaluation, uad.report, uad.render, dvc.cli, dvclive"


def make_project(dest: Path) -> None:
    """A fresh git repository holding the pipeline (DVCLive needs a commit to attach experiments to)."""
    for name in PROJECT_FILES:
        src, dst = harness.REPO / name, dest / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dst)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "pipeline"], cwd=dest, check=True)


def warm_caches() -> float:
    """Import what the stages import once, untimed as pipeline work, so that the bytecode caches exist
    as after a normal `pip install` (which compiles them); returns its seconds."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {STAGE_MODULES}"], check=True, cwd=harness.REPO)
    return round(time.perf_counter() - t, 2)


def repro(project: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run `dvc repro`, time-stamping its output; returns total and per-stage wall seconds and starts."""
    start = time.perf_counter()
    starts: dict[str, float] = {}
    stages: dict[str, float] = {}
    current = None
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=project, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        now = time.perf_counter() - start
        tail = [*tail[-40:], line.rstrip()]
        match = STAGE_LINE.match(line)
        if match:
            if current:
                stages[current] = round(now - starts[current], 2)
            current = match.group(1)
            starts[current] = round(now, 2)
            print(f"[{now:7.1f}s] {line.rstrip()}", flush=True)
    code = proc.wait()
    end = time.perf_counter() - start
    if current:
        stages[current] = round(end - starts[current], 2)
    if code:
        print("\n".join(tail), file=sys.stderr)
        raise SystemExit(f"dvc repro failed with exit code {code}")
    by_kind: dict[str, float] = {}
    for name, seconds in stages.items():
        kind = name.split("@")[0]
        by_kind[kind] = round(by_kind.get(kind, 0.0) + seconds, 2)
    return {"wall_s": round(end, 2), "stages": len(stages), "by_stage_kind_s": by_kind, "per_stage_s": stages,
            "stage_start_s": starts}


def parallel_repro(project: Path, env: dict[str, str], jobs: int, gpus: str) -> dict[str, Any]:
    """`python -m uad.parallel` in `project`; its per-stage timings, in the shape `repro` returns."""
    timings = project / "parallel_timings.json"
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "uad.parallel", "--jobs", str(jobs), "--timings", str(timings)]
    proc = subprocess.run([*cmd, *(["--gpus", gpus] if gpus else [])], cwd=project, env=env, text=True,
                          capture_output=True)
    end = time.perf_counter() - start
    if proc.returncode:
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"uad.parallel failed with exit code {proc.returncode}")
    summary = json.loads(timings.read_text())
    stages = {f"{r['stage']}@{r['category']}": r["seconds"] for r in summary["stages"] if r["ran"]}
    by_kind: dict[str, float] = {}
    for name, seconds in stages.items():
        kind = name.split("@")[0]
        by_kind[kind] = round(by_kind.get(kind, 0.0) + seconds, 2)
    return {"wall_s": round(end, 2), "stages": len(stages), "by_stage_kind_s": by_kind, "per_stage_s": stages,
            "jobs": jobs, "gpus": gpus, "phases_s": summary["seconds"],
            "largest_stage_s": max(stages.values(), default=0.0)}


class GpuSampler:
    """nvidia-smi's utilisation of every GPU, every half second, while a block runs."""

    def __init__(self, path: Path):
        self.path = path
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> GpuSampler:
        self.file = open(self.path, "w")
        self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits", "-lms", "500"], stdout=self.file)
        return self

    def __exit__(self, *exc) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait()
        self.file.close()

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean and peak utilisation (%) and peak memory (MiB) per GPU index."""
        rows: dict[str, list[tuple[float, float]]] = {}
        for line in self.path.read_text().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 3 and all(p.replace(".", "").isdigit() for p in parts):
                rows.setdefault(parts[0], []).append((float(parts[1]), float(parts[2])))
        return {gpu: {"mean_util_pct": round(sum(u for u, _ in r) / len(r), 1), "max_util_pct": max(u for u, _ in r),
                      "max_memory_mib": max(m for _, m in r), "samples": len(r)} for gpu, r in rows.items()}


def main(argv: Sequence[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.e2e", description=__doc__.splitlines()[0])
    ap.add_argument("--categories", nargs="+", default=sorted(synthetic.MVTEC), choices=sorted(synthetic.MVTEC))
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of MVTec's image counts")
    ap.add_argument("--epochs-scale", type=float, default=1.0, help="fraction of the papers' epochs (smoke)")
    ap.add_argument("--methods", nargs="+", default=list(methods.names()), choices=methods.names())
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra params for every run")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/uad-e2e"),
                    help="emptied at the start, when new or made by this benchmark; any other folder is refused")
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/e2e_<methods>_...")
    ap.add_argument("--tag", default=None, help="last field of the default result name")
    ap.add_argument("--commit", default=None, help="commit id to record (default: git rev-parse)")
    ap.add_argument("--jobs", type=int, default=0,
                    help="run the categories concurrently: python -m uad.parallel --jobs N (0: plain dvc repro)")
    ap.add_argument("--gpus", default="", help="GPUs for the concurrent jobs (uad.parallel --gpus), e.g. 0 or 0,1,2,3")
    ap.add_argument("--sample-gpu", action="store_true", help="record nvidia-smi utilisation during each run")
    ap.add_argument("--methods-at-once", action="store_true",
                    help="run the methods' pipelines at the same time, each in its own project copy")
    ap.add_argument("--data", type=Path, default=None,
                    help="where the generated categories live (default: WORKDIR/raw); reused when it holds the "
                         "same categories and scale")
    ap.add_argument("--generate-only", action="store_true", help="generate the categories (into --data) and stop")
    args = ap.parse_args(argv)
    work = args.workdir.resolve()
    raw = (args.data or work / "raw").resolve()
    if raw == work or raw in work.parents:
        raise SystemExit(f"--data {raw}: must not be --workdir or hold it (the workdir is emptied first)")
    claim_workdir(work, raw)
    generated = generate(raw, args.categories, args.scale)
    if args.generate_only:
        print(f"{raw}: {generated['images']} images", flush=True)
        return raw

    def params_of(method: str) -> tuple[dict[str, Any], str]:
        """The method's params.yaml contents and the `python -m uad.preset` arguments that build them."""
        sets = [f"model={method}", "dataset=folder", f"data.folder.path={raw}",
                f"categories=[{', '.join(args.categories)}]", f"{method}.pretrained=false", *args.set]
        params = harness.build_params(harness.paper_presets(method), sets)
        scaled = harness.scale_epochs(params, args.epochs_scale, [method])
        if scaled != params:
            sets.append(f"{method}.epochs={scaled[method]['epochs']}")
        command = shlex.join([*harness.paper_presets(method), *(x for s in sets for x in ("--set", s))])
        return scaled, command

    first = harness.config(params_of(args.methods[0])[0])
    device = resolve_device(first.device)
    out = args.out or harness.result_path(TOOL, args.methods, synthetic.dataset_name(args.categories),
                                          first.precision, device, args.tag)
    report: dict[str, Any] = {
        **harness.header(TOOL, __doc__.splitlines()[0], device, commit=args.commit, packages=("dvc", "dvclive")),
        "categories": args.categories, "scale": args.scale, "epochs_scale": args.epochs_scale, "sets": args.set,
        "weights": "random (speed does not depend on them)", "methods_at_once": args.methods_at_once,
        # every stage is a fresh interpreter: without bytecode caches each one compiles torch, timm and
        # torchmetrics from source (some GPU images set PYTHONDONTWRITEBYTECODE=1)
        "bytecode_caches": not sys.flags.dont_write_bytecode, "pycache_prefix": os.environ.get("PYTHONPYCACHEPREFIX")}
    if not sys.flags.dont_write_bytecode:
        report["warm_caches_s"] = warm_caches()
    report["generate_s"], report["images"] = generated["seconds"], generated["images"]
    report["data_reused"] = generated["reused"]
    print(f"{report['images']} images ({'reused' if generated['reused'] else 'generated'} in "
          f"{report['generate_s']} s)", flush=True)

    def run_method(method: str) -> dict[str, Any]:
        project = work / (f"project_{method}" if args.methods_at_once else "project")
        if project.exists():
            shutil.rmtree(project)
        make_project(project)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(project), os.environ.get("PYTHONPATH", "")]),
               "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),  # stages run `python`
               "TQDM_DISABLE": "1"}
        params, command = params_of(method)
        (project / "params.yaml").write_text(render(params, command))
        sampler = (GpuSampler(work / f"gpu_{method}.csv") if args.sample_gpu and not args.methods_at_once
                   else contextlib.nullcontext())
        start = time.perf_counter()
        with sampler:
            run = parallel_repro(project, env, args.jobs, args.gpus) if args.jobs else repro(project, env)
        run["ended_s"] = round(time.perf_counter() - start, 2)
        if isinstance(sampler, GpuSampler):
            run["gpu_utilisation"] = sampler.summary()
        run["params"] = {k: params[k] for k in ("model", "precision", "image_size", "device", method)}
        run["in_process"] = {cat: {**json.loads(fit_path(method, cat, project / "metrics").read_text()),
                                   **json.loads(perf_path(method, cat, project / "metrics").read_text())}
                             for cat in args.categories}
        print(f"{method}: {run['wall_s']} s, by stage kind {run['by_stage_kind_s']}", flush=True)
        return run

    report["runs"] = {}
    if args.methods_at_once:
        sampler = GpuSampler(work / "gpu_all.csv") if args.sample_gpu else contextlib.nullcontext()
        start = time.perf_counter()
        with sampler, ThreadPoolExecutor(len(args.methods)) as pool:
            runs = dict(zip(args.methods, pool.map(run_method, args.methods)))
        report["runs"] = runs
        report["total_wall_s"] = round(time.perf_counter() - start, 2)  # all methods together, start to end
        if isinstance(sampler, GpuSampler):
            report["gpu_utilisation"] = sampler.summary()
    else:
        for method in args.methods:
            report["runs"][method] = run_method(method)
            harness.write_report(out, report)
        report["total_wall_s"] = round(sum(r["wall_s"] for r in report["runs"].values()), 2)
    harness.write_report(out, report)
    print(f"wrote {out}: {report['total_wall_s']} s in all", flush=True)
    return out


MANIFEST = "generated.json"  # what a data folder holds, written last: a folder without it is not ours
WORKDIR_MARK = ".benchmarks-e2e"  # in a workdir this benchmark made: only such a workdir is emptied


def _folder_or_new(path: Path, option: str) -> None:
    """Refuse `path` for `option` unless it is a folder or does not exist yet (a link is refused too)."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise SystemExit(f"{option} {path}: not a folder")


def claim_workdir(work: Path, raw: Path) -> None:
    """Empty `work` for a new run, keeping the data folder `raw` where it lies inside; a folder that holds
    anything else and lacks this benchmark's mark is refused, never emptied."""
    _folder_or_new(work, "--workdir")
    ours = (work / WORKDIR_MARK).is_file()
    others = [child for child in (work.iterdir() if work.exists() else ())
              if child != raw and child not in raw.parents and raw not in child.parents and child.name != WORKDIR_MARK]
    if others and not ours:
        raise SystemExit(f"--workdir {work}: holds files that benchmarks.e2e did not put there (no {WORKDIR_MARK}), "
                         f"such as {others[0].name}; choose an empty or new folder")
    for child in others:
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    work.mkdir(parents=True, exist_ok=True)  # the GPU samples land here even when --data lies elsewhere
    (work / WORKDIR_MARK).touch()


def _manifest(raw: Path) -> dict[str, Any] | None:
    """The data folder's manifest, None where there is none; one this benchmark did not write is refused."""
    path = raw / MANIFEST
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"--data {raw}: {MANIFEST} is unreadable ({e}); choose another folder") from e
    if not isinstance(record, dict) or not isinstance(record.get("request"), dict):
        raise SystemExit(f"--data {raw}: {MANIFEST} was not written by benchmarks.e2e; choose another folder")
    return record


def generate(raw: Path, categories: Sequence[str], scale: float) -> dict[str, Any]:
    """The categories in MVTec layout under `raw`, generated unless its manifest says they are there.

    A new set is made in a staging folder beside `raw` and replaces it whole at the end. A `raw`
    that holds anything without this benchmark's manifest is refused, never removed."""
    _folder_or_new(raw, "--data")
    record = _manifest(raw) if raw.exists() else None
    want = {"categories": sorted(categories), "scale": scale}
    if record is not None and record["request"] == want:
        return {**record, "reused": True}
    if record is None and raw.exists() and any(raw.iterdir()):
        raise SystemExit(f"--data {raw}: holds files that benchmarks.e2e did not generate (no {MANIFEST}); "
                         "choose an empty or new folder")
    with staged_dir(raw) as tmp:
        seconds = synthetic.generate(tmp, categories, scale)
        images = sum(1 for p in tmp.rglob("*.png") if "ground_truth" not in p.parts)
        record = {"request": want, "seconds": seconds, "images": images}
        write_json(tmp / MANIFEST, record)
    return {**record, "reused": False}


if __name__ == "__main__":
    main()
