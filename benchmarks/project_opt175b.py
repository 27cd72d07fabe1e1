#!/usr/bin/env python3
"""Projection of a whole OPT-175B SparseGPT prune from rates measured on this machine.

Takes the phase rates (GFLOP/s) that bench_prune measured on synthetic layers (statistics = ssyrk,
factorisation, OBS sweep; and the sgemm rate at the sweep's shapes, which stands for the forward
pass's GEMMs), picks for each phase the run whose input width is closest to OPT-175B's 12288, and
divides `scalpel plan`'s per-layer FLOPs of every phase (OPT-175B, 128 x 2048 calibration tokens,
the given grid, each rank a machine like this one) by them; communication and reading come from
the plan's rates. Writes JSON.

  python3 benchmarks/project_opt175b.py benchmarks/results/prune_5120_12288.json --ranks 64
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", nargs="+", help="bench_prune JSON files (synthetic layers)")
    ap.add_argument("--bin", default=os.path.join(ROOT, "build/bin/scalpel"))
    ap.add_argument("--config", default=os.path.join(ROOT, "configs/opt-175b-8x8-gpu.yaml"))
    ap.add_argument("--ranks", type=int, default=64, help="ranks of the grid (1 stage x ranks data)")
    ap.add_argument("--width", type=int, default=12288, help="input width whose measured rates to use")
    ap.add_argument("--out", default="")
    a = ap.parse_args()

    runs = []
    for path in a.bench:
        with open(path) as f:
            runs += json.load(f)["synthetic"]
    run = min(runs, key=lambda r: abs(r["cols"] - a.width))
    rates = {  # GFLOP/s measured on this machine
        "statistics": run["stats"]["gflops"],
        "factorisation": run["factorisation"]["gflops"],
        "sweep": run["sweep"]["gflops"],
        "forward": run["sweep"]["ceiling_gflops"],  # sgemm at the lazy updates' shapes
        "error": run["sweep"]["ceiling_gflops"],    # the error is GEMMs too
    }
    threads = json.load(open(a.bench[0])).get("threads", 0)
    cmd = [a.bin, "plan", a.config, "--json", "--ranks", str(a.ranks), "device=cpu", "threads=%d" % max(threads, 1),
           "parallel.stages=1", "parallel.data=%d" % a.ranks, "parallel.memory_gb=0", "calibration.batch=1"]
    plan = json.loads(subprocess.run(cmd, stdout=subprocess.PIPE, check=True, text=True).stdout)
    rank = plan["ranks"][0]
    flops = rank["flops_per_layer"]
    # A shared factor's time follows its critical path (the ranks wait at every panel).
    timed_flops = dict(flops, factorisation=flops.get("factorisation_critical_path", flops["factorisation"]))
    per_layer = {k: timed_flops[k] / (rates[k] * 1e9) for k in rates}
    compute = sum(per_layer.values())
    comm, read = rank["seconds_per_layer"]["comm"], rank["seconds_per_layer"]["read"]
    # The next layer's read overlaps this one's work (Model::prefetch), as the plan counts it.
    layer_s = max(compute + comm, read)
    layers = plan["model"].get("layers", 96)
    out = {
        "projection": "opt-175b sparsegpt, from measured phase rates",
        "measured_on": {"rows": run["rows"], "cols": run["cols"], "tokens": run.get("tokens"), "threads": threads},
        "rates_gflops": rates,
        "grid": {"ranks": a.ranks, "stages": 1, "data": a.ranks},
        "flops_per_layer_rank0": flops,
        "seconds_per_layer": dict(per_layer, comm=comm, read=read, total=layer_s),
        "layers": layers,
        "hours_total": layer_s * layers / 3600,
        "peak_memory_gb_rank0": rank["memory"]["peak"] / 1e9,
    }
    text = json.dumps(out, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    print(text)
    print("OPT-175B on %d ranks like this machine: %.1f s per layer, %.1f h for %d layers (peak %.1f GB per rank)"
          % (a.ranks, layer_s, out["hours_total"], layers, out["peak_memory_gb_rank0"]), file=sys.stderr)


if __name__ == "__main__":
    main()
