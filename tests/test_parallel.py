"""`python -m uad.parallel`: the per-category stages run concurrently through DVC give what `dvc repro` gives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from uad.parallel import STAGES

from .test_e2e import TINY_PARAMS, _env, copy_repo, dvc, ran, set_params

pytestmark = pytest.mark.e2e

PARAMS = {**TINY_PARAMS, "cfa": {"epochs": 1}, "render": {"max_frames": 2, "frame_ms": 100}}


def parallel(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "uad.parallel", *args], cwd=repo, env=_env(), capture_output=True,
                          text=True)


def outputs(repo: Path) -> dict[str, bytes]:
    """What the pipeline produced that must not depend on how it was scheduled (timings excluded)."""
    files = [*repo.glob("metrics/cfa/*.json"), repo / "metrics" / "summary.json", *repo.glob("data/scores/*/*"),
             *repo.glob("models/*/model.pt")]
    return {str(p.relative_to(repo)): p.read_bytes() for p in sorted(files)
            if not p.name.endswith((".perf.json", ".fit.json"))}


def lock(repo: Path) -> dict:
    """dvc.lock without what differs between any two runs, sequential ones too: the hashes of the timing
    files (fit and scoring speed) and of what holds them (the report's `metrics/<model>` folder and its
    timing table). Every model, score map and quality metric hash stays in."""
    data = yaml.safe_load((repo / "dvc.lock").read_text())
    timing = (".perf.json", ".fit.json", "reports/results.md")
    for stage in data["stages"].values():
        for kind in ("deps", "outs"):
            stage[kind] = [e for e in stage.get(kind, []) if not e["path"].endswith(timing)
                           and e["path"] != "metrics/cfa"]
    return data


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    sequential = copy_repo(tmp_path_factory.mktemp("sequential"))
    concurrent = copy_repo(tmp_path_factory.mktemp("concurrent"))
    for repo in (sequential, concurrent):
        set_params(repo, PARAMS)
        subprocess.run(["git", "commit", "-qam", "tiny"], cwd=repo, check=True)
    dvc(sequential, "repro")
    return sequential, concurrent


def test_two_workers_give_the_sequential_outputs_and_lock(repos, tmp_path):
    sequential, concurrent = repos
    proc = parallel(concurrent, "--jobs", "2", "--timings", str(tmp_path / "t.json"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[weave] train@weave ran" in proc.stdout and "[washer] train@washer ran" in proc.stdout
    assert outputs(concurrent) == outputs(sequential)
    assert lock(concurrent) == lock(sequential)
    assert ran(dvc(concurrent, "repro")) == set()  # nothing left to run
    timings = json.loads((tmp_path / "t.json").read_text())
    assert {(r["category"], r["stage"]) for r in timings["stages"]} == {
        (c, s) for c in ("weave", "washer") for s in STAGES}
    # a second parallel run finds every stage up to date
    again = parallel(concurrent, "--jobs", "2")
    assert again.returncode == 0 and " ran in " not in again.stdout


def test_hosts_sharing_a_cache_fan_in_from_the_run_cache(repos, tmp_path_factory):
    """docs/performance.md's multi-host recipe: clones of one commit sharing a DVC cache each run one
    category's stages; a third clone's plain `dvc repro` restores them all and runs only the report."""
    sequential, _ = repos
    cache = tmp_path_factory.mktemp("shared-cache")
    hosts = [copy_repo(tmp_path_factory.mktemp(f"host{i}")) for i in range(3)]
    for host in hosts:
        set_params(host, PARAMS)
        subprocess.run(["git", "commit", "-qam", "tiny"], cwd=host, check=True)
        dvc(host, "cache", "dir", "--local", str(cache))
    assert "download" in ran(dvc(hosts[0], "repro", "download"))  # the shared stages, once
    for host, category in zip(hosts, ("weave", "washer")):
        assert "download" not in ran(dvc(host, "repro", "download"))
        for stage in STAGES:
            assert ran(dvc(host, "repro", "--single-item", f"{stage}@{category}")) == {f"{stage}@{category}"}
    fan_in = dvc(hosts[2], "repro")
    assert ran(fan_in) == {"report"}, fan_in
    assert "is cached - skipping run" in fan_in
    assert outputs(hosts[2]) == outputs(sequential)
    assert lock(hosts[2]) == lock(sequential)


def test_a_failing_worker_leaves_the_others_results_and_names_itself(repos, tmp_path):
    sequential, concurrent = repos
    source = tmp_path / "parts"  # a folder dataset: weave and washer as in the demo, grain with a broken image
    import shutil

    shutil.copytree(sequential / "data" / "raw" / "demo", source)
    dvc(sequential, "repro")  # sequential's raw demo holds weave and washer only: make grain too
    from uad.data.demo import generate_category

    generate_category(source, "grain", image_size=64, n_train=8, n_test_good=4, n_test_defect=8, seed=2026)
    broken = sorted((source / "grain" / "train" / "good").iterdir())[0]
    broken.write_bytes(broken.read_bytes()[:60])
    set_params(concurrent, {"dataset": "folder", "data": {"folder": {"path": str(source)}},
                            "categories": ["weave", "washer", "grain"]})
    proc = parallel(concurrent, "--jobs", "2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error: prepare@grain failed" in proc.stderr and broken.name in proc.stderr
    assert "Traceback" not in proc.stderr and "2 of 3 categories finished" in proc.stderr
    for cat in ("weave", "washer"):  # their stages ran to the end and their results are in place
        assert (concurrent / "models" / cat / "model.pt").exists()
        assert (concurrent / "metrics" / "cfa" / f"{cat}.json").exists()
        assert (concurrent / "plots" / "gif" / f"{cat}.gif").exists()
    assert not (concurrent / "models" / "grain").exists()
    assert "report" not in {ln for ln in proc.stdout.splitlines() if "Running stage" in ln}


def test_dry_run_prints_the_runner_commands(repos):
    _, concurrent = repos
    proc = parallel(concurrent, "--jobs", "3", "--gpus", "0,1", "--dry-run")
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert lines[0].endswith("-m dvc repro download") and lines[1].startswith("xargs -P 3")
    assert any(line.strip().endswith("worker weave --log-dir " + line.split("--log-dir ")[1].split()[0] + " --gpu 0")
               for line in lines if "worker weave" in line)
    assert lines[-1].endswith("-m dvc repro")
    assert parallel(concurrent, "--gpus", "a,b").returncode == 2
