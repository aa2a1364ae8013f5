"""Run the per-category stages of `dvc repro` concurrently, on one GPU or many, through DVC itself.

    python -m uad.parallel --jobs 4 --gpus 0,1,2,3     # one worker per GPU
    python -m uad.parallel --jobs 3 --gpus 0           # three workers sharing one GPU
    python -m uad.parallel --jobs 2 --dry-run          # print the commands, run nothing

What it runs, all of it DVC:
1. `dvc repro download` (with `validate`): the stages every category shares, once;
2. one job per category, scheduled by an existing job runner (`xargs -P N`, or GNU
   `parallel` with `--runner parallel`): `dvc --wait-for-lock repro --single-item` of
   prepare@<cat>, train@<cat>, evaluate@<cat>, render@<cat> in turn, with
   CUDA_VISIBLE_DEVICES set to the job's GPU. `--single-item` keeps each repro to its own
   stage, so concurrent repros never lock a shared upstream stage (the "is busy" error
   DVC reports when they do); a busy report is retried all the same. DVC releases its
   repository lock while a stage's command runs and `--wait-for-lock` queues the short
   bookkeeping, so the stages of different categories run at the same time;
3. one plain `dvc repro`: it runs what is left (the report, and nothing else when all
   jobs succeeded) and records it in dvc.lock.
Params say `device: auto`, so whichever GPU a worker gets, the stage's recorded params,
dvc.lock and the run-cache are the same as a sequential run's. If a job fails, the
other categories finish and keep their results, the failed category and stage are
named with DVC's error, step 3 is skipped and the exit status is 1. Across hosts the
same job list can be given to a SLURM array or a CI matrix sharing the DVC cache
(docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from uad.config import load_config
from uad.errors import UadError, one_line

STAGES = ("prepare", "train", "evaluate", "render")  # per category, in this order
BUSY_RETRIES = 5


def _dvc() -> list[str]:
    return [sys.executable, "-m", "dvc"]


def worker_command(category: str, gpu: str | None, log_dir: Path) -> list[str]:
    """The command one job runs: this module's worker for one category (on one GPU)."""
    cmd = [sys.executable, "-m", "uad.parallel", "worker", category, "--log-dir", str(log_dir)]
    return cmd + (["--gpu", gpu] if gpu is not None else [])


def runner_command(runner: str, jobs: int, lines_file: Path) -> list[str]:
    """The job runner's command line: it reads one job (a shell command) per line of `lines_file`."""
    if runner == "xargs":
        return ["xargs", "-P", str(jobs), "-d", "\\n", "-n", "1", "sh", "-c"]
    if runner == "parallel":
        return ["parallel", "--jobs", str(jobs), "--line-buffer", "--halt", "never", "--arg-file", str(lines_file)]
    raise UadError(f"--runner: {runner!r} is not a runner; choose xargs or parallel")


def job_lines(categories: list[str], gpus: list[str], runner: str, log_dir: Path) -> list[str]:
    """One shell command per category. xargs hands GPUs out round-robin by category; GNU parallel by job
    slot ({%}: the worker's number), so that each of its N workers keeps one GPU."""
    lines = []
    for i, cat in enumerate(categories):
        if not gpus:
            cmd = shlex.join(worker_command(cat, None, log_dir))
        elif runner == "parallel":
            cmd = shlex.join(worker_command(cat, None, log_dir) + ["--gpus", ",".join(gpus)]) + " --slot {%}"
        else:
            cmd = shlex.join(worker_command(cat, gpus[i % len(gpus)], log_dir))
        lines.append(cmd)
    return lines


def run_worker(category: str, gpu: str | None, log_dir: Path) -> int:
    """One category's stages, each as `dvc --wait-for-lock repro --single-item`; records timings."""
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    records = []
    status = 0
    for stage in STAGES:
        target = f"{stage}@{category}"
        start = time.perf_counter()
        for attempt in range(BUSY_RETRIES + 1):
            proc = subprocess.run([*_dvc(), "--wait-for-lock", "repro", "--single-item", target], env=env,
                                  capture_output=True, text=True)
            busy = proc.returncode != 0 and "is busy" in proc.stderr + proc.stdout
            if not busy or attempt == BUSY_RETRIES:
                break
            time.sleep(1 + attempt)  # another repro holds a path this stage reads: wait and retry
        seconds = round(time.perf_counter() - start, 2)
        ran = "Running stage" in proc.stdout
        records.append({"category": category, "stage": stage, "seconds": seconds, "ran": ran, "gpu": gpu,
                        "ok": proc.returncode == 0})
        tag = f"[{category}{'' if gpu is None else f' gpu {gpu}'}]"
        if proc.returncode != 0:
            lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.startswith(("error:", "ERROR"))]
            print(f"{tag} {target} FAILED after {seconds} s: {one_line(' | '.join(lines[-3:]) or proc.stderr)}",
                  file=sys.stderr, flush=True)
            records[-1]["error"] = one_line(" | ".join(lines[-3:]) or proc.stderr, 1000)
            status = 1
            break
        print(f"{tag} {target} {'ran' if ran else 'up to date'} in {seconds} s", flush=True)
    (log_dir / f"{category}.json").write_text(json.dumps(records))
    return status


def run(jobs: int, gpus: list[str], runner: str = "xargs", dry_run: bool = False,
        timings: Path | None = None) -> int:
    """The whole concurrent reproduction (see the module docstring); returns the exit status."""
    cfg = load_config("params.yaml", "none")
    if runner == "parallel" and shutil.which("parallel") is None:
        raise UadError("--runner parallel: GNU parallel is not installed (apt-get install parallel), or use xargs")
    log_dir = Path(tempfile.mkdtemp(prefix="uad-parallel-"))
    lines = job_lines(cfg.categories, gpus, runner, log_dir)
    lines_file = log_dir / "jobs.txt"
    lines_file.write_text("\n".join(lines) + "\n")
    steps = [[*_dvc(), "repro", "download"], runner_command(runner, jobs, lines_file), [*_dvc(), "repro"]]
    if dry_run:
        print(shlex.join(steps[0]))
        print(f"{shlex.join(steps[1])} < {lines_file}" if runner == "xargs" else shlex.join(steps[1]))
        print("\n".join(f"  {line}" for line in lines))
        print(shlex.join(steps[2]))
        shutil.rmtree(log_dir, ignore_errors=True)
        return 0
    start = time.perf_counter()
    if subprocess.run(steps[0]).returncode != 0:
        print("error: the shared stages (validate, download) failed; no category was started", file=sys.stderr)
        return 1
    shared = time.perf_counter() - start
    with open(lines_file) as stdin:
        runner_status = subprocess.run(steps[1], stdin=stdin if runner == "xargs" else None).returncode
    concurrent = time.perf_counter() - start - shared
    records = [r for f in sorted(log_dir.glob("*.json")) for r in json.loads(f.read_text())]
    failed = [r for r in records if not r["ok"]]
    done = {r["category"] for r in records}
    missing = [c for c in cfg.categories if c not in done]
    status = 0
    if failed or missing or runner_status != 0:
        for r in failed:
            print(f"error: {r['stage']}@{r['category']} failed: {r.get('error', '')}", file=sys.stderr)
        for c in missing:
            print(f"error: the job of category {c} did not report (runner status {runner_status})", file=sys.stderr)
        print(f"parallel: {len(done) - len({r['category'] for r in failed})} of {len(cfg.categories)} categories "
              f"finished; their results are in place. Fix the error and rerun (finished stages are not redone).",
              file=sys.stderr)
        status = 1
    else:
        status = subprocess.run(steps[2]).returncode
    total = time.perf_counter() - start
    summary = {"jobs": jobs, "gpus": gpus, "runner": runner, "categories": cfg.categories, "status": status,
               "seconds": {"shared": round(shared, 2), "concurrent": round(concurrent, 2),
                           "total": round(total, 2)}, "stages": records}
    print(f"parallel: {len(cfg.categories)} categories, {jobs} jobs on {gpus or ['cpu/auto']}: shared {shared:.1f} s, "
          f"categories {concurrent:.1f} s, total {total:.1f} s", file=sys.stderr)
    if timings:
        timings.write_text(json.dumps(summary, indent=1) + "\n")
    shutil.rmtree(log_dir, ignore_errors=True)
    return status


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m uad.parallel", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command")
    w = sub.add_parser("worker", help=argparse.SUPPRESS)
    w.add_argument("category")
    w.add_argument("--gpu", default=None)
    w.add_argument("--gpus", default="")
    w.add_argument("--slot", type=int, default=None)
    w.add_argument("--log-dir", type=Path, required=True)
    ap.add_argument("--jobs", type=int, default=None, help="concurrent category jobs (default: one per GPU, else 2)")
    ap.add_argument("--gpus", default="", help="comma-separated GPU indices handed to the jobs (default: none set)")
    ap.add_argument("--runner", choices=("xargs", "parallel"), default="xargs")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--timings", type=Path, default=None, help="write per-stage timings as JSON here")
    args = ap.parse_args(argv)
    try:
        if args.command == "worker":
            gpu = args.gpu
            if args.slot is not None and args.gpus:
                pool = args.gpus.split(",")
                gpu = pool[(args.slot - 1) % len(pool)]
            return run_worker(args.category, gpu, args.log_dir)
        gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
        if any(not g.isdigit() for g in gpus):
            raise UadError(f"--gpus: {args.gpus!r} must be comma-separated GPU indices, e.g. 0,1")
        jobs = args.jobs if args.jobs is not None else max(1, len(gpus) or 2)
        if jobs < 1:
            raise UadError(f"--jobs: {jobs} must be at least 1")
        return run(jobs, gpus, args.runner, args.dry_run, args.timings)
    except UadError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
