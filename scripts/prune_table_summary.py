#!/usr/bin/env python3
"""Summarises the runs of scripts/prune_table.sh (their metrics.jsonl) into results.{md,json}."""
import json, os, sys
out = sys.argv[1]
rows = []
for run in sorted(os.listdir(out)):
    path = os.path.join(out, run, "metrics.jsonl")
    if not os.path.exists(path):
        continue
    ppl, errs, tasks, mode = {}, [], {}, None
    for line in open(path):
        r = json.loads(line)
        if r.get("event") == "eval":
            ppl[r["set"]] = r["ppl"]
            mode = r.get("tokenizer_mode", mode)
        if r.get("event") == "task":
            tasks[r["task"]] = {k: r[k] for k in ("acc", "acc_stderr", "acc_norm", "ppl", "items")}
        if r.get("event") == "layer":
            errs += [v["error_rel"] for v in r["linears"].values() if v.get("error_rel") is not None]
    if len(ppl) < 3:  # a run still going, or stopped: no row rather than a partial one
        continue
    model, _, cfg = run.partition("-mini-")
    rows.append({"model": model + "-mini", "config": cfg, "ppl": ppl, "tokenizer_mode": mode, "tasks": tasks,
                 "mean_layer_error_rel": sum(errs) / len(errs) if errs else None})
json.dump(rows, open(os.path.join(out, "results.json"), "w"), indent=2)
with open(os.path.join(out, "results.md"), "w") as f:
    f.write("| model | method | WikiText-2 | PTB | held-out | mean rel. layer error |\n|---|---|---:|---:|---:|---:|\n")
    for r in rows:
        e = r["mean_layer_error_rel"]
        f.write("| {} | {} | {:.2f} | {:.2f} | {:.2f} | {} |\n".format(
            r["model"], r["config"], r["ppl"].get("wikitext2", float("nan")), r["ppl"].get("ptb", float("nan")),
            r["ppl"].get("heldout", float("nan")), "-" if e is None else "{:.4f}".format(e)))
    f.write("\n| model | method | cloze acc | cloze acc_norm | LAMBADA-style acc | LAMBADA-style ppl | everyday acc | everyday acc_norm |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|\n")
    for r in rows:
        t = r["tasks"]
        if not t:
            continue
        g = lambda name, key: t[name][key] if name in t and t[name][key] is not None else float("nan")
        f.write("| {} | {} | {:.3f} ± {:.3f} | {:.3f} | {:.3f} ± {:.3f} | {:.0f} | {:.3f} ± {:.3f} | {:.3f} |\n".format(
            r["model"], r["config"], g("cloze", "acc"), g("cloze", "acc_stderr"), g("cloze", "acc_norm"),
            g("lambada", "acc"), g("lambada", "acc_stderr"), g("lambada", "ppl"), g("everyday", "acc"),
            g("everyday", "acc_stderr"), g("everyday", "acc_norm")))
print(open(os.path.join(out, "results.md")).read())
