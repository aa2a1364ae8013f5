"""Aggregate experiments that differ only by `seed`: mean +- std per metric and category.

    for s in 1 2 3; do dvc exp run --queue -S seed=$s; done
    dvc queue start            # or: dvc exp run --run-all (waits for them)
    python -m uad.seeds        # tables on stdout, JSON in reports/seeds.json

Reads `dvc exp show --json`: the committed baseline and its experiments. Runs whose
params are equal except for the seed form one group; a group needs two or more
distinct seeds. Std is the sample standard deviation (n - 1).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from uad import methods
from uad.metrics import QUALITY, quality_path


def runs_from_exp_show(rows: list[dict]) -> list[dict[str, Any]]:
    """Flatten `dvc exp show --json` into {name, params, metrics} records (workspace row skipped)."""
    out = []

    def add(rev: dict, name: str) -> None:
        data = rev.get("data") or {}
        params = (data.get("params") or {}).get("params.yaml", {}).get("data")
        metrics = {path: entry.get("data", {}) for path, entry in (data.get("metrics") or {}).items()}
        if params and not rev.get("error"):
            out.append({"name": name, "params": params, "metrics": metrics, "timestamp": data.get("timestamp")})

    for row in rows:
        if row.get("rev") == "workspace":
            continue
        add(row, row.get("name") or row["rev"][:7])
        for exp in row.get("experiments") or []:
            for rev in exp.get("revs") or []:
                add(rev, rev.get("name") or exp.get("name") or rev["rev"][:7])
    return out


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Groups of runs equal but for the seed, with per-category mean/std of every quality metric."""
    groups: dict[str, dict[int, dict]] = defaultdict(dict)
    for run in sorted(runs, key=lambda r: r.get("timestamp") or ""):
        params = dict(run["params"])
        seed = params.pop("seed", None)
        groups[json.dumps(params, sort_keys=True)][seed] = run  # the newest run of a seed wins
    result = []
    for key, by_seed in groups.items():
        if len(by_seed) < 2:
            continue
        params = json.loads(key)
        model, stats = params["model"], {}
        for cat in params["categories"]:
            path = quality_path(model, cat).as_posix()
            for metric in (m.key for m in QUALITY):
                values = [r["metrics"][path][metric] for r in by_seed.values()
                          if metric in r["metrics"].get(path, {})]
                if len(values) >= 2:
                    stats.setdefault(cat, {})[metric] = {"mean": statistics.fmean(values),
                                                         "std": statistics.stdev(values), "n": len(values)}
        result.append({"model": model, "dataset": params["dataset"], "seeds": sorted(by_seed),
                       "runs": [r["name"] for r in by_seed.values()], "stats": stats})
    return result


def markdown(group: dict[str, Any]) -> str:
    cats = list(group["stats"])
    lines = [f"{methods.spec(group['model']).label} on {group['dataset']}, seeds {group['seeds']} ({', '.join(group['runs'])}):",
             "", "| metric | " + " | ".join(cats) + " |", "|---" * (len(cats) + 1) + "|"]
    for metric in (m.key for m in QUALITY):
        cells = []
        for cat in cats:
            s = group["stats"][cat].get(metric)
            cells.append(f"{s['mean']:.3f} ± {s['std']:.3f}" if s else "-")
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m uad.seeds", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("reports/seeds.json"))
    args = ap.parse_args(argv)
    proc = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"error: dvc exp show failed: {proc.stderr.strip()}", file=sys.stderr)
        return 2
    groups = aggregate(runs_from_exp_show(json.loads(proc.stdout)))
    if not groups:
        print("no experiments that differ only by seed; queue some with `dvc exp run --queue -S seed=N`")
        return 1
    print("\n\n".join(markdown(g) for g in groups))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(groups, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
