"""The `uad` command: use a trained model outside the pipeline.

    uad predict MODEL_DIR INPUT... --out DIR [--device auto] [--threshold T] [--no-images]
    uad export MODEL_DIR --format onnx|torch --out FILE
    uad info MODEL_DIR

(also `python -m uad ...`). A model folder is what the train stage writes
(`models/<category>/`); it carries everything scoring needs.
"""

from __future__ import annotations

import argparse
import json
import sys

from uad.errors import UadError, one_line


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="uad", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="score images or folders; writes DIR/predictions.csv and overlays")
    p.add_argument("model", help="model folder (models/<category>)")
    p.add_argument("inputs", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threshold", type=float, default=None, help="image threshold (default: the calibrated one)")
    p.add_argument("--no-images", action="store_true", help="write no overlay PNGs")
    e = sub.add_parser("export", help="the whole scoring path as one ONNX graph or torch.export program")
    e.add_argument("model", help="model folder (models/<category>)")
    e.add_argument("--format", choices=("onnx", "torch"), default="onnx")
    e.add_argument("--out", required=True, help="file to write (.onnx or .pt2)")
    i = sub.add_parser("info", help="what a model expects and its thresholds, as JSON")
    i.add_argument("model", help="model folder (models/<category>)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "predict":
            from uad.predict import predict

            if args.batch_size < 1:
                raise UadError(f"--batch-size: {args.batch_size} must be positive")
            rows = predict(args.model, args.inputs, args.out, device=args.device, batch_size=args.batch_size,
                           threshold=args.threshold, images=not args.no_images)
            failed = sum(bool(r.error) for r in rows)
            flagged = sum(bool(r.anomalous) for r in rows)
            print(f"predict: {len(rows)} images, {flagged} anomalous, {failed} failed -> {args.out}/predictions.csv",
                  file=sys.stderr)
            return 1 if failed else 0
        if args.command == "export":
            from uad.export import export_folder

            export_folder(args.model, args.out, args.format)
            return 0
        from uad.methods.base import read_saved

        saved = read_saved(args.model)
        print(json.dumps({k: v for k, v in saved.items() if k != "state"}, indent=1))
        return 0
    except UadError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
