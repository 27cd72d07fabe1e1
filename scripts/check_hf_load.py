#!/usr/bin/env python3
"""Loads a Hugging Face model folder with transformers (e.g. a `scalpel depth` export) and prints
its perplexity on a text with the SparseGPT/Wanda protocol scalpel uses: the whole text tokenized
once, numel // seqlen non-overlapping windows, mean next-token NLL over every predicted position,
exp. Meant for a machine with torch and transformers (the GPU machine); it was not run on the
development machine, which has neither.

  python3 scripts/check_hf_load.py runs/depth-opt-deep/model --text data/corpus/heldout.txt
  python3 scripts/check_hf_load.py runs/depth-opt-deep/model --text data/corpus/heldout.txt --seqlen 512 \
      --expect 123.45   # the ppl of `scalpel eval --model runs/depth-opt-deep/model --text text:data/corpus/heldout.txt`
                        # (preset text: the file as is, as read here); exit 1 when they differ by more than --rtol

Prints the layer count transformers built, the removed blocks the config records (scalpel_depth),
and the perplexity as one JSON line.
"""
import argparse
import json
import math
import sys


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="Hugging Face model folder")
    p.add_argument("--text", required=True, help="plain text file (read as is)")
    p.add_argument("--seqlen", type=int, default=0, help="window length (0: max_position_embeddings)")
    p.add_argument("--max-windows", type=int, default=0, help="evaluate at most this many windows (0: all)")
    p.add_argument("--device", default="cuda", help="cuda or cpu (cuda falls back to cpu when unavailable)")
    p.add_argument("--expect", type=float, default=None, help="perplexity to compare with (e.g. scalpel eval's)")
    p.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance of --expect")
    a = p.parse_args()

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    device = a.device if a.device != "cuda" or torch.cuda.is_available() else "cpu"
    config = AutoConfig.from_pretrained(a.folder)
    # transformers 4.56 renamed torch_dtype to dtype (5.x loads in the checkpoint's dtype when neither
    # is given, which would compare an fp16 forward with scalpel eval's fp32 one).
    import transformers
    major, minor = (int(v) for v in transformers.__version__.split(".")[:2])
    key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    model = AutoModelForCausalLM.from_pretrained(a.folder, **{key: torch.float32}).to(device).eval()
    tok = AutoTokenizer.from_pretrained(a.folder)
    layers = getattr(model.config, "num_hidden_layers", None)
    decoder = getattr(model, "model", None)
    built = len(decoder.decoder.layers) if hasattr(decoder, "decoder") else len(decoder.layers)
    if built != layers:
        print(f"error: config says {layers} layers, transformers built {built}", file=sys.stderr)
        return 1

    seqlen = a.seqlen or config.max_position_embeddings
    ids = tok(open(a.text, encoding="utf-8").read(), return_tensors="pt").input_ids
    nwin = ids.numel() // seqlen
    if a.max_windows:
        nwin = min(nwin, a.max_windows)
    if nwin == 0:
        print(f"error: {ids.numel()} tokens, fewer than one window of {seqlen}", file=sys.stderr)
        return 1
    total = 0.0
    with torch.no_grad():
        for w in range(nwin):
            x = ids[:, w * seqlen:(w + 1) * seqlen].to(device)
            logits = model(x).logits.float()
            nll = torch.nn.functional.cross_entropy(logits[0, :-1], x[0, 1:], reduction="sum")
            total += nll.double().item()
    mean = total / (nwin * (seqlen - 1))
    ppl = math.exp(mean)
    out = {"folder": a.folder, "layers": built, "scalpel_depth": getattr(config, "scalpel_depth", None),
           "text": a.text, "windows": nwin, "seqlen": seqlen, "mean_nll": mean, "ppl": ppl, "device": device,
           "transformers": transformers.__version__, "torch": torch.__version__}
    print(json.dumps(out))
    if a.expect is not None and abs(ppl - a.expect) > a.rtol * a.expect:
        print(f"error: perplexity {ppl:.4f} differs from the expected {a.expect:.4f} by more than {a.rtol:g}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
