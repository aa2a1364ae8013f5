"""The metrics gate: compare every metric of every category with the values committed at a revision.

    python -m uad.gate                      # workspace vs HEAD, tolerance from params.yaml
    python -m uad.gate --rev main --summary "$GITHUB_STEP_SUMMARY"

Reads `metrics/<model>/<category>.json` (the gated metrics of `uad.metrics.QUALITY`;
`.perf.json` timings are not gated) for every method in the workspace and
`git show <rev>:<same path>`. A metric that gets worse (lower, or higher where lower
is better) by more than `gate.tolerance` is a regression and the gate exits 1; so does
a baseline metric the run did not produce. The comparison is always printed as a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from uad.config import load_config
from uad.errors import ConfigError
from uad.metrics import BY_KEY, METRICS_ROOT, parse_path


@dataclass(frozen=True)
class Row:
    model: str
    category: str
    metric: str
    baseline: float | None
    current: float | None
    status: str  # ok | improved | REGRESSION | new | MISSING

    @property
    def delta(self) -> float | None:
        if self.baseline is None or self.current is None:
            return None
        return self.current - self.baseline


def _git_files(rev: str, root: Path) -> dict[str, str]:
    """{path: content} of the metric files committed at `rev` under `root`."""
    listing = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "--", str(root)], capture_output=True,
                             text=True)
    if listing.returncode != 0:
        raise ConfigError(f"gate: cannot read revision {rev!r}: {listing.stderr.strip()}")
    out = {}
    for path in listing.stdout.split():
        parsed = parse_path(path)
        if parsed and parsed[2] == "quality" and len(Path(path).parts) == 3:
            out[path] = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True,
                                       check=True).stdout
    return out


def _workspace_files(root: Path) -> dict[str, str]:
    return {p.as_posix(): p.read_text() for p in sorted(root.glob("*/*.json")) if parse_path(p)[2] == "quality"}


def compare(baseline: dict[str, str], current: dict[str, str], tolerance: float) -> list[Row]:
    """Rows for every (file, metric) in either side; each metric's direction comes from `uad.metrics`."""
    rows = []
    for path in sorted(set(baseline) | set(current)):
        model, name, _ = parse_path(path)
        base = json.loads(baseline[path]) if path in baseline else {}
        cur = json.loads(current[path]) if path in current else {}
        for metric in sorted(set(base) | set(cur)):
            known = BY_KEY.get(metric)
            if known is not None and not known.gated:
                continue
            b, c = base.get(metric), cur.get(metric)
            sign = -1 if known is not None and not known.higher_is_better else 1
            if b is None:
                status = "new"
            elif c is None:
                status = "MISSING"
            elif sign * (c - b) < -tolerance:
                status = "REGRESSION"
            elif sign * (c - b) > tolerance:
                status = "improved"
            else:
                status = "ok"
            rows.append(Row(model, name, metric, b, c, status))
    return rows


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def table(rows: list[Row], rev: str, tolerance: float) -> str:
    """A Markdown table (readable as plain text too) and a one-line verdict."""
    lines = [f"| model | category | metric | {rev} | this run | change | status |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        status = f"**{r.status}**" if r.status in ("REGRESSION", "MISSING") else r.status
        lines.append(f"| {r.model} | {r.category} | {r.metric} | {_fmt(r.baseline)} | {_fmt(r.current)} | "
                     f"{_fmt(r.delta, signed=True)} | {status} |")
    lines += ["", verdict(rows, tolerance)]
    return "\n".join(lines)


def verdict(rows: list[Row], tolerance: float) -> str:
    bad = [r for r in rows if r.status in ("REGRESSION", "MISSING")]
    better = [r for r in rows if r.status == "improved"]
    head = f"gate: {len(rows)} metrics compared (tolerance {tolerance})"
    if bad:
        return f"{head}: FAILED, {len(bad)} regressed or missing"
    if better:
        return f"{head}: passed, {len(better)} improved beyond the tolerance (commit the new metrics as baseline)"
    return f"{head}: passed, no change beyond the tolerance"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m uad.gate", description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default="HEAD", help="revision holding the baseline metrics (default HEAD)")
    ap.add_argument("--tolerance", type=float, default=None, help="default: gate.tolerance in params.yaml")
    ap.add_argument("--summary", type=Path, default=None, help="also append the table to this file")
    args = ap.parse_args(argv)
    try:
        tolerance = args.tolerance if args.tolerance is not None else load_config().gate.tolerance
        rows = compare(_git_files(args.rev, METRICS_ROOT), _workspace_files(METRICS_ROOT), tolerance)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = table(rows, args.rev, tolerance)
    print(text)
    if args.summary:
        with open(args.summary, "a") as f:
            f.write("## Metrics gate\n\n" + text + "\n")
    return 1 if any(r.status in ("REGRESSION", "MISSING") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
