"""Apply a preset: deep-merge YAML files into params.yaml, validate, and keep its comments.

    python -m uad.preset presets/dfr_paper.yaml            # then: dvc repro
    python -m uad.preset presets/dfr_paper.yaml --dry-run  # show what would change
    python -m uad.preset --set model=dfr --set dfr.epochs=10

The merged result is validated with the same typed config the stages use before
anything is written, so a preset can never leave params.yaml invalid.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from uad.config import ConfigError, config_from_dict, dotted, merge


def _plain(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def changes(before: Any, after: Any, prefix: str = "") -> list[str]:
    """Dotted `key: old -> new` lines for every leaf that differs."""
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for key in after:
            out += changes(before.get(key), after[key], f"{prefix}{key}.")
        return out
    return [] if before == after else [f"{prefix[:-1]}: {before!r} -> {after!r}"]


def apply(params: Path, presets: list[Path], dry_run: bool = False, assignments: list[str] = ()) -> list[str]:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096  # ruamel folds lines over 80 columns (the dataset URLs); keep the file as written
    doc = yaml.load(params.read_text())
    before = _plain(doc)
    for preset in presets:
        overlay = YAML(typ="safe").load(preset.read_text())
        if not isinstance(overlay, Mapping):
            raise ConfigError(f"{preset}: a preset must be a mapping of parameters")
        merge(doc, overlay)
    merge(doc, dotted(list(assignments)))
    after = _plain(doc)
    try:
        config_from_dict(after)
    except ConfigError as exc:
        what = ", ".join([*map(str, presets), *assignments])
        raise ConfigError(f"{what} would make params invalid: {exc}") from None
    if not dry_run:
        out = io.StringIO()
        yaml.dump(doc, out)
        params.write_text(out.getvalue())
    return changes(before, after)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m uad.preset", description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="*", type=Path, help="YAML files under presets/, applied in order")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="one parameter, dotted (applied after the presets)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--dry-run", action="store_true", help="print the changes, write nothing")
    args = parser.parse_args(argv)
    try:
        lines = apply(args.params, args.presets, args.dry_run, args.set)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    verb = "would change" if args.dry_run else "changed"
    print(f"{args.params}: {verb} {len(lines)} parameter(s)")
    for line in lines:
        print(f"  {line}")


if __name__ == "__main__":
    main()
