"""Train the bundled demonstration model and copy the best checkpoint into the package.

Run from the repository root after ``generate_data.py``::

    python models/train_default/generate_data.py --out scratch/train_default/data --seed 0
    python models/train_default/train.py            # writes eqv2calc/registry/models/eqv2calc-demo-emt.pt

``--resume`` continues an interrupted run from ``scratch/train_default/run/last.pt``.
The same training can be run with the CLI:
``eqv2calc train models/train_default/train_config.yaml`` (then copy ``best.pt``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from eqv2calc.training import load_config, train

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(HERE / "train_config.yaml"))
    parser.add_argument(
        "--out", default=str(REPO / "scratch" / "train_default" / "run"), help="run folder"
    )
    parser.add_argument(
        "--target",
        default=str(REPO / "eqv2calc" / "registry" / "models" / "eqv2calc-demo-emt.pt"),
        help="where the model goes",
    )
    parser.add_argument("--epochs", type=int, default=None, help="override run.epochs")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    args = parser.parse_args()

    config = load_config(args.config)
    config.run.out_dir = args.out
    config.run.resume = args.resume
    if args.epochs is not None:
        config.run.epochs = args.epochs
    t0 = time.time()
    result = train(config, log=lambda line: print(line, flush=True))
    elapsed = time.time() - t0
    if result.best_checkpoint is None:
        raise SystemExit("no best checkpoint was written")
    target = Path(args.target)
    tmp = target.with_name(target.name + ".tmp")
    shutil.copyfile(result.best_checkpoint, tmp)
    tmp.replace(target)
    report = {
        "seconds_this_call": round(elapsed, 1),
        "epochs": result.epochs_completed,
        "best": result.best_metrics,
        "test": result.test_metrics,
        "model": str(target),
        "size_bytes": target.stat().st_size,
    }
    (Path(args.out) / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
