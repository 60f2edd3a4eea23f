"""Fingerprint of every built-in experiment's `:runlocal` run, to show a refactor changes no numbers.

    ./launch.sh bench parity.runlocal_fingerprint --out=FILE [--compare=OLD] [NAME ...]

Trains each experiment's `runlocal` preset (a few steps and one small evaluation) in a temporary
workdir and records every line of its metrics.jsonl except wall-clock figures. With --compare,
prints the first differing value per experiment and exits 1 unless every record equals OLD's
bit for bit (floats compared exactly).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile

EXPERIMENTS = {
    "faster_rcnn": "experiments/detection/faster_rcnn_shapes.py",
    "yolo": "experiments/detection/yolo_shapes.py",
    "detr": "experiments/detection/detr_shapes.py",
    "r2gen": "experiments/report/r2gen_cxr.py",
    "nadm": "experiments/report/nadm_cxr.py",
    "mkmia": "experiments/report/mkmia_cxr.py",
    "seq2seq": "experiments/seq2seq/reverse.py",
}
_CLOCK = ("time", "per_sec", "seconds", "throughput")  # metric names that measure wall time


def load_config(path: str, arg: str):
    spec = importlib.util.spec_from_file_location("experiment_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def fingerprint(path: str) -> list[dict]:
    """metrics.jsonl records (without wall-clock fields) of `path`'s runlocal run."""
    from mlx_research.train.trainer import Trainer  # pylint: disable=import-outside-toplevel

    config = load_config(path, "runlocal")
    with tempfile.TemporaryDirectory() as workdir:
        trainer = Trainer(config, workdir)
        try:
            trainer.train()
        finally:
            trainer.close()
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if not any(c in k for c in _CLOCK)} for r in records]


def first_difference(old: list[dict], new: list[dict]) -> str | None:
    if len(old) != len(new):
        return f"{len(old)} records before, {len(new)} now"
    for a, b in zip(old, new):
        if a != b:
            keys = sorted(set(a) | set(b))
            diff = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]
            return f"step {a.get('step')}: " + "; ".join(diff[:4])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"subset of {', '.join(EXPERIMENTS)}")
    parser.add_argument("--out", required=True, help="JSON file the fingerprints go to")
    parser.add_argument("--compare", help="earlier --out file to compare with")
    args = parser.parse_args()
    names = args.names or list(EXPERIMENTS)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        parser.error(f"unknown experiment(s) {', '.join(unknown)}")
    old = json.load(open(args.compare)) if args.compare else {}
    results, failed = {}, []
    for name in names:
        results[name] = fingerprint(EXPERIMENTS[name])
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
        if name in old:
            diff = first_difference(old[name], results[name])
            print(f"{name}: {'identical' if diff is None else 'DIFFERS ' + diff}", flush=True)
            failed += [name] * (diff is not None)
        else:
            print(f"{name}: {len(results[name])} records", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
