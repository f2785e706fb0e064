"""Sequential fixed-radius certification versus fixed-n CERTIFY on the same inputs.

Reads a fixed-n JSONL written by ``bastion certify`` and certifies the same inputs at one
radius with the sequential test (``bastion certify --radius``, same seed, alpha, n as the
most draws), then reports how often the decisions agree (certified at r, i.e. correct and
radius >= r, versus not) and the ratio of forward passes.

    .venv/bin/python benchmarks/sequential_vs_fixed.py runs/smoothing/gaussian-0.25 \
        runs/smoothing/gaussian-0.25-n10000.jsonl --sigma 0.25 --radius 0.25
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bastion.certify.rowstore import read_header, read_rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("fixed_jsonl")
    p.add_argument("--sigma", type=float, required=True)
    p.add_argument("--radius", type=float, required=True)
    args = p.parse_args()
    head = read_header(args.fixed_jsonl)
    fixed = read_rows(args.fixed_jsonl)
    fixed_path = Path(args.fixed_jsonl)
    out = fixed_path.with_name(f"{fixed_path.stem}-seq-r{args.radius}.jsonl")
    cmd = [sys.executable, "-m", "bastion.cli", "certify", args.run_dir, "--sigma", str(args.sigma),
           "--n0", str(head["n0"]), "--n", str(head["n"]), "--alpha", str(head["alpha"]),
           "--n-inputs", str(len(fixed)), "--skip", str(head["skip"]), "--radius",
           str(args.radius), "--out", str(out), "--seed", str(head["seed"])]
    subprocess.run(cmd, check=True)
    seq = {r.index: r for r in read_rows(out)}
    agree, passes_fixed, passes_seq = 0, 0, 0
    for r in fixed:
        s = seq[r.index]
        fixed_ok = r.correct and r.radius >= args.radius
        seq_ok = s.correct and not s.abstained
        agree += fixed_ok == seq_ok
        passes_fixed += head["n0"] + r.details["counts"]["n"]
        passes_seq += head["n0"] + s.details["counts"]["n"]
    print(json.dumps({
        "inputs": len(fixed), "radius": args.radius, "agreement": agree / len(fixed),
        "forward_passes_fixed": passes_fixed, "forward_passes_sequential": passes_seq,
        "reduction": passes_fixed / passes_seq,
    }, indent=2))


if __name__ == "__main__":
    main()
