"""Faults and broken inputs at the stage level: killed parents, full disks, damaged models, bad params."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from uad import methods
from uad.methods.base import create
from uad.methods.cfa.model import CFA
from uad.artifacts import atomic_path, remove_stale_partials, staged_dir, write_json
from uad.config import ConfigError
from uad.training import train_category

from .conftest import REPO, tiny_config


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


SLEEPER = textwrap.dedent("""
    import sys, time
    from uad.cli import run_stage
    def main(cfg, args):
        print("started", flush=True)
        time.sleep(60)
    run_stage(main)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death handling is Linux's")
@pytest.mark.parametrize("through_shell", [False, True], ids=["direct", "through-a-shell"])
def test_a_stage_dies_with_the_process_that_started_it(tmp_path, through_shell):
    (tmp_path / "params.yaml").write_text("device: cpu\n")
    (tmp_path / "stage.py").write_text(SLEEPER)
    inner = f"{sys.executable} stage.py"
    # `; true` keeps the shell alive between its parent and the stage, as a shell that does not exec
    cmd = f"['sh', '-c', {inner + '; true'!r}]" if through_shell else f"{inner.split()!r}"
    launcher = textwrap.dedent(f"""
        import subprocess, sys, time
        p = subprocess.Popen({cmd}, stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "started"
        print(p.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", launcher], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    stage = child
    if through_shell:  # the stage is the shell's child
        deadline = time.time() + 10
        while time.time() < deadline:
            kids = [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/stat")
                    if _ppid(p) == child]
            if kids:
                stage = kids[0]
                break
            time.sleep(0.05)
    assert _alive(stage)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 5
    while _alive(stage) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(stage), "the stage outlived the process that started it"


def _ppid(stat: Path) -> int:
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError):
        return -1


def _stage(tmp_path: Path, script: str, params: str = "device: cpu\n") -> subprocess.CompletedProcess:
    (tmp_path / "params.yaml").write_text(params)
    (tmp_path / "stage.py").write_text(textwrap.dedent(script))
    return subprocess.run([sys.executable, "stage.py", "out/file.json"], cwd=tmp_path, capture_output=True,
                          text=True)


def test_a_full_disk_is_one_line_naming_where(tmp_path):
    proc = _stage(tmp_path, """
        import errno, os
        from uad.cli import run_stage
        def main(cfg, args):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), args[0])
        run_stage(main)
    """)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("error: no space left on device while writing out/file.json; free some space "
                                   "and rerun (earlier outputs are intact)")


def test_error_lines_are_bounded_whatever_the_input(tmp_path):
    proc = _stage(tmp_path, """
        from uad.cli import run_stage
        from uad.errors import UadError
        def main(cfg, args):
            raise UadError("bad name " + "x" * 1_000_000 + "\\nsecond line")
        run_stage(main)
    """)
    assert proc.returncode == 1 and len(proc.stderr) < 2100 and proc.stderr.count("\n") == 1


def test_a_failed_write_keeps_the_previous_output_and_leaves_no_partial(tmp_path, monkeypatch):
    dest = tmp_path / "models" / "weave"
    with staged_dir(dest) as tmp:
        (tmp / "model.pt").write_bytes(b"old model")
    with pytest.raises(OSError):
        with staged_dir(dest) as tmp:
            (tmp / "model.pt").write_bytes(b"half a ")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert (dest / "model.pt").read_bytes() == b"old model"
    assert os.listdir(dest.parent) == ["weave"]
    write_json(tmp_path / "m.json", {"a": 1})
    with pytest.raises(OSError):
        with atomic_path(tmp_path / "m.json") as tmp:
            tmp.write_text('{"a": ')
            raise OSError(errno.ENOSPC, "No space left on device")
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["m.json", "models"]


def test_staging_entries_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    from uad.artifacts import _HOST
    stale = tmp_path / f".weave.partial.{_HOST}.{dead}.abc"
    live = tmp_path / f".washer.partial.{_HOST}.{os.getpid()}.abc"
    foreign = tmp_path / f".grain.partial.otherhost.{dead}.abc"
    for p in (stale, live, foreign):
        p.mkdir()
    remove_stale_partials(tmp_path)
    assert not stale.exists() and live.exists() and foreign.exists()


def test_training_that_fails_leaves_the_previous_model(prepared, tmp_path, monkeypatch):
    cfg = tiny_config(model="cfa", cfa={"epochs": 1})
    out = tmp_path / "models" / "weave"
    train_category(cfg, prepared, out, tmp_path / "live")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken_fit(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(CFA, "fit", broken_fit)
    with pytest.raises(OSError):
        train_category(cfg, prepared, out, tmp_path / "live")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(os.listdir(out.parent)) == ["weave"] and sorted(os.listdir(tmp_path / "live")) == ["metrics.json"]


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.unlink(), "model.pt: no trained model; run the train stage first"),
    (lambda p: p.write_bytes(p.read_bytes()[:1000]), "model.pt: not a readable model"),
    (lambda p: p.write_bytes(b"not a model"), "model.pt: not a readable model"),
])
def test_a_missing_or_truncated_model_is_one_line_when_a_stage_runs_by_hand(prepared, tmp_path, damage, message):
    cfg = tiny_config(model="cfa", cfa={"epochs": 1})
    train_category(cfg, prepared, tmp_path / "models" / "weave")
    damage(tmp_path / "models" / "weave" / "model.pt")
    (tmp_path / "params.yaml").write_text("device: cpu\nimage_size: 64\ncategories: [weave]\n"
                                          "cfa: {epochs: 1, backbone: tf_efficientnet_lite0, feature_export: timm}\n")
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "evaluate.py"), "weave", str(prepared),
                           "models/weave", "scores/weave", "metrics"], cwd=tmp_path, capture_output=True,
                          text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert message in proc.stderr and proc.stderr.count("\n") == 1
    assert not (tmp_path / "metrics").exists() and not (tmp_path / "scores").exists()


def test_render_against_missing_scores_is_one_line(prepared, tmp_path):
    cfg = tiny_config(model="cfa", cfa={"epochs": 1})
    train_category(cfg, prepared, tmp_path / "models" / "weave")
    (tmp_path / "params.yaml").write_text("device: cpu\nimage_size: 64\n")
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "render.py"), "weave", str(prepared), "scores/weave",
                           "models/weave", "out.gif"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "scores missing or damaged" in proc.stderr and "rerun the evaluate stage" in proc.stderr
    assert not (tmp_path / "out.gif").exists()


@pytest.mark.parametrize("params, expected", [
    ({"cfa": {"k": 500}}, "cfa.k + cfa.j = 503 nearest items are asked for, but the memory bank holds 256"),
    ({"cfa": {"gamma_c": 300}}, "the memory bank holds 0 (16x16 patches / cfa.gamma_c 300)"),
    ({"cfa": {"layers": ["blocks.9"]}}, "cfa.layers: tf_efficientnet_lite0 has no layer 'blocks.9'"),
    ({"cfa": {"gamma_d": 100_000}}, "cfa.gamma_d: 100000 leaves no descriptor channel"),
])
def test_method_parameters_that_cannot_work_name_the_parameter(params, expected):
    cfg = tiny_config(model="cfa", cfa={"pretrained": False, **params["cfa"]})
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        create(cfg)


def test_unknown_model_values_list_the_valid_ones(tmp_path):
    (tmp_path / "params.yaml").write_text("model: knn\n")
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "validate.py"), "ok.txt"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 1 and f"model: 'knn' is not valid; choose one of {list(methods.names())}" in proc.stderr
    assert not (tmp_path / "ok.txt").exists()
    (tmp_path / "params.yaml").write_text("image_szie: 256\n")
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "validate.py"), "ok.txt"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "unknown parameter image_szie" in proc.stderr


def test_the_maps_of_a_prepared_split_that_was_cut_short_are_refused(prepared, tmp_path):
    import shutil
    copy = tmp_path / "weave"
    shutil.copytree(prepared, copy)
    data = (copy / "test_images.npy").read_bytes()
    (copy / "test_images.npy").write_bytes(data[: len(data) // 3])
    from uad.data.layout import LayoutError
    from uad.data.prepared import load_split
    with pytest.raises(LayoutError, match="test_images.npy: missing or damaged .*rerun the prepare stage"):
        load_split(copy, "test")
    np.save(copy / "test_images.npy", np.zeros((3, 64, 64, 3), np.uint8))
    with pytest.raises(LayoutError, match="test_images.npy: 3 entries, the index lists 12"):
        load_split(copy, "test")
