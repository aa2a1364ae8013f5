"""The CI metrics gate against baselines committed in a temporary git repository."""

import json
import subprocess
import sys

import pytest

from uad.gate import compare, main

from .conftest import REPO

BASE = {"image_auroc": 0.95, "pixel_auroc": 0.98, "aupro": 0.90}


def git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    for cmd in (["init", "-q"], ["config", "user.name", "t"], ["config", "user.email", "t@t"]):
        git(tmp_path, *cmd)
    for model in ("cfa", "dfr"):
        (tmp_path / "metrics" / model).mkdir(parents=True)
        for cat in ("weave", "washer"):
            (tmp_path / "metrics" / model / f"{cat}.json").write_text(json.dumps(BASE))
        (tmp_path / "metrics" / model / "weave.perf.json").write_text(json.dumps({"fit_seconds": 3.0}))
    (tmp_path / "params.yaml").write_text("gate:\n  tolerance: 0.01\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "baseline")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(repo, model, cat, **values):
    path = repo / "metrics" / model / f"{cat}.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


def test_unchanged_metrics_pass(repo, capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "| model | category | metric | HEAD | this run | change | status |" in out
    assert "gate: 12 metrics compared (tolerance 0.01): passed, no change" in out
    assert "fit_seconds" not in out  # timings are not gated


def test_a_drop_beyond_the_tolerance_fails_and_is_shown(repo, capsys):
    write(repo, "dfr", "washer", pixel_auroc=0.95)
    write(repo, "cfa", "weave", image_auroc=0.945)  # within tolerance
    assert main([]) == 1
    out = capsys.readouterr().out
    assert "| dfr | washer | pixel_auroc | 0.9800 | 0.9500 | -0.0300 | **REGRESSION** |" in out
    assert "| cfa | weave | image_auroc | 0.9500 | 0.9450 | -0.0050 | ok |" in out
    assert "FAILED, 1 regressed or missing" in out


def test_a_baseline_perturbed_upward_makes_the_gate_fail(repo, capsys):
    """The deliberate regression: commit a better baseline than the run produces."""
    write(repo, "cfa", "weave", aupro=0.99)
    git(repo, "commit", "-qam", "optimistic baseline")
    write(repo, "cfa", "weave", aupro=0.90)
    assert main([]) == 1
    assert "| cfa | weave | aupro | 0.9900 | 0.9000 | -0.0900 | **REGRESSION** |" in capsys.readouterr().out


def test_an_improvement_passes_and_says_so(repo, capsys, tmp_path):
    write(repo, "cfa", "washer", image_auroc=0.99)
    summary = tmp_path / "summary.md"
    assert main(["--summary", str(summary)]) == 0
    out = capsys.readouterr().out
    assert "| cfa | washer | image_auroc | 0.9500 | 0.9900 | +0.0400 | improved |" in out
    assert "passed, 1 improved beyond the tolerance" in out
    assert summary.read_text().startswith("## Metrics gate")


def test_missing_results_and_new_categories(repo, capsys):
    (repo / "metrics" / "dfr" / "weave.json").unlink()
    (repo / "metrics" / "cfa" / "grain.json").write_text(json.dumps(BASE))
    assert main([]) == 1
    out = capsys.readouterr().out
    assert "| dfr | weave | aupro | 0.9000 | - | - | **MISSING** |" in out
    assert "| cfa | grain | aupro | - | 0.9000 | - | new |" in out


def test_tolerance_from_the_command_line_and_bad_revisions(repo, capsys):
    write(repo, "dfr", "washer", pixel_auroc=0.95)
    assert main(["--tolerance", "0.05"]) == 0
    assert main(["--rev", "no-such-rev"]) == 2


def test_compare_treats_every_metric_as_higher_is_better():
    rows = compare({"metrics/cfa/a.json": json.dumps({"m": 0.5})}, {"metrics/cfa/a.json": json.dumps({"m": 0.4})},
                   0.01)
    assert [r.status for r in rows] == ["REGRESSION"]


def test_gate_runs_as_a_module_in_the_real_repository():
    proc = subprocess.run([sys.executable, "-m", "uad.gate"], cwd=REPO, capture_output=True, text=True)
    assert "gate:" in proc.stdout and proc.returncode in (0, 1)
