#!/usr/bin/python3
"""Print a hysim results file (results/<experiment>/<run>.h5): attributes, model
sizes, the metrics table, evals and events. Needs only h5py (no hysim code).

usage: scripts/read_results.py RUN.h5 [--last N] [--config]
"""
import argparse
import math
import sys

import h5py

COLUMNS = ["step", "tokens", "flops", "train_loss", "val_loss", "lr", "grad_norm", "tokens_per_s"]


def text(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def fmt(v):
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file")
    ap.add_argument("--last", type=int, default=0, help="print only the last N metrics rows")
    ap.add_argument("--config", action="store_true", help="print the full config text")
    args = ap.parse_args()

    with h5py.File(args.file, "r") as f:
        for k in ("version", "git_hash", "host", "backend", "created"):
            print(f"{k}: {text(f.attrs.get(k, ''))}")
        if args.config:
            print("config:\n" + text(f.attrs.get("config", "")))
        if "model" in f and len(f["model"].attrs):
            print("model: " + ", ".join(f"{k}={int(v)}" for k, v in f["model"].attrs.items()))

        m = f["metrics"]
        cols = {c: m[c][()].tolist() for c in COLUMNS if c in m}
        n = len(cols.get("step", []))
        print(f"metrics: {n} rows")
        print("  ".join(f"{c:>12}" for c in cols))
        for i in range(max(0, n - args.last) if args.last else 0, n):
            print("  ".join(f"{fmt(cols[c][i]):>12}" for c in cols))

        if "eval" in f:
            for task in f["eval"]:
                for length in sorted(f["eval"][task], key=int):
                    g = f["eval"][task][length]
                    print(f"eval {task} length {length}: accuracy {fmt(float(g['accuracy'][()]))}"
                          f" loss {fmt(float(g['loss'][()]))} step {int(g.attrs.get('step', -1))}")
        if "events" in f:
            for s, msg in zip(f["events/step"][()], f["events/message"][()]):
                print(f"event at step {int(s)}: {text(msg)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
