#!/usr/bin/env python3
"""Builds two small zero-shot task files from data/corpus/heldout.txt (Brown categories cp and cr,
one sentence a line, never seen in training by the shared mini models), for scalpel's measured
examples; the output is deterministic (seeded).

  data/tasks/brown_cloze.jsonl   `mc` format: the first 60% of a sentence's words as context, its
                                 real ending and three endings of other sentences (within two words
                                 of its length) as choices, in random order.
  data/tasks/brown_lambada.jsonl `lambada` format: three consecutive sentences whose last word, its
                                 punctuation removed, already occurs earlier in the passage (LAMBADA
                                 picks passages whose last word the context makes guessable).

  python3 scripts/make_brown_tasks.py [--items 300] [--seed 1234]
"""
import argparse
import json
import random
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cloze(sentences, items, rnd):
    pool = [s.split(" ") for s in sentences if 12 <= len(s.split(" ")) <= 40]
    rnd.shuffle(pool)
    out = []
    for words in pool:
        if len(out) == items:
            break
        cut = (len(words) * 6 + 9) // 10
        context, ending = " ".join(words[:cut]), " ".join(words[cut:])
        size = len(words) - cut
        others = [w for w in pool if w is not words and abs((len(w) - (len(w) * 6 + 9) // 10) - size) <= 2]
        distractors = []
        while len(distractors) < 3:
            w = rnd.choice(others)
            d = " ".join(w[(len(w) * 6 + 9) // 10:])
            if d != ending and d not in distractors:
                distractors.append(d)
        choices = [ending] + distractors
        rnd.shuffle(choices)
        out.append({"context": context, "choices": choices, "label": choices.index(ending)})
    return out


def lambada(sentences, items, rnd):
    out = []
    starts = list(range(len(sentences) - 2))
    rnd.shuffle(starts)
    for i in starts:
        if len(out) == items:
            break
        text = " ".join(sentences[i:i + 3])
        text = re.sub(r"[^\w]+$", "", text)
        words = text.split(" ")
        last = words[-1]
        if len(words) < 20 or len(words) > 120 or not re.fullmatch(r"[A-Za-z]{3,}", last):
            continue
        earlier = {re.sub(r"[^\w]", "", w).lower() for w in words[:-1]}
        if last.lower() in earlier:
            out.append({"text": text})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    lines = (ROOT / "data/corpus/heldout.txt").read_text(encoding="utf-8").split("\n")
    sentences = [line.strip() for line in lines if line.strip()]
    out_dir = ROOT / "data/tasks"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, items in (("brown_cloze", cloze(sentences, args.items, random.Random(args.seed))),
                        ("brown_lambada", lambada(sentences, args.items, random.Random(args.seed)))):
        with open(out_dir / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for item in items:
                f.write(json.dumps(item, ensure_ascii=False) + "\n")
        print(f"{name}: {len(items)} items")


if __name__ == "__main__":
    main()
