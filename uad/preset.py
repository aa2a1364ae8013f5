"""Build params.yaml from the defaults and presets: one source for every value, comments included.

    python -m uad.preset lite0 demo                     # what is committed: the CPU demo, offline weights
    python -m uad.preset mvtec_ad cfa_paper             # CFA as published, on MVTec AD
    python -m uad.preset lite0 mtd --set model=dfr      # presets, then single values
    python -m uad.preset --set model=dfr                # no preset: change values of the current params.yaml
    python -m uad.preset mvtec_ad dfr_paper --dry-run   # show what would change, write nothing
    python -m uad.preset --check                        # is params.yaml what its header's command builds?

params.yaml = the defaults (uad/config.py and each method's params.py, which hold the
published settings) + the presets in order (presets/<name>.yaml, small deltas) + the
`--set` values. With `--set` alone, the current params.yaml's own recipe (its first line)
is extended by the new values. The file is rendered with every parameter's description as a comment and
the default next to values that differ from it; the command that built it is its first
line. The result is validated before anything is written. Hand edits and `dvc exp run -S`
are fine afterwards; rebuilding starts again from the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from uad import methods
from uad.config import Config, config_from_dict, dotted, merged, to_dict
from uad.errors import ConfigError, UadError

PRESETS = Path(__file__).resolve().parents[1] / "presets"
BUILT_BY = "# built by: python -m uad.preset"


def defaults() -> dict[str, Any]:
    """Every parameter at its default, method sections included, as params.yaml holds them."""
    return to_dict(Config(methods={name: methods.spec(name).params() for name in methods.names()}))


def preset_path(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    candidate = PRESETS / f"{name}.yaml"
    if not candidate.is_file():
        available = sorted(p.stem for p in PRESETS.glob("*.yaml"))
        raise ConfigError(f"preset {name!r}: no such file; available: {available}")
    return candidate


def read_preset(name: str) -> dict[str, Any]:
    path = preset_path(name)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: a preset must be a mapping of parameters")
    return dict(data)


def build(presets: list[str], assignments: list[str] = ()) -> dict[str, Any]:
    """Defaults + presets + `--set` values, validated (ConfigError naming the preset otherwise)."""
    params = defaults()
    for name in presets:
        params = merged(params, read_preset(name))
    params = merged(params, dotted(list(assignments)))
    try:
        config_from_dict(params)
    except ConfigError as exc:
        what = ", ".join([*presets, *assignments]) or "the defaults"
        raise ConfigError(f"{what} would make params invalid: {exc}") from None
    return params


# ----------------------------------------------------------------------------------- rendering


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _docs(cls: type) -> dict[str, str]:
    return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls)}


def _lines(values: Mapping[str, Any], default: Mapping[str, Any], cls: type | None, indent: str) -> list[str]:
    docs = _docs(cls) if cls else {}
    out = []
    for key, value in values.items():
        sub = _section_class(cls, key)
        if isinstance(value, Mapping) and sub is not None:
            out.append(f"{indent}{key}:" + (f"  # {sub.__doc__.splitlines()[0]}" if _own_doc(sub) else ""))
            out += _lines(value, default.get(key, {}), sub, indent + "  ")
            continue
        line = f"{indent}{key}: {_scalar(value)}"
        note = docs.get(key, "")
        if key in default and default[key] != value:
            note = f"{note} [default: {_scalar(default[key])}]".strip()
        out.append(f"{line.ljust(36)}  # {note}" if note else line)
    return out


def _own_doc(cls: type) -> bool:
    return bool(cls.__doc__) and not cls.__doc__.startswith(cls.__name__ + "(")


def _section_class(cls: type | None, key: str) -> type | None:
    if cls is None:
        return None
    for f in dataclasses.fields(cls):
        if f.name == key and f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(
                f.default_factory):
            return f.default_factory
    return None


def render(params: Mapping[str, Any], command: str) -> str:
    """params.yaml's text: the header, the pipeline's sections, then one section per method."""
    base = defaults()
    core = {k: v for k, v in params.items() if k not in methods.names()}
    lines = [f"{BUILT_BY} {command}".rstrip(),
             "# Every stage reads this file through uad.config (typed, validated); the defaults, noted where",
             "# a value differs, are the published settings. Rebuild with `python -m uad.preset`.", ""]
    lines += _lines(core, base, Config, "")
    for name in methods.names():
        spec = methods.spec(name)
        lines += ["", f"{name}:  # {spec.title} ({spec.paper})"]
        lines += _lines(params.get(name, {}), base[name], spec.params, "  ")
    return "\n".join(lines) + "\n"


def recipe(text: str) -> tuple[list[str], list[str]]:
    """(presets, `--set` values) of a params.yaml built by this tool, from its first line."""
    return _parse_args(recorded_command(text))


def recorded_command(text: str) -> list[str]:
    """The preset arguments in the header of a params.yaml built by this tool."""
    first = text.splitlines()[0] if text else ""
    if not first.startswith(BUILT_BY):
        raise ConfigError(f"params.yaml: its first line is not `{BUILT_BY} ...`; it was not built by this tool")
    return shlex.split(first[len(BUILT_BY):])


def _changes(before: Any, after: Any, prefix: str = "") -> list[str]:
    """Dotted `key: old -> new` lines for every leaf that differs."""
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for key in {**before, **after}:
            out += _changes(before.get(key), after.get(key), f"{prefix}{key}.")
        return out
    return [] if before == after else [f"{prefix[:-1]}: {before!r} -> {after!r}"]


def _parse_args(args: list[str]) -> tuple[list[str], list[str]]:
    presets, sets, it = [], [], iter(args)
    for arg in it:
        if arg == "--set":
            sets.append(next(it, ""))
        elif arg.startswith("--set="):
            sets.append(arg.removeprefix("--set="))
        else:
            presets.append(arg)
    return presets, sets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m uad.preset", description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="*", help="preset names (presets/<name>.yaml) or YAML files, in order")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="one dotted parameter")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--dry-run", action="store_true", help="print the changes, write nothing")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 unless params.yaml is exactly what its header's command builds")
    args = parser.parse_args(argv)
    try:
        current_text = args.params.read_text() if args.params.exists() else ""
        if args.check:
            presets, sets = recipe(current_text)
            command = shlex.join(recorded_command(current_text))
            expected = render(build(presets, sets), command)
            if expected != current_text:
                print(f"{args.params}: differs from what `python -m uad.preset {command}` builds; rebuild it "
                      f"with that command", file=sys.stderr)
                return 1
            print(f"{args.params}: as built by `python -m uad.preset {command}`")
            return 0
        presets, sets = args.presets, args.set
        if not presets and sets and current_text:  # change single values of the current file's recipe
            presets, earlier = recipe(current_text)
            sets = [*earlier, *sets]
        params = build(presets, sets)
        command = shlex.join([*presets, *(x for a in sets for x in ("--set", a))])
        before = yaml.safe_load(current_text) or {} if current_text else {}
    except (UadError, OSError, yaml.YAMLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    lines = _changes(before, params)
    if not args.dry_run:
        args.params.write_text(render(params, command))
    print(f"{args.params}: {'would change' if args.dry_run else 'changed'} {len(lines)} parameter(s)")
    for line in lines:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
