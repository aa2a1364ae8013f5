"""GPU measurements of the pipeline, run from the repository root as `python -m benchmarks.<tool>`.

Tools (each module's docstring has its GPU command and a CPU smoke command):
- run: the pipeline's stage functions (no DVC) for several methods, optionally repeated;
- speed: phase-by-phase timing at the papers' settings on MVTec-sized synthetic data;
- e2e: `dvc repro` over MVTec-sized synthetic categories in a temporary copy of the project;
- anomalib_side_by_side: our methods and variants against anomalib on Magnetic Tile Defects.

Shared: harness (params, report header, timing, data, result-file names), synthetic (the
MVTec-sized data), variants (`ours/<name>`: registered methods and their benchmark-only
variants), anomalib_models (anomalib's side, imported only when asked for). Results are written
to benchmarks/results/<tool>_<methods>_<dataset>_<precision>_<device>[_<tag>].json unless
`--out` says otherwise.
"""
