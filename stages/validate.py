"""Stage `validate`: check the whole of params.yaml before any other stage runs.

Other stages track only the parameters they read, so a misspelled key or an unknown
`model` would otherwise pass unnoticed or fail after DVC has removed outputs. This
stage tracks every parameter and writes a constant file that `download` depends on.

usage: python stages/validate.py OUT_FILE
"""

from uad.artifacts import write_text
from uad.cli import run_stage

if __name__ == "__main__":
    run_stage(lambda cfg, args: write_text(args[0], "params.yaml is valid\n"), sections="all")
