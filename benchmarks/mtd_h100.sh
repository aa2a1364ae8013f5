#!/usr/bin/env bash
# The commands behind the Magnetic Tile Defects table in README.md (run on the GPU machine).
# Carried there: .whl/ (kornia wheels), .device/mtd (a copy of ../shared/datasets/mtd) and
# .device/weights/tf_efficientnet_lite0_blocks0-4.timm.pth (../shared/weights): the
# offline ImageNet weights of tf_efficientnet_lite0 as an explicit weights file.
set -euo pipefail
export TQDM_DISABLE=1
W=.device/weights/tf_efficientnet_lite0_blocks0-4.timm.pth
OUT=${OUT:-benchmarks/results}
B="python3 benchmarks/run.py --preset presets/mtd.yaml --set data.mtd.source=.device/mtd --set cfa.weights=$W --set dfr.weights=$W"
# DFR with the paper's training schedule (150 epochs, Adam 1e-4), twice (rerun closeness)
$B --models dfr --model-set dfr:dfr.epochs=150 --model-set dfr:dfr.lr=0.0001 --repeat 2 --out "$OUT/mtd_dfr_h100.json"
# CFA with the official settings (30 epochs), twice, and after 1, 3 and 10 epochs
$B --models cfa --repeat 2 --out "$OUT/mtd_cfa_e30_h100.json"
for e in 1 3 10; do $B --models cfa --model-set cfa:cfa.epochs=$e --out "$OUT/mtd_cfa_e${e}_h100.json"; done
# the demo with the committed params, both methods, twice
python3 benchmarks/run.py --set cfa.weights=$W --set dfr.weights=$W --models cfa dfr --repeat 2 --out "$OUT/demo_h100.json"
