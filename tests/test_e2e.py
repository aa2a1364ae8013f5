"""`dvc repro` end to end on a tiny demo, in a temporary copy of the repository."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from uad import methods
from uad.config import merge
from uad.metrics import QUALITY

from .conftest import REPO, SHARED, committed_params

pytestmark = pytest.mark.e2e

TINY_PARAMS = {
    "image_size": 64,
    "data": {"demo": {"image_size": 64, "n_train": 8, "n_test_good": 4, "n_test_defect": 8}},
    "dfr": {"epochs": 3},
    "cfa": {"epochs": 2},
    "render": {"max_frames": 4, "frame_ms": 100},
}


def copy_repo(dest: Path) -> Path:
    """The files a fresh clone would have (tracked, plus new files git does not ignore)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    (dest / "params.yaml").write_text(committed_params())  # not what experiments did to the workspace
    for cmd in (["init", "-q"], ["config", "user.name", "e2e"], ["config", "user.email", "e2e@test"],
                ["add", "-A"], ["commit", "-qm", "clone"]):
        subprocess.run(["git", *cmd], cwd=dest, check=True)
    return dest


def set_params(repo: Path, overrides: dict) -> None:
    path = repo / "params.yaml"
    path.write_text(yaml.safe_dump(merge(yaml.safe_load(path.read_text()), overrides), sort_keys=False))


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def dvc(repo: Path, *args: str, ok: bool = True) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=_env(), capture_output=True, text=True)
    if ok:
        assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    else:
        assert proc.returncode != 0, f"dvc {' '.join(args)} should have failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = copy_repo(tmp_path_factory.mktemp("e2e"))
    set_params(repo, TINY_PARAMS)
    return repo


def test_repro_produces_metrics_curves_gifs_and_report(repo):
    out = dvc(repo, "repro")
    assert ran(out) == {"validate", "download", "prepare@weave", "prepare@washer", "train@weave", "train@washer",
                        "evaluate@weave", "evaluate@washer", "render@weave", "render@washer", "report"}
    for cat in ("weave", "washer"):
        metrics = json.loads((repo / "metrics" / "cfa" / f"{cat}.json").read_text())
        assert list(metrics) == [m.key for m in QUALITY]
        assert all(0 <= v <= 1 for v in metrics.values())
        assert json.loads((repo / "metrics" / "cfa" / f"{cat}.fit.json").read_text())["fit_seconds"] > 0
        assert (repo / "plots" / "gif" / f"{cat}.gif").read_bytes()[:6] == b"GIF89a"
    for curve in ("roc_image", "roc_pixel", "pr_pixel", "loss"):
        assert {p["category"] for p in json.loads((repo / "plots" / f"{curve}.json").read_text())} == {"weave",
                                                                                                      "washer"}
        assert json.loads((repo / "dvclive" / cat / "metrics.json").read_text())["step"] == 1
    summary = json.loads((repo / "metrics" / "summary.json").read_text())
    assert list(summary) == ["cfa"] and list(summary["cfa"]) == [m.key for m in QUALITY]
    assert "| Metric | weave | washer | Avg |" in (repo / "reports" / "results.md").read_text()
    shown = dvc(repo, "metrics", "show")
    assert "metrics/cfa/weave.json" in shown and "image_auroc" in shown and "dvclive/weave/metrics.json" in shown


def test_plots_show_names_every_curve_and_category(repo, tmp_path):
    from uad.plots import CHARTS

    dvc(repo, "repro")  # nothing to do after the first test; makes this one runnable alone (-k plots_show)
    # what scripts/setup.sh does in a fresh clone: the page template .dvc/config names (git-ignored)
    subprocess.run([sys.executable, "-m", "uad.plots", "template"], cwd=repo, env=_env(), check=True)
    dvc(repo, "plots", "show", "-o", str(tmp_path / "html"))
    html = (tmp_path / "html" / "index.html").read_text(encoding="utf-8")
    for chart in CHARTS:
        assert f'"text": "{chart.title}"' in html
        assert f'"title": "{chart.x_label}"' in html and f'"title": "{chart.y_label}"' in html
    assert html.count('"run": "CFA on demo"') > 0 and '"field": "run"' in html and '"type": "log"' in html
    for cat in ("weave", "washer"):
        assert f'"category": "{cat}"' in html
        assert re.search(rf'"label": "{cat} \(AUROC [01]\.\d{{3}}\)"', html)
    assert "window.vegaEmbed=" in html and not re.search(r"<script[^>]*\bsrc\s*=", html)  # Vega inline: offline
    assert "plots_gif_weave.gif" in html and "plots_gif_washer.gif" in html
    for chart in CHARTS:
        assert (repo / "reports" / f"{chart.name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_second_repro_runs_nothing(repo):
    out = dvc(repo, "repro")
    assert ran(out) == set()
    assert "Data and pipelines are up to date" in out


def test_other_methods_params_do_not_invalidate_cached_work(repo):
    set_params(repo, {"dfr": {"epochs": 4, "lr": 0.01}})
    assert ran(dvc(repo, "repro")) == {"validate"}  # it checks every parameter, and nothing else reruns


def _snapshot(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for d in ("models", "metrics", "data/scores")
            for p in sorted((repo / d).rglob("*")) if p.is_file()}


@pytest.mark.parametrize("change, message", [
    ({"model": "knn"}, f"error: params.yaml: model: 'knn' is not valid; choose one of {list(methods.names())}"),
    ({"image_szie": 256}, "error: params.yaml: unknown parameter image_szie; valid keys here:"),
])
def test_bad_params_fail_first_and_remove_nothing(repo, change, message):
    before, params = _snapshot(repo), (repo / "params.yaml").read_text()
    set_params(repo, change)
    try:
        out = dvc(repo, "repro", ok=False)
    finally:
        (repo / "params.yaml").write_text(params)
    assert message in out and "Traceback" not in out
    assert ran(out) == {"validate"}
    assert _snapshot(repo) == before


def _children(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                child = int(stat.parent.name)
                found.add(child)
                todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death handling is Linux's")
def test_killing_dvc_repro_kills_the_stage_and_the_next_run_cleans_up(repo):
    params = (repo / "params.yaml").read_text()
    set_params(repo, {"cfa": {"epochs": 400}})  # a training long enough to be killed halfway
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=repo, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, stage = time.time() + 120, None
        while stage is None and time.time() < deadline:
            stage = next((p for p in _children(proc.pid) if "stages/train.py" in _cmdline(p)), None)
            time.sleep(0.2)
        assert stage is not None, "the train stage never started"
        deadline = time.time() + 60
        while not list((repo / "models").glob(".weave.partial.*")) and time.time() < deadline:
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 10
        while Path(f"/proc/{stage}").exists() and "stages/train.py" in _cmdline(stage) and time.time() < deadline:
            time.sleep(0.1)
        assert "stages/train.py" not in _cmdline(stage), "the stage outlived dvc"
    finally:
        if proc.poll() is None:
            proc.kill()
        (repo / "params.yaml").write_text(params)
    assert list((repo / "models").glob(".weave.partial.*")), "the killed stage left its staging folder"
    assert not (repo / "models" / "weave").exists(), "DVC removed the output before the stage ran"
    # the scenario that went wrong: a rerun with other params must evaluate its own model
    set_params(repo, {"cfa": {"epochs": 3}})
    try:
        out = dvc(repo, "repro")
    finally:
        (repo / "params.yaml").write_text(params)
    assert {"train@weave", "evaluate@weave"} <= ran(out)
    assert json.loads((repo / "models" / "weave" / "model.json").read_text())["fit"]["epochs"] == 3
    assert not list(repo.glob("*/.*.partial.*")), "the next run removes what the killed one left"
    dvc(repo, "repro")  # back to the module's params, from the run-cache
    assert ran(dvc(repo, "repro")) == set()


def test_exp_run_switches_method_and_back_from_the_cache(repo):
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "baseline"], cwd=repo, check=True)
    out = dvc(repo, "exp", "run", "-n", "with-dfr", "-S", "model=dfr")
    assert ran(out) == {"validate", "train@weave", "train@washer", "evaluate@weave", "evaluate@washer",
                        "render@weave", "render@washer", "report"}
    assert json.loads((repo / "metrics" / "dfr" / "weave.json").read_text())["pixel_auroc"] > 0
    assert "# Results: DFR" in (repo / "reports" / "results.md").read_text()
    out = dvc(repo, "exp", "run", "-n", "back-to-cfa", "-S", "model=cfa")
    assert not {s for s in ran(out) if s.startswith(("train@", "evaluate@"))}, "CFA must come from the cache"
    assert "is cached - skipping run" in out
    table = json.loads(dvc(repo, "exp", "show", "--json"))
    names = {exp.get("name") for commit in table for exp in (commit.get("experiments") or [])}
    assert {"with-dfr", "back-to-cfa"} <= names
    diff = repo / "diff.html"
    dvc(repo, "plots", "diff", "with-dfr", "back-to-cfa", "-o", str(diff))
    html = (diff / "index.html").read_text()
    assert '"rev": "with-dfr"' in html and '"rev": "back-to-cfa"' in html


def test_three_seeds_through_the_queue_aggregate(repo):
    for seed in (11, 12, 13):
        dvc(repo, "exp", "run", "--queue", "-S", f"seed={seed}")
    dvc(repo, "exp", "run", "--run-all")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "uad.seeds", "--out", str(repo / "seeds.json")], cwd=repo,
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    groups = [g for g in json.loads((repo / "seeds.json").read_text()) if {11, 12, 13} <= set(g["seeds"])]
    assert groups and groups[0]["model"] == "cfa"
    stats = groups[0]["stats"]["weave"]["image_auroc"]
    assert stats["n"] >= 3 and 0 <= stats["mean"] <= 1 and stats["std"] >= 0
    assert "| image_auroc |" in proc.stdout and " ± " in proc.stdout


def test_adding_a_category_runs_only_its_stages_and_the_report(repo):
    set_params(repo, {"categories": ["weave", "washer", "grain"]})
    out = dvc(repo, "repro")
    # download regenerates the dataset deterministically; the other categories' data is
    # byte-identical, so none of their prepare/train/evaluate/render stages rerun
    assert ran(out) == {"validate", "download", "prepare@grain", "train@grain", "evaluate@grain", "render@grain",
                        "report"}
    assert (repo / "metrics" / "cfa" / "grain.json").exists()
    assert "| Metric | weave | washer | grain | Avg |" in (repo / "reports" / "results.md").read_text()


@pytest.mark.skipif(not (SHARED / "datasets" / "mtd").is_dir(), reason="../shared/datasets/mtd not present")
def test_exp_run_on_magnetic_tile_defects_offline(repo):
    out = dvc(repo, "exp", "run", "-n", "mtd", "-S", "dataset=mtd", "-S", "categories=[magnetic_tile]",
              "-S", f"data.mtd.source={SHARED / 'datasets' / 'mtd'}", "-S", "cfa.epochs=1")
    assert {"download", "prepare@magnetic_tile", "train@magnetic_tile", "report"} <= ran(out)
    metrics = json.loads((repo / "metrics" / "cfa" / "magnetic_tile.json").read_text())
    assert metrics["image_auroc"] > 0.5 and metrics["pixel_auroc"] > 0.5
    assert "| Metric | magnetic_tile | Avg |" in (repo / "reports" / "results.md").read_text()
