#!/usr/bin/env python3
"""Summarises the runs of scripts/prune_table.sh (their metrics.jsonl) into results.{md,json}."""
import json, os, sys
out = sys.argv[1]
rows = []
for run in sorted(os.listdir(out)):
    path = os.path.join(out, run, "metrics.jsonl")
    if not os.path.exists(path):
        continue
    ppl, errs = {}, []
    for line in open(path):
        r = json.loads(line)
        if r.get("event") == "eval":
            ppl[r["set"]] = r["ppl"]
        if r.get("event") == "layer":
            errs += [v["error_rel"] for v in r["linears"].values() if v.get("error_rel") is not None]
    if len(ppl) < 3:  # a run still going, or stopped: no row rather than a partial one
        continue
    model, _, cfg = run.partition("-mini-")
    rows.append({"model": model + "-mini", "config": cfg, "ppl": ppl,
                 "mean_layer_error_rel": sum(errs) / len(errs) if errs else None})
json.dump(rows, open(os.path.join(out, "results.json"), "w"), indent=2)
with open(os.path.join(out, "results.md"), "w") as f:
    f.write("| model | method | WikiText-2 | PTB | held-out | mean rel. layer error |\n|---|---|---:|---:|---:|---:|\n")
    for r in rows:
        e = r["mean_layer_error_rel"]
        f.write("| {} | {} | {:.2f} | {:.2f} | {:.2f} | {} |\n".format(
            r["model"], r["config"], r["ppl"].get("wikitext2", float("nan")), r["ppl"].get("ptb", float("nan")),
            r["ppl"].get("heldout", float("nan")), "-" if e is None else "{:.4f}".format(e)))
print(open(os.path.join(out, "results.md")).read())
