#!/usr/bin/env python3
"""Distributed prune benchmark: the same `scalpel prune` at 1 rank x 2 threads and at 2 ranks x 1
thread on this machine (parallel efficiency at a fixed core count), and the bytes each rank hands
to the all-reduce and all-gather per layer (from the run's metrics) against `scalpel plan`'s
figures for the same job. Medians over --repeats runs; writes JSON.

  python3 benchmarks/bench_dist.py --out benchmarks/results/dist_opt-mini.json
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, env):
    t0 = time.monotonic()
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        sys.exit("bench_dist: command failed (%d): %s\n%s" % (p.returncode, " ".join(cmd), p.stdout[-3000:]))
    return time.monotonic() - t0


def layer_records(out_dir):
    recs = []
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r.get("event") == "layer":
                recs.append(r)
    return recs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(ROOT, "build/bin/scalpel"))
    ap.add_argument("--mpiexec", default="mpiexec")
    ap.add_argument("--model", default=os.path.join(ROOT, "models/opt-mini"))
    ap.add_argument("--calib", default=os.path.join(ROOT, "data/corpus/calib.txt"))
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--method", default="sparsegpt")
    ap.add_argument("--pattern", default="unstructured")
    ap.add_argument("--determinism", default="fast")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="")
    a = ap.parse_args()

    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_WAIT_POLICY="PASSIVE")
    common = ["prune", "--model", a.model, "calibration.path=" + a.calib, "calibration.nsamples=%d" % a.nsamples,
              "calibration.seqlen=%d" % a.seqlen, "prune.method=" + a.method, "prune.pattern=" + a.pattern,
              "determinism=" + a.determinism, "eval.sets=[]", "output.export=", "log.progress_seconds=0"]
    tmp = tempfile.mkdtemp(prefix="scalpel_bench_dist_")
    grids = {
        # One process bound to nothing: 2 threads on the 2 cores.
        "1x2": lambda out: [a.bin] + common + ["threads=2", "output.dir=" + out],
        # Two ranks, each bound to one core, 1 thread each.
        "2x1": lambda out: [a.mpiexec, "-n", "2", "--bind-to", "core", a.bin] + common +
                           ["threads=1", "output.dir=" + out],
    }
    result = {"benchmark": "dist", "model": a.model, "method": a.method, "pattern": a.pattern,
              "determinism": a.determinism, "nsamples": a.nsamples, "seqlen": a.seqlen, "repeats": a.repeats,
              "cores": os.cpu_count(), "grids": {}}
    outputs = {}
    for rep in range(a.repeats):
        for name, cmd in grids.items():  # interleaved, so drifts of the machine hit both alike
            out = os.path.join(tmp, "%s_%d" % (name, rep))
            wall = run(cmd(out), env)
            layers = layer_records(out)
            g = result["grids"].setdefault(name, {"wall_s": [], "layers_s": []})
            g["wall_s"].append(wall)
            g["layers_s"].append(sum(r["seconds"] for r in layers))
            outputs[name] = out
    for g in result["grids"].values():
        g["wall_median_s"] = statistics.median(g["wall_s"])
        g["layers_median_s"] = statistics.median(g["layers_s"])
    t1, t2 = result["grids"]["1x2"]["layers_median_s"], result["grids"]["2x1"]["layers_median_s"]
    result["speedup_2x1_over_1x2"] = t1 / t2
    result["wall_speedup_2x1_over_1x2"] = (result["grids"]["1x2"]["wall_median_s"] /
                                           result["grids"]["2x1"]["wall_median_s"])

    # Bytes per layer: measured on rank 0 of the 2-rank run, and the plan's figure for 2 ranks.
    layers = layer_records(outputs["2x1"])
    measured = [{"layer": r["layer"], "allreduce": r["comm_bytes"]["allreduce"],
                 "allgather": r["comm_bytes"]["allgather"]} for r in layers]
    plan = json.loads(subprocess.run([a.bin, "plan", "--ranks", "2", "--json"] + common[1:] + ["threads=1"],
                                     env=env, stdout=subprocess.PIPE, check=True, text=True).stdout)
    pl = plan["per_layer"]
    result["bytes_per_layer"] = {
        "measured_rank0": measured,
        "plan": {"allreduce": pl["allreduce_bytes"], "allgather": pl["allgather_bytes"]},
        "ratio_allreduce": statistics.median(m["allreduce"] for m in measured) / pl["allreduce_bytes"],
        "ratio_allgather": statistics.median(m["allgather"] for m in measured) / pl["allgather_bytes"],
    }
    shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(result, indent=1)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            f.write(text + "\n")
    print(text)
    print("1x2 %.2f s, 2x1 %.2f s (layers, medians): 2 ranks x 1 thread are %.2fx the speed of 1 rank x 2 threads; "
          "bytes/layer measured/plan: all-reduce %.3f, all-gather %.3f" %
          (t1, t2, result["speedup_2x1_over_1x2"], result["bytes_per_layer"]["ratio_allreduce"],
           result["bytes_per_layer"]["ratio_allgather"]), file=sys.stderr)


if __name__ == "__main__":
    main()
