#!/usr/bin/python3
"""Converts scripts/hf_fixture.py's .npz files into the HDF5 fixtures tests/test_hf_import.cpp reads.

Usage: scripts/npz_to_h5.py OUT_DIR/olmo_hybrid_tiny_rope.npz ... [--out tests/fixtures]

Each X.npz becomes <out>/X.h5 with
  hf/<HF parameter name>  float32, as in the HF state dict (e.g. hf/model.layers.0.linear_attn.conv1d.weight)
  tokens                  int64 [B, T]
  logits                  float64 [B, T, V]  HF as shipped (float32 internals)
  logits_fp64             float64 [B, T, V]  HF with its float32 casts made float64
  attrs: config_json (the HF config), versions ("transformers X torch Y"), source (this script)
Needs numpy and h5py (Debian: python3-numpy python3-h5py).
"""
import argparse
import json
import os
import sys

import h5py
import numpy as np


def convert(npz_path: str, out_dir: str) -> str:
    z = np.load(npz_path)
    out = os.path.join(out_dir, os.path.splitext(os.path.basename(npz_path))[0] + ".h5")
    config_json = str(z["config_json"])
    json.loads(config_json)  # must parse
    tmp = out + ".tmp"
    with h5py.File(tmp, "w") as f:
        for k in sorted(z.files):
            if k.startswith("hf/"):
                a = z[k]
                assert a.dtype == np.float32, (k, a.dtype)
                f.create_dataset(k, data=a)
        f.create_dataset("tokens", data=z["tokens"].astype(np.int64))
        f.create_dataset("logits", data=z["logits"].astype(np.float64))
        f.create_dataset("logits_fp64", data=z["logits_fp64"].astype(np.float64))
        f.attrs["config_json"] = config_json
        f.attrs["versions"] = str(z["versions"])
        f.attrs["source"] = "scripts/hf_fixture.py + scripts/npz_to_h5.py"
    os.replace(tmp, out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("npz", nargs="+")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for p in args.npz:
        out = convert(p, args.out)
        print(f"{p} -> {os.path.normpath(out)} ({os.path.getsize(out)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
